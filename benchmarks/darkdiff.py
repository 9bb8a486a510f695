"""DarkDiff: the PyTorch teacher at 50 steps vs the compiled 4-step student, in one run.

    nice .venv/bin/python benchmarks/darkdiff.py [--config small] [--steps 4] [--size 256] [--frames 6]

On one raw frame per held-out photo (a `--size` x `--size` Bayer frame, packed to
4 x size/2 x size/2; the 6 photos of ../shared/data/clean that training held out,
unprocessed and darkened by `calibration.raw` at a fixed seed):

  teacher 50     PyTorch, guided DDIM, 50 steps (100 U-Net passes)
  teacher DDIM K PyTorch, the teacher's own guided DDIM at K steps (the baseline distillation must beat)
  student K      PyTorch, the distilled K-step student (one pass per step)
  compiled FP32 / INT8   the student's CPU bundles (onnxruntime), same frames

Latency: median per frame, same threads, interleaved runs. Quality: PSNR/SSIM against
the ISP ground truth, and of the compiled bundles against the PyTorch student. Also the
roofline prediction for the FP16 `jetson-orin` (AGX Orin) graph, counted on the
unrolled K-step graph. Writes benchmarks/results/darkdiff-<date>.json.
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
from pathlib import Path

import numpy as np
import torch

from _common import timed, write_result



def held_out_pairs(size: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(raw [1,4,s/2,s/2], gain [1,4], target [1,3,s/2,s/2]): the centre crop of each held-out photo,
    the evaluation set `zoo train darkdiff` reports on (fixed seed)."""
    from lowlight.models.train_darkdiff import heldout_pairs, split_photos

    return [(r[None].astype(np.float32), g[None].astype(np.float32), t[None].astype(np.float32))
            for r, g, t in heldout_pairs(split_photos()[1], size)]



def main() -> None:
    from lowlight.compile.options import CompileOptions
    from lowlight.compile.pipeline import compile_bundle
    from lowlight.compile.roofline import estimate
    from lowlight.core.metrics import psnr, ssim
    from lowlight.models import load
    from lowlight.runtime import load as load_bundle
    from lowlight.targets import get_target

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="small")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--size", type=int, default=256, help="Bayer frame side (packed: half)")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--out", default="/tmp/lowlight-darkdiff-bench", help="where the compiled bundles go (reused)")
    a = p.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    k, half = a.steps, a.size // 2
    pairs = held_out_pairs(a.size)
    shape = f"1x4x{half}x{half}"
    out = Path(a.out)
    bundles = {}
    for prec in ("fp32", "int8"):
        dst = out / f"darkdiff-{a.config}-k{k}-{half}-{prec}"
        if not (dst / "manifest.json").exists():
            compile_bundle(CompileOptions(model="darkdiff", config=a.config, shape=shape, out=str(dst), precision=prec,
                                          calib_frames=8, verify_frames=4, profile_runs=2, quiet=True,
                                          family_options={"steps": str(k)}))
        bundles[prec] = load_bundle(dst, verbose=False)
    unrolled = out / f"darkdiff-{a.config}-k{k}-{half}-orin-fp16"
    if not (unrolled / "manifest.json").exists():
        compile_bundle(CompileOptions(model="darkdiff", config=a.config, shape=shape, out=str(unrolled), precision="fp16",
                                      target="jetson-orin", calib_frames=8, verify_frames=4, profile_runs=2, quiet=True,
                                      family_options={"steps": str(k), "unroll": "yes"}))

    contenders = {
        "teacher 50 (PyTorch)": load("darkdiff", config=a.config, steps=50),
        f"teacher DDIM {k} (PyTorch)": load("darkdiff", config=a.config, steps=k, student=False),
        f"student {k} (PyTorch)": load("darkdiff", config=a.config, steps=k),
    }
    rows: dict[str, dict[str, list[float]]] = {name: {"ms": [], "psnr": [], "ssim": [], "vs_student": []} for name in
                                                [*contenders, f"compiled {k}-step FP32 (onnxruntime)", f"compiled {k}-step INT8 (onnxruntime)"]}
    for raw, gain, target in pairs:
        student_out = None
        for name, model in contenders.items():
            with torch.no_grad():
                sec, y = timed(lambda m=model: m(torch.from_numpy(raw), torch.from_numpy(gain)).numpy(), a.runs)
            rows[name]["ms"].append(sec * 1e3)
            rows[name]["psnr"].append(psnr(y, target))
            rows[name]["ssim"].append(ssim(y, target))
            if name.startswith("student"):
                student_out = y
        for prec, sess in bundles.items():
            name = f"compiled {k}-step {prec.upper()} (onnxruntime)"
            sec, y = timed(lambda s=sess: s(raw=raw, gain=gain), a.runs)
            rows[name]["ms"].append(sec * 1e3)
            rows[name]["psnr"].append(psnr(y, target))
            rows[name]["ssim"].append(ssim(y, target))
            rows[name]["vs_student"].append(psnr(y, student_out))
    summary = {name: {"ms_per_frame": round(float(np.median(r["ms"])), 1), "psnr_db": round(float(np.mean(r["psnr"])), 3),
                      "ssim": round(float(np.mean(r["ssim"])), 4),
                      **({"psnr_vs_pytorch_student_db": round(float(np.mean(r["vs_student"])), 2)} if r["vs_student"] else {})}
               for name, r in rows.items()}
    base = summary["teacher 50 (PyTorch)"]["ms_per_frame"]
    for s in summary.values():
        s["speedup_vs_teacher50"] = round(base / s["ms_per_frame"], 2)
    orin = get_target("jetson-orin")
    roof = estimate(unrolled / "model.onnx", orin, "fp16")
    result = {
        "host": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "date": datetime.date.today().isoformat(),
        "command": "nice .venv/bin/python benchmarks/darkdiff.py " + " ".join(f"--{k2} {v}" for k2, v in vars(a).items() if k2 != "out"),
        "frames": len(pairs), "bayer_size": a.size, "packed_shape": shape,
        "results": summary,
        "orin_fp16_roofline": {k2: roof.get(k2) for k2 in ("gflops", "bound_ms", "roundtrip_ms", "limit") if k2 in roof},
    }
    write_result("darkdiff", result)


if __name__ == "__main__":
    main()
