"""AMNet on the CPU: PyTorch eager FP32 vs the compiled FP32 and INT8 artifacts, in one run.

    python benchmarks/amnet_cpu.py [--config base] [--shape 1x8x3x256x256] [--runs 20]

Same machine, same input, same thread count for every contender. Fidelity is
the PSNR of each artifact's output against the FP32 PyTorch output on real
low-light photos (../shared/data/lowlight_real). Writes
benchmarks/results/amnet_cpu-<date>.json and prints a table.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from lowlight.calibration.data import shared_data_dir
from lowlight.calibration.frames import load_frames
from lowlight.core.metrics import psnr
from lowlight.compile.options import CompileOptions
from lowlight.compile.pipeline import compile_bundle
from lowlight.models import get_family, load
from lowlight.runtime.onnxruntime_backend import OnnxRuntimeBackend


def median_ms(fn, runs: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1e3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="base")
    ap.add_argument("--shape", default="1x8x3x256x256")
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    a = ap.parse_args()
    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)

    fam = get_family("amnet")
    bundles = {}
    for precision in ("fp32", "int8"):
        bundles[precision] = compile_bundle(CompileOptions(
            checkpoint=a.checkpoint, config=a.config, precision=precision, shape=a.shape,
            out=f"bundles/bench-amnet-{a.config}-{precision}", profile_runs=3, quiet=True,
        ))
    module = fam.export_module(load("amnet", a.config, checkpoint=a.checkpoint), modalities="rgb")
    frames = load_frames(shared_data_dir() / "lowlight_real", limit=8, every=8)
    feeds = fam.make_inputs(frames, a.shape, a.config, seed=3)
    x = feeds[0]["rgb"]
    with torch.no_grad():
        reference = [module(torch.from_numpy(f["rgb"])).numpy() for f in feeds]
        eager_ms = median_ms(lambda: module(torch.from_numpy(x)), a.runs)
    rows = [{"name": "PyTorch eager FP32", "ms": eager_ms, "fidelity_db": None}]
    for precision, r in bundles.items():
        be = OnnxRuntimeBackend(r.bundle / "model.onnx", threads=threads)
        ms = median_ms(lambda: be.run({"rgb": x}), a.runs)
        fid = float(np.mean([psnr(be.run(f)["enhanced"], ref) for f, ref in zip(feeds, reference)]))
        rows.append({"name": f"{precision.upper()} artifact (onnxruntime)", "ms": ms, "fidelity_db": fid,
                     "int8_engine": r.manifest["stages"]["quantize"].get("engine")})
    frames_per_run = int(np.prod([int(d) for d in a.shape.split("x")][:2]))
    result = {
        "date": time.strftime("%Y-%m-%d"), "host": f"{platform.processor() or platform.machine()}, {threads} cores",
        "command": f"python benchmarks/amnet_cpu.py --config {a.config} --shape {a.shape} --runs {a.runs}",
        "torch": torch.__version__, "shape": a.shape, "threads": threads, "rows": rows,
        "fp32_artifact_vs_eager": eager_ms / rows[1]["ms"], "int8_vs_fp32_artifact": rows[1]["ms"] / rows[2]["ms"],
    }
    print(f"\nAMNet {a.config} at {a.shape} ({frames_per_run} frames/run), {threads} threads, median of {a.runs}")
    print(f"{'':34s}{'ms/run':>9s}{'frames/s':>10s}{'fidelity':>12s}")
    for r in rows:
        fid = f"{r['fidelity_db']:.2f} dB" if r["fidelity_db"] is not None else "reference"
        print(f"{r['name']:34s}{r['ms']:9.1f}{frames_per_run / r['ms'] * 1e3:10.1f}{fid:>12s}")
    print(f"FP32 artifact vs eager: {result['fp32_artifact_vs_eager']:.2f}x; INT8 vs FP32 artifact: {result['int8_vs_fp32_artifact']:.2f}x")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"amnet_cpu-{a.config}-{result['date']}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
