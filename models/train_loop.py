"""What the training recipes share: the held-out split of the clean photos and the optimisation loop."""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from lowlight.calibration.data import shared_data_dir

#: Every HOLDOUT_EVERY-th clean photo (sorted by name, from HOLDOUT_OFFSET) is held out for the metrics.
HOLDOUT_EVERY, HOLDOUT_OFFSET = 7, 3


def split_photos(clean_dir: Path | None = None) -> tuple[list[Path], list[Path]]:
    """(train, held-out) photo paths of ../shared/data/clean: every 7th is held out; eval/ is never read."""
    clean_dir = clean_dir or shared_data_dir() / "clean"  # type: ignore[operator]
    files = sorted(p for p in Path(clean_dir).iterdir() if p.suffix.lower() == ".png")
    held = [p for i, p in enumerate(files) if i % HOLDOUT_EVERY == HOLDOUT_OFFSET]
    return [p for p in files if p not in held], held


def load_photos(paths: list[Path], crop: int) -> list[np.ndarray]:
    """The photos at `paths` (HxWx3 float32 in [0, 1]) that are at least `crop` on each side; LowlightError if none is."""
    from lowlight.calibration.frames import load_frames
    from lowlight.core.errors import LowlightError

    photos = [f for p in paths for f in load_frames(p)]
    fit = [p for p in photos if min(p.shape[:2]) >= crop]
    if not fit:
        raise LowlightError(f"no training photo is at least {crop}x{crop}", "use a smaller --crop")
    return fit


def save_weights(model: torch.nn.Module, out: Path, metadata: dict[str, str]) -> None:
    """The model's state_dict as safetensors, staged beside `out` and renamed into place (no half file under the final name)."""
    from safetensors.torch import save_file

    from lowlight.core.fsio import staged_file

    out.parent.mkdir(parents=True, exist_ok=True)
    with staged_file(out) as tmp:
        save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(tmp), metadata=metadata)


def fmt_time(sec: float) -> str:
    sec = max(0, int(round(sec)))
    return f"{sec // 3600}h{sec % 3600 // 60:02d}m" if sec >= 3600 else f"{sec // 60}m{sec % 60:02d}s"


def train_loop(name: str, steps: int, params: list[torch.nn.Parameter], lr: float,
               loss_fn: Callable[[int], dict[str, torch.Tensor]], say: Callable[[str], Any], every: int) -> list[dict[str, float]]:
    """AdamW, warm-up then cosine decay, gradient clipping; a progress line every `every` steps with an ETA.

    `loss_fn(step)` returns named loss terms with the optimised one under "total".
    """
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    warm = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps))))
    t0, log, window = time.perf_counter(), [], []
    for i in range(1, steps + 1):
        terms = loss_fn(i)
        opt.zero_grad(set_to_none=True)
        terms["total"].backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        window.append({k: float(v.detach()) for k, v in terms.items()})
        if i % every == 0 or i == steps:
            mean = {k: sum(w[k] for w in window) / len(window) for k in window[0]}
            window = []
            el = time.perf_counter() - t0
            log.append({"step": i, **{k: round(v, 5) for k, v in mean.items()}})
            say(f"{name} step {i}/{steps} " + " ".join(f"{k} {v:.4f}" for k, v in mean.items())
                + f"  elapsed {fmt_time(el)}  eta {fmt_time(el / i * (steps - i))}")
    return log
