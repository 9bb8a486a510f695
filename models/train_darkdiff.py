"""Train DarkDiff's reference weights (`lowlight-compile zoo train darkdiff`) and set up its distillation.

Data: synthetic low-light raw (`calibration.raw`: Brooks et al. unprocessing of
the clean photos in ../shared/data/clean, ELD shot + read noise at ratios
100-300, ground truth through the forward ISP at packed resolution). Every 7th
photo (index % 7 == 3) is held out for the metrics; ../shared/data/eval is
never read. Fresh crops, noise, ratio and white balance at every step.

Stage 1 (the paper's stage 1, with its losses simplified): the residual VAE,
L1 + a small KL. The target's latent is decoded with the skips of the
low-light input's encoding (the residual connections carry the input's
detail to the decoder). The latents are then scaled to unit spread
(`vae.latent_scale`, SD's 0.18215 measured here).

Stage 2 (the paper's stage 2): the U-Net and the context processor with the
VAE frozen, v-prediction on the cosine schedule; the low-light latent is
replaced by pure Gaussian noise with probability `drop` (0.15; the paper
gives no value) so the same network is the unconditional branch of
classifier-free guidance. Optional: the paper's decoder loss (Sec. 4.4, Eqs.
8-9) on the one-step x0 estimate, weight `decoder_loss`.

Paper values lost in extraction (learning rates, crop, KL weight, loss balance)
are the choices below, recorded in the weights' metadata and the JSON beside.

`distill_setup` is what `lowlight-compile distill` needs: the teacher as a
sampler (the `lowlight.compile.distill.Sampler` protocol, implemented by
`DarkDiffSampler`) and the training batches.
"""
from __future__ import annotations

import copy
import hashlib
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from lowlight.calibration.frames import load_frames
from lowlight.calibration.raw import raw_batch, raw_pair
from lowlight.core.errors import LowlightError
from lowlight.core.metrics import psnr, ssim
from lowlight.models.darkdiff import CONFIGS, DarkDiff, alpha_sigma, build, predict_x0
from lowlight.models.family import WEIGHTS_DIR
from lowlight.models.train_loop import load_photos, save_weights as save
from lowlight.models.train_loop import split_photos
from lowlight.models.train_loop import train_loop as _loop

#: per config: stage-1 steps, stage-2 steps, batch, Bayer crop, learning rates, eval crop, distillation defaults
RECIPES: dict[str, dict[str, Any]] = {
    "tiny": dict(vae_steps=40, steps=80, batch=4, crop=64, vae_lr=2e-3, lr=2e-3, eval_crop=64, eval_images=2,
                 distill_iters=20, distill_lr=5e-4, distill_every=10),
    "small": dict(vae_steps=2000, steps=6000, batch=8, crop=128, vae_lr=1e-3, lr=1e-3, eval_crop=256, eval_images=6,
                  distill_iters=1000, distill_lr=2e-4, distill_every=50),
}
KL_WEIGHT = 1e-3  # per element (mean), "small": keeps the latent near N(0, 1) without blurring the reconstruction
DROP = 0.15  # CFG: probability that the condition is replaced by pure Gaussian noise


# -- data ------------------------------------------------------------------------------------------


def _torch(b: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in b.items()}


def batches(photos: list[np.ndarray], batch: int, crop: int, seed: int) -> Iterator[dict[str, torch.Tensor]]:
    """Endless {"raw", "gain", "target"} batches of random crops of `photos`: fresh noise, ratio and WB each time."""
    rng = np.random.default_rng(seed)
    while True:
        yield _torch(raw_batch(photos, batch, crop, rng))


def lazy_batches(paths: list[Path], batch: int, crop: int, seed: int) -> Iterator[dict[str, torch.Tensor]]:
    """`batches` over photos read on the first draw (a cached distillation reads none)."""
    yield from batches(load_photos(paths, crop), batch, crop, seed)


def data_description(paths: list[Path], batch: int, crop: int, seed: int) -> str:
    """What the batches are, for the distillation's cache key: recipe, photo names, batch, crop, seed."""
    names = hashlib.sha256("\n".join(p.name for p in paths).encode()).hexdigest()[:12]
    return (f"darkdiff calibration.raw synthetic pairs (ratio 100-300) from {len(paths)} photos of shared/data/clean "
            f"(every 7th held out; names {names}), batch {batch}, Bayer crop {crop}, seed {seed}")


def heldout_pairs(paths: list[Path], crop: int, seed: int = 1234) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Fixed (raw, gain, target) from the centre crop of each held-out photo: the evaluation set."""
    rng = np.random.default_rng(seed)
    pairs = []
    for img in (f for p in paths for f in load_frames(p)):
        H, W = img.shape[:2]
        s = min(crop, H, W) // 2 * 2
        centre = img[(H - s) // 2 : (H - s) // 2 + s, (W - s) // 2 : (W - s) // 2 + s]
        pairs.append(raw_pair(centre, rng))
    return pairs


# -- evaluation ----------------------------------------------------------------------------------------


@torch.no_grad()
def evaluate(model: DarkDiff, pairs: list[tuple[np.ndarray, np.ndarray, np.ndarray]], steps: tuple[int, ...] = (50,),
             students: dict[int, DarkDiff] | None = None) -> dict[str, Any]:
    """Held-out PSNR/SSIM vs ground truth: the VAE's reconstruction bound, the teacher's guided DDIM at
    each of `steps`, and each student, all from the same z_T (the model's seed)."""
    model.eval()
    scores: dict[str, list[tuple[float, float]]] = {}

    def add(key: str, out: torch.Tensor, target: np.ndarray) -> None:
        o = out[0].clamp(0, 1).numpy()
        scores.setdefault(key, []).append((psnr(o, target), ssim(o, target)))

    for raw_np, gain_np, target in pairs:
        raw, gain = torch.from_numpy(raw_np)[None], torch.from_numpy(gain_np)[None]
        z_t = torch.from_numpy(model.draw_noise(model.latent_shape(tuple(raw.shape)))[0])
        _, skips = model.vae.encode(model.preprocess(raw, gain))
        x0, _ = model.vae.encode(torch.from_numpy(target)[None] * 2 - 1)
        add("vae", model.vae.decode(x0, skips), target)
        for k in steps:
            add(f"teacher_{k}", model.sample(raw, gain, z_t, k), target)
        for k, s in (students or {}).items():
            s.eval()
            add(f"student_{k}", s.sample(raw, gain, z_t, k), target)
    return {k: {"psnr": round(float(np.mean([a for a, _ in v])), 3), "ssim": round(float(np.mean([b for _, b in v])), 4)}
            for k, v in scores.items()}


# -- training --------------------------------------------------------------------------------------------


def vae_losses(model: DarkDiff, b: dict[str, torch.Tensor], kl_weight: float = KL_WEIGHT) -> dict[str, torch.Tensor]:
    """Stage 1: decode a sample of the target's posterior with the low-light input's skips; L1 + KL."""
    vae = model.vae
    _, _, skips = vae.encode_dist(model.preprocess(b["raw"], b["gain"]))
    mean, logvar, _ = vae.encode_dist(b["target"] * 2 - 1)
    z = mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)
    out = vae.decoder(z, skips)  # unscaled latent: latent_scale is set after this stage
    l1 = F.l1_loss(out, b["target"])
    kl = 0.5 * (mean.square() + logvar.exp() - 1 - logvar).mean()
    return {"total": l1 + kl_weight * kl, "l1": l1, "kl": kl}


def diffusion_losses(model: DarkDiff, b: dict[str, torch.Tensor], drop: float = DROP, decoder_loss: float = 0.0) -> dict[str, torch.Tensor]:
    """Stage 2: v-prediction at t ~ U(0, 1), condition replaced by N(0, I) with probability `drop`."""
    with torch.no_grad():
        zc, skips = model.vae.encode(model.preprocess(b["raw"], b["gain"]))
        x0, _ = model.vae.encode(b["target"] * 2 - 1)
    n = x0.shape[0]
    dropped = (torch.rand(n) < drop).reshape(n, 1, 1, 1)
    ctx = model.context(torch.where(dropped, torch.randn_like(zc), zc))
    t = torch.rand(n)
    eps = torch.randn_like(x0)
    a, s = (u.reshape(n, 1, 1, 1) for u in alpha_sigma(t))
    z = a * x0 + s * eps
    v = model.unet(z, t, ctx)
    mse = F.mse_loss(v, a * eps - s * x0)
    terms = {"total": mse, "v_mse": mse}
    if decoder_loss > 0:  # Sec. 4.4: the one-step x0 estimate, decoded, against the clean sRGB (conditioned samples)
        keep = ~dropped.reshape(n)
        if bool(keep.any()):
            out = model.vae.decode(predict_x0(z[keep], v[keep], t[keep]), tuple(sk[keep] for sk in skips))
            dec = F.l1_loss(out, b["target"][keep])
            terms["total"] = mse + decoder_loss * dec
            terms["decoder"] = dec
    return terms


@torch.no_grad()
def measure_latent_scale(model: DarkDiff, data: Iterator[dict[str, torch.Tensor]], n: int = 8) -> float:
    """1 / std of the target latents (the VAE posterior mean) over `n` batches: SD's scale factor, measured."""
    model.vae.latent_scale.fill_(1.0)
    vals = torch.cat([model.vae.encode(next(data)["target"] * 2 - 1)[0].flatten() for _ in range(n)])
    return float(1.0 / vals.std().clamp_min(1e-6))


def train(
    config: str = "small",
    out: str | None = None,
    steps: int | None = None,
    batch: int | None = None,
    crop: int | None = None,
    seed: int | None = None,
    *,
    vae_steps: int | None = None,
    lr: float | None = None,
    vae_lr: float | None = None,
    threads: int | None = None,
    init: str | None = None,
    drop: float = DROP,
    decoder_loss: float = 0.0,
    kl_weight: float = KL_WEIGHT,
    eval_steps: tuple[int, ...] = (50, 4, 2, 1),
    eval_images: int | None = None,
    eval_crop: int | None = None,
    every: int | None = None,
    progress: Callable[[str], Any] | bool = True,
    **_: Any,
) -> dict[str, Any]:
    """Train DarkDiff `config`: stage 1 (VAE, `vae_steps`) then stage 2 (U-Net + context, `steps`).

    Writes `out` (safetensors, metadata: config and options) and `out`.json
    (the command, the time, held-out PSNR/SSIM of the teacher's guided DDIM at
    each of `eval_steps`, 50 first). `init`: start from those weights (stage 1
    is then skipped unless `vae_steps` is given). Returns the JSON's content.
    """
    if config not in RECIPES:
        raise LowlightError(f"darkdiff config {config!r} has no training recipe (the paper config is constructed and counted, never trained)",
                            f"train one of: {', '.join(RECIPES)}")
    r = RECIPES[config]
    say: Callable[[str], Any] = progress if callable(progress) else (print if progress else (lambda s: None))
    steps = r["steps"] if steps is None else steps
    vae_steps = (0 if init else r["vae_steps"]) if vae_steps is None else vae_steps
    batch, crop, seed = batch or r["batch"], crop or r["crop"], 0 if seed is None else seed
    lr, vae_lr = lr or r["lr"], vae_lr or r["vae_lr"]
    cfg = CONFIGS[config]
    if crop % (2 * cfg.multiple):
        raise LowlightError(f"--crop {crop} Bayer pixels gives packed {crop // 2}, not a multiple of {cfg.multiple}",
                            f"use a --crop that is a multiple of {2 * cfg.multiple}")
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    every = every or max(1, min(50, (steps or 1) // 10 or 1))
    out_path = Path(out) if out else WEIGHTS_DIR / f"darkdiff_{config}.safetensors"
    train_paths, held_paths = split_photos()
    model = build(config)
    if init:
        from lowlight.models.checkpoint import load_state_dict_into

        load_state_dict_into(model, init, what=f"darkdiff config {config!r}")
    say(f"darkdiff {config}: {sum(p.numel() for p in model.parameters()):,} parameters; {len(train_paths)} training photos, "
        f"{len(held_paths)} held out; stage 1 {vae_steps} steps, stage 2 {steps} steps of {batch} x {crop}^2 Bayer")
    data = batches(load_photos(train_paths, crop), batch, crop, seed)  # photos read now: the ETA counts training only
    t0 = time.time()
    model.train()
    log: dict[str, Any] = {}
    if vae_steps:
        model.vae.requires_grad_(True)
        model.vae.latent_scale.fill_(1.0)
        log["vae"] = _loop("stage 1 (VAE)", vae_steps, list(model.vae.parameters()), vae_lr,
                           lambda i: vae_losses(model, next(data), kl_weight), say, every)
        model.vae.latent_scale.fill_(measure_latent_scale(model, data))
        say(f"latent scale {float(model.vae.latent_scale):.4f}")
    model.vae.requires_grad_(False).eval()  # stage 2 trains U-Net + context on the frozen VAE
    params = list(model.unet.parameters()) + list(model.context.parameters())
    if steps:
        log["diffusion"] = _loop("stage 2 (U-Net + context)", steps, params, lr,
                                 lambda i: diffusion_losses(model, next(data), drop, decoder_loss), say, every)
    seconds = time.time() - t0
    model.eval()
    say("evaluating on held-out pairs ...")
    pairs = heldout_pairs(held_paths[: eval_images or r["eval_images"]], eval_crop or r["eval_crop"])
    metrics = evaluate(model, pairs, tuple(eval_steps))
    options = {"config": config, "steps": steps, "vae_steps": vae_steps, "batch": batch, "crop": crop, "seed": seed, "lr": lr,
               "vae_lr": vae_lr, "drop": drop, "decoder_loss": decoder_loss, "kl_weight": kl_weight, "init": init,
               "latent_scale": round(float(model.vae.latent_scale), 6), "guidance": model.guidance}
    record = {
        "command": "lowlight-compile " + " ".join(map(shlex.quote, sys.argv[1:])) if Path(sys.argv[0]).name == "lowlight-compile"
        else f"lowlight.models.train_darkdiff.train({', '.join(f'{k}={v!r}' for k, v in options.items() if k in ('config', 'steps', 'vae_steps', 'batch', 'crop', 'seed'))})",
        "date": time.strftime("%Y-%m-%d %H:%M:%S"), "train_seconds": round(seconds, 1), "threads": torch.get_num_threads(),
        "options": options, "parameters": sum(p.numel() for p in model.parameters()),
        "held_out": [p.name for p in held_paths], "eval": {"pairs": len(pairs), "crop": eval_crop or r["eval_crop"], "seed": 1234},
        "metrics": metrics, "log": log,
        "data": data_description(train_paths, batch, crop, seed),
    }
    save(model, out_path, {"lowlight.config": config, "lowlight.train": json.dumps(options)})
    out_path.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n")
    for k, m in metrics.items():
        say(f"held-out {k}: {m['psnr']:.2f} dB / SSIM {m['ssim']:.3f}")
    say(f"wrote {out_path} ({seconds / 60:.1f} min)")
    return record


# -- distillation (lowlight-compile distill) --------------------------------------------------------------


class DarkDiffSampler:
    """DarkDiff as a `lowlight.compile.distill.Sampler`: the schedule, condition and guided velocity of the
    model; students are deep copies with `student_steps` set (one pass, no unconditional context)."""

    def __init__(self, model: DarkDiff) -> None:
        self.model = model

    def alpha_sigma(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return alpha_sigma(t)

    def condition(self, raw: torch.Tensor, gain: torch.Tensor, **_: torch.Tensor) -> dict[str, Any]:
        return self.model.condition(raw, gain)

    def velocity(self, z: torch.Tensor, t: torch.Tensor, cond: dict[str, Any]) -> torch.Tensor:
        return self.model.velocity(z, t, cond)

    def clean_latent(self, target: torch.Tensor, **_: torch.Tensor) -> torch.Tensor:
        return self.model.vae.encode(target * 2 - 1)[0]

    def latent_shape(self, raw: torch.Tensor, **_: torch.Tensor) -> tuple[int, ...]:
        return self.model.latent_shape(tuple(raw.shape))

    def make_student(self, steps: int) -> "DarkDiffSampler":
        m = copy.deepcopy(self.model)
        m.student_steps = m.steps = int(steps)
        return DarkDiffSampler(m)

    def trained_modules(self) -> dict[str, torch.nn.Module]:
        return {"unet": self.model.unet, "context": self.model.context}

    def eval(self) -> "DarkDiffSampler":
        self.model.eval()
        return self


def distill_setup(checkpoint: str, config: str, *, batch: int | None = None, crop: int | None = None, seed: int = 0) -> dict[str, Any]:
    """The teacher (guided, `checkpoint`'s weights), an endless batch generator (photos read on first use,
    so a cached distillation reads none) and the recipe's defaults, for `lowlight-compile distill`."""
    from lowlight.models import load

    if config not in RECIPES:
        raise LowlightError(f"darkdiff config {config!r} cannot be distilled here (constructed and counted, never trained)",
                            f"use --config with one of: {', '.join(RECIPES)}")
    r = RECIPES[config]
    model = load("darkdiff", config=config, checkpoint=checkpoint)
    assert isinstance(model, DarkDiff)
    model.requires_grad_(False)
    batch, crop = batch or r["batch"], crop or r["crop"]
    if crop % (2 * model.cfg.multiple):
        raise LowlightError(f"--crop {crop} Bayer pixels gives packed {crop // 2}, not a multiple of {model.cfg.multiple}",
                            f"use a --crop that is a multiple of {2 * model.cfg.multiple}")
    train_paths, _ = split_photos()
    return {"teacher": DarkDiffSampler(model), "batches": lazy_batches(train_paths, batch, crop, seed),
            "data": data_description(train_paths, batch, crop, seed), "iters_per_round": r["distill_iters"],
            "lr": r["distill_lr"], "every": r["distill_every"]}
