"""Train MMAIF's reference weights (`lowlight-compile zoo train mmaif`) and set up its distillation.

Data (`calibration.fusion`): from the clean photos of ../shared/data/clean, both
tasks in every batch, each sample with one of the shipped prompts and its
degradation (MEF: a noisy under-exposure and an over-exposure, optionally
blurred; VIF: a dark noisy visible frame and a pseudo-infrared frame); the
clean photo is the ground truth. Every 7th photo is held out
(`train_loop.split_photos`); ../shared/data/eval is never read. Fresh crops
and noise at every step.

Stages (the paper trains its DiT on a pretrained Cosmos VAE; everything is
trained here, at the small size):

1. the VAE on clean and degraded crops alike (it encodes both): L1 + a small
   KL; then the latent scale (1 / std of the clean latents);
2. the flow teacher: flow matching Z_t = (1 - t) noise + t data, loss
   |v - (data - noise)|^2 at t ~ U(0, 1), plus the MoE load-balancing loss;
3. the regression model: the same DiT without timestep, latent MSE plus the
   decoded image's L1 against the clean photo (the paper's auxiliary image
   loss, here with ground truth; weight `AUX`).

`distill_setup` gives `lowlight-compile distill` the flow teacher as a
`lowlight.compile.distill.Sampler` (`MMAIFSampler`) with the reflow method:
reflow on the teacher's couplings, then one-step distillation.
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
from lowlight.calibration.fusion import fusion_batch, fusion_pair
from lowlight.core.errors import LowlightError
from lowlight.core.metrics import psnr, ssim
from lowlight.models.family import WEIGHTS_DIR
from lowlight.models.mmaif import CONFIGS, MMAIF, PROMPT_NAMES, PROMPTS, build, time_grid
from lowlight.models.train_loop import load_photos, save_weights as save
from lowlight.models.train_loop import split_photos, train_loop

#: per config: steps of each stage, batch, crop, learning rates, evaluation and distillation defaults
RECIPES: dict[str, dict[str, Any]] = {
    "tiny": dict(vae_steps=30, steps=60, reg_steps=30, batch=4, crop=32, vae_lr=2e-3, lr=2e-3, eval_crop=32, eval_images=2,
                 distill_iters=30, distill_lr=5e-4, distill_every=10),
    "small": dict(vae_steps=1500, steps=5000, reg_steps=2500, batch=8, crop=64, vae_lr=1e-3, lr=5e-4, eval_crop=64, eval_images=6,
                  distill_iters=1500, distill_lr=2e-4, distill_every=50),
}
KL_WEIGHT = 1e-4
AUX = 0.5  # weight of the regression model's decoded-image L1


# -- data --------------------------------------------------------------------------------------------


def batches(photos: list[np.ndarray], batch: int, crop: int, seed: int) -> Iterator[dict[str, torch.Tensor]]:
    """Endless {"x0", "x1", "target", "prompt"} batches over all shipped prompts (both tasks)."""
    rng = np.random.default_rng(seed)
    while True:
        b = fusion_batch(list(PROMPT_NAMES), photos, batch, crop, rng)
        yield {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in b.items()}


def lazy_batches(paths: list[Path], batch: int, crop: int, seed: int) -> Iterator[dict[str, torch.Tensor]]:
    """`batches` over photos read on the first draw (a cached distillation reads none)."""
    yield from batches(load_photos(paths, crop), batch, crop, seed)


def data_description(paths: list[Path], batch: int, crop: int, seed: int) -> str:
    """What the batches are (the distillation's cache key): recipe, photos, batch, crop, seed."""
    names = hashlib.sha256("\n".join(p.name for p in paths).encode()).hexdigest()[:12]
    return (f"mmaif calibration.fusion pairs ({', '.join(PROMPT_NAMES)}) from {len(paths)} photos of shared/data/clean "
            f"(every 7th held out; names {names}), batch {batch}, crop {crop}, seed {seed}")


def heldout_pairs(paths: list[Path], crop: int, seed: int = 1234) -> dict[str, list[tuple[np.ndarray, np.ndarray, np.ndarray]]]:
    """Per prompt: fixed (x0, x1, target) from the centre crop of each held-out photo."""
    rng = np.random.default_rng(seed)
    photos = [f for p in paths for f in load_frames(p)]
    out: dict[str, list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = {}
    for prompt in PROMPT_NAMES:
        for img in photos:
            H, W = img.shape[:2]
            s = min(crop, H, W)
            out.setdefault(prompt, []).append(fusion_pair(prompt, img[(H - s) // 2 : (H - s) // 2 + s, (W - s) // 2 : (W - s) // 2 + s], rng))
    return out


# -- evaluation ------------------------------------------------------------------------------------------


@torch.no_grad()
def evaluate(model: MMAIF, pairs: dict[str, list[tuple[np.ndarray, np.ndarray, np.ndarray]]], steps: tuple[int, ...] = (5, 2, 1),
             students: dict[int, MMAIF] | None = None, sde_g: float | None = None) -> dict[str, Any]:
    """Held-out PSNR/SSIM vs ground truth per task: the input's own (first frame), the VAE bound, the
    regression model, the teacher's sampler at each of `steps`, and each student; same z_0 (the seed) for all.
    `sde_g`: also the teacher's 5-step SDE form at that g (the paper's stochastic sampler; eps from seed 0)."""
    model.eval()
    scores: dict[str, dict[str, list[tuple[float, float]]]] = {}

    def add(task: str, key: str, out: torch.Tensor, target: np.ndarray) -> None:
        o = out[0].clamp(0, 1).numpy()
        scores.setdefault(task, {}).setdefault(key, []).append((psnr(o, target), ssim(o, target)))

    variant = model.variant
    for prompt, items in pairs.items():
        task = PROMPTS[prompt][0]
        model.set_task(task, prompt)
        for s in (students or {}).values():
            s.set_task(task, prompt)
        for x0n, x1n, target in items:
            x0, x1 = torch.from_numpy(x0n)[None], torch.from_numpy(x1n)[None].expand(-1, 3, -1, -1)
            cond = model.condition(x0, x1)
            prompt_emb = model.prompt_embedding(1)
            z0 = torch.from_numpy(model.draw_noise(model.latent_shape(1, *x0.shape[2:])))
            add(task, "input", x0, target)
            add(task, "vae", model.vae.decode(model.vae.encode(torch.from_numpy(target)[None])), target)
            add(task, "regression", model.vae.decode(model.regress(cond, prompt_emb)), target)
            for k in steps:
                add(task, f"teacher_{k}", model.vae.decode(model.sample(z0, cond, prompt_emb, k)), target)
            if sde_g:
                gen = torch.Generator().manual_seed(0)
                add(task, f"teacher_{model.cfg.steps}_sde_g{sde_g:g}",
                    model.vae.decode(model.sample(z0, cond, prompt_emb, model.cfg.steps, g=sde_g, gen=gen)), target)
            for k, s in (students or {}).items():
                s.eval()
                add(task, f"student_{k}", s.vae.decode(s.sample(z0, cond, prompt_emb, k)), target)
    model.variant = variant
    return {task: {k: {"psnr": round(float(np.mean([a for a, _ in v])), 3), "ssim": round(float(np.mean([b for _, b in v])), 4)}
                   for k, v in by.items()} for task, by in scores.items()}


# -- losses ----------------------------------------------------------------------------------------------


def _x1(b: dict[str, torch.Tensor]) -> torch.Tensor:
    return b["x1"]


def vae_losses(model: MMAIF, b: dict[str, torch.Tensor], kl_weight: float = KL_WEIGHT) -> dict[str, torch.Tensor]:
    """L1 reconstruction + KL over clean and degraded crops (the encoder sees both at inference): each
    sample is its clean crop, its first or its second input, at random (a third of the cost of all three)."""
    pick = torch.randint(0, 3, (b["target"].shape[0],)).reshape(-1, 1, 1, 1)
    x = torch.where(pick == 0, b["target"], torch.where(pick == 1, b["x0"], _x1(b)))
    mean, logvar = model.vae.posterior(x)
    z = mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)
    out = torch.sigmoid(model.vae.dec_out(model.vae.dec(model.vae.dec_in(z))))  # unscaled: the scale is set after this stage
    l1 = F.l1_loss(out, x)
    kl = 0.5 * (mean.square() + logvar.exp() - 1 - logvar).mean()
    return {"total": l1 + kl_weight * kl, "l1": l1, "kl": kl}


def _encode(model: MMAIF, b: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        return model.condition(b["x0"], _x1(b)), model.vae.encode(b["target"]), model.prompts.detach()[b["prompt"]]


def flow_losses(model: MMAIF, b: dict[str, torch.Tensor], balance: float) -> dict[str, torch.Tensor]:
    """Flow matching: Z_t = (1 - t) noise + t data at t ~ U(0, 1), v regressed on data - noise."""
    cond, x1, _ = _encode(model, b)
    prompt = model.prompts[b["prompt"]]  # the prompt table trains with the flow model
    n = x1.shape[0]
    t = torch.rand(n)
    noise = torch.randn_like(x1)
    tb = t.reshape(n, 1, 1, 1)
    v = model.flow(noise * (1 - tb) + x1 * tb, t, cond, prompt)
    mse = F.mse_loss(v, x1 - noise)
    bal = model.flow.balance_loss()
    return {"total": mse + balance * bal, "v_mse": mse, "balance": bal}


def regression_losses(model: MMAIF, b: dict[str, torch.Tensor], balance: float, aux: float = AUX) -> dict[str, torch.Tensor]:
    """The clean latent from one pass; plus the decoded image's L1 against the clean photo."""
    cond, x1, prompt = _encode(model, b)
    pred = model.regress(cond, prompt)
    mse = F.mse_loss(pred, x1)
    img = F.l1_loss(model.vae.decode(pred), b["target"])
    bal = model.regression.balance_loss()
    return {"total": mse + aux * img + balance * bal, "z_mse": mse, "image_l1": img, "balance": bal}


@torch.no_grad()
def measure_latent_scale(model: MMAIF, data: Iterator[dict[str, torch.Tensor]], n: int = 8) -> float:
    """1 / std of the clean latents (posterior mean) over `n` batches."""
    vals = torch.cat([model.vae.posterior(next(data)["target"])[0].flatten() for _ in range(n)])
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
    reg_steps: int | None = None,
    lr: float | None = None,
    threads: int | None = None,
    eval_images: int | None = None,
    every: int | None = None,
    init: str | None = None,
    progress: Callable[[str], Any] | bool = True,
    **_: Any,
) -> dict[str, Any]:
    """Train MMAIF `config`: VAE (`vae_steps`), flow teacher (`steps`), regression model (`reg_steps`).

    `init`: continue from these weights (the VAE, its latent scale and both DiTs; `vae_steps`
    defaults to 0 then, and each stage's steps are added to the ones its JSON records, when it
    has one). Writes `out` (safetensors with both DiTs, the VAE and the prompt table) and
    `out`.json (command, time, held-out PSNR/SSIM per task). Returns the JSON's content.
    """
    if config not in RECIPES:
        raise LowlightError(f"mmaif config {config!r} has no training recipe (the paper config is constructed and counted, never trained)",
                            f"train one of: {', '.join(RECIPES)}")
    r = RECIPES[config]
    say: Callable[[str], Any] = progress if callable(progress) else (print if progress else (lambda s: None))
    steps = r["steps"] if steps is None else steps
    vae_steps = (0 if init else r["vae_steps"]) if vae_steps is None else vae_steps
    reg_steps = r["reg_steps"] if reg_steps is None else reg_steps
    batch, crop, seed = batch or r["batch"], crop or r["crop"], 0 if seed is None else seed
    lr = lr or r["lr"]
    cfg = CONFIGS[config]
    if crop % cfg.multiple:
        raise LowlightError(f"--crop {crop} is not a multiple of {cfg.multiple}", f"use a --crop that is a multiple of {cfg.multiple}")
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    every = every or max(1, min(50, (steps or 1) // 10 or 1))
    out_path = Path(out) if out else WEIGHTS_DIR / f"mmaif_{config}.safetensors"
    train_paths, held_paths = split_photos()
    model = build(config)
    before: dict[str, Any] = {}
    if init:
        before = _continue_from(model, init, config)
        say(f"continuing from {init} ({', '.join(f'{k} {v}' for k, v in before.get('stages', {}).items()) or 'no record of its training'})")
    say(f"mmaif {config}: DiT {sum(p.numel() for p in model.flow.parameters()):,} parameters (x2: flow and regression), VAE "
        f"{sum(p.numel() for p in model.vae.parameters()):,}; {len(train_paths)} training photos, {len(held_paths)} held out; "
        f"VAE {vae_steps}, flow {steps}, regression {reg_steps} steps of {batch} x {crop}^2")
    data = batches(load_photos(train_paths, crop), batch, crop, seed)
    t0 = time.time()
    model.train()
    log: dict[str, Any] = {}
    if vae_steps:
        log["vae"] = train_loop("stage 1 (VAE)", vae_steps, list(model.vae.parameters()), r["vae_lr"],
                                lambda i: vae_losses(model, next(data)), say, every)
        model.vae.scale.fill_(measure_latent_scale(model, data))
        say(f"latent scale {float(model.vae.scale):.4f}")
    model.vae.requires_grad_(False).eval()
    model.flow.collect_balance()
    model.regression.collect_balance()
    if steps:
        log["flow"] = train_loop("stage 2 (flow DiT)", steps, list(model.flow.parameters()) + [model.prompts], lr,
                                 lambda i: flow_losses(model, next(data), cfg.balance), say, every)
    if reg_steps:
        model.prompts.requires_grad_(False)
        log["regression"] = train_loop("stage 3 (regression DiT)", reg_steps, list(model.regression.parameters()), lr,
                                       lambda i: regression_losses(model, next(data), cfg.balance), say, every)
    seconds = time.time() - t0
    if before:
        # the record describes the weights, so it carries the steps and time of what they were trained from
        for name, stage in (("vae", "vae_steps"), ("flow", "steps"), ("regression", "reg_steps")):
            log[name] = before.get("log", {}).get(name, []) + [{**e, "step": e["step"] + before["stages"].get(stage, 0)} for e in log.get(name, [])]
    model.flow.collect_balance(False)
    model.regression.collect_balance(False)
    model.eval()
    say("evaluating on held-out pairs ...")
    pairs = heldout_pairs(held_paths[: eval_images or r["eval_images"]], r["eval_crop"])
    metrics = evaluate(model, pairs)
    options = {"config": config, "steps": steps, "vae_steps": vae_steps, "reg_steps": reg_steps, "batch": batch, "crop": crop,
               "seed": seed, "lr": lr, "kl_weight": KL_WEIGHT, "aux": AUX, "balance": cfg.balance,
               "latent_scale": round(float(model.vae.scale), 6), "g": cfg.g, "prompts": list(PROMPT_NAMES)}
    sessions = [*before.get("sessions", []), {"init": init, "vae_steps": vae_steps, "steps": steps, "reg_steps": reg_steps, "lr": lr, "seed": seed,
                                              "train_seconds": round(seconds, 1), "threads": torch.get_num_threads()}]
    if before:
        for stage in ("vae_steps", "steps", "reg_steps"):
            options[stage] = before["stages"].get(stage, 0) + options[stage]
    record = {
        "command": "lowlight-compile " + " ".join(map(shlex.quote, sys.argv[1:])) if Path(sys.argv[0]).name == "lowlight-compile"
        else f"lowlight.models.train_mmaif.train({', '.join(f'{k}={v!r}' for k, v in options.items() if k in ('config', 'steps', 'vae_steps', 'reg_steps', 'batch', 'crop', 'seed'))})" if not init
        else " then ".join(f"train({', '.join(f'{k}={v!r}' for k, v in sess.items() if k not in ('train_seconds', 'threads') and v is not None)})" for sess in sessions),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"), "train_seconds": round(seconds + before.get("train_seconds", 0.0), 1),
        "threads": torch.get_num_threads(), "sessions": sessions,
        "options": options, "parameters": sum(p.numel() for p in model.parameters()),
        "prompts": {n: {"task": t, "text": d} for n, (t, d) in PROMPTS.items()},
        "held_out": [p.name for p in held_paths], "eval": {"pairs_per_prompt": len(next(iter(pairs.values()))), "crop": r["eval_crop"], "seed": 1234},
        "metrics": metrics, "log": log, "data": data_description(train_paths, batch, crop, seed),
    }
    save(model, out_path, {"lowlight.config": config, "lowlight.train": json.dumps(options)})
    out_path.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n")
    for task, by in metrics.items():
        say(f"held-out {task}: " + ", ".join(f"{k} {m['psnr']:.2f} dB" for k, m in by.items()))
    say(f"wrote {out_path} ({seconds / 60:.1f} min)")
    return record


def _continue_from(model: MMAIF, init: str, config: str) -> dict[str, Any]:
    """Load `init` into `model` (strictly: every tensor of the config) and return what its JSON says of its training."""
    from safetensors.torch import load_file

    path = Path(init)
    if not path.is_file():
        raise LowlightError(f"--init {init}: no such file", "give the MMAIF safetensors to continue from (e.g. models/weights/mmaif_small.safetensors)")
    state = load_file(str(path))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise LowlightError(f"--init {init} is not an MMAIF {config} checkpoint ({len(missing)} tensors missing, {len(unexpected)} unexpected, "
                            f"e.g. {(missing or unexpected)[0]})", f"continue from weights trained with --config {config}")
    meta = path.with_suffix(".json")
    if not meta.is_file():
        return {"stages": {}}
    rec = json.loads(meta.read_text())
    opts = rec.get("options", {})
    sessions = rec.get("sessions") or [{"init": None, **{k: opts.get(k) for k in ("vae_steps", "steps", "reg_steps", "lr", "seed")},
                                        "train_seconds": rec.get("train_seconds"), "threads": rec.get("threads")}]
    return {"stages": {k: int(opts.get(k) or 0) for k in ("vae_steps", "steps", "reg_steps")}, "log": rec.get("log", {}),
            "train_seconds": float(rec.get("train_seconds") or 0.0), "sessions": sessions}


def record_students(checkpoint: str, config: str = "small", steps: tuple[int, ...] = (2, 1), eval_images: int | None = None,
                    say: Callable[[str], Any] = print) -> dict[str, Any]:
    """Evaluate the teacher, the regression model and the students beside `checkpoint` on the held-out pairs,
    and write the metrics into `checkpoint`.json ("metrics", "students"). Run after `lowlight-compile distill`."""
    from lowlight.models import load

    teacher = load("mmaif", config=config, checkpoint=checkpoint)
    assert isinstance(teacher, MMAIF)
    students = {}
    for k in steps:
        s = load("mmaif", config=config, checkpoint=checkpoint, steps=k)
        if s.student_steps != k:
            raise LowlightError(f"no {k}-step student beside {checkpoint}",
                                f"lowlight-compile distill {checkpoint} --model mmaif --steps {k} --out "
                                f"{Path(checkpoint).with_name(Path(checkpoint).stem + f'_student{k}.safetensors')}")
        students[k] = s
    _, held = split_photos()
    r = RECIPES[config]
    pairs = heldout_pairs(held[: eval_images or r["eval_images"]], r["eval_crop"])
    metrics = evaluate(teacher, pairs, (5, 2, 1), students, sde_g=0.5)
    side = Path(checkpoint).with_suffix(".json")
    record = json.loads(side.read_text()) if side.is_file() else {}
    record["metrics"] = metrics
    record["students"] = {str(k): Path(checkpoint).stem + f"_student{k}.safetensors" for k in steps}
    side.write_text(json.dumps(record, indent=1) + "\n")
    for task, by in metrics.items():
        say(f"held-out {task}: " + ", ".join(f"{k} {m['psnr']:.2f} dB / {m['ssim']:.3f}" for k, m in by.items()))
    return metrics


# -- distillation (lowlight-compile distill) --------------------------------------------------------------


#: Weight of the ground-truth L1 in the one-step student's loss. A fusion pair has one right answer and the
#: small teacher's samples scatter around it (held out, 5 steps: 0.17 / 0.60 dB under the regression model
#: on mef / vif). Continuing the shipped 1-step student for 800 iterations with this term (lr 2e-4, 1 thread,
#: 18 min) moved it from 20.59 / 22.40 to 20.74 / 22.73 dB; weight 1 for 300 iterations gave 20.70 / 22.46.
GT_WEIGHT = 5.0


class MMAIFSampler:
    """MMAIF's flow teacher as a `lowlight.compile.distill.Sampler`.

    The distill stage counts time the other way (s = 1 is noise, s = 0 data), so
    s = 1 - t, alpha = 1 - s, sigma = s, and its velocity dz/ds is minus the
    model's. Students are deep copies with `student_steps` set (Euler).
    """

    def __init__(self, model: MMAIF) -> None:
        self.model = model

    def alpha_sigma(self, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return 1 - s, s

    def x0_eps(self, z: torch.Tensor, v: torch.Tensor, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        sb = s.reshape(-1, *([1] * (z.dim() - 1))).to(z.dtype)
        return z - sb * v, z + (1 - sb) * v

    def condition(self, x0: torch.Tensor, x1: torch.Tensor, prompt: torch.Tensor, **_: torch.Tensor) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            return {"cond": self.model.condition(x0, x1), "prompt": self.model.prompts.detach()[prompt]}

    def velocity(self, z: torch.Tensor, s: torch.Tensor, cond: dict[str, torch.Tensor]) -> torch.Tensor:
        return -self.model.velocity(z, 1 - s, cond["cond"], cond["prompt"])

    def sample(self, z: torch.Tensor, cond: dict[str, torch.Tensor]) -> torch.Tensor:
        """The teacher's own sampler (midpoint with velocity reuse, `cfg.steps`) from noise z."""
        return self.model.sample(z, cond["cond"], cond["prompt"])

    #: the distill stage records this in the students' options and cache key
    loss_note = f"one-step image loss: L1 to the decoded teacher sample + {GT_WEIGHT:g} x L1 to the ground truth"

    def image_loss(self, x_student: torch.Tensor, x_target: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """L1 between the decoded one-step sample and the decoded teacher sample (InstaFlow's image-space
        term), plus GT_WEIGHT x L1 to the ground truth (see GT_WEIGHT)."""
        with torch.no_grad():
            want = self.model.vae.decode(x_target)
        img = self.model.vae.decode(x_student)
        return F.l1_loss(img, want) + GT_WEIGHT * F.l1_loss(img, batch["target"])

    def clean_latent(self, target: torch.Tensor, **_: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.model.vae.encode(target)

    def latent_shape(self, x0: torch.Tensor, **_: torch.Tensor) -> tuple[int, ...]:
        return self.model.latent_shape(x0.shape[0], x0.shape[2], x0.shape[3])

    def make_student(self, steps: int) -> "MMAIFSampler":
        m = copy.deepcopy(self.model)
        m.student_steps = m.steps = int(steps)
        return MMAIFSampler(m)

    def trained_modules(self) -> dict[str, torch.nn.Module]:
        return {"flow": self.model.flow}

    def eval(self) -> "MMAIFSampler":
        self.model.eval()
        return self


def distill_setup(checkpoint: str, config: str, *, batch: int | None = None, crop: int | None = None, seed: int = 0) -> dict[str, Any]:
    """The flow teacher (`checkpoint`), an endless batch generator and the recipe's defaults, for
    `lowlight-compile distill` with the reflow method (teacher: 5 midpoint steps)."""
    from lowlight.models import load

    if config not in RECIPES:
        raise LowlightError(f"mmaif config {config!r} cannot be distilled here (constructed and counted, never trained)",
                            f"use --config with one of: {', '.join(RECIPES)}")
    r = RECIPES[config]
    model = load("mmaif", config=config, checkpoint=checkpoint, variant="flow")
    assert isinstance(model, MMAIF)
    model.requires_grad_(False)
    batch, crop = batch or r["batch"], crop or r["crop"]
    if crop % model.cfg.multiple:
        raise LowlightError(f"--crop {crop} is not a multiple of {model.cfg.multiple}", f"use a --crop that is a multiple of {model.cfg.multiple}")
    train_paths, _ = split_photos()
    return {"teacher": MMAIFSampler(model), "batches": lazy_batches(train_paths, batch, crop, seed),
            "data": data_description(train_paths, batch, crop, seed), "iters_per_round": r["distill_iters"],
            "lr": r["distill_lr"], "every": r["distill_every"], "method": "reflow", "teacher_steps": model.cfg.steps}


__all__ = ["train", "evaluate", "heldout_pairs", "record_students", "distill_setup", "MMAIFSampler", "RECIPES", "time_grid"]
