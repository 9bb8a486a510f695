"""`lowlight-compile`: checkpoint in, verified bundle out. Subcommands: profile, zoo, targets, build-engine."""
from __future__ import annotations

import argparse
import importlib
import math
import os
import sys
from typing import Callable

from lowlight.core.errors import LowlightError

# subcommand -> module with add_arguments(parser) and run(args) -> int
SUBCOMMANDS = {
    "profile": ("lowlight.compile.cli", "measure a bundle's latency and top operators on this host"),
    "zoo": ("lowlight.compile.cli", "reference models: zoo train FAMILY --config C"),
    "targets": ("lowlight.compile.cmd_targets", "list deployment targets and what their TensorRT can do"),
    "build-engine": ("lowlight.compile.cmd_build_engine", "on the device: build the TensorRT engine of a bundle and verify it"),
}


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (a count of frames or runs)."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"{v} is not a count: give 1 or more")
    return v


def finite_float(text: str) -> float:
    """argparse type: a finite number (no nan/inf)."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"{text} is not a finite number")
    return v


def nonneg_float(text: str) -> float:
    """argparse type: a finite number >= 0 (a budget in dB)."""
    v = finite_float(text)
    if v < 0:
        raise argparse.ArgumentTypeError(f"{v:g} is negative: a budget in dB is 0 or more")
    return v


def shape_text(text: str) -> str:
    """argparse type: a non-empty BxTxCxHxW-style shape of positive integers."""
    dims = text.strip().lower().split("x")
    if not text.strip() or not all(d.strip().isdigit() and int(d) > 0 for d in dims):
        raise argparse.ArgumentTypeError(f"{text!r} is not a shape like 1x8x3x256x256 (positive integers joined by x)")
    return "x".join(str(int(d)) for d in dims)


def _compile_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lowlight-compile",
        description="Compile a low-light enhancement checkpoint into a verified deployment bundle.",
        epilog="subcommands: " + "; ".join(f"{k}: {v[1]}" for k, v in SUBCOMMANDS.items()),
    )
    p.add_argument("checkpoint", nargs="?", default=None, help="safetensors or state_dict checkpoint (default: the shipped reference weights)")
    p.add_argument("--model", default="amnet", help="model family (amnet, gmmoe)")
    p.add_argument("--config", default=None, help="model config (default: the family's deployed config)")
    p.add_argument("--modalities", default=None, help="AMNet inputs: rgb|rgb+event|rgb+ir|rgb+event+ir (default rgb)")
    p.add_argument("--experts", default=None, help="GM-MoE expert dispatch: dense|top2")
    p.add_argument("--target", default="cpu", help="deployment target (see `lowlight-compile targets`)")
    p.add_argument("--trt-version", default=None, help="override the target's TensorRT version, e.g. 11.4")
    p.add_argument("--dla", action="store_true", help="Jetson: plan for a DLA core with GPU fallback")
    p.add_argument("--precision", choices=["fp32", "fp16", "int8"], default=None, help="default: fp32 on cpu, fp16 on GPU targets")
    p.add_argument("--calib", default=None, help="calibration frames (DIR or VIDEO) for int8; default: the shipped sample frames")
    p.add_argument("--verify-data", default=None, help="held-out frames (DIR or VIDEO) for verification; default: ../shared/data/lowlight_real")
    p.add_argument("--ground-truth", default=None, help="folder of clean photos: also verify on synthetic low-light pairs made from them")
    p.add_argument("--shape", type=shape_text, default=None, help="input shape, e.g. 1x8x3x256x256 (AMNet BxTxCxHxW)")
    p.add_argument("--out", default=None, help="bundle directory (default bundles/MODEL-CONFIG-TARGET-PRECISION)")
    p.add_argument("--min-fidelity", type=nonneg_float, default=35.0, help="fail below this PSNR (dB) to the FP32 model")
    p.add_argument("--max-drop", type=nonneg_float, default=0.3, help="fail above this PSNR drop (dB) against ground truth")
    p.add_argument("--int8-engine", choices=["auto", "nncf", "ort"], default="auto", help="post-training quantizer (auto: measure both on cpu)")
    p.add_argument("--calib-frames", type=positive_int, default=16, help="calibration samples, spread over the whole --calib source")
    p.add_argument("--verify-frames", type=positive_int, default=8, help="held-out verification samples (never calibration frames)")
    p.add_argument("--profile-runs", type=positive_int, default=20, help="timed runs for the latency profile")
    p.add_argument("--cache-dir", default=None, help="stage cache (default ~/.cache/lowlight-compile or $LOWLIGHT_CACHE)")
    p.add_argument("--force", action="store_true", help="redo every stage instead of reusing cached results")
    p.add_argument("--quiet", action="store_true")
    return p


def _run_compile(argv: list[str]) -> int:
    from lowlight.compile.options import CompileOptions
    from lowlight.compile.pipeline import compile_bundle

    a = _compile_parser().parse_args(argv)
    family_options = {k: v for k, v in (("modalities", a.modalities), ("experts", a.experts)) if v is not None}
    opts = CompileOptions(
        checkpoint=a.checkpoint, model=a.model, config=a.config, target=a.target, precision=a.precision,
        calib=a.calib, verify_data=a.verify_data, ground_truth=a.ground_truth, shape=a.shape, out=a.out,
        family_options=family_options, min_fidelity=a.min_fidelity, max_drop=a.max_drop, int8_engine=a.int8_engine,
        calib_frames=a.calib_frames, verify_frames=a.verify_frames, force=a.force, cache_dir=a.cache_dir,
        trt_version=a.trt_version, dla=a.dla, profile_runs=a.profile_runs, quiet=a.quiet,
    )
    r = compile_bundle(opts)
    v = r.verification
    print(f"\nbundle: {r.bundle}")
    print(f"  target {r.manifest['target']}, precision {r.manifest['precision']}, inputs {[i['name'] + str(i['shape']) for i in r.manifest['inputs']]}")
    line = f"  verification: {v['fidelity_psnr_db']:.2f} dB / SSIM {v['fidelity_ssim']:.4f} vs FP32 PyTorch"
    if "ground_truth" in v:
        line += f"; {v['ground_truth']['drop_db']:+.3f} dB drop vs ground truth"
    print(line + f"  ({r.bundle / 'verification.md'})")
    if r.profile:
        lat = r.profile["latency_ms"]
        print(f"  profile on this host: p50 {lat['p50']:.1f} ms, p99 {lat['p99']:.1f} ms, {r.profile['fps']:.1f} frames/s  ({r.bundle / 'profile.md'})")
    engine = r.manifest.get("engine")
    if r.manifest.get("runtime") == "tensorrt":
        if engine:
            print(f"  TensorRT engine: {r.bundle / engine['file']}")
        else:
            why = r.manifest.get("engine_status", "TensorRT is not available on this host")
            print(f"  TensorRT engine: NOT BUILT YET ({why}).")
            print(f"    finish on the device: lowlight-compile build-engine {r.bundle}")
    for n in r.notes:
        print(f"  note: {n}")
    return 0


def _profile(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="lowlight-compile profile", description="Measure a bundle's latency and top operators on this host.")
    p.add_argument("bundle")
    p.add_argument("--runs", type=positive_int, default=50, help="timed runs")
    p.add_argument("--warmup", type=positive_int, default=5, help="untimed runs first")
    p.add_argument("--threads", type=positive_int, default=None, help="onnxruntime intra-op threads (default: all cores)")
    p.add_argument("--no-save", action="store_true", help="print only; do not write profile.json/profile.md into the bundle")
    a = p.parse_args(argv)
    from lowlight.compile.profile import profile_bundle

    r = profile_bundle(a.bundle, runs=a.runs, warmup=a.warmup, threads=a.threads, save=not a.no_save)
    lat = r["latency_ms"]
    print(f"{a.bundle}: p50 {lat['p50']:.1f} ms, p90 {lat['p90']:.1f} ms, p99 {lat['p99']:.1f} ms, {r['fps']:.1f} frames/s ({r['backend']})")
    print(f"  top op types: " + ", ".join(f"{o['op_type']} {o['share']:.0%}" for o in r["top_op_types"][:5]))
    if not a.no_save:
        print(f"  wrote {a.bundle}/profile.json and profile.md")
    return 0


def _zoo(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="lowlight-compile zoo", description="Reference models shipped with lowlight-compile.")
    sub = p.add_subparsers(dest="action", required=True)
    t = sub.add_parser("train", help="train a reference checkpoint on synthetic low-light data from ../shared/data/clean")
    t.add_argument("family")
    t.add_argument("--config", default=None)
    t.add_argument("--out", default=None, help="output .safetensors (default: ./<family>_<config>.safetensors; the shipped weights are never replaced unless named here with --overwrite)")
    t.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    t.add_argument("--steps", type=int, default=None)
    t.add_argument("--threads", type=int, default=None)
    t.add_argument("--lr", type=float, default=None)
    t.add_argument("--crop", type=int, default=None)
    t.add_argument("--seed", type=int, default=None)
    t.add_argument("--init", default=None, help="start from these weights (fine-tune)")
    t.add_argument("--rgb-only", action="store_true", help="RGB-only fine-tuning (the paper's downstream stage; with --init)")
    sub.add_parser("list", help="families, configs and shipped weights")
    a = p.parse_args(argv)
    from lowlight.models import family_names, get_family

    if a.action == "list":
        for name in family_names():
            fam = get_family(name)
            for cfg in fam.configs:
                w = fam.weights_path(cfg)
                print(f"{name:8s} {cfg:8s} {'weights: ' + str(w) if w and w.exists() else 'no shipped weights'}")
        return 0
    fam = get_family(a.family)
    if fam.train_fn is None:
        raise LowlightError(f"{a.family} has no training recipe", "train it outside and pass the checkpoint")
    from pathlib import Path

    from lowlight.core.fsio import claim_file

    config = a.config or fam.default_config
    out = Path(a.out) if a.out else Path(f"{a.family}_{config}.safetensors")
    claim_file(out, "a weights file", "--out", overwrite=a.overwrite, inputs=[a.init])
    kw = {k: v for k, v in vars(a).items() if k in ("steps", "threads", "lr", "crop", "seed", "init", "rgb_only") and v is not None}
    fam.train_fn(config=config, out=str(out), **kw)
    return 0


def _external(module: str) -> Callable[[list[str]], int]:
    def run(argv: list[str]) -> int:
        mod = importlib.import_module(module)
        p = argparse.ArgumentParser(prog=f"lowlight-compile {argv and ''}".strip())
        mod.add_arguments(p)
        return int(mod.run(p.parse_args(argv)))

    return run


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] in SUBCOMMANDS:
            cmd, rest = argv[0], argv[1:]
            handler = {"profile": _profile, "zoo": _zoo}.get(cmd) or _external(SUBCOMMANDS[cmd][0])
            return handler(rest)
        return _run_compile(argv)
    except LowlightError as exc:
        print(f"\nerror: {exc.what}", file=sys.stderr)
        if exc.fix:
            print(f"  fix: {exc.fix}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: the output path was left as it was (a bundle is renamed into place only once complete)", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `lowlight-compile targets --json | head`: the reader left; not an error of ours or theirs.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    except MemoryError:
        print("\nerror: out of memory", file=sys.stderr)
        print("  fix: use a smaller --shape (or batch), or a machine with more memory", file=sys.stderr)
        return 2
    except OSError as exc:
        # A file system problem on a path the user gave (permissions, full disk, a folder that vanished).
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"\nerror: {exc.strerror or exc}{where}", file=sys.stderr)
        print("  fix: check that path exists, is the kind of file expected, and that you may read/write it", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
