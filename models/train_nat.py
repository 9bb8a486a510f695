"""Train NAT-on-GLARE's reference weights (`lowlight-compile zoo train nat`) and set up its distillation.

Data: crops of ../shared/data/clean (every 7th photo held out,
`train_loop.split_photos`; ../shared/data/eval is never read), darkened in
linear light (`calibration.degrade.linear_low_light`: inverse tone curve,
exposure / U(3, 20), ELD shot and read noise, a white-balance error, the tone
curve again, no brightening: LOL-like pairs, the NAT notes' recipe). The clean
crop is the ground truth; its codes (the normal-light VQ encoder's nearest
entries) are the NAT's targets. Fresh crops and noise at every step.

Stages, as GLARE trains them (everything here at the small size):

1. the VQ autoencoder on clean crops: L1 + codebook + 0.25 commitment loss,
   straight-through; codes unused for `RESTART_EVERY` steps are restarted on
   random encoder outputs (512 codes, 3-d: dead codes are the usual failure);
2. the low-light encoder (GLARE's I-LNF at heat 0, as a deterministic map):
   regresses the quantized normal-light latent from the dark crop; then the
   round-0 temperature T (median gap between the two nearest codes) and tau
   (the 70th percentile of the round-0 entropy: round 1 masks about 30 %);
3. the NAT teacher: cross-entropy against the ground-truth codes on every
   position, from the retrieval's tokens under the entropy mask, a random
   mask of U(0.1, 1) of the tokens (MaskGIT's training), or after one round
   of its own (what rounds 2..4 see);
4. the decoder with AFT: tokens from the 4-round teacher (no gradients), the
   low-light encoder's features fused in, L1 against the clean crop.

`distill_setup` gives `lowlight-compile distill` the teacher as a
`lowlight.compile.distill.TokenSampler` (`NATSampler`) with method "tokens".
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

from lowlight.calibration.degrade import LINEAR_RATIO, linear_low_light
from lowlight.calibration.frames import load_frames
from lowlight.core.errors import LowlightError
from lowlight.core.metrics import psnr, ssim
from lowlight.models.family import WEIGHTS_DIR
from lowlight.models.nat import CONFIGS, NATGlare, build
from lowlight.models.train_loop import load_photos, save_weights, split_photos, train_loop

#: per config: steps of each stage, batch, crop, learning rates, evaluation and distillation defaults
RECIPES: dict[str, dict[str, Any]] = {
    "tiny": dict(vq_steps=40, enc_steps=20, steps=30, dec_steps=20, batch=4, crop=32, vq_lr=2e-3, lr=2e-3, eval_crop=32, eval_images=2,
                 distill_iters=30, distill_lr=5e-4, distill_every=10),
    # the slides: Adam, learning rate 4e-4, batch 8 for the NAT
    "small": dict(vq_steps=2000, enc_steps=1500, steps=3000, dec_steps=1500, batch=8, crop=64, vq_lr=1e-3, lr=4e-4, eval_crop=64,
                  eval_images=6, distill_iters=800, distill_lr=2e-4, distill_every=50),
}
COMMIT = 0.25          # VQ-VAE commitment weight (van den Oord et al. 2017)
RESTART_EVERY = 100    # steps between dead-code restarts
ROUND1_MASKED = 0.30   # tau: the share of tokens round 1 masks on the training data
IMAGE_WEIGHT = 1.0     # the students' image L1 beside the token KL


# -- data --------------------------------------------------------------------------------------------


def batches(photos: list[np.ndarray], batch: int, crop: int, seed: int) -> Iterator[dict[str, torch.Tensor]]:
    """Endless {"rgb": dark crops, "target": clean crops} [B,3,crop,crop] batches, random crops and flips."""
    rng = np.random.default_rng(seed)
    while True:
        dark, clean = [], []
        for _ in range(batch):
            img = photos[int(rng.integers(len(photos)))]
            H, W = img.shape[:2]
            y, x = int(rng.integers(H - crop + 1)), int(rng.integers(W - crop + 1))
            c = img[y : y + crop, x : x + crop]
            if rng.random() < 0.5:
                c = c[:, ::-1]
            c = np.ascontiguousarray(c)
            clean.append(c.transpose(2, 0, 1))
            dark.append(linear_low_light(c, rng).transpose(2, 0, 1))
        yield {"rgb": torch.from_numpy(np.stack(dark)), "target": torch.from_numpy(np.stack(clean))}


def lazy_batches(paths: list[Path], batch: int, crop: int, seed: int) -> Iterator[dict[str, torch.Tensor]]:
    """`batches` over photos read on the first draw (a cached distillation reads none)."""
    yield from batches(load_photos(paths, crop), batch, crop, seed)


def data_description(paths: list[Path], batch: int, crop: int, seed: int) -> str:
    """What the batches are (the distillation's cache key): recipe, photos, batch, crop, seed."""
    names = hashlib.sha256("\n".join(p.name for p in paths).encode()).hexdigest()[:12]
    return (f"nat calibration.degrade.linear_low_light pairs (exposure / U{LINEAR_RATIO}) from {len(paths)} photos of shared/data/clean "
            f"(every 7th held out; names {names}), batch {batch}, crop {crop}, seed {seed}")


def heldout_pairs(paths: list[Path], crop: int, seed: int = 1234) -> list[tuple[np.ndarray, np.ndarray]]:
    """Fixed (dark, clean) [3, crop, crop] pairs from the centre crop of each held-out photo."""
    rng = np.random.default_rng(seed)
    out = []
    for img in (f for p in paths for f in load_frames(p)):
        H, W = img.shape[:2]
        s = min(crop, H, W)
        c = np.ascontiguousarray(img[(H - s) // 2 : (H - s) // 2 + s, (W - s) // 2 : (W - s) // 2 + s])
        out.append((linear_low_light(c, rng).transpose(2, 0, 1).copy(), c.transpose(2, 0, 1).copy()))
    return out


# -- pieces ------------------------------------------------------------------------------------------------


def gt_codes(model: NATGlare, target: torch.Tensor) -> torch.Tensor:
    """The clean crop's codes [B, N]: nearest entries to the normal-light encoder's latent."""
    with torch.no_grad():
        z, _ = model.encoder(target)
        return model.codebook(z).argmin(-1)


def soft_decode(model: NATGlare, logits: torch.Tensor, feats: list[torch.Tensor], h: int, w: int) -> torch.Tensor:
    """Decode the argmax tokens with a straight-through gradient to the logits (softmax-weighted codes)."""
    e = model.codebook.embed
    p = torch.softmax(logits.float(), dim=-1)
    hard = F.embedding(logits.argmax(-1), e)
    soft = p @ e
    zq = (hard + soft - soft.detach()).transpose(1, 2).reshape(logits.shape[0], e.shape[1], h, w)
    return model.decoder(zq, feats)


# -- evaluation ------------------------------------------------------------------------------------------


@torch.no_grad()
def evaluate(model: NATGlare, pairs: list[tuple[np.ndarray, np.ndarray]], rounds: tuple[int, ...] = (4, 2, 1, 0),
             students: dict[int, NATGlare] | None = None) -> dict[str, Any]:
    """Held-out PSNR/SSIM vs ground truth: the input, the VQ bound (ground-truth codes through the AFT decoder),
    the teacher at each of `rounds` (0: plain retrieval; fewer than its own: truncated) and each student; with
    token accuracy against the ground-truth codes and the share of tokens each round masked."""
    model.eval()
    scores: dict[str, list[tuple[float, float, float]]] = {}
    masked: dict[str, list[list[float]]] = {}

    def add(key: str, out: torch.Tensor, target: np.ndarray, acc: float = float("nan")) -> None:
        o = out[0].clamp(0, 1).numpy()
        scores.setdefault(key, []).append((psnr(o, target), ssim(o, target), acc))

    for dark, clean in pairs:
        x = torch.from_numpy(dark)[None]
        z_ll, feats = model.ll_encoder(x)
        h, w = z_ll.shape[-2:]
        gt = gt_codes(model, torch.from_numpy(clean)[None])
        add("input", x, clean)
        add("vq_bound", model.decode(gt, feats, h, w), clean, 1.0)
        runs = [(f"teacher_{k}" if k else "retrieval", model, k) for k in rounds]
        runs += [(f"student_{k}", s, k) for k, s in (students or {}).items()]
        for key, m, k in runs:
            r = m.refine(z_ll, k)
            add(key, m.decode(r["tokens"], feats, h, w), clean, float((r["tokens"] == gt).float().mean()))
            masked.setdefault(key, []).append([float(mk.float().mean()) for mk in r["masks"]])
    out: dict[str, Any] = {}
    for key, v in scores.items():
        a = np.asarray(v, dtype=np.float64)
        out[key] = {"psnr": round(float(a[:, 0].mean()), 3), "ssim": round(float(a[:, 1].mean()), 4)}
        if not np.isnan(a[:, 2]).all():
            out[key]["token_accuracy"] = round(float(a[:, 2].mean()), 4)
        if key in masked:
            out[key]["masked_per_round"] = [round(float(x), 4) for x in np.mean(masked[key], axis=0)]
    return out


# -- losses ----------------------------------------------------------------------------------------------


class _Usage:
    """Code usage over a window of steps, for dead-code restarts."""

    def __init__(self, codes: int) -> None:
        self.counts = torch.zeros(codes)

    def add(self, idx: torch.Tensor) -> None:
        self.counts += torch.bincount(idx.flatten(), minlength=self.counts.numel()).float()

    def restart(self, model: NATGlare, z: torch.Tensor) -> int:
        """Move every unused code onto a random latent token of `z`; returns how many moved."""
        dead = (self.counts == 0).nonzero().flatten()
        if dead.numel():
            tokens = z.detach().flatten(2).transpose(1, 2).reshape(-1, z.shape[1])
            pick = torch.randint(0, tokens.shape[0], (dead.numel(),))
            with torch.no_grad():
                model.codebook.embed[dead] = tokens[pick] + 1e-3 * torch.randn_like(tokens[pick])
        self.counts.zero_()
        return int(dead.numel())


def vq_losses(model: NATGlare, b: dict[str, torch.Tensor], usage: _Usage, step: int) -> dict[str, torch.Tensor]:
    """Stage 1: reconstruct clean crops through the codebook (straight-through), codebook + commitment terms."""
    x = b["target"]
    z, _ = model.encoder(x)
    idx = model.codebook(z).argmin(-1)
    usage.add(idx)
    h, w = z.shape[-2:]
    zq = model.lookup(idx, model.codebook.embed, h, w)
    out = model.decoder(z + (zq - z).detach())
    rec = F.l1_loss(out, x)
    cb = F.mse_loss(zq, z.detach())
    commit = F.mse_loss(z, zq.detach())
    if step % RESTART_EVERY == 0:
        usage.restart(model, z)
    return {"total": rec + cb + COMMIT * commit, "l1": rec, "codebook": cb, "commit": commit,
            "used": torch.tensor(float((usage.counts > 0).float().mean()))}


def encoder_losses(model: NATGlare, b: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Stage 2: the low-light encoder regresses the quantized normal-light latent."""
    with torch.no_grad():
        z, _ = model.encoder(b["target"])
        h, w = z.shape[-2:]
        zq = model.lookup(model.codebook(z).argmin(-1), model.codebook.embed, h, w)
    z_ll, _ = model.ll_encoder(b["rgb"])
    mse = F.mse_loss(z_ll, zq)
    with torch.no_grad():
        acc = (model.codebook(z_ll).argmin(-1) == model.codebook(zq).argmin(-1)).float().mean()
    return {"total": mse, "mse": mse, "retrieval_acc": acc}


@torch.no_grad()
def calibrate_threshold(model: NATGlare, data: Iterator[dict[str, torch.Tensor]], n: int = 8) -> tuple[float, float]:
    """(T, tau): T the median gap between the two nearest codes; tau the (1 - ROUND1_MASKED) quantile of the round-0 entropy."""
    gaps, ents = [], []
    for _ in range(n):
        z_ll, _ = model.ll_encoder(next(data)["rgb"])
        d = model.codebook(z_ll)
        two = d.topk(2, dim=-1, largest=False).values
        gaps.append((two[..., 1] - two[..., 0]).flatten())
        ents.append(d)
    t = float(torch.cat(gaps).median().clamp_min(1e-6))
    h = torch.cat([model.entropy(-d / t).flatten() for d in ents])
    return t, float(torch.quantile(h, 1.0 - ROUND1_MASKED))


def nat_losses(model: NATGlare, b: dict[str, torch.Tensor], gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Stage 3: cross-entropy against the ground-truth codes from what some round of inference would show the NAT."""
    gt = gt_codes(model, b["target"])
    with torch.no_grad():
        z_ll, _ = model.ll_encoder(b["rgb"])
        idx, logits0 = model.retrieve(z_ll)
        ctx = model.nat.context(z_ll)
        mask = model.entropy(logits0) > model.tau
        n, t = idx.shape
        kind = torch.randint(0, 3, (n, 1), generator=gen)
        ratio = torch.rand(n, 1, generator=gen) * 0.9 + 0.1
        rand_mask = torch.rand(n, t, generator=gen) < ratio
        # kind 2: one round of the NAT's own first (the tokens and entropy mask rounds 2..K see)
        logits1 = model.nat(idx, mask, ctx)
        idx1 = torch.where(mask, logits1.argmax(-1), idx)
        mask1 = model.entropy(logits1) > model.tau
        inp = torch.where(kind == 2, idx1, idx)
        m = torch.where(kind == 0, mask, torch.where(kind == 1, rand_mask, mask1))
    logits = model.nat(inp, m, ctx)
    ce = F.cross_entropy(logits.flatten(0, 1), gt.flatten())
    acc = (logits.argmax(-1) == gt).float().mean()
    return {"total": ce, "ce": ce, "acc": acc.detach(), "masked": m.float().mean()}


def decoder_losses(model: NATGlare, b: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Stage 4: the AFT decoder on the teacher's tokens and the low-light features: L1 against the clean crop."""
    with torch.no_grad():
        z_ll, feats = model.ll_encoder(b["rgb"])
        tokens = model.refine(z_ll, model.cfg.rounds)["tokens"]
    h, w = z_ll.shape[-2:]
    out = model.decode(tokens, feats, h, w)
    l1 = F.l1_loss(out, b["target"])
    return {"total": l1, "l1": l1}


# -- training ----------------------------------------------------------------------------------------------


def train(
    config: str = "small",
    out: str | None = None,
    steps: int | None = None,
    batch: int | None = None,
    crop: int | None = None,
    seed: int | None = None,
    *,
    vq_steps: int | None = None,
    enc_steps: int | None = None,
    dec_steps: int | None = None,
    lr: float | None = None,
    threads: int | None = None,
    eval_images: int | None = None,
    every: int | None = None,
    progress: Callable[[str], Any] | bool = True,
    **_: Any,
) -> dict[str, Any]:
    """Train NAT-on-GLARE `config`: VQ (`vq_steps`), low-light encoder (`enc_steps`), NAT teacher (`steps`), AFT decoder (`dec_steps`).

    Writes `out` (safetensors) and `out`.json (command, time, held-out PSNR/SSIM, token accuracy,
    masked shares per round). Returns the JSON's content.
    """
    if config not in RECIPES:
        raise LowlightError(f"nat config {config!r} has no training recipe (the paper config is constructed and counted, never trained)",
                            f"train one of: {', '.join(RECIPES)}")
    r = RECIPES[config]
    say: Callable[[str], Any] = progress if callable(progress) else (print if progress else (lambda s: None))
    steps = r["steps"] if steps is None else steps
    vq_steps = r["vq_steps"] if vq_steps is None else vq_steps
    enc_steps = r["enc_steps"] if enc_steps is None else enc_steps
    dec_steps = r["dec_steps"] if dec_steps is None else dec_steps
    batch, crop, seed = batch or r["batch"], crop or r["crop"], 0 if seed is None else seed
    lr = lr or r["lr"]
    cfg = CONFIGS[config]
    if crop % cfg.multiple:
        raise LowlightError(f"--crop {crop} is not a multiple of {cfg.multiple}", f"use a --crop that is a multiple of {cfg.multiple}")
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    every = every or max(1, min(50, (steps or 1) // 10 or 1))
    out_path = Path(out) if out else WEIGHTS_DIR / f"nat_{config}.safetensors"
    train_paths, held_paths = split_photos()
    model = build(config)
    say(f"nat {config}: {sum(p.numel() for p in model.parameters()):,} parameters (NAT {sum(p.numel() for p in model.nat.parameters()):,}); "
        f"{len(train_paths)} training photos, {len(held_paths)} held out; VQ {vq_steps}, encoder {enc_steps}, NAT {steps}, "
        f"decoder {dec_steps} steps of {batch} x {crop}^2")
    data = batches(load_photos(train_paths, crop), batch, crop, seed)
    t0 = time.time()
    model.train()
    log: dict[str, Any] = {}
    usage = _Usage(cfg.codes)
    vq_params = [*model.encoder.parameters(), *model.codebook.parameters(), *model.decoder.parameters()]
    log["vq"] = train_loop("stage 1 (VQ codebook)", vq_steps, vq_params, r["vq_lr"], lambda i: vq_losses(model, next(data), usage, i), say, every)
    model.encoder.requires_grad_(False)
    model.codebook.requires_grad_(False)
    log["encoder"] = train_loop("stage 2 (low-light encoder)", enc_steps, list(model.ll_encoder.parameters()), r["vq_lr"],
                                lambda i: encoder_losses(model, next(data)), say, every)
    model.ll_encoder.requires_grad_(False)
    t, tau = calibrate_threshold(model, data)
    model.temperature.fill_(t)
    model.tau.fill_(tau)
    say(f"round 0: temperature {t:.4g}, tau {tau:.4f} nats (round 1 masks {100 * ROUND1_MASKED:.0f} % of the training tokens)")
    log["nat"] = train_loop("stage 3 (NAT teacher)", steps, list(model.nat.parameters()), lr,
                            lambda i: nat_losses(model, next(data), gen), say, every)
    model.nat.requires_grad_(False)
    model.eval()  # the NAT and encoders run as at inference while the decoder trains
    log["decoder"] = train_loop("stage 4 (AFT decoder)", dec_steps, list(model.decoder.parameters()), r["vq_lr"] / 2,
                                lambda i: decoder_losses(model, next(data)), say, every)
    seconds = time.time() - t0
    model.requires_grad_(False).eval()
    say("evaluating on held-out pairs ...")
    pairs = heldout_pairs(held_paths[: eval_images or r["eval_images"]], r["eval_crop"])
    metrics = evaluate(model, pairs, (cfg.rounds, 2, 1, 0))
    options = {"config": config, "steps": steps, "vq_steps": vq_steps, "enc_steps": enc_steps, "dec_steps": dec_steps, "batch": batch,
               "crop": crop, "seed": seed, "lr": lr, "commit": COMMIT, "round1_masked": ROUND1_MASKED,
               "temperature": round(t, 6), "tau": round(tau, 6), "rounds": cfg.rounds}
    record = {
        "command": "lowlight-compile " + " ".join(map(shlex.quote, sys.argv[1:])) if Path(sys.argv[0]).name == "lowlight-compile"
        else f"lowlight.models.train_nat.train({', '.join(f'{k}={v!r}' for k, v in options.items() if k in ('config', 'steps', 'vq_steps', 'enc_steps', 'dec_steps', 'batch', 'crop', 'seed'))})",
        "date": time.strftime("%Y-%m-%d %H:%M:%S"), "train_seconds": round(seconds, 1), "threads": torch.get_num_threads(),
        "options": options, "parameters": sum(p.numel() for p in model.parameters()),
        "held_out": [p.name for p in held_paths], "eval": {"pairs": len(pairs), "crop": r["eval_crop"], "seed": 1234},
        "metrics": metrics, "log": log, "data": data_description(train_paths, batch, crop, seed),
    }
    save_weights(model, out_path, {"lowlight.config": config, "lowlight.train": json.dumps(options)})
    out_path.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n")
    say("held-out: " + ", ".join(f"{k} {m['psnr']:.2f} dB" for k, m in metrics.items()))
    say(f"wrote {out_path} ({seconds / 60:.1f} min)")
    return record


def record_students(checkpoint: str, config: str = "small", steps: tuple[int, ...] = (2, 1), eval_images: int | None = None,
                    say: Callable[[str], Any] = print) -> dict[str, Any]:
    """Evaluate the teacher (4, 2, 1, 0 rounds) and the students beside `checkpoint` on the held-out pairs,
    and write the metrics into `checkpoint`.json ("metrics", "students"). Run after `lowlight-compile distill`."""
    from lowlight.models import load

    teacher = load("nat", config=config, checkpoint=checkpoint, steps=CONFIGS[config].rounds)
    assert isinstance(teacher, NATGlare)
    students = {}
    for k in steps:
        s = load("nat", config=config, checkpoint=checkpoint, steps=k)
        if s.student_steps != k:
            raise LowlightError(f"no {k}-round student beside {checkpoint}",
                                f"lowlight-compile distill {checkpoint} --model nat --steps {k} --out "
                                f"{Path(checkpoint).with_name(Path(checkpoint).stem + f'_student{k}.safetensors')}")
        students[k] = s
    _, held = split_photos()
    r = RECIPES[config]
    pairs = heldout_pairs(held[: eval_images or r["eval_images"]], r["eval_crop"])
    metrics = evaluate(teacher, pairs, (teacher.cfg.rounds, 2, 1, 0), students)
    side = Path(checkpoint).with_suffix(".json")
    record = json.loads(side.read_text()) if side.is_file() else {}
    record["metrics"] = metrics
    record["students"] = {str(k): Path(checkpoint).stem + f"_student{k}.safetensors" for k in steps}
    side.write_text(json.dumps(record, indent=1) + "\n")
    say("held-out: " + ", ".join(f"{k} {m['psnr']:.2f} dB (tokens {100 * m.get('token_accuracy', float('nan')):.1f} %)"
                                 for k, m in metrics.items()))
    return metrics


# -- distillation (lowlight-compile distill) --------------------------------------------------------------


class NATSampler:
    """The NAT teacher (or a K-round student) as a `lowlight.compile.distill.TokenSampler`.

    Students are deep copies with `rounds = student_steps = K`; only the NAT trains (the
    encoders, the codebook and the decoder stay the teacher's)."""

    def __init__(self, model: NATGlare) -> None:
        self.model = model

    def condition(self, rgb: torch.Tensor, **_: torch.Tensor) -> dict[str, Any]:
        with torch.no_grad():
            z, feats = self.model.ll_encoder(rgb)
        return {"z": z, "feats": feats}

    def refine(self, cond: dict[str, Any]) -> dict[str, torch.Tensor]:
        return self.model.refine(cond["z"], self.model.rounds)

    def clean_tokens(self, target: torch.Tensor, **_: torch.Tensor) -> torch.Tensor:
        return gt_codes(self.model, target)

    def image_loss(self, out: dict[str, torch.Tensor], cond: dict[str, Any], batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """L1 of the decoded tokens (straight-through to the logits) against the clean crop."""
        h, w = cond["z"].shape[-2:]
        return IMAGE_WEIGHT * F.l1_loss(soft_decode(self.model, out["logits"], cond["feats"], h, w), batch["target"])

    def make_student(self, steps: int) -> "NATSampler":
        m = copy.deepcopy(self.model).requires_grad_(False)
        m.student_steps = m.rounds = int(steps)
        return NATSampler(m)

    def trained_modules(self) -> dict[str, torch.nn.Module]:
        return {"nat": self.model.nat}

    def eval(self) -> "NATSampler":
        self.model.eval()
        return self


def distill_setup(checkpoint: str, config: str, *, batch: int | None = None, crop: int | None = None, seed: int = 0) -> dict[str, Any]:
    """What `lowlight-compile distill --model nat` needs: the 4-round teacher, endless batches, the recipe's defaults."""
    from lowlight.models import load

    if config not in RECIPES:
        raise LowlightError(f"nat config {config!r} has no distillation recipe", f"distill one of: {', '.join(RECIPES)}")
    r = RECIPES[config]
    teacher = load("nat", config=config, checkpoint=checkpoint, steps=CONFIGS[config].rounds)
    assert isinstance(teacher, NATGlare)
    teacher.requires_grad_(False)
    b, c = batch or r["batch"], crop or r["crop"]
    if c % CONFIGS[config].multiple:
        raise LowlightError(f"--crop {c} is not a multiple of {CONFIGS[config].multiple}", f"use a --crop that is a multiple of {CONFIGS[config].multiple}")
    train_paths, _ = split_photos()
    return {"teacher": NATSampler(teacher).eval(), "batches": lazy_batches(train_paths, b, c, seed),
            "data": data_description(train_paths, b, c, seed), "iters_per_round": r["distill_iters"], "lr": r["distill_lr"],
            "every": r["distill_every"], "method": "tokens", "teacher_steps": CONFIGS[config].rounds}
