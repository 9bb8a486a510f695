r"""Train GM-MoE's reference weights on synthetic low-light pairs (`lowlight-compile zoo train gmmoe`).

Data: crops of the clean photos in ../shared/data/clean, degraded by the shared
camera mix (`lowlight.calibration.degrade.camera_mix`: sRGB darkening, linear-light
captures with ELD noise, colour casts, lamps and JPEG, and normal
exposures whose target is themselves). A fixed, deterministic subset of the
photos is held out for evaluation (never trained on); `models.evaluate` scores
every recipe and the artefacts on real low-light photos.

Loss: the paper's PSNR loss (10*log10(MSE), per image) plus a load-balancing
term on the gates. Steps alternate between dense mixing and top-2 dispatch,
so the same weights serve `--experts dense` and `--experts top2`.

    python -m lowlight.models.train_gmmoe --config small      # ~30 min on one core

The shipped weights were made in two runs (same recipe, phase 2 resumed):
    python -m lowlight.models.train_gmmoe --config small --top2-steps 0          # phase 1, cut at 27 min
    python -m lowlight.models.train_gmmoe --config small --steps 0 --top2-steps 100 --seed 1 \
        --init models/weights/gmmoe_small.safetensors                           # phase 2
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lowlight.models.gmmoe import CONFIGS, DEFAULT_CONFIG, GMMoE, TOP2_WEIGHTS, balance_loss, top2
from lowlight.models.family import WEIGHTS_DIR
from lowlight.models.train_loop import split_photos


def read_photo(path: Path) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0


def heldout_pairs(size: int = 256, per_photo: int = 2, seed: int = 1234) -> list[tuple[np.ndarray, np.ndarray]]:
    """Deterministic (low, clean) HxWx3 pairs from the held-out photos: centre crops, fixed noise (the sRGB recipe)."""
    from lowlight.calibration.degrade import recipe_pairs

    return recipe_pairs([read_photo(p) for p in split_photos()[1]], "srgb", size=size, per_photo=per_photo, seed=seed)


def _batch(photos: list[np.ndarray], n: int, crop: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    from lowlight.calibration.degrade import camera_mix

    lows, cleans = [], []
    for _ in range(n):
        img = photos[rng.integers(len(photos))]
        H, W = img.shape[:2]
        y, x = rng.integers(0, H - crop + 1), rng.integers(0, W - crop + 1)
        c = img[y : y + crop, x : x + crop]
        if rng.random() < 0.5:
            c = c[:, ::-1]
        if rng.random() < 0.5:
            c = c[::-1]
        low, target = camera_mix(np.ascontiguousarray(c), rng)
        lows.append(low)
        cleans.append(target)
    to = lambda a: torch.from_numpy(np.stack(a).transpose(0, 3, 1, 2).copy())  # noqa: E731
    return to(lows), to(cleans)


def psnr_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The paper's PSNR loss: 10*log10(MSE + eps) per image, averaged (minimising it maximises PSNR)."""
    mse = (pred - target).pow(2).mean(dim=(1, 2, 3))
    return (10.0 / math.log(10.0)) * torch.log(mse + 1e-8).mean()


@torch.no_grad()
def dropped_experts(model: GMMoE, x: torch.Tensor) -> list[int]:
    """The expert each block drops under top-2 for the single image `x` (in block order)."""
    seen: list[int] = []
    hooks = [b.gate.register_forward_hook(lambda _m, _i, w: seen.append(int(top2(w)[0][0]))) for b in model.blocks()]
    try:
        model(x)
    finally:
        for h in hooks:
            h.remove()
    return seen


@torch.no_grad()
def evaluate(model: GMMoE, pairs: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, Any]:
    """PSNR/SSIM on held-out pairs: the input, dense and top-2; and how often each expert is dropped."""
    from lowlight.core.metrics import psnr, ssim

    was_training, mode = model.training, model.experts_mode
    model.eval()
    scores: dict[str, list[tuple[float, float]]] = {"input": [], "dense": [], "top2": []}
    drops = np.zeros(3)
    for low, clean in pairs:
        gt = clean.transpose(2, 0, 1)
        scores["input"].append((psnr(low.transpose(2, 0, 1), gt), ssim(low.transpose(2, 0, 1), gt)))
        x = torch.from_numpy(low.transpose(2, 0, 1).copy())[None]
        for m in ("dense", "top2"):
            out = model.set_experts(m)(x)[0].clamp(0, 1).numpy()
            scores[m].append((psnr(out, gt), ssim(out, gt)))
        for d in dropped_experts(model, x):
            drops[d] += 1
    model.set_experts(mode).train(was_training)
    res: dict[str, Any] = {
        k: {"psnr": round(float(np.mean([s[0] for s in v])), 3), "ssim": round(float(np.mean([s[1] for s in v])), 4)}
        for k, v in scores.items()
    }
    res["dropped_fraction"] = {n: round(float(d / drops.sum()), 3) for n, d in zip(("color", "detail", "feature"), drops)}
    res["pairs"] = len(pairs)
    return res


@torch.no_grad()
def enhance(model: GMMoE, img: np.ndarray) -> np.ndarray:
    """One HxWx3 photo through `model` (in its current experts mode)."""
    model.eval()
    return model(torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))[None])[0].clamp(0, 1).numpy().transpose(1, 2, 0)


def _phase(model: GMMoE, photos: list[np.ndarray], rng: np.random.Generator, steps: int, lr: float,
           modes: tuple[str, ...], batch: int, crop: int, balance_weight: float, log_every: int,
           max_minutes: float | None, label: str) -> int:
    """`steps` Adam steps cycling through `modes`; returns the steps done (fewer if `max_minutes` ran out)."""
    if steps <= 0:
        return 0
    opt = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, 0.9))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps, eta_min=lr * 0.01)
    t0 = time.time()
    run = {"loss": 0.0, "bal": 0.0, "n": 0, "nb": 0}
    for step in range(1, steps + 1):
        low, clean = _batch(photos, batch, crop, rng)
        # Alternate dense and top-2 steps: both modes must work on the same weights.
        mode = modes[step % len(modes)]
        model.set_experts(mode)
        for b in model.blocks():
            b.last_gate = None
        loss = psnr_loss(model(low), clean)
        bal = balance_loss(model) if mode == "top2" else torch.zeros(())
        opt.zero_grad(set_to_none=True)
        (loss + balance_weight * bal).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        run["loss"] += float(loss.detach())
        run["bal"] += float(bal.detach())
        run["n"] += 1
        run["nb"] += mode == "top2"
        if step % log_every == 0 or step == steps:
            el = time.time() - t0
            print(f"[{label}] step {step}/{steps}  train PSNR {-run['loss'] / run['n']:.2f} dB  "
                  f"balance {run['bal'] / max(run['nb'], 1):.3f}  lr {sched.get_last_lr()[0]:.2e}  "
                  f"{el / 60:.1f} min (eta {el / step * (steps - step) / 60:.1f} min)", flush=True)
            run = {"loss": 0.0, "bal": 0.0, "n": 0, "nb": 0}
        if max_minutes is not None and time.time() - t0 > max_minutes * 60:
            print(f"[{label}] stopping at step {step}: --max-minutes {max_minutes} reached", flush=True)
            return step
    return steps


def train(
    config: str = DEFAULT_CONFIG,
    out: str | Path | None = None,
    steps: int = 1000,
    batch: int = 4,
    crop: int = 128,
    lr: float = 1e-3,
    balance_weight: float = 1.0,
    seed: int = 0,
    threads: int = 1,
    log_every: int = 25,
    max_minutes: float | None = 27.0,
    top2_steps: int = 100,
    top2_lr: float = 2e-4,
    init: str | Path | None = None,
    **_: Any,
) -> dict[str, Any]:
    """Train `config` (from scratch, or from `init`); write `out` (safetensors) and `out`.json with metrics.

    Phase 1: `steps` steps alternating dense and top-2 (cosine LR from `lr`).
    Phase 2: `top2_steps` steps of top-2 only (cosine LR from `top2_lr`), so top-2
    quality holds when the gate drops an expert that still carried weight.
    """
    from lowlight.models.train_loop import save_weights

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    out = Path(out) if out else WEIGHTS_DIR / f"gmmoe_{config}.safetensors"
    cfg = CONFIGS[config]
    if crop < cfg.min_side:
        crop = cfg.factor * math.ceil(cfg.min_side / cfg.factor)
    train_files, held = split_photos()
    photos = [p for p in (read_photo(f) for f in train_files) if min(p.shape[:2]) >= crop]
    pairs = heldout_pairs()
    print(f"gmmoe {config}: {len(photos)} training photos, {len(held)} held out ({len(pairs)} eval pairs); "
          f"{steps} steps of {batch}x{crop}x{crop}", flush=True)

    model = GMMoE(cfg, experts="top2").train()
    history: dict[str, Any] = {}
    if init:
        from lowlight.models.checkpoint import load_state_dict_into

        load_state_dict_into(model, init, what=f"gmmoe config {config!r}")
        prev = Path(init).with_suffix(".json")
        if prev.exists():
            history = json.loads(prev.read_text())
    print(f"parameters: {sum(p.numel() for p in model.parameters()):,}", flush=True)
    t0 = time.time()
    done_main = _phase(model, photos, rng, steps, lr, ("dense", "top2"), batch, crop, balance_weight, log_every,
                       max_minutes, "dense+top2")
    done_top2 = _phase(model, photos, rng, top2_steps, top2_lr, ("top2",), batch, crop, balance_weight, log_every,
                       None, "top2 only")
    train_min = (time.time() - t0) / 60
    model.set_experts("top2").eval()
    metrics = evaluate(model, pairs)
    from lowlight.calibration.degrade import RECIPE_MIX
    from lowlight.models.evaluate import evaluate as evaluate_recipes

    print("per recipe and on real low-light photos (models.evaluate), top-2:", flush=True)
    metrics["data"] = f"calibration.degrade.camera_mix {RECIPE_MIX}"
    metrics.update(evaluate_recipes(lambda img: enhance(model, img)))
    if history:  # fine-tuned from `init`: keep the earlier phases' record
        metrics["init"] = {k: history[k] for k in ("steps", "train_minutes", "top2_steps", "lr", "init") if k in history}
        metrics["init"]["metrics_before"] = {k: history[k] for k in ("input", "dense", "top2") if k in history}
    metrics.update(config=config, steps=done_main, top2_steps=done_top2, top2_lr=top2_lr, batch=batch, crop=crop, lr=lr, balance_weight=balance_weight,
                   seed=seed, threads=threads, train_minutes=round(train_min, 1),
                   params=sum(p.numel() for p in model.parameters()),
                   heldout_photos=[p.name for p in held])
    # How it was trained travels with the weights: verification compares a top-2 bundle
    # with the top-2 model only if top-2 is what was trained (Family.reference_options).
    trained = {"experts": "top2", "top2_weights": TOP2_WEIGHTS} if top2_steps else {"experts": "dense"}
    metrics["trained_options"] = trained
    save_weights(model, out, {"lowlight.trained_options": json.dumps(trained)})
    out.with_suffix(".json").write_text(json.dumps(metrics, indent=2) + "\n")
    print(json.dumps(metrics, indent=2), flush=True)
    print(f"wrote {out}", flush=True)
    return metrics


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=DEFAULT_CONFIG, choices=sorted(CONFIGS))
    ap.add_argument("--out", default=None)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--crop", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--balance-weight", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--log-every", type=int, default=25)
    ap.add_argument("--max-minutes", type=float, default=27.0, help="stop phase 1 early (and go on) after this long")
    ap.add_argument("--top2-steps", type=int, default=100, help="phase 2: top-2-only steps")
    ap.add_argument("--top2-lr", type=float, default=2e-4)
    ap.add_argument("--init", default=None, help="start from these weights (e.g. to run phase 2 only: --steps 0)")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing --out (and the NAME.json beside it)")
    a = ap.parse_args(argv)
    from lowlight.core.errors import LowlightError
    from lowlight.core.fsio import claim_weights

    out = Path(a.out) if a.out else WEIGHTS_DIR / f"gmmoe_{a.config}.safetensors"
    try:  # as `zoo train`: never over the --init weights, over an existing file only with --overwrite
        claim_weights(out, a.overwrite, a.init)
    except LowlightError as exc:
        print(f"error: {exc.what}\n  fix: {exc.fix}", file=sys.stderr)
        sys.exit(2)
    train(a.config, out, a.steps, a.batch, a.crop, a.lr, a.balance_weight, a.seed, a.threads, a.log_every,
          a.max_minutes, a.top2_steps, a.top2_lr, a.init)


if __name__ == "__main__":
    main()
