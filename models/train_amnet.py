"""Train AMNet on synthetic low-light clips (`lowlight-compile zoo train amnet`).

Data: the real photos in ../shared/data/clean/, moved a few pixels per frame to
make clips, degraded by the shared camera mix (`calibration.degrade.camera_mix`:
the paper's sRGB darkening, linear-light captures with ELD noise, colour casts,
lamps and JPEG, and normal exposures whose target is themselves), with
synthetic event voxels and pseudo-IR from the clean clip. Losses are the paper's:
full-modality reconstruction, missing-modality simulation over every subset of
{event, ir}, and feature distillation of implicit vs real auxiliary features.
"""
from __future__ import annotations

import json
import math
import time
from itertools import combinations
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from lowlight.calibration.degrade import RECIPE_MIX, camera_mix, degrade_clip, event_voxels, motion_clip, pseudo_ir
from lowlight.calibration.frames import load_frames
from lowlight.core.metrics import psnr, ssim
from lowlight.models.amnet import AUX, CONFIGS, AMNet
from lowlight.models.evaluate import evaluate as evaluate_recipes
from lowlight.models.family import WEIGHTS_DIR
from lowlight.models.train_loop import split_photos

SUBSETS = [frozenset(s) for r in range(len(AUX) + 1) for s in combinations(AUX, r)]
FULL = frozenset(AUX)
MISSING = [s for s in SUBSETS if s != FULL]  # none, event-only, ir-only


def make_clip(image: np.ndarray, frames: int, crop: int, rng: np.random.Generator, bins: int,
              darken: Callable[[np.ndarray, np.random.Generator], tuple[np.ndarray, np.ndarray]] = camera_mix) -> dict[str, np.ndarray]:
    """One synthetic sample: clean/low clips [T,3,h,w], event voxels, pseudo-IR; `darken` makes (low, target)."""
    clean = motion_clip(image, frames, (crop, crop), rng)
    if rng.random() < 0.5:
        clean = np.ascontiguousarray(clean[:, :, ::-1])
    low, clean = darken(clean, rng)
    return {
        "clean": clean.transpose(0, 3, 1, 2),
        "rgb": low.transpose(0, 3, 1, 2),
        # event cameras keep their dynamic range at night: events come from the scene
        "event": event_voxels(clean, bins),
        "ir": pseudo_ir(clean, rng),
    }


def batch(images: list[np.ndarray], n: int, frames: int, crop: int, rng: np.random.Generator, bins: int) -> dict[str, torch.Tensor]:
    samples = [make_clip(images[int(rng.integers(len(images)))], frames, crop, rng, bins) for _ in range(n)]
    return {k: torch.from_numpy(np.ascontiguousarray(np.stack([s[k] for s in samples]))) for k in samples[0]}


def ssim_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """1 - SSIM with a uniform 7x7 window, on [N,C,H,W] (cheap enough to train with)."""
    c1, c2 = 0.01**2, 0.03**2
    mu_x, mu_y = F.avg_pool2d(x, 7, 1), F.avg_pool2d(y, 7, 1)
    var_x = F.avg_pool2d(x * x, 7, 1) - mu_x**2
    var_y = F.avg_pool2d(y * y, 7, 1) - mu_y**2
    cov = F.avg_pool2d(x * y, 7, 1) - mu_x * mu_y
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return 1 - s.mean()


def reconstruction(out: torch.Tensor, gt: torch.Tensor, lambda_s: float = 0.2) -> torch.Tensor:
    """L_rec = L1 + lambda_s * SSIM loss (the paper's pixel + structural loss)."""
    return F.l1_loss(out, gt) + lambda_s * ssim_loss(out.flatten(0, 1), gt.flatten(0, 1))


def distillation(implicit: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """|| z_hat/||z_hat|| - sg(z/||z||) ||^2 per sample, averaged."""
    a = F.normalize(implicit.flatten(1), dim=1)
    b = F.normalize(real.detach().flatten(1), dim=1)
    return ((a - b) ** 2).sum(1).mean()


def losses(
    model: AMNet,
    b: dict[str, torch.Tensor],
    weights: tuple[float, float, float] = (1.0, 1.0, 0.1),
    missing: list[frozenset[str]] | None = None,
) -> dict[str, torch.Tensor]:
    """The paper's three terms.

    Missing-modality simulation averages the reconstruction loss over the
    subsets in `missing` (default: every proper subset of {event, ir}); the
    training loop passes one random subset per step, an unbiased estimate of
    that average at a third of the decoder cost, which is what makes the base
    config trainable on a 2-core CPU.
    """
    feats = model.encode(b["rgb"])
    real = model.real(b["event"], b["ir"])
    implicit = model.implicit(feats[2])
    missing = missing if missing is not None else [s for s in SUBSETS if s != FULL]
    rec = {}
    for subset in [FULL, *missing]:
        aux = {m: real[m] if m in subset else implicit[m] for m in AUX}
        rec[subset] = reconstruction(model.decode(b["rgb"], feats, aux), b["clean"])
    full = rec[FULL]
    miss = sum(rec[s] for s in missing) / len(missing)
    dt = sum(distillation(implicit[m], real[m]) for m in AUX)
    total = weights[0] * full + weights[1] * miss + weights[2] * dt
    return {"total": total, "full": full, "miss": miss, "distill": dt}


@torch.no_grad()
def evaluate(model: AMNet, images: list[np.ndarray], frames: int = 8, crop: int = 256, clips_per_image: int = 2, seed: int = 1234) -> dict[str, float]:
    """PSNR/SSIM on held-out synthetic pairs, RGB-only and with all modalities, vs the input's."""
    rng = np.random.default_rng(seed)
    bins = model.config.event_bins
    scores: dict[str, list[float]] = {k: [] for k in ("psnr_in", "ssim_in", "psnr_rgb", "ssim_rgb", "psnr_all", "ssim_all")}
    model.eval()
    for img in images:
        for _ in range(clips_per_image):
            # the original sRGB recipe, for continuity with earlier weights; `models.evaluate` reports every recipe
            s = make_clip(img, frames, min(crop, img.shape[0] - 8 * frames, img.shape[1] - 8 * frames) // 4 * 4, rng, bins, lambda c, r: (degrade_clip(c, r), c))
            rgb = torch.from_numpy(np.ascontiguousarray(s["rgb"]))[None]
            out_rgb = model(rgb)[0].numpy()
            out_all = model(rgb, torch.from_numpy(s["event"])[None], torch.from_numpy(np.ascontiguousarray(s["ir"]))[None])[0].numpy()
            for key, pred in (("in", s["rgb"]), ("rgb", out_rgb), ("all", out_all)):
                scores[f"psnr_{key}"].append(psnr(pred, s["clean"]))
                scores[f"ssim_{key}"].append(float(np.mean([ssim(p, c) for p, c in zip(pred, s["clean"])])))
    result = {k: float(np.mean(v)) for k, v in scores.items()}
    result["gain_rgb_db"] = result["psnr_rgb"] - result["psnr_in"]
    result["gain_all_db"] = result["psnr_all"] - result["psnr_in"]
    return result


@torch.no_grad()
def enhance(model: AMNet, img: np.ndarray) -> np.ndarray:
    """One HxWx3 photo through `model` as a one-frame clip, RGB only."""
    model.eval()
    return model(torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))[None, None])[0, 0].numpy().transpose(1, 2, 0)


def train(
    config: str = "base",
    out: str | None = None,
    steps: int | None = None,
    batch_size: int = 4,
    frames: int = 4,
    crop: int = 96,
    lr: float = 2e-3,
    seed: int = 0,
    threads: int | None = None,
    progress: bool = True,
    init: str | None = None,
    rgb_only: bool = False,
) -> dict[str, float]:
    """Train AMNet `config` and save safetensors + a metrics JSON; returns the eval metrics.

    rgb_only: the paper's downstream RGB-only fine-tuning after multi-modal
    pre-training (use with `init`): the missing-modality term always drops both
    auxiliary inputs, the full-modality term keeps a small weight.
    """
    from lowlight.models.train_loop import save_weights
    from tqdm import tqdm

    if threads:
        torch.set_num_threads(threads)
    steps = steps or {"tiny": 150, "base": 500}.get(config, 500)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    train_paths, held_paths = split_photos()
    train_imgs = [f for p in train_paths for f in load_frames(p)]
    held_imgs = [f for p in held_paths for f in load_frames(p)]
    model = AMNet(CONFIGS[config])
    if init:  # fine-tune from earlier weights (safe loading, keys checked)
        from lowlight.models.amnet import AMNetFamily
        from lowlight.models.checkpoint import load_state_dict_into

        load_state_dict_into(model, init, what=f"amnet config {config!r}", rename=AMNetFamily().checkpoint_rename)
    bins = model.config.event_bins
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps)))
    )
    t0 = time.time()
    bar = tqdm(range(steps), desc=f"train amnet {config}", disable=not progress, unit="step")
    model.train()
    for step in bar:
        b = batch(train_imgs, batch_size, frames, crop, rng, bins)
        if rgb_only:
            terms = losses(model, b, weights=(0.2, 1.0, 0.1), missing=[frozenset()])
        else:
            subset = MISSING[int(rng.integers(len(MISSING)))]
            terms = losses(model, b, missing=[subset])
        opt.zero_grad(set_to_none=True)
        terms["total"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 10 == 0:
            bar.set_postfix({k: f"{v.item():.4f}" for k, v in terms.items()})
    metrics = evaluate(model, held_imgs)
    metrics["data"] = f"calibration.degrade.camera_mix {RECIPE_MIX}"
    if progress:
        print("per recipe and on real low-light photos (models.evaluate):")
    metrics.update(evaluate_recipes(lambda img: enhance(model, img), say=print if progress else lambda _s: None))
    metrics.update(
        config=config, steps=steps, batch_size=batch_size, frames=frames, crop=crop, seed=seed, lr=lr, init=init, rgb_only=rgb_only,
        train_seconds=round(time.time() - t0, 1), held_out=[p.name for p in held_paths],
        parameters=sum(p.numel() for p in model.parameters()),
    )  # type: ignore[arg-type]
    out_path = Path(out) if out else WEIGHTS_DIR / f"amnet_{config}.safetensors"
    save_weights(model, out_path, {})
    out_path.with_suffix(".json").write_text(json.dumps(metrics, indent=2) + "\n")
    if progress:
        print(
            f"held-out synthetic pairs: input {metrics['psnr_in']:.2f} dB / {metrics['ssim_in']:.3f}, "
            f"RGB-only {metrics['psnr_rgb']:.2f} dB / {metrics['ssim_rgb']:.3f} (+{metrics['gain_rgb_db']:.2f} dB), "
            f"all modalities {metrics['psnr_all']:.2f} dB / {metrics['ssim_all']:.3f}"
        )
        print(f"wrote {out_path}")
    return metrics
