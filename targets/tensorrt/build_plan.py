"""The TensorRT build plan: everything needed to finish the engine on the device.

`finish_tensorrt_bundle` is what a TensorRT target's `finish_bundle` does in
the staging bundle: decide the build recipe for the target's TensorRT
generation, write `build_plan.json` (and, for 10.x INT8, the float ONNX and a
calibration cache), then build the engine right away when this host can build
for the target, or say plainly why not and which command finishes the job.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from lowlight.targets.tensorrt.capabilities import CUSTOM_DOMAIN, PLUGIN_NAMESPACE, TrtTargetView
from lowlight.targets.tensorrt.polygraphy_files import (  # noqa: F401  (re-exported: the plan's public names)
    POLYGRAPHY_INPUTS,
    POLYGRAPHY_OUTPUTS,
    POLYGRAPHY_RUNNER,
    polygraphy_command,
    write_polygraphy_json,
)

PLAN_FILE = "build_plan.json"
ENGINE_FILE = "model.engine"
FLOAT_ONNX = "model_float.onnx"
CALIB_CACHE = "calibration.cache"
FINISH_COMMAND = "lowlight-compile build-engine {bundle}"

def load_plan(bundle_dir: str | Path) -> dict[str, Any]:
    """Read a bundle's build_plan.json (BundleError when missing)."""
    from lowlight.core.errors import BundleError

    path = Path(bundle_dir) / PLAN_FILE
    if not path.exists():
        raise BundleError(f"{bundle_dir} has no {PLAN_FILE}", "compile it with a GPU/Jetson --target")
    plan: dict[str, Any] = json.loads(path.read_text())
    return plan


def workspace_bytes(memory_gb: float) -> int:
    """Builder workspace: a quarter of device memory, capped at 4 GiB.

    Jetsons share DRAM between CPU and GPU, so the builder must leave room for
    the camera pipeline; 4 GiB is plenty for conv nets at 720p.
    """
    return int(min(memory_gb / 4.0, 4.0) * (1 << 30))


def make_plan(target: TrtTargetView, context: dict[str, Any], bundle_files: dict[str, str]) -> dict[str, Any]:
    """The build recipe (JSON-able) for `target` from the pipeline's finish context."""
    import onnx

    spec, version, caps = target.spec, target.version, target.caps
    precision = str(context["precision"])
    onnx_name = bundle_files.get("onnx", "model.onnx")
    model = onnx.load(str(Path(context["model_path"])), load_external_data=False)
    plugins: dict[str, int] = {}
    for node in model.graph.node:
        if node.domain == CUSTOM_DOMAIN:
            plugins[node.op_type] = plugins.get(node.op_type, 0) + 1
    flags: list[str] = []
    if caps.strongly_typed_only:
        flags.append("STRONGLY_TYPED")  # precisions come from the ONNX types and Q/DQ
    else:
        if precision in ("fp16", "int8"):
            flags.append("FP16")  # layers kept in float (the spectral path) run FP16
        if precision == "int8":
            flags.append("INT8")
    dla = bool(context.get("dla"))
    if dla:
        flags.append("GPU_FALLBACK")
    if plugins and caps.aot_plugins:
        flags.append("PREFER_AOT_PYTHON_PLUGINS")
    shapes = {k: [int(d) for d in v] for k, v in dict(context.get("input_shapes", {})).items()}
    return {
        "format": 1,
        "target": target.name,
        "device": spec.display,
        "arch": spec.arch,
        "trt_version": str(version),
        "jetson": spec.jetson,
        "precision": precision,
        "onnx": onnx_name,
        "qdq_onnx": "model.onnx" if precision == "int8" else None,
        "int8_mode": (None if precision != "int8" else ("explicit-qdq" if caps.strongly_typed_only else "implicit-calibration-cache")),
        "calibration_cache": bundle_files.get("calibration_cache"),
        "flags": flags,
        "workspace_bytes": workspace_bytes(spec.memory_gb),
        # Static shapes (the compile's --shape): one profile with min = opt = max.
        "profiles": [{name: {"min": s, "opt": s, "max": s} for name, s in shapes.items()}],
        "dla_core": 0 if dla else None,
        "plugins": [{"op": op, "namespace": PLUGIN_NAMESPACE, "nodes": n} for op, n in sorted(plugins.items())],
        "inputs": {name: {"shape": s, "dtype": "float32"} for name, s in shapes.items()},
        "outputs": list(context.get("output_names", [])),
        "timing_cache": f"timing-trt{version}-{spec.arch}.cache",
        "engine": ENGINE_FILE,
        "verify": {
            "reference": Path(str(context.get("reference_path", "reference.npz"))).name,
            "min_fidelity": float(dict(context.get("verify", {})).get("min_fidelity", 35.0)),
            "worst_sample_margin_db": float(dict(context.get("verify", {})).get("worst_sample_margin_db", 3.0)),
        },
        "polygraphy": {"inputs": POLYGRAPHY_INPUTS, "outputs": POLYGRAPHY_OUTPUTS,
                       "command": polygraphy_command(onnx_name, flags, bundle_files.get("calibration_cache"),
                                                     float(dict(context.get("verify", {})).get("min_fidelity", 35.0)))},
    }


def finish_tensorrt_bundle(target: TrtTargetView, staging_dir: str, context: dict[str, Any]) -> dict[str, Any]:
    """Write plan (+ float ONNX and calibration cache for 10.x INT8); build if this host can.

    Returns manifest entries: "engine" (None until built: {"file", "trt_version",
    "arch"}), "engine_status" (why not built, in words), and a "tensorrt" section.
    """
    import onnx

    from lowlight.targets.tensorrt.calib_cache import cache_for_float_model
    from lowlight.targets.tensorrt.engine import build_blocker

    staging = Path(staging_dir)
    caps = target.caps
    precision = str(context["precision"])
    files: dict[str, str] = {"onnx": "model.onnx"}
    notes: list[str] = []
    if precision == "int8" and caps.implicit_int8_cache:
        # TensorRT 10.x implicit INT8: float graph + calibration cache keyed by its tensor names.
        float_src = context.get("float_model_path")
        if not float_src or not Path(str(float_src)).exists():
            from lowlight.core.errors import BundleError

            raise BundleError("INT8 for TensorRT 10.x needs the lowered float ONNX, which is missing", "recompile with --force")
        shutil.copyfile(str(float_src), staging / FLOAT_ONNX)
        files["onnx"] = FLOAT_ONNX
        qdq = onnx.load(str(context["model_path"]), load_external_data=False)
        flt = onnx.load(str(staging / FLOAT_ONNX), load_external_data=False)
        _, dropped = cache_for_float_model(qdq, flt, staging / CALIB_CACHE, target.version.code)
        files["calibration_cache"] = CALIB_CACHE
        if dropped:
            notes.append(f"{len(dropped)} Q/DQ tensor(s) have no same-named tensor in the float ONNX and were left out of the cache")
    plan = make_plan(target, context, files)
    (staging / PLAN_FILE).write_text(json.dumps(plan, indent=2) + "\n")
    write_polygraphy_json(staging, Path(str(context.get("reference_path", "reference.npz"))).name)

    section: dict[str, Any] = {
        "plan": PLAN_FILE,
        "trt_version": plan["trt_version"],
        "arch": plan["arch"],
        "onnx": plan["onnx"],
        "calibration_cache": plan["calibration_cache"],
        "dla": plan["dla_core"] is not None,
        "finish_command": FINISH_COMMAND.format(bundle="BUNDLE"),
        "polygraphy_command": f"cd BUNDLE && {plan['polygraphy']['command']}",
    }
    # Top-level "engine" / "engine_status" are what the runtime and the CLI summary read.
    entries: dict[str, Any] = {"tensorrt": section, "engine": None}
    if notes:
        entries["notes"] = notes
    blocker = build_blocker(target)
    if blocker is None:
        from lowlight.targets.tensorrt.engine import build_engine

        info = build_engine(staging, plan, Path(str(context.get("cache_dir", staging))))
        entries["engine"] = info
        entries["engine_status"] = f"built on this host (TensorRT {info['trt_version']}, {info['arch']})"
    else:
        # Plain words for the compile summary: what is missing, and what the bundle has instead.
        entries["engine_status"] = (
            f"{blocker}; the bundle carries the lowered ONNX"
            + (", the calibration cache" if plan["calibration_cache"] else "")
            + f" and {PLAN_FILE}"
            + f"; after build-engine, Polygraphy can check the engine too: cd BUNDLE && {plan['polygraphy']['command']}"
        )
    return entries
