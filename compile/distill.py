"""The distill stage: a few-step student from a many-step diffusion or flow teacher.

Generic over samplers: this module knows only the `Sampler` protocol below
(a noise schedule, a condition computed once per image, a velocity, a way to
copy the teacher into a student), never a model family. DarkDiff implements
it today; flow-matching families (MMAIF: alpha = 1 - t, sigma = t) and NAT
plug in the same way. A family picks the method (`method=`); both share the
cache, the progress lines, the history and the student files.

Method "progressive" (the recipe the DarkDiff notes recommend, section 4):

1. Guided distillation (Meng et al., "On Distillation of Guided Diffusion
   Models", CVPR 2023, stage one): the student, initialised from the teacher,
   regresses the teacher's classifier-free-guided prediction
   v_u + w (v_c - v_u) at random grid times. The student is one network pass
   per step: the unconditional pass (and its noise condition) disappears.
2. Progressive distillation (Salimans & Ho, "Progressive Distillation for Fast
   Sampling of Diffusion Models", ICLR 2022, Algorithm 2): rounds N -> N/2 ->
   ... -> K on the nested grids t_k = 1 - k/n. In a round, one student DDIM
   step from t lands where two teacher DDIM steps t -> t - 1/(2n) -> t - 1/n
   land: the x-target of the paper,

       x~ = (z'' - (sigma''/sigma) z_t) / (alpha'' - (sigma''/sigma) alpha),

   regressed in x-space with the paper's truncated-SNR weighting
   max(alpha^2/sigma^2, 1) ("max(||x - x^||^2, ||eps - eps^||^2)"). The student
   of one round is the teacher of the next. The paper reports CIFAR-10 FID
   3.00 / 4.51 / 9.12 at 4 / 2 / 1 steps.

Method "reflow" (flow-matching teachers: x0_eps x = z - t v, eps = z + (1 - t) v,
so v = eps - x and a DDIM step is an Euler step; any step count, not only
powers of two):

1. Reflow (Liu, Gong & Liu, "Flow Straight and Fast: Learning to Generate and
   Transfer Data with Rectified Flow", 2022): the teacher's sampler maps noise
   z to a sample x^; a flow fitted to the straight lines z_t = (1 - t) x^ + t z
   of these couplings (velocity target z - x^, t ~ U(0, 1)) has straighter
   paths than the teacher, so a few Euler steps follow it closely. The
   reflowed model is the student for every K >= 2.
2. One-step distillation (same paper, section 2.3; InstaFlow, Liu et al.,
   "InstaFlow: One Step is Enough for High-Quality Diffusion-Based
   Text-to-Image Generation", 2023): a copy of the reflowed model regresses
   x^ from z in a single Euler step t = 1 -> 0, plus the sampler's optional
   image-space loss (InstaFlow: LPIPS). The target is the teacher's own x^
   for the same z (InstaFlow resamples pairs from its 2-RF): the student is
   measured against the teacher, and reflow serves as its initialisation.

   Reported one-step numbers: rectified flow on CIFAR-10, FID with
   distillation 6.18 / 4.85 / 5.21 from 1-RF / 2-RF / 3-RF (one reflow is the
   best: this stage does one); InstaFlow on Stable Diffusion, FID 23.3 on
   MS COCO 2017-5k against 37.2 for progressive distillation.

   Couplings are made online: every batch draws fresh crops and a fresh z and
   runs the teacher without gradients, where InstaFlow precomputes a fixed
   set of pairs from an expensive teacher. For a small teacher of a few steps
   its no-grad passes cost about as much as the student's training pass, so
   online pairs give every iteration a pair never seen before: far more pairs
   for the same compute, no storage, no overfitting to a fixed set.

Method "tokens" (samplers over discrete tokens refined in rounds: NAT on
GLARE), a discrete analogue of progressive distillation (the NAT notes,
section 4a): one stage per K-round student, fewest rounds first (the first
starts from the teacher, each later one from the student before it), each
learning to match the teacher's final token distribution (KL from the teacher's
per-token distribution to the student's, on every token) plus cross-entropy
against the ground-truth codes and the sampler's image loss. There is no noise
and no auxiliary model (unlike Di[M]O's one-step distillation of masked
models): restoration has a strong input. The baseline a student must beat is
the teacher truncated to K rounds.

Public API: `distill` (in memory), `distill_cached` (the StageCache stage:
content key over the teacher's sha256, K, the data recipe, the method and the
options; a killed run leaves no half student), `ddim` (the deterministic
sampler both use), `save_student` / `load_student` and `state_sha256`.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lowlight.compile.cache import StageCache, cache_key, file_sha256
from lowlight.core.errors import CheckpointError, LowlightError
from lowlight.core.fsio import current_umask

__all__ = [
    "Sampler", "Distilled", "distill", "distill_cached", "ddim", "ddim_step", "x0_eps", "pd_target",
    "save_student", "load_student", "state_sha256", "check_steps", "distill_key", "distill_options", "student_file", "DEFAULT_KEEP", "METHOD",
    "METHODS", "method_description", "TokenSampler",
]

#: the students kept when a run passes through them (the step counts the family compiles)
DEFAULT_KEEP = (4, 2, 1)
#: per method (the `method=` argument): the description recorded in the students' metadata and the cache key
METHOD: dict[str, str] = {
    "progressive": "guided+progressive (Meng et al. 2023; Salimans & Ho 2022), v-prediction, truncated-SNR x-loss",
    "reflow": "reflow on teacher couplings + one-step distillation (Liu et al. 2022; InstaFlow, Liu et al. 2023), "
              "flow matching, velocity loss then x-loss",
    "tokens": "token-distribution distillation: KL to the teacher's final token distribution + ground-truth code CE "
              "+ image loss, one stage per K-round student, fewest rounds first, each from the one before",
}
#: method "tokens": weight of the ground-truth code cross-entropy beside the KL term
TOKEN_CE_WEIGHT = 0.5
#: the method names `distill` takes
METHODS = tuple(METHOD)


def method_description(method: str) -> str:
    """The description of `method` recorded in metadata and the cache key, or LowlightError for an unknown one."""
    if method not in METHOD:
        raise LowlightError(f"unknown distillation method {method!r}",
                            f"use one of: {', '.join(METHODS)} (a family's distill_setup names it as 'method')")
    return METHOD[method]


@runtime_checkable
class Sampler(Protocol):
    """What the distill stage needs of a teacher or student sampler.

    - `alpha_sigma(t)`: the schedule, z_t = alpha x + sigma eps, for t [B] in [0, 1];
      t = 1 is pure noise (alpha(1) ~ 0), t = 0 the data.
    - `condition(**batch)`: everything the velocity needs from one batch, computed
      once per image (DarkDiff: VAE skips and context features; the teacher also
      the unconditional context).
    - `velocity(z, t, cond)`: the teacher's classifier-free-guided prediction (two
      passes), or a student's single pass.
    - `clean_latent(**batch)`: the batch's ground truth in latent space (x); the
      training points z_t are drawn around it.
    - `latent_shape(**batch)`: the shape of z_T for that batch (sampling).
    - `make_student(steps)`: a deep copy with guidance folded (no CFG, one pass)
      and `student_steps = steps`; on a student, a copy with the new step count.
    - `trained_modules()`: the submodules a student trains and stores (DarkDiff:
      {"unet": ..., "context": ...}); everything else stays the teacher's.

    Optional `x0_eps(z, v, t) -> (x, eps)`: how a velocity maps to the clean and
    noise estimates. Without it the sampler is taken to be v-prediction on a
    variance-preserving path (alpha^2 + sigma^2 = 1): x = alpha z - sigma v,
    eps = sigma z + alpha v. Flow matching defines it as x = z - t v, eps = z + (1 - t) v
    (method "reflow" requires it).

    Optional, used by method "reflow" only:

    - `sample(z, cond) -> x`: the teacher's own sampler from z = z_T (MMAIF: 5
      midpoint steps); without it the couplings come from `ddim(teacher, z,
      cond, teacher_steps)` (Euler steps for flow matching).
    - `image_loss(x_student, x_target, batch) -> Tensor`: a scalar added to the
      one-step student's x-loss (InstaFlow's LPIPS; MMAIF's aux loss in image space).
    """

    def alpha_sigma(self, t: Tensor) -> tuple[Tensor, Tensor]: ...

    def condition(self, **batch: Tensor) -> Any: ...

    def velocity(self, z: Tensor, t: Tensor, cond: Any) -> Tensor: ...

    def clean_latent(self, **batch: Tensor) -> Tensor: ...

    def latent_shape(self, **batch: Tensor) -> tuple[int, ...]: ...

    def make_student(self, steps: int) -> "Sampler": ...

    def trained_modules(self) -> Mapping[str, nn.Module]: ...


# -- the deterministic sampler -------------------------------------------------------------------


def _bcast(a: Tensor, like: Tensor) -> Tensor:
    """[B] -> [B, 1, 1, ...] against a latent."""
    return a.reshape(-1, *([1] * (like.dim() - 1))).to(like.dtype)


def _times(t: float | Tensor, z: Tensor) -> Tensor:
    if isinstance(t, Tensor):
        return t.to(z.dtype).reshape(-1).expand(z.shape[0]) if t.numel() == 1 else t.to(z.dtype)
    return torch.full((z.shape[0],), float(t), dtype=z.dtype, device=z.device)


def x0_eps(s: Sampler, z: Tensor, v: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """(x, eps) estimates from a velocity: the sampler's own `x0_eps`, else VP v-prediction."""
    own = getattr(s, "x0_eps", None)
    if callable(own):
        x, e = own(z, v, t)
        return x, e
    a, sg = (_bcast(u, z) for u in s.alpha_sigma(t))
    return a * z - sg * v, sg * z + a * v


def ddim_step(s: Sampler, z: Tensor, t: float | Tensor, t_next: float | Tensor, cond: Any) -> Tensor:
    """One deterministic DDIM step (eta = 0) of sampler `s` from t to t_next; t_next == 0 returns x."""
    tt, tn = _times(t, z), _times(t_next, z)
    x, e = x0_eps(s, z, s.velocity(z, tt, cond), tt)
    a, sg = (_bcast(u, z) for u in s.alpha_sigma(tn))
    z_next = a * x + sg * e
    return torch.where(_bcast(tn, z) <= 0, x, z_next)


def ddim(s: Sampler, z: Tensor, cond: Any, steps: int) -> Tensor:
    """DDIM over the grid t_k = 1 - k/steps from z = z_T; returns the clean latent x."""
    for k in range(steps):
        z = ddim_step(s, z, 1 - k / steps, 1 - (k + 1) / steps, cond)
    return z


def pd_target(s: Sampler, z_t: Tensor, t: Tensor, z_end: Tensor, t_end: Tensor) -> Tensor:
    """The x a single DDIM step from (z_t, t) must predict to land on z_end at t_end (PD, Algorithm 2).

    With t_end == 0 the DDIM step returns x itself, so the target is z_end.
    """
    a, sg = (_bcast(u, z_t) for u in s.alpha_sigma(t))
    a2, s2 = (_bcast(u, z_t) for u in s.alpha_sigma(t_end))
    ratio = s2 / sg
    x = (z_end - ratio * z_t) / (a2 - ratio * a)
    return torch.where(_bcast(t_end, z_t) <= 0, z_end, x)


def _weight(s: Sampler, t: Tensor, like: Tensor) -> Tensor:
    """Truncated-SNR weight max(alpha^2/sigma^2, 1) of the x-loss (PD paper, section 4)."""
    a, sg = s.alpha_sigma(t)
    snr = (a * a) / (sg * sg).clamp_min(1e-12)
    return _bcast(snr.clamp(min=1.0, max=1e4), like)


# -- training ---------------------------------------------------------------------------------------


def check_steps(steps: int, start_steps: int = 64, *, method: str = "progressive", teacher_steps: int | None = None) -> None:
    """Refuse step counts `method` cannot reach, saying which it can.

    "progressive": powers of two with K <= `start_steps` (each round halves);
    "reflow": 1 <= K < `teacher_steps` (any count: the reflowed flow is sampled
    with K Euler steps), `start_steps` unused.
    """
    method_description(method)
    if method in ("reflow", "tokens"):
        _check_reflow_steps(steps, teacher_steps, "reflow" if method == "reflow" else "token distillation")
        return

    def pow2(n: int) -> bool:
        return isinstance(n, int) and n >= 1 and n & (n - 1) == 0

    if not pow2(start_steps):
        raise LowlightError(f"the distillation teacher grid has {start_steps} steps, not a power of two",
                            "use a start of 64 (the default) or another power of two: each round halves it")
    if not pow2(steps) or steps > start_steps:
        raise LowlightError(f"--steps {steps} cannot be reached by halving {start_steps} teacher steps",
                            f"use --steps with one of: {', '.join(str(start_steps >> i) for i in range(start_steps.bit_length()) if start_steps >> i <= 8)}")


def _check_reflow_steps(steps: int, teacher_steps: int | None, how: str = "reflow") -> None:
    if teacher_steps is not None and (not isinstance(teacher_steps, int) or teacher_steps < 2):
        raise LowlightError(f"the {how} teacher samples in {teacher_steps} step(s): there is no smaller step count to distill to",
                            "set 'teacher_steps' (distill_setup) to the teacher sampler's step count, 2 or more")
    if not isinstance(steps, int) or steps < 1 or (teacher_steps is not None and steps >= teacher_steps):
        bound = f"1 <= K < {teacher_steps}, the teacher's steps" if teacher_steps is not None else "K >= 1"
        choices = ", ".join(map(str, range(1, teacher_steps))) if teacher_steps is not None else "1, 2, 4"
        raise LowlightError(f"--steps {steps} cannot be distilled by {how} from this teacher (needs {bound})",
                            f"use --steps with one of: {choices}")


def check_init(given: bool, steps: int, method: str) -> None:
    """A student to continue from is taken only where there is one stage to continue: reflow's one-step stage."""
    if given and (method != "reflow" or steps != 1):
        raise LowlightError(f"--init continues the one-step stage of a flow-matching family's 1-step student; "
                            f"this is method {method!r} at --steps {steps}",
                            "drop --init (distill from the teacher), or use it with --steps 1 on a reflow family (e.g. --model mmaif)")


def _reflow_kept(steps: int, keep: tuple[int, ...], teacher_steps: int | None) -> list[int]:
    """The students a reflow run keeps: `steps` and every K of `keep` the method can reach."""
    ok = {int(k) for k in keep if int(k) >= 1 and (teacher_steps is None or int(k) < teacher_steps)}
    return sorted(ok | {int(steps)})


def _fmt_time(sec: float) -> str:
    sec = max(0, int(round(sec)))
    return f"{sec // 3600}h{sec % 3600 // 60:02d}m" if sec >= 3600 else f"{sec // 60}m{sec % 60:02d}s"


class _Clock:
    """Iterations done of a planned total: the remaining-time estimate of the progress lines."""

    def __init__(self, total: int) -> None:
        self.total, self.done, self.t0 = total, 0, time.perf_counter()

    def tick(self) -> None:
        self.done += 1

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def eta(self) -> float:
        return self.elapsed() / max(1, self.done) * (self.total - self.done)


def _params(student: Sampler) -> list[nn.Parameter]:
    """Freeze everything of the student but its trained modules; return their parameters."""
    if isinstance(student, nn.Module):
        student.requires_grad_(False)
    params: list[nn.Parameter] = []
    for m in student.trained_modules().values():
        m.requires_grad_(True)
        m.train()
        params += [p for p in m.parameters()]
    if not params:
        raise LowlightError("the student has no trainable parameters", "trained_modules() must name the modules to distill")
    return params


def _eval(s: Sampler) -> None:
    if isinstance(s, nn.Module):
        s.eval()
    for m in s.trained_modules().values():
        m.eval()


def _next(batches: Iterator[dict[str, Tensor]], used: int) -> dict[str, Tensor]:
    try:
        return next(batches)
    except StopIteration:
        raise LowlightError(f"the training batches ran out after {used} batches",
                            "pass an endless iterator of batches (a generator drawing fresh crops)") from None


@dataclass
class _Round:
    name: str
    iters: int
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0


def _train(
    student: Sampler, teacher: Sampler, batches: Iterator[dict[str, Tensor]], iters: int, lr: float,
    loss_fn: Callable[[Sampler, Sampler, dict[str, Tensor], torch.Generator], Tensor], gen: torch.Generator,
    rnd: _Round, clock: _Clock, label: str, every: int, progress: Callable[[str], Any], grad_clip: float,
) -> None:
    """One regression stage: Adam, learning rate decayed linearly to 0 (PD paper), gradient clipping."""
    params = _params(student)
    _eval(teacher)
    opt = torch.optim.Adam(params, lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: max(0.0, 1.0 - i / max(1, iters)))
    t0, window = time.perf_counter(), []
    for it in range(1, iters + 1):
        batch = _next(batches, clock.done)
        loss = loss_fn(student, teacher, batch, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
        opt.step()
        sched.step()
        clock.tick()
        window.append(float(loss.detach()))
        if it % every == 0 or it == iters:
            mean = sum(window) / len(window)
            rnd.losses.append(mean)
            window = []
            progress(f"distill {label} iter {it}/{iters} loss {mean:.4g}  "
                     f"elapsed {_fmt_time(clock.elapsed())}  eta {_fmt_time(clock.eta())}")
    rnd.seconds = time.perf_counter() - t0
    _eval(student)


def _noisy(s: Sampler, x: Tensor, t: Tensor, gen: torch.Generator) -> Tensor:
    eps = torch.randn(x.shape, generator=gen, dtype=x.dtype).to(x.device)
    a, sg = (_bcast(u, x) for u in s.alpha_sigma(t))
    return a * x + sg * eps


def _grid_times(n: int, b: int, gen: torch.Generator, like: Tensor) -> Tensor:
    """t uniformly from the student grid {1, 1 - 1/n, ..., 1/n} (never 0: nothing to do there)."""
    k = torch.randint(0, n, (b,), generator=gen)
    return (1 - k.to(torch.float64) / n).to(like.dtype).to(like.device)


def _guided_loss(n: int) -> Callable[[Sampler, Sampler, dict[str, Tensor], torch.Generator], Tensor]:
    """Meng et al. stage one: the student's one pass regresses the teacher's guided prediction."""
    def loss(student: Sampler, teacher: Sampler, batch: dict[str, Tensor], gen: torch.Generator) -> Tensor:
        with torch.no_grad():
            x = teacher.clean_latent(**batch)
            t = _grid_times(n, x.shape[0], gen, x)
            z = _noisy(teacher, x, t, gen)
            x_t, _ = x0_eps(teacher, z, teacher.velocity(z, t, teacher.condition(**batch)), t)
        x_s, _ = x0_eps(student, z, student.velocity(z, t, student.condition(**batch)), t)
        return (_weight(student, t, z) * (x_s - x_t) ** 2).mean()
    return loss


def _pd_loss(n: int) -> Callable[[Sampler, Sampler, dict[str, Tensor], torch.Generator], Tensor]:
    """Salimans & Ho round n -> n/2: one student step over two teacher steps of 1/n."""
    def loss(student: Sampler, teacher: Sampler, batch: dict[str, Tensor], gen: torch.Generator) -> Tensor:
        with torch.no_grad():
            x = teacher.clean_latent(**batch)
            t = _grid_times(n // 2, x.shape[0], gen, x)
            z = _noisy(teacher, x, t, gen)
            cond = teacher.condition(**batch)
            # the last step must end at exactly 0 (DDIM returns x there), not at a float residue of t - 2/n
            t1, t2 = ((t - j / n).clamp_min(0) for j in (1, 2))
            t2 = torch.where(t2 < 0.5 / n, torch.zeros_like(t2), t2)
            z1 = ddim_step(teacher, z, t, t1, cond)
            z2 = ddim_step(teacher, z1, t1, t2, cond)
            target = pd_target(teacher, z, t, z2, t2)
        x_s, _ = x0_eps(student, z, student.velocity(z, t, student.condition(**batch)), t)
        return (_weight(student, t, z) * (x_s - target) ** 2).mean()
    return loss


# -- method "reflow": rectified flow on teacher couplings, then one-step (Liu et al. 2022; InstaFlow) -------


def _check_flow(s: Sampler) -> None:
    """Reflow regresses straight lines z_t = (1 - t) x + t z: the sampler must be on that path."""
    if not callable(getattr(s, "x0_eps", None)):
        raise LowlightError("reflow needs a flow-matching sampler, and this sampler defines no x0_eps(z, v, t)",
                            "define x0_eps on the sampler (flow matching: x = z - t v, eps = z + (1 - t) v), "
                            "or distill a diffusion sampler with method 'progressive'")
    dtype, device = _latent_like(s)
    t = torch.linspace(0, 1, 5, dtype=dtype, device=device)
    a, sg = s.alpha_sigma(t)
    if not (torch.allclose(a.to(t), 1 - t, atol=1e-4) and torch.allclose(sg.to(t), t, atol=1e-4)):
        raise LowlightError("reflow needs the straight path alpha = 1 - t, sigma = t, and this sampler's alpha_sigma differs",
                            "distill a diffusion sampler with method 'progressive'")


def _latent_like(s: Sampler) -> tuple[torch.dtype, torch.device]:
    """dtype and device of the sampler's trained modules: where its latents z_T live."""
    for m in s.trained_modules().values():
        for p in m.parameters():
            if p.is_floating_point():
                return p.dtype, p.device
    return torch.get_default_dtype(), torch.device("cpu")


def _coupling(teacher: Sampler, batch: dict[str, Tensor], gen: torch.Generator, teacher_steps: int | None) -> tuple[Tensor, Tensor]:
    """(z, x^): fresh noise from the stage's generator and the teacher's sample from it, without gradients."""
    dtype, device = _latent_like(teacher)
    with torch.no_grad():
        cond = teacher.condition(**batch)
        # drawn on the CPU generator, then moved: the same couplings on any device
        z = torch.randn(teacher.latent_shape(**batch), generator=gen,
                        dtype=torch.float64 if dtype == torch.float64 else torch.float32).to(device=device, dtype=dtype)
        own = getattr(teacher, "sample", None)
        if callable(own):
            x_hat: Tensor = own(z, cond)
        elif teacher_steps is None:
            raise LowlightError("reflow needs the teacher's samples, and the sampler has no sample(z, cond) and no step count was given",
                                "pass teacher_steps (a family's distill_setup returns 'teacher_steps'), or define sample(z, cond) on the sampler")
        else:
            x_hat = ddim(teacher, z, cond, teacher_steps)
    return z, x_hat.detach()


def _uniform_times(b: int, gen: torch.Generator, like: Tensor) -> Tensor:
    return torch.rand(b, generator=gen, dtype=torch.float64).to(device=like.device, dtype=like.dtype)


def _reflow_loss(teacher_steps: int | None) -> Callable[[Sampler, Sampler, dict[str, Tensor], torch.Generator], Tensor]:
    """Rectified flow (Liu et al. 2022, eq. 1) on the teacher's couplings: v(z_t, t) regresses z - x^ on the straight line."""
    def loss(student: Sampler, teacher: Sampler, batch: dict[str, Tensor], gen: torch.Generator) -> Tensor:
        z, x_hat = _coupling(teacher, batch, gen, teacher_steps)
        t = _uniform_times(z.shape[0], gen, z)
        tb = _bcast(t, z)
        z_t = (1 - tb) * x_hat + tb * z
        # the velocity through x0_eps (eps - x), so a sampler that parameterises its net otherwise still fits
        x_s, e_s = x0_eps(student, z_t, student.velocity(z_t, t, student.condition(**batch)), t)
        return (((e_s - x_s) - (z - x_hat)) ** 2).mean()
    return loss


def _one_step_loss(teacher_steps: int | None) -> Callable[[Sampler, Sampler, dict[str, Tensor], torch.Generator], Tensor]:
    """One-step distillation (Liu et al. 2022, section 2.3; InstaFlow): one Euler step 1 -> 0 from z lands on x^."""
    def loss(student: Sampler, teacher: Sampler, batch: dict[str, Tensor], gen: torch.Generator) -> Tensor:
        z, x_hat = _coupling(teacher, batch, gen, teacher_steps)
        t = torch.ones(z.shape[0], dtype=z.dtype, device=z.device)
        x_s, _ = x0_eps(student, z, student.velocity(z, t, student.condition(**batch)), t)
        out = ((x_s - x_hat) ** 2).mean()
        extra = getattr(student, "image_loss", None)
        if callable(extra):
            out = out + extra(x_s, x_hat, batch)
        return out
    return loss


def _reflow(
    teacher: Sampler, steps: int, batches: Iterator[dict[str, Tensor]], *, teacher_steps: int | None, iters: int, lr: float,
    keep: tuple[int, ...], gen: torch.Generator, every: int, grad_clip: float, progress: Callable[[str], Any],
    init: Sampler | None = None,
) -> tuple[dict[int, Sampler], list[_Round], _Clock]:
    """Method "reflow": the reflowed model for every kept K >= 2, a one-step student for K = 1.

    With `init` (a one-step student), only the one-step stage runs, from `init`: more
    iterations for a student whose loss was still falling."""
    if init is not None:
        clock = _Clock(iters)
        progress(f"distill: one-step distillation continued from the given student, {clock.total} iterations")
        rnd = _Round("one-step (continued)", iters)
        _train(init, teacher, batches, iters, lr, _one_step_loss(teacher_steps), gen, rnd, clock,
               "one-step (continued)", every, progress, grad_clip)
        return {1: init}, [rnd], clock
    kept_k = _reflow_kept(steps, keep, teacher_steps)
    one_step = kept_k[0] == 1
    stages = 2 if one_step else 1
    clock = _Clock(iters * stages)
    source = f"the teacher's {teacher_steps}-step" if teacher_steps else "the teacher's own"
    progress(f"distill: reflow on {source} samples -> K = {', '.join(map(str, reversed(kept_k)))}, "
             f"reflow{' + one-step' if one_step else ''}, {clock.total} iterations")
    log: list[_Round] = []
    reflowed = teacher.make_student(teacher_steps or 2)
    rnd = _Round("reflow", iters)
    _train(reflowed, teacher, batches, iters, lr, _reflow_loss(teacher_steps), gen, rnd, clock,
           f"stage 1/{stages} reflow (teacher couplings)", every, progress, grad_clip)
    log.append(rnd)
    kept: dict[int, Sampler] = {}
    for k in kept_k:
        if k >= 2:
            kept[k] = reflowed.make_student(k)
            _eval(kept[k])
    if one_step:
        student = reflowed.make_student(1)
        rnd = _Round("one-step", iters)
        _train(student, teacher, batches, iters, lr, _one_step_loss(teacher_steps), gen, rnd, clock,
               "stage 2/2 one-step (reflowed -> 1 step)", every, progress, grad_clip)
        log.append(rnd)
        kept[1] = student
    return kept, log, clock


# -- method "tokens": a K-round student matches the teacher's final token distribution --------------------


@runtime_checkable
class TokenSampler(Protocol):
    """What method "tokens" needs of a teacher or student that refines discrete tokens in rounds.

    - `condition(**batch)`: what the rounds need from one batch, computed once (NAT: the
      aligned low-light latent and the encoder's features), without gradients;
    - `refine(cond) -> {"logits": [B, N, V], "tokens": [B, N]}`: its own number of rounds;
      "logits" are, per token, those of the round that last set it (differentiable);
    - `clean_tokens(**batch) -> [B, N]`: the ground-truth codes;
    - `make_student(steps)`, `trained_modules()` as for `Sampler`;
    - optional `image_loss(out, cond, batch) -> Tensor`: a scalar added to the student's loss.
    """

    def condition(self, **batch: Tensor) -> Any: ...

    def refine(self, cond: Any) -> dict[str, Tensor]: ...

    def clean_tokens(self, **batch: Tensor) -> Tensor: ...

    def make_student(self, steps: int) -> "TokenSampler": ...

    def trained_modules(self) -> Mapping[str, nn.Module]: ...


def _check_tokens(s: Any) -> None:
    missing = [m for m in ("condition", "refine", "clean_tokens", "make_student", "trained_modules") if not callable(getattr(s, m, None))]
    if missing:
        raise LowlightError(f"token distillation needs a sampler with {', '.join(missing)}, and this one has none of those",
                            "implement lowlight.compile.distill.TokenSampler, or distill a diffusion/flow sampler with "
                            "method 'progressive' or 'reflow'")


def _token_loss(student: Any, teacher: Any, batch: dict[str, Tensor], gen: torch.Generator) -> Tensor:
    """KL(teacher's final distribution || student's) on every token + CE against the ground-truth codes + image loss."""
    with torch.no_grad():
        cond = teacher.condition(**batch)
        want = torch.log_softmax(teacher.refine(cond)["logits"].float(), dim=-1)
        gt = teacher.clean_tokens(**batch)
    out = student.refine(cond)
    logp = torch.log_softmax(out["logits"].float(), dim=-1)
    kl = (want.exp() * (want - logp)).sum(-1).mean()
    loss = kl + TOKEN_CE_WEIGHT * F.nll_loss(logp.flatten(0, -2), gt.flatten())
    extra = getattr(student, "image_loss", None)
    if callable(extra):
        loss = loss + extra(out, cond, batch)
    return loss


def _token_distill(
    teacher: Any, steps: int, batches: Iterator[dict[str, Tensor]], *, teacher_steps: int | None, iters: int, lr: float,
    keep: tuple[int, ...], gen: torch.Generator, every: int, grad_clip: float, progress: Callable[[str], Any],
) -> tuple[dict[int, Any], list[_Round], _Clock]:
    """Method "tokens": one stage per kept K, fewest rounds first; the first student starts from the teacher,
    each later one from the student before it.

    Why that order: a 1-round student must decide every token in one pass, the hardest task, and what it
    learns carries over. On NAT small (held out, 64x64) a 2-round student started from the teacher reached
    23.22 dB (the teacher and its 2-round truncation: 23.23), while the 1-round student's NAT, run for 2
    rounds without further training, reached 23.31 dB."""
    _check_tokens(teacher)
    kept_k = sorted(_reflow_kept(steps, keep, teacher_steps))
    clock = _Clock(iters * len(kept_k))
    progress(f"distill: {teacher_steps or 'the teacher'}-round teacher -> K = {', '.join(map(str, kept_k))} by token-distribution "
             f"distillation, {clock.total} iterations")
    kept: dict[int, Any] = {}
    log: list[_Round] = []
    prev: Any = None
    prev_k = 0
    for i, k in enumerate(kept_k, 1):
        student = (prev or teacher).make_student(k)
        rnd = _Round(f"{teacher_steps}->{k}" + (f" (from the {prev_k}-round student)" if prev is not None else ""), iters)
        _train(student, teacher, batches, iters, lr, _token_loss, gen, rnd, clock,
               f"stage {i}/{len(kept_k)} ({k} round{'s' if k > 1 else ''})", every, progress, grad_clip)
        log.append(rnd)
        kept[k] = student
        prev, prev_k = student, k
    return kept, log, clock


def distill(
    teacher: Sampler,
    steps: int,
    batches: Iterator[dict[str, Tensor]],
    *,
    start_steps: int = 64,
    iters_per_round: int = 1000,
    guided_iters: int | None = None,
    lr: float = 2e-4,
    keep: tuple[int, ...] = DEFAULT_KEEP,
    seed: int = 0,
    every: int = 50,
    grad_clip: float = 1.0,
    progress: Callable[[str], Any] = print,
    history: dict[str, Any] | None = None,
    method: str = "progressive",
    teacher_steps: int | None = None,
    init: Sampler | None = None,
) -> dict[int, Sampler]:
    """Distill `teacher` to a `steps`-step student; returns {K: student} for `steps` and each K in `keep` passed on the way.

    `method` "progressive" (the default): guided distillation (`guided_iters`,
    default `iters_per_round`; 0 skips it, for a teacher without guidance)
    makes a one-pass student at `start_steps`; progressive rounds halve it down
    to `steps`.

    `method` "reflow" (flow-matching samplers with `x0_eps`; `start_steps` and
    `guided_iters` unused): `iters_per_round` iterations of reflow on the
    teacher's couplings (its `sample(z, cond)`, else `teacher_steps` Euler
    steps), then, when K = 1 is kept, `iters_per_round` of one-step
    distillation. Every kept K with 1 <= K < `teacher_steps` is returned: the
    reflowed model for K >= 2, the one-step student for K = 1. `init` (reflow,
    K = 1 only) continues the one-step stage of an earlier student instead:
    `iters_per_round` more iterations, nothing else kept.

    `batches` is an endless iterator of batch dicts (the keyword arguments of
    `condition`, `clean_latent` and `latent_shape`). `progress` gets one line
    every `every` iterations with the stage, the mean loss and the estimated
    remaining time; an exception it raises stops the run. `history`, when
    given, receives per-round losses and seconds.
    """
    check_steps(steps, start_steps, method=method, teacher_steps=teacher_steps)
    check_init(init is not None, steps, method)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # anything the sampler draws itself (e.g. a training-time null condition)
    if method == "tokens":
        kept, log, clock = _token_distill(teacher, steps, batches, teacher_steps=teacher_steps, iters=iters_per_round, lr=lr,
                                          keep=keep, gen=gen, every=every, grad_clip=grad_clip, progress=progress)
    elif method == "reflow":
        _check_flow(teacher)
        kept, log, clock = _reflow(teacher, steps, batches, teacher_steps=teacher_steps, iters=iters_per_round, lr=lr, keep=keep,
                                   gen=gen, every=every, grad_clip=grad_clip, progress=progress, init=init)
    else:
        kept, log, clock = _progressive(teacher, steps, batches, start_steps=start_steps, iters_per_round=iters_per_round,
                                        guided_iters=iters_per_round if guided_iters is None else guided_iters, lr=lr,
                                        keep=keep, gen=gen, every=every, grad_clip=grad_clip, progress=progress)
    progress(f"distill: done in {_fmt_time(clock.elapsed())}, students for K = {', '.join(map(str, sorted(kept, reverse=True)))}")
    if history is not None:
        history.update(seconds=round(clock.elapsed(), 2), iterations=clock.total,
                       rounds=[{"round": r.name, "iters": r.iters, "seconds": round(r.seconds, 2), "loss": r.losses} for r in log])
    return kept


def _progressive(
    teacher: Sampler, steps: int, batches: Iterator[dict[str, Tensor]], *, start_steps: int, iters_per_round: int,
    guided_iters: int, lr: float, keep: tuple[int, ...], gen: torch.Generator, every: int, grad_clip: float,
    progress: Callable[[str], Any],
) -> tuple[dict[int, Sampler], list[_Round], _Clock]:
    """Method "progressive": guided distillation at `start_steps`, then halving rounds down to `steps`."""
    rounds = int(math.log2(start_steps // steps))
    clock = _Clock(guided_iters + rounds * iters_per_round)
    log: list[_Round] = []
    progress(f"distill: {start_steps} -> {steps} steps, {('guided + ' if guided_iters else '')}{rounds} progressive round(s), "
             f"{clock.total} iterations")
    student = teacher.make_student(start_steps)
    if guided_iters:
        rnd = _Round("guided", guided_iters)
        _train(student, teacher, batches, guided_iters, lr, _guided_loss(start_steps), gen, rnd, clock,
               f"guided (CFG folded, {start_steps} steps)", every, progress, grad_clip)
        log.append(rnd)
    kept: dict[int, Sampler] = {start_steps: student} if start_steps == steps else {}
    n = start_steps
    for r in range(1, rounds + 1):
        prev = student
        student = prev.make_student(n // 2)
        rnd = _Round(f"{n}->{n // 2}", iters_per_round)
        _train(student, prev, batches, iters_per_round, lr, _pd_loss(n), gen, rnd, clock,
               f"round {r}/{rounds} ({n} -> {n // 2} steps)", every, progress, grad_clip)
        log.append(rnd)
        n //= 2
        if n in keep or n == steps:
            kept[n] = student
    return kept, log, clock


# -- storing students ---------------------------------------------------------------------------------


def state_sha256(modules: nn.Module | Mapping[str, nn.Module]) -> str:
    """sha256 over a module's (or named modules') tensors: names, dtypes, shapes and bytes."""
    items = modules.items() if isinstance(modules, Mapping) else [("", modules)]
    h = hashlib.sha256()
    for prefix, m in sorted(items, key=lambda kv: kv[0]):
        for k, v in sorted(m.state_dict().items()):
            t = v.detach().cpu().contiguous()
            h.update(f"{prefix}.{k}:{t.dtype}:{tuple(t.shape)}".encode())
            h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def save_student(student: Sampler, path: str | Path, metadata: Mapping[str, str] | None = None) -> None:
    """Write the student's trained modules as safetensors (`MODULE.PARAM` keys) with string metadata."""
    from safetensors.torch import save_file

    tensors = {f"{name}.{k}": v.detach().cpu().contiguous().clone()
               for name, m in student.trained_modules().items() for k, v in m.state_dict().items()}
    save_file(tensors, str(path), metadata={str(k): str(v) for k, v in (metadata or {}).items()})
    os.chmod(path, 0o666 & ~current_umask())  # safetensors creates 0600: keep the user's umask


def load_student(teacher: Sampler, steps: int, path: str | Path) -> Sampler:
    """A `steps`-step student: the teacher with guidance folded and the trained modules read from `path`."""
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types
        raise CheckpointError(f"student {path} is not a readable safetensors file ({exc})",
                              "run `lowlight-compile distill` again to rewrite it") from exc
    student = teacher.make_student(steps)
    mods = student.trained_modules()
    for name, m in mods.items():
        own = {k[len(name) + 1:]: v for k, v in tensors.items() if k.startswith(name + ".")}
        missing, unexpected = m.load_state_dict(own, strict=False)
        bad = [f"{name}.{k}" for k in missing] + [f"{name}.{k}" for k in unexpected]
        if bad:
            raise CheckpointError(f"student {path} does not match this teacher's {name} ({len(bad)} keys: {', '.join(bad[:5])})",
                                  "distill the student from this teacher and config again")
    stray = [k for k in tensors if k.split(".", 1)[0] not in mods]
    if stray:
        raise CheckpointError(f"student {path} holds tensors of modules the student does not train: {', '.join(stray[:5])}",
                              "pass a student written by `lowlight-compile distill` for this family")
    _eval(student)
    return student


# -- the cached stage -----------------------------------------------------------------------------------


@dataclass
class Distilled:
    """Result of `distill_cached`: the students, their files in the cache, and whether they were reused."""

    students: dict[int, Sampler]
    paths: dict[int, Path]
    cached: bool
    folder: Path
    info: dict[str, Any]


def student_file(k: int) -> str:
    return f"student_{k}.safetensors"


def distill_options(
    steps: int, data: str, *, start_steps: int = 64, iters_per_round: int = 1000, guided_iters: int | None = None,
    lr: float = 2e-4, keep: tuple[int, ...] = DEFAULT_KEEP, seed: int = 0, method: str = "progressive",
    teacher_steps: int | None = None, loss: str | None = None, init_sha256: str | None = None,
) -> dict[str, Any]:
    """The options a distilled student depends on (with the teacher's sha256: its cache key).

    `loss`: the sampler's own loss terms (its `loss_note`), recorded only when it has one.
    `init_sha256`: the student a continued one-step stage started from (only K = 1 is kept then).

    One run distills down to the smallest of `keep` and `steps` and keeps every student of
    `keep` (and `steps`) on the way, so the key names that set, not the K asked for: a compile
    for K = 4 and one for K = 1 share one distillation. The method's description is part of
    the options, so the two methods never share a key; each records only the options it uses
    ("reflow": `teacher_steps`, not `start_steps` or `guided_iters`; "progressive" as before).
    """
    desc = method_description(method)
    if method in ("reflow", "tokens"):
        kept = [1] if init_sha256 else _reflow_kept(steps, keep, teacher_steps)
        out = {"steps": min(kept), "teacher_steps": teacher_steps, "iters_per_round": iters_per_round, "lr": lr,
               "keep": kept, "seed": seed, "data": data, "method": desc}
    else:
        kept = sorted(set(keep) | {int(steps)})
        out = {"steps": min(kept), "start_steps": start_steps, "iters_per_round": iters_per_round,
               "guided_iters": iters_per_round if guided_iters is None else guided_iters, "lr": lr,
               "keep": kept, "seed": seed, "data": data, "method": desc}
    if loss:
        out["loss"] = loss
    if init_sha256:
        out["init_sha256"] = init_sha256
    return out


def distill_key(teacher_sha256: str, steps: int, data: str, **options: Any) -> str:
    """The StageCache key of a distillation (folder `<cache>/distill/<key>/`)."""
    return cache_key("distill", teacher_sha256, distill_options(steps, data, **options))


def distill_cached(
    teacher: Sampler,
    steps: int,
    batches: Iterator[dict[str, Tensor]],
    *,
    cache: StageCache | str | Path,
    teacher_sha256: str,
    data: str,
    start_steps: int = 64,
    iters_per_round: int = 1000,
    guided_iters: int | None = None,
    lr: float = 2e-4,
    keep: tuple[int, ...] = DEFAULT_KEEP,
    seed: int = 0,
    every: int = 50,
    progress: Callable[[str], Any] = print,
    metadata: Mapping[str, str] | None = None,
    method: str = "progressive",
    teacher_steps: int | None = None,
    init: str | Path | None = None,
) -> Distilled:
    """`distill` as a stage of the StageCache: reuse the students of an earlier identical run.

    The content key covers the teacher (`teacher_sha256`: its weights file, or
    `state_sha256` of its modules), K, `data` (a description of the data recipe:
    generator, crop, batch, seed) and every training option. The students are
    written in a partial folder renamed into place only when all are written,
    so a killed or failed run leaves nothing a later call could take for a
    finished student. `batches` is consumed only when the stage runs (pass a
    generator: a cache hit reads no data). `method` and `teacher_steps` as in
    `distill`; the method is part of the key. `init`: a 1-step student file to
    continue (reflow only); its sha256 is part of the key.
    """
    check_steps(steps, start_steps, method=method, teacher_steps=teacher_steps)
    check_init(init is not None, steps, method)
    init_sha = file_sha256(Path(init)) if init is not None else None
    store = cache if isinstance(cache, StageCache) else StageCache(cache)
    options = distill_options(steps, data, start_steps=start_steps, iters_per_round=iters_per_round,
                              guided_iters=guided_iters, lr=lr, keep=keep, seed=seed, method=method, teacher_steps=teacher_steps,
                              loss=getattr(teacher, "loss_note", None), init_sha256=init_sha)

    def produce(tmp: Path) -> None:
        hist: dict[str, Any] = {}
        start = load_student(teacher, 1, init) if init is not None else None
        students = distill(teacher, int(options["steps"]), batches, start_steps=start_steps, iters_per_round=iters_per_round,
                           guided_iters=guided_iters, lr=lr, keep=tuple(options["keep"]), seed=seed, every=every,
                           progress=progress, history=hist, method=method, teacher_steps=teacher_steps, init=start)
        for k, s in students.items():
            # options["steps"] is how far the run went; each file records its own K
            meta = {"lowlight.distill": json.dumps({**options, "teacher_sha256": teacher_sha256, "steps": k,
                                                     "run_down_to": options["steps"], "steps_requested": steps}), **(metadata or {})}
            save_student(s, tmp / student_file(k), meta)
        # written last: its presence beside the students means the whole run finished
        (tmp / "distill.json").write_text(json.dumps({"teacher_sha256": teacher_sha256, "method": options["method"],
                                                      "options": options, **hist}, indent=1) + "\n")
        # the artifact StageCache checks for is the requested student, renamed in with the others
    artifact, cached = store.run("distill", teacher_sha256, options, produce, student_file(steps))
    folder = artifact.parent
    try:
        info = json.loads((folder / "distill.json").read_text())
    except (OSError, ValueError):
        info = {}
    paths = {int(p.stem.split("_")[1]): p for p in folder.glob("student_*.safetensors")}
    students = {k: load_student(teacher, k, p) for k, p in sorted(paths.items())}
    info["key"] = cache_key("distill", teacher_sha256, options)
    return Distilled(students, paths, cached, folder, info)
