"""Streaming AMNet: per-frame latency with and without the feature cache, vs the 8-frame clip call; quality vs the clip path.

    nice .venv/bin/python benchmarks/streaming.py --config base --size 720x1280 --precision fp32 int8
    nice .venv/bin/python benchmarks/streaming.py --soak 10000        # the full soak (small frames)

and, per precision, `lowlight-run` end to end on a 12-frame video at that size
(decode, enhance, encode, write: its own frames/s line).

One run compiles, per precision, the clip bundle (1x8x3xHxW) and the streaming
bundle (--stream yes, 1x3xHxW) at the same size, then on the same frames:
  clip call      one 8-frame clip call, and that / 8 (the blocks-of-8 cost per frame, 7 frames of latency)
  stream cached  one encoder + one temporal/decoder pass per frame (Session.stream)
  stream uncached the streaming program recomputing the encoder for the whole window
Quality: PSNR against the undarkened frames of ../shared/data/video (darkened x0.25),
causal stream vs the clip path (blocks of 8, each frame seeing its next neighbour).
Speed is reported as ratios measured in one run (shared machine: absolute ms vary).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def compile_pair(config: str, h: int, w: int, precision: str, out: Path, clip_precision: str | None = None) -> tuple[Path, Path]:
    """The clip bundle (at `clip_precision`, default `precision`) and the streaming bundle, compiled once and reused."""
    from lowlight.calibration.data import SAMPLES_DIR
    from lowlight.compile.options import CompileOptions
    from lowlight.compile.pipeline import compile_bundle

    paths = []
    for name, shape, stream in (("clip", f"1x8x3x{h}x{w}", "no"), ("stream", f"1x3x{h}x{w}", "yes")):
        prec = (clip_precision or precision) if name == "clip" else precision
        dst = out / f"{config}-{name}-{h}x{w}-{prec}"
        if not (dst / "manifest.json").exists():
            compile_bundle(CompileOptions(config=config, shape=shape, out=str(dst), precision=prec, calib=str(SAMPLES_DIR),
                                          calib_frames=8, verify_frames=2, profile_runs=2, quiet=True, family_options={"stream": stream}))
        paths.append(dst)
    return paths[0], paths[1]


def frames_of(h: int, w: int, n: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """n real frames per video, resized to h x w: (darkened x0.25, undarkened)."""
    import cv2

    from lowlight.calibration.data import shared_data_dir
    from lowlight.runtime.io import read_video_frames

    day = []
    for v in ("vtest.avi", "car-detection.mp4"):
        day += [cv2.resize(f, (w, h), interpolation=cv2.INTER_AREA) for f in read_video_frames(shared_data_dir() / "video" / v, limit=n)]
    return [(f * 0.25).astype(np.float32) for f in day], day


def pct(a: list[float]) -> dict[str, float]:
    return {"p50": round(float(np.percentile(a, 50)), 2), "p99": round(float(np.percentile(a, 99)), 2)}


def bench(config: str, h: int, w: int, precision: str, out: Path, n: int, clip_precision: str | None = None) -> dict:
    from lowlight.core.metrics import psnr
    from lowlight.runtime import load

    clip_b, stream_b = compile_pair(config, h, w, precision, out, clip_precision)
    night, day = frames_of(h, w, n)
    clip = load(clip_b, verbose=False)
    res: dict = {"config": config, "size": f"{w}x{h}", "precision": precision, "clip_precision": clip_precision or precision,
                 "frames": len(night)}
    # clip path: blocks of 8 per video (frames of each video are contiguous, n per video)
    t_clip, clip_out = [], []
    for v in range(2):
        vid = night[v * n:(v + 1) * n]
        for i in range(0, len(vid) - 7, 8):
            x = np.stack([f.transpose(2, 0, 1) for f in vid[i:i + 8]])[None]
            t0 = time.perf_counter()
            y = clip(rgb=x)
            t_clip.append((time.perf_counter() - t0) * 1e3)
            clip_out += [(v * n + i + j, y[0, j].transpose(1, 2, 0)) for j in range(8)]
    res["clip_call_ms"] = pct(t_clip)
    res["clip_per_frame_ms"] = round(float(np.median(t_clip)) / 8, 2)
    for cache in (True, False):
        s = load(stream_b, verbose=False).stream("rgb_f32", exposure=None, cache=cache)
        outs, lat = {}, []
        for v in range(2):
            s.reset()
            for i in range(n):
                t0 = time.perf_counter()
                outs[v * n + i] = s(night[v * n + i])
                lat.append((time.perf_counter() - t0) * 1e3)
        key = "stream_cached" if cache else "stream_uncached"
        res[key] = {**pct(lat[2:]), "fps": round(1e3 / float(np.median(lat[2:])), 2)}
        if cache:
            idx = [i for i, _ in clip_out]
            res["psnr_clip_db"] = round(float(np.mean([psnr(o, day[i]) for i, o in clip_out])), 3)
            res["psnr_stream_db"] = round(float(np.mean([psnr(outs[i], day[i]) for i in idx])), 3)
            res["psnr_input_db"] = round(float(np.mean([psnr(night[i], day[i]) for i in idx])), 3)
    res["cached_vs_clip_call"] = round(res["stream_cached"]["p50"] / res["clip_call_ms"]["p50"], 3)
    res["cached_vs_uncached"] = round(res["stream_cached"]["p50"] / res["stream_uncached"]["p50"], 3)
    return res


def end_to_end(bundle: Path, h: int, w: int, n: int, out: Path) -> dict:
    """`lowlight-run` on an n-frame h x w video (darkened real frames): frames/s including decode, encode and write."""
    import re
    import subprocess
    import sys
    import tempfile

    import cv2

    night, _ = frames_of(h, w, n)
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        src, dst = Path(tmp) / "night.mp4", Path(tmp) / "enhanced.mp4"
        vw = cv2.VideoWriter(str(src), cv2.VideoWriter_fourcc(*"mp4v"), 30.0, (w, h))
        for f in night[:n]:
            vw.write(cv2.cvtColor(np.clip(f * 255 + 0.5, 0, 255).astype(np.uint8), cv2.COLOR_RGB2BGR))
        vw.release()
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", "from lowlight.runtime.cli import main; main()", str(bundle),
                               "--input", str(src), "--output", str(dst), "--quiet"], capture_output=True, text=True, check=True)
        wall = time.perf_counter() - t0
    m = re.search(r"([0-9.]+) frames/s end to end", proc.stdout + proc.stderr)
    return {"frames": n, "fps_end_to_end": float(m.group(1)) if m else None, "process_wall_s": round(wall, 2),
            "summary": (proc.stdout + proc.stderr).strip().splitlines()[-1]}


def soak(bundle: Path, frames: int) -> dict:
    """`frames` small frames through a stream, a bad one every 97th; RSS after warm-up vs at the end."""
    from lowlight.runtime import load

    def rss() -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096 / 2**20

    s = load(bundle, verbose=False).stream("bgr24")
    rng = np.random.default_rng(0)
    good = [(rng.random((48, 80, 3)) * 60).astype(np.uint8) for _ in range(16)]
    bad = [np.zeros((40, 80, 3), np.uint8), np.zeros(100, np.uint8), np.full((48, 80, 3), np.nan, np.float32)]
    warm = 0.0
    for i in range(frames):
        if i == 500:
            warm = rss()
        s(bad[i % 3] if i % 97 == 96 else good[i % 16])
    return {"frames": frames, "rss_warm_mb": round(warm, 1), "rss_end_mb": round(rss(), 1),
            "growth": round((rss() - warm) / warm, 4), **s.stats.as_dict()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="base")
    p.add_argument("--size", default="720x1280", help="HxW")
    p.add_argument("--precision", nargs="+", default=["fp32", "int8"])
    p.add_argument("--frames", type=int, default=24, help="frames per video")
    p.add_argument("--out", default="/tmp/lowlight-streaming-bench", help="where the compiled bundles go (reused)")
    p.add_argument("--soak", type=int, default=0, help="run the soak test over this many frames instead")
    p.add_argument("--clip-precision", default=None,
                   help="precision of the clip bundle the stream is compared with (default: the same). fp32 where the "
                        "machine cannot calibrate the 8-frame clip graph: AMNet base at 8x1280x720 needs more than 22 GB "
                        "in onnxruntime's calibrator, beyond a 24 GB host")
    p.add_argument("--end-to-end", type=int, default=12, metavar="N",
                   help="also time lowlight-run on an N-frame video with the streaming bundle (0: skip)")
    a = p.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    h, w = (int(v) for v in a.size.split("x"))
    if a.soak:
        _, sb = compile_pair("tiny", 64, 64, "fp32", out)
        print(json.dumps(soak(sb, a.soak), indent=1))
        return
    for prec in a.precision:
        res = bench(a.config, h, w, prec, out, a.frames, a.clip_precision)
        if a.end_to_end:
            res["lowlight_run"] = end_to_end(out / f"{a.config}-stream-{h}x{w}-{prec}", h, w, a.end_to_end, out)
        print(json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
