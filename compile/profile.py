"""`lowlight-compile profile BUNDLE`: latency (p50/p90/p99, FPS) and top operators by time.

Measured with onnxruntime on this host; for GPU targets the report also shows
the roofline prediction for the target device next to the host measurement.
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from lowlight.core.bundle import as_program_manifest, bundle_path, read_manifest
from lowlight.runtime.session import Session
from lowlight.runtime.session import load as load_session


def _feeds(root: Path, manifest: dict[str, Any]) -> dict[str, np.ndarray]:
    ref = root / manifest.get("reference", "")
    if manifest.get("reference") and ref.is_file():
        data = np.load(ref)
        return {i["name"]: data[f"input:{i['name']}"][0] for i in manifest["inputs"]}
    rng = np.random.default_rng(0)
    return {i["name"]: rng.random(i["shape"], dtype=np.float32) for i in manifest["inputs"]}


def frames_per_run(tensor: dict[str, Any]) -> int:
    """Frames one run enhances, from the first input's declared layout (BTCHW: B*T; else the batch)."""
    shape = tensor["shape"]
    layout = tensor.get("layout") or ("BTCHW" if len(shape) == 5 else "BCHW")
    return int(shape[0] * shape[1]) if layout == "BTCHW" else int(shape[0])


def top_operators(profile_files: str | list[str], top: int = 10) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(by op type, by node) from onnxruntime profiles (one per component): total microseconds per run-averaged call."""
    files = [profile_files] if isinstance(profile_files, str) else list(profile_files)
    events = [e for f in files for e in json.loads(Path(f).read_text())]
    by_type: dict[str, float] = defaultdict(float)
    by_node: dict[str, float] = defaultdict(float)
    op_of: dict[str, str] = {}
    for e in events:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time"):
            continue
        node = e["name"][: -len("_kernel_time")]
        op = e.get("args", {}).get("op_name", "?")
        by_type[op] += e["dur"]
        by_node[node] += e["dur"]
        op_of[node] = op
    total = sum(by_type.values()) or 1.0
    types = [{"op_type": k, "us": v, "share": v / total} for k, v in sorted(by_type.items(), key=lambda kv: -kv[1])[:top]]
    nodes = [{"node": k, "op_type": op_of[k], "us": v, "share": v / total} for k, v in sorted(by_node.items(), key=lambda kv: -kv[1])[:top]]
    return types, nodes


def profile_bundle(bundle: str | Path, runs: int = 20, warmup: int = 3, threads: int | None = None, save: bool = True) -> dict[str, Any]:
    """Measure the bundle's model on this host; with `save`, write profile.json / profile.md into it.

    A bundle that cannot be written (read-only copy, another user's) is refused
    before measuring, with the fix; `save=False` only measures.
    """
    from lowlight.core.bundle import write_manifest
    from lowlight.core.errors import OutputError
    from lowlight.core.fsio import check_writable
    from lowlight.runtime.onnxruntime_backend import OnnxRuntimeBackend

    if runs < 1 or warmup < 0:
        raise ValueError("profile_bundle needs runs >= 1 and warmup >= 0")
    root = Path(bundle)
    manifest = read_manifest(root)
    if save:
        try:
            check_writable(root / "profile.json", "bundle")
            for name in ("profile.json", "profile.md", "manifest.json"):
                f = root / name
                if f.exists() and not os.access(f, os.W_OK):
                    raise OutputError(f"{f} is read-only", "")
        except OutputError as exc:
            raise OutputError(
                f"cannot write the profile into {root}: {exc.what}",
                f"pass --no-save to only print the measurement, or copy the bundle somewhere writable (cp -r {root} /tmp/)",
            ) from None
    feeds = _feeds(root, manifest)
    # The whole program (every component, every step) is what a frame costs.
    sess = load_session(root, backend="onnxruntime", verbose=False, threads=threads)
    for _ in range(warmup):
        sess.run(**feeds)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        sess.run(**feeds)
        times.append(time.perf_counter() - t0)
    ms = np.array(times) * 1e3
    shape = manifest["inputs"][0]["shape"]
    frames = frames_per_run(manifest["inputs"][0])
    with tempfile.TemporaryDirectory() as tmp:
        profiled = {
            name: OnnxRuntimeBackend(bundle_path(root, manifest, comp["file"]), threads=threads, profile_prefix=os.path.join(tmp, name))
            for name, comp in as_program_manifest(manifest)["components"].items()
        }
        profiled_sess = Session(root, manifest, profiled, constants=sess.constants)
        for _ in range(3):
            profiled_sess.run(**feeds)
        by_type, by_node = top_operators([b.end_profiling() for b in profiled.values()])
    backend = sess.backend
    report: dict[str, Any] = {
        "host": _host(),
        "backend": backend.name,
        "precision": manifest.get("precision"),
        "input_shape": shape,
        "frames_per_run": frames,
        "runs": runs,
        "warmup": warmup,
        "latency_ms": {"p50": float(np.percentile(ms, 50)), "p90": float(np.percentile(ms, 90)), "p99": float(np.percentile(ms, 99)), "mean": float(ms.mean())},
        "fps": frames / (float(np.percentile(ms, 50)) / 1e3),
        "top_op_types": by_type,
        "top_nodes": by_node,
    }
    report["roofline"] = _roofline(root, manifest)
    if not save:
        return report
    (root / "profile.json").write_text(json.dumps(report, indent=2) + "\n")
    (root / "profile.md").write_text(to_markdown(report))
    write_manifest(root, manifest | {"profile": {"latency_ms": report["latency_ms"], "fps": report["fps"], "host": report["host"]}})
    return report


def _roofline(root: Path, manifest: dict[str, Any]) -> dict[str, Any] | None:
    """Predicted per-frame latency on the bundle's target (lowlight.compile.roofline), if it has peak figures."""
    try:
        from lowlight.compile.roofline import estimate
        from lowlight.targets import get_target
    except ImportError:
        return None
    if "model" not in manifest:
        return None  # several components: the roofline reads one graph (per-program estimates are not made yet)
    target = get_target(manifest["target"], manifest.get("trt_version"))
    return estimate(str(root / manifest["model"]), target, manifest.get("precision", "fp32"))


def _host() -> str:
    import platform

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores"


def to_markdown(r: dict[str, Any]) -> str:
    lat = r["latency_ms"]
    lines = [
        "# Profile",
        "",
        f"- host: {r['host']} ({r['backend']})",
        f"- input {r['input_shape']} ({r['frames_per_run']} frames per run), precision {r['precision']}",
        f"- latency over {r['runs']} runs after {r['warmup']} warm-up: p50 **{lat['p50']:.1f} ms**, p90 {lat['p90']:.1f} ms, p99 {lat['p99']:.1f} ms",
        f"- throughput: **{r['fps']:.1f} frames/s**",
        "",
        "## Top operator types",
        "",
        "| op | time/run (us) | share |",
        "|---|---:|---:|",
    ]
    runs = 3  # the profiled runs
    lines += [f"| {o['op_type']} | {o['us'] / runs:.0f} | {o['share']:.1%} |" for o in r["top_op_types"]]
    lines += ["", "## Top nodes", "", "| node | op | time/run (us) | share |", "|---|---|---:|---:|"]
    lines += [f"| {o['node']} | {o['op_type']} | {o['us'] / runs:.0f} | {o['share']:.1%} |" for o in r["top_nodes"]]
    if r.get("roofline"):
        try:
            from lowlight.compile.roofline import to_markdown as roof_md

            lines += ["", roof_md(r["roofline"], measured_ms=lat["p50"])]
        except ImportError:
            pass
    return "\n".join(lines) + "\n"
