"""`lowlight-compile distill TEACHER --model FAMILY --steps K --out STUDENT`: the distill stage alone.

Distills the teacher checkpoint down to K sampling steps with the family's
method (compile/distill.py): guided then progressive distillation for a
diffusion teacher (DarkDiff), reflow then one-step distillation for a
flow-matching teacher (MMAIF). The students are cached by content (teacher
sha256, K, data recipe, method, options), so a compile of the same teacher at
the same K reuses them and a second `distill` returns at once. `--init STUDENT`
continues the one-step stage of a flow family's 1-step student (its sha256 joins
the cache key; its record is kept inside the new one).

A family opts in through its training recipe module (`Family.trainer`): a
function `distill_setup(checkpoint, config, *, batch, crop, seed)` returning a
dict with the teacher as a `distill.Sampler` ("teacher"), an endless batch
generator ("batches"), a description of the data recipe ("data"), the
recipe's default iterations, learning rate and progress interval
("iters_per_round", "lr", "every"), and optionally the method ("method":
"progressive", the default, or "reflow") and the teacher sampler's step count
("teacher_steps", which bounds K for reflow).
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Callable

from lowlight.compile.cli_types import finite_float, positive_int

SUMMARY = "distill a diffusion or flow teacher into a K-step student (guided + progressive distillation, or reflow + one-step)"

#: safetensors metadata key that marks a file this command wrote (and may replace with --overwrite)
MARK = "lowlight.distill"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of `distill`."""
    p.add_argument("teacher", help="teacher checkpoint (.safetensors from `lowlight-compile zoo train FAMILY`)")
    p.add_argument("--model", required=True, help="model family of the teacher (e.g. darkdiff)")
    p.add_argument("--config", default=None, help="config of the teacher (default: the family's deployed config)")
    p.add_argument("--steps", type=positive_int, required=True, help="sampling steps of the student: for progressive distillation a power of two <= --start-steps (4, 2, 1); "
                   "for reflow (flow-matching families) 1 <= K < the teacher's steps")
    p.add_argument("--out", required=True, help="student .safetensors to write; an existing file is replaced only with --overwrite and only if this command wrote it")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out written by `distill`")
    p.add_argument("--iters", type=positive_int, default=None, help="iterations per stage: each progressive round and the guided stage, or reflow and one-step (default: the recipe's)")
    p.add_argument("--start-steps", type=positive_int, default=64, help="teacher DDIM steps the first progressive round halves (a power of two; unused by reflow families)")
    p.add_argument("--lr", type=finite_float, default=None, help="Adam learning rate (default: the recipe's)")
    p.add_argument("--batch", type=positive_int, default=None, help="batch size (default: the recipe's)")
    p.add_argument("--crop", type=positive_int, default=None, help="training crop in Bayer pixels (default: the recipe's)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the data and the training times")
    p.add_argument("--threads", type=positive_int, default=None, help="torch threads (default: all cores)")
    p.add_argument("--cache-dir", default=None, help="stage cache (default: ~/.cache/lowlight-compile or $LOWLIGHT_CACHE)")
    p.add_argument("--force", action="store_true", help="distill again even if the students are cached")
    p.add_argument("--init", default=None, metavar="STUDENT",
                   help="continue the one-step stage from this 1-step student of the same teacher (written by `distill`; "
                        "reflow families, --steps 1): --iters more iterations, on fresh data with --seed")


def cache_root(cache_dir: str | None) -> Path:
    """The stage cache folder: as `lowlight-compile --cache-dir` resolves it."""
    return Path(cache_dir or os.environ.get("LOWLIGHT_CACHE") or Path.home() / ".cache" / "lowlight-compile")


def recipe(family: str) -> Callable[..., dict[str, Any]]:
    """The family's `distill_setup` (in its training recipe module), or LowlightError."""
    from lowlight.core.errors import LowlightError
    from lowlight.models import get_family

    fam = get_family(family)
    setup = None
    if fam.trainer:
        module = importlib.import_module(fam.trainer.partition(":")[0])  # runtime name: no compile -> trainer edge
        setup = getattr(module, "distill_setup", None)
    if setup is None:
        raise LowlightError(f"model {family!r} has no distillation recipe (it is not a diffusion sampler lowlight can distill)",
                            "use --model with a diffusion family such as darkdiff")
    return setup  # type: ignore[no-any-return]


def student_for(
    family: str, teacher: str | Path, config: str, steps: int, *, cache_dir: str | Path | None = None, force: bool = False,
    iters: int | None = None, start_steps: int = 64, lr: float | None = None, batch: int | None = None, crop: int | None = None,
    seed: int = 0, say: Callable[[str], Any] = print, init: str | Path | None = None,
) -> Any:
    """The K-step students of `teacher` (a `distill.Distilled`): from the stage cache, else distilled now.

    What a compile calls when the family's program needs a student; the
    `distill` command calls it too. The method and the teacher's step count
    come from the family's `distill_setup` ("method", "teacher_steps"); K is
    checked by that method's rule before any data is read. `init`: a 1-step
    student of this teacher to continue (`check_init_student`).
    """
    from lowlight.compile.cache import StageCache, file_sha256
    from lowlight.compile.distill import check_steps, distill_cached
    from lowlight.core.errors import CheckpointError

    path = Path(teacher)
    if not path.is_file():
        raise CheckpointError(f"teacher checkpoint {path} does not exist" if not path.exists() else f"teacher checkpoint {path} is not a file",
                              f"pass the teacher's .safetensors, e.g. one written by `lowlight-compile zoo train {family}`")
    setup = recipe(family)(str(path), config, batch=batch, crop=crop, seed=seed)
    method = str(setup.get("method", "progressive"))
    teacher_steps = setup.get("teacher_steps")
    teacher_steps = None if teacher_steps is None else int(teacher_steps)
    check_steps(steps, start_steps, method=method, teacher_steps=teacher_steps)
    teacher_sha = file_sha256(path)
    if init is not None:
        check_init_student(Path(init), teacher_sha, steps, method)
    store = StageCache(cache_root(str(cache_dir) if cache_dir else None), force=force)
    return distill_cached(
        setup["teacher"], steps, setup["batches"], cache=store, teacher_sha256=teacher_sha, data=setup["data"],
        start_steps=start_steps, iters_per_round=iters or int(setup["iters_per_round"]),
        lr=lr if lr is not None else float(setup["lr"]), seed=seed, every=int(setup.get("every", 50)), progress=say,
        metadata={"lowlight.family": family, "lowlight.config": config}, method=method, teacher_steps=teacher_steps, init=init,
    )


def check_init_student(init: Path, teacher_sha256: str, steps: int, method: str) -> None:
    """--init must be a 1-step student that `distill` wrote from this very teacher (its metadata says which)."""
    from safetensors import safe_open

    from lowlight.compile.distill import check_init
    from lowlight.core.errors import CheckpointError

    check_init(True, steps, method)
    if not init.is_file():
        raise CheckpointError(f"--init {init}: no such file", "give the 1-step student to continue, e.g. models/weights/mmaif_small_student1.safetensors")
    try:
        with safe_open(str(init), "np") as f:
            record = json.loads((f.metadata() or {}).get(MARK, "{}"))
    except Exception as exc:  # safetensors raises its own error types
        raise CheckpointError(f"--init {init} is not a readable safetensors file ({exc})", "pass a student written by `lowlight-compile distill`") from exc
    if not record:
        raise CheckpointError(f"--init {init} was not written by `lowlight-compile distill` (no {MARK} record)",
                              "pass a student written by `lowlight-compile distill`, or drop --init")
    if int(record.get("steps", 0)) != 1:
        raise CheckpointError(f"--init {init} is a {record.get('steps')}-step student", "continue a 1-step student (--steps 1)")
    if record.get("teacher_sha256") != teacher_sha256:
        raise CheckpointError(f"--init {init} was distilled from another teacher (sha256 {str(record.get('teacher_sha256'))[:12]}..., "
                              f"this one {teacher_sha256[:12]}...)", "continue a student of this teacher, or pass its own teacher")


def _ours(path: Path) -> bool:
    """True if `path` is a safetensors file this command wrote (its metadata carries MARK)."""
    try:
        from safetensors import safe_open

        with safe_open(str(path), "np") as f:
            return MARK in (f.metadata() or {})
    except Exception:  # not safetensors, unreadable: not ours
        return False


def claim_student(out: Path, teacher: str, overwrite: bool) -> None:
    """--out may be written: absent, or a student this command wrote and --overwrite; never the teacher or a folder."""
    from lowlight.core.errors import OutputError
    from lowlight.core.fsio import check_not_input, claim_file

    check_not_input(out, [teacher], "--out")
    if out.suffix != ".safetensors":
        raise OutputError(f"--out {out} does not end in .safetensors", f"name the student file, e.g. {out.with_suffix('.safetensors')}")
    if out.is_file() and not out.is_symlink() and not _ours(out):
        raise OutputError(f"--out {out} exists and is not a student written by `lowlight-compile distill`; refusing to replace it",
                          "choose a new file name, or move that file away yourself")
    claim_file(out, "a student weights file", "--out", overwrite=overwrite, inputs=[teacher])


def run(a: argparse.Namespace) -> int:
    """Distill (or fetch from the cache) the student and write it to --out with its record beside it."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from lowlight.core.fsio import OutputLock, staged_file
    from lowlight.models import get_family

    fam = get_family(a.model)
    config = a.config or fam.default_config
    fam.check_config(config)
    out = Path(a.out)
    claim_student(out, a.teacher, a.overwrite)
    recipe(a.model)  # a family without a recipe fails before any work
    if a.threads:
        import torch

        torch.set_num_threads(a.threads)

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    # a continued student's record carries the one it started from (read now: --out may be that file)
    init_record = None
    if a.init:
        side_in = Path(a.init).with_suffix(".json")
        if side_in.is_file() and _side_ours(side_in):
            init_record = json.loads(side_in.read_text())
    t0 = time.time()
    with OutputLock(out):
        got = student_for(a.model, a.teacher, config, a.steps, cache_dir=a.cache_dir, force=a.force, iters=a.iters,
                          start_steps=a.start_steps, lr=a.lr, batch=a.batch, crop=a.crop, seed=a.seed, say=say, init=a.init)
        src = got.paths[a.steps]
        with safe_open(str(src), "np") as f:
            meta = dict(f.metadata() or {})
        record = json.loads(meta.get(MARK, "{}"))
        record.update(teacher=Path(a.teacher).name, family=a.model, config=config)
        meta[MARK] = json.dumps(record)
        with staged_file(out) as tmp:
            save_file(load_file(str(src)), str(tmp), metadata=meta)
        side = out.with_suffix(".json")
        info = {"lowlight_distill": True, "command": "lowlight-compile " + " ".join(map(shlex.quote, sys.argv[1:] or ["distill"])),
                "date": time.strftime("%Y-%m-%d %H:%M:%S"), "cached": got.cached, "cache_folder": str(got.folder),
                "teacher": str(a.teacher), "teacher_sha256": record.get("teacher_sha256"), "steps": a.steps,
                "family": a.model, "config": config, "method": record.get("method"),
                "distill_seconds": got.info.get("seconds"), "rounds": got.info.get("rounds"), "options": got.info.get("options")}
        if a.init:
            info["init"] = {"path": str(a.init), "sha256": (got.info.get("options") or {}).get("init_sha256"), "record": init_record}
        if not side.exists() or _side_ours(side):
            side.write_text(json.dumps(info, indent=1) + "\n")
    how = "from the cache" if got.cached else f"distilled in {got.info.get('seconds', time.time() - t0):.0f} s"
    say(f"wrote {out} ({a.steps}-step student of {Path(a.teacher).name}, {how})")
    return 0


def _side_ours(path: Path) -> bool:
    try:
        return bool(json.loads(path.read_text()).get("lowlight_distill"))
    except (OSError, ValueError, AttributeError):
        return False
