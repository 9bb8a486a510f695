"""`lowlight-compile profile BUNDLE`: re-measure a bundle's latency and top operators on this host."""
from __future__ import annotations

import argparse

from lowlight.compile.cli_types import finite_float, positive_int

SUMMARY = "measure a bundle's latency and top operators on this host"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of `profile`."""
    p.add_argument("bundle", help="bundle directory written by lowlight-compile")
    p.add_argument("--runs", type=positive_int, default=50, help="timed runs")
    p.add_argument("--warmup", type=positive_int, default=5, help="untimed runs first")
    p.add_argument("--threads", type=positive_int, default=None, help="onnxruntime intra-op threads (default: all cores)")
    p.add_argument("--duration", type=finite_float, default=0.0,
                   help="also keep running until this many seconds have passed (more runs: trustworthy p95/p99, as trtexec --duration)")
    p.add_argument("--no-save", action="store_true", help="print only; do not write profile.json/profile.md into the bundle")


def run(a: argparse.Namespace) -> int:
    """Profile and print the headline; write the reports into the bundle unless --no-save."""
    from lowlight.compile.profile import profile_bundle

    r = profile_bundle(a.bundle, runs=a.runs, warmup=a.warmup, threads=a.threads, save=not a.no_save, duration_s=max(a.duration, 0.0))
    lat = r["latency_ms"]
    print(f"{a.bundle}: p50 {lat['p50']:.1f} ms, p90 {lat['p90']:.1f} ms, p99 {lat['p99']:.1f} ms, {r['fps']:.1f} frames/s ({r['backend']})")
    print("  top op types: " + ", ".join(f"{o['op_type']} {o['share']:.0%}" for o in r["top_op_types"][:5]))
    if not a.no_save:
        print(f"  wrote {a.bundle}/profile.json and profile.md")
    return 0
