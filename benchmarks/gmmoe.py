"""GM-MoE dense vs top-2: PyTorch eager, and the compiled INT8 CPU artifacts, in one run.

    python benchmarks/gmmoe.py [--config small] [--shape 1x3x480x640] [--runs 3]

Same machine, input size and thread count for every contender. Quality is PSNR
against ground truth on held-out synthetic pairs (the held-out photos of
../shared/data/clean, darkened with the training degradation, fixed seed);
latency is the median per frame over every pair (top-2 cost depends on which
experts each image drops). Writes benchmarks/results/gmmoe-<date>.json.
Aim: compiled top-2 >= 1.25x faster than compiled dense, <= 0.2 dB lost.
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

from lowlight.core.metrics import psnr
from lowlight.compile.options import CompileOptions
from lowlight.compile.pipeline import compile_bundle
from lowlight.models import load
from lowlight.models.train_gmmoe import read_photo
from lowlight.models.train_loop import split_photos
from lowlight.runtime.io import fit_frame


def heldout(h: int, w: int, seed: int = 99) -> list[tuple[np.ndarray, np.ndarray]]:
    """(low [1,3,h,w], clean [1,3,h,w]) pairs from the held-out clean photos."""
    from lowlight.calibration.degrade import degrade

    rng = np.random.default_rng(seed)
    pairs = []
    for p in split_photos()[1]:
        clean = fit_frame(read_photo(p), h, w)
        low = degrade(clean, rng)
        pairs.append((low.transpose(2, 0, 1)[None].copy(), clean.transpose(2, 0, 1)[None].copy()))
    return pairs


def _time_group(runners: dict, group: tuple[str, ...], lows: list[np.ndarray], runs: int, rows: dict) -> None:
    """Median ms/frame; the group's contenders interleaved frame by frame so outside load hits them alike."""
    times: dict[str, list[float]] = {k: [] for k in group}
    for k in group:
        runners[k](lows[0])  # warm-up
    for _ in range(runs):
        for x in lows:
            for k in group:
                t0 = time.perf_counter()
                runners[k](x)
                times[k].append(time.perf_counter() - t0)
    for k in group:
        rows[k]["ms"] = float(np.median(times[k]) * 1e3)
        print(f"{k}: {rows[k]}", flush=True)


def quality(fn, pairs) -> float:
    return float(np.mean([psnr(np.clip(fn(low), 0, 1), clean) for low, clean in pairs]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="small")
    ap.add_argument("--shape", default="1x3x480x640")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    a = ap.parse_args()
    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    _, _, h, w = (int(d) for d in a.shape.split("x"))
    pairs = heldout(h, w)
    lows = [p[0] for p in pairs]
    rows: dict[str, dict[str, float]] = {}
    runners = {}

    for mode in ("dense", "top2"):
        model = load("gmmoe", a.config, checkpoint=a.checkpoint, experts=mode)

        @torch.no_grad()
        def eager(x: np.ndarray, model=model) -> np.ndarray:
            return model(torch.from_numpy(x)).numpy()

        runners[f"eager {mode}"] = eager
        rows[f"eager {mode}"] = {"psnr": quality(eager, pairs)}

    # Eager is timed before anything else runs in this process: after the compile stages
    # (NNCF, onnxruntime sessions) PyTorch ran ~6x slower here.
    _time_group(runners, ("eager dense", "eager top2"), lows, a.runs, rows)

    # INT8 through the pipeline; the family's INT8 hook quantizes inside the If branches, gates float.
    import onnxruntime as ort

    for mode in ("dense", "top2"):
        t0 = time.perf_counter()
        r = compile_bundle(CompileOptions(
            checkpoint=a.checkpoint, model="gmmoe", config=a.config, precision="int8", shape=a.shape,
            family_options={"experts": mode}, out=f"bundles/bench-gmmoe-{a.config}-{mode}-int8", profile_runs=3,
            quiet=True, force=False,
        ))
        compile_s = time.perf_counter() - t0
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        # no busy-waiting between runs (the two sessions take turns)
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        sess = ort.InferenceSession(str(r.bundle / "model.onnx"), so, providers=["CPUExecutionProvider"])

        def run(x: np.ndarray, sess=sess) -> np.ndarray:
            return sess.run(None, {"rgb": x})[0]

        q = r.manifest["stages"]["quantize"]
        runners[f"int8 {mode}"] = run
        rows[f"int8 {mode}"] = {"psnr": quality(run, pairs), "fidelity_db": r.verification["fidelity_psnr_db"],
                                "engine": q.get("engine"), "compile_s": round(compile_s, 1)}
        print(f"compiled int8 {mode}: {rows[f'int8 {mode}']}", flush=True)

    _time_group(runners, ("int8 dense", "int8 top2"), lows, a.runs, rows)

    res = {
        "what": "GM-MoE dense vs top-2, eager and compiled INT8 (cpu target)",
        "config": a.config, "shape": a.shape, "pairs": len(pairs), "runs": a.runs, "threads": threads,
        "machine": platform.processor() or platform.machine(), "date": time.strftime("%Y-%m-%d"),
        "rows": rows,
        "top2_speedup_eager": rows["eager dense"]["ms"] / rows["eager top2"]["ms"],
        "top2_speedup_int8": rows["int8 dense"]["ms"] / rows["int8 top2"]["ms"],
        "top2_psnr_loss_int8_db": rows["int8 dense"]["psnr"] - rows["int8 top2"]["psnr"],
        "input_psnr": float(np.mean([psnr(low, clean) for low, clean in pairs])),
    }
    Path(a.out).mkdir(parents=True, exist_ok=True)
    path = Path(a.out) / f"gmmoe-{res['date']}.json"
    path.write_text(json.dumps(res, indent=2) + "\n")
    print(f"\n{'':14}{'ms/frame':>10}{'PSNR dB':>10}")
    for k, v in rows.items():
        print(f"{k:14}{v['ms']:10.1f}{v['psnr']:10.2f}")
    print(f"input PSNR {res['input_psnr']:.2f} dB; top-2 speedup eager {res['top2_speedup_eager']:.2f}x, "
          f"INT8 {res['top2_speedup_int8']:.2f}x (aim 1.25x); INT8 top-2 loses {res['top2_psnr_loss_int8_db']:.2f} dB "
          f"(aim <= 0.2)\nwrote {path}")


if __name__ == "__main__":
    main()
