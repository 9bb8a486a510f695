"""`lowlight-compile build-engine BUNDLE`: finish a bundle's TensorRT engine on the device.

Reads build_plan.json, checks that this machine can build for the bundle's
target (TensorRT version, GPU architecture, Jetson-ness), builds the engine,
verifies it against the bundled FP32 reference outputs, and records both in
manifest.json (with the engine's hash).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of the `build-engine` subcommand."""
    parser.add_argument("bundle", help="bundle directory written by `lowlight-compile --target ...`")
    parser.add_argument("--cache-dir", default=None, help="where the TensorRT timing cache lives (default: ~/.cache/lowlight-compile)")
    parser.add_argument("--dla-core", type=int, default=None, help="override the plan's DLA core (Jetson AGX/NX only)")
    parser.add_argument("--no-verify", action="store_true", help="skip verification against the bundled reference outputs")
    parser.add_argument("--force", action="store_true", help="rebuild even if the bundle already has an engine")
    parser.add_argument("--no-profile", action="store_true", help="skip the engine's latency and per-layer profile")
    parser.add_argument("--profile-iterations", type=int, default=200, help="timed iterations per mode (without / with CUDA graph)")


def update_manifest(bundle: Path, entries: dict[str, Any], section: dict[str, Any], new_files: list[str]) -> dict[str, Any]:
    """Merge top-level `entries` and the "tensorrt" `section`; rewrite with fresh file hashes (atomically)."""
    from lowlight.core.bundle import write_manifest

    manifest: dict[str, Any] = json.loads((bundle / "manifest.json").read_text())
    manifest.update(entries)
    manifest.setdefault("tensorrt", {}).update(section)
    missing = [name for name in new_files if not (bundle / name).is_file()]
    if missing:
        from lowlight.core.errors import BundleError

        raise BundleError(f"expected {missing} in {bundle} after the build", "rerun with --force")
    return write_manifest(bundle, manifest)


def run(args: argparse.Namespace) -> int:
    """Build (and verify) the engine described by the bundle's plan."""
    from lowlight.core.errors import BundleError, TargetError
    from lowlight.targets import get_target
    from lowlight.targets.tensorrt.build_plan import load_plan
    from lowlight.targets.tensorrt.engine import build_blocker, build_engine, verify_engine
    from lowlight.targets.tensorrt.target import TensorRTTarget

    bundle = Path(args.bundle)
    if not (bundle / "manifest.json").exists():
        raise BundleError(f"{bundle} is not a bundle (no manifest.json)", "pass the directory `lowlight-compile --out` wrote")
    plan = load_plan(bundle)
    if args.dla_core is not None:
        plan["dla_core"] = args.dla_core
        if "GPU_FALLBACK" not in plan["flags"]:
            plan["flags"].append("GPU_FALLBACK")
    engine_path = bundle / str(plan["engine"])
    if engine_path.exists() and not args.force:
        print(f"{engine_path} exists; use --force to rebuild")
        return 0
    target = get_target(str(plan["target"]), str(plan["trt_version"]))
    if not isinstance(target, TensorRTTarget):
        raise BundleError(f"{bundle}'s plan names target {plan['target']!r}, which does not use TensorRT", "recompile for a GPU target")
    blocker = build_blocker(target)
    if blocker is not None:
        from lowlight.runtime.tensorrt_backend import host_trt_version

        fix = f"run this command on a {plan['device']} ({plan['arch']}) with TensorRT {plan['trt_version']}"
        have = host_trt_version()
        if have is not None and "TensorRT" in blocker and "not portable across versions" in blocker:
            fix += f", or recompile the bundle for this device with --trt-version {have}"
        raise TargetError(f"cannot build the engine for {plan['target']} here: {blocker}", fix)
    cache_dir = Path(args.cache_dir or Path.home() / ".cache" / "lowlight-compile")
    info = build_engine(bundle, plan, cache_dir)
    section: dict[str, Any] = {}
    if not args.no_verify:
        section["engine_verify"] = verify_engine(bundle, plan)
        worst = min(section["engine_verify"]["fidelity_psnr_db"].values(), default=float("inf"))
        print(f"engine fidelity vs FP32 reference: {worst:.2f} dB (min {plan['verify']['min_fidelity']} dB): PASS")
    from lowlight.targets.tensorrt.engine import ENGINE_LAYERS, device_versions, profile_engine

    entries: dict[str, Any] = {"engine": info, "engine_status": f"built on the device (TensorRT {info['trt_version']}, {info['arch']})",
                               "device_versions": device_versions()}
    new_files = [str(info["file"])]
    if not args.no_profile:
        prof = profile_engine(bundle, plan, iterations=max(args.profile_iterations, 10), modules=_node_modules(bundle / str(plan["onnx"])))
        entries["engine_profile"] = prof
        new_files.append(ENGINE_LAYERS)
        for mode in ("without_cuda_graph", "with_cuda_graph"):
            m = prof[mode]
            print(f"engine latency {mode.replace('_', ' ')}: median {m['Latency']['median']:.3f} ms "
                  f"(H2D {m['H2D Latency']['median']:.3f}, GPU compute {m['GPU Compute Time']['median']:.3f}, "
                  f"D2H {m['D2H Latency']['median']:.3f})")
    manifest = update_manifest(bundle, entries, section, new_files)
    # profile.md's device section and report.html are refreshed by the CLI layer after this returns
    # (lowlight.compile.cli AFTER hooks): TensorRT code does not import the compiler's reports.
    print(f"engine written: {engine_path}")
    poly = plan.get("polygraphy", {}).get("command")
    if poly:
        print(f"cross-check with Polygraphy (pip install 'lowlight-compile[trt]'): cd {bundle} && {poly}")
    return 0


def _node_modules(onnx_path: Path) -> dict[str, dict[str, str]]:
    """ONNX node -> PyTorch module (kept in the graph's metadata since export); {} without onnx installed."""
    try:
        import onnx
    except ImportError:
        return {}
    from lowlight.core.onnx_graph import node_modules

    return node_modules(onnx.load(str(onnx_path), load_external_data=False))
