"""Build a TensorRT engine from a bundle's build plan (TensorRT Python API).

Strongly typed networks for TensorRT 11.x (precisions from the ONNX types and
Q/DQ), FP16/INT8 builder flags plus a calibration cache for 10.x, workspace
from the device memory, one optimization profile per plan, a timing cache
kept in the cache directory and reused across builds, a DLA core with GPU
fallback when asked, and our AOT plugins registered before parsing.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from lowlight.core.trt_version import TrtVersion
from lowlight.targets.tensorrt.capabilities import TrtTargetView

if TYPE_CHECKING:
    import tensorrt as trt


def build_blocker(target: TrtTargetView) -> str | None:
    """Why this host cannot build `target`'s engine, or None when it can."""
    from lowlight.runtime.tensorrt_backend import host_gpu_arch, host_is_jetson, host_trt_version

    # The Jetson rule first: installing TensorRT here would not help.
    if target.spec.jetson and not host_is_jetson():
        return f"{target.spec.display} engines must be built on the Jetson itself (TensorRT cannot cross-build for Jetson on this host)"
    have_trt = host_trt_version()
    if have_trt is None:
        return "TensorRT is not installed on this host (the tensorrt Python package does not import)"
    arch = host_gpu_arch()
    if arch is None:
        return "this host has no usable CUDA GPU (or pycuda is missing)"
    if arch != target.spec.arch:
        return f"this host's GPU is {arch}, the target is {target.spec.arch} (engines are not portable across architectures)"
    want, got = target.version, TrtVersion.try_parse(have_trt)
    if got is None or not want.matches(got):
        return f"this host has TensorRT {have_trt}, the target runs TensorRT {want} (engines are not portable across versions)"
    return None


def _calibrator(trt_mod: Any, cache_bytes: bytes) -> "trt.IInt8Calibrator":
    """A calibrator that never sees data: it hands TensorRT our cache."""

    class CacheCalibrator(trt_mod.IInt8MinMaxCalibrator):  # type: ignore[misc]  # base is Any
        def __init__(self) -> None:
            trt_mod.IInt8MinMaxCalibrator.__init__(self)

        def get_batch_size(self) -> int:
            return 1

        def get_batch(self, names: list[str]) -> list[int] | None:
            return None  # no data: the cache holds every scale

        def read_calibration_cache(self) -> bytes:
            return cache_bytes

        def write_calibration_cache(self, cache: Any) -> None:
            return None

    return CacheCalibrator()


def _cache_for_this_trt(path: Path, trt_version: str) -> bytes:
    """The cache with its header re-stamped for the TensorRT that builds (10.3.0.30 -> 100300).

    TensorRT ignores a cache whose header names another version; the plan's
    version may lack the patch level the device reports.
    """
    from lowlight.targets.tensorrt.calib_cache import ALGORITHM, header

    lines = path.read_text().splitlines()
    lines[0] = header(TrtVersion.parse(trt_version).code, ALGORITHM)
    return ("\n".join(lines) + "\n").encode()


def build_engine(bundle_dir: str | Path, plan: dict[str, Any], cache_dir: str | Path,
                 log: Callable[[str], None] = print) -> dict[str, Any]:
    """Build `plan["engine"]` inside `bundle_dir`; returns manifest entries for it."""
    import tensorrt as trt

    from lowlight.core.errors import TargetError
    from lowlight.runtime.tensorrt_backend import host_gpu_arch

    bundle = Path(bundle_dir)
    logger = trt.Logger(trt.Logger.WARNING)
    if plan.get("plugins"):
        # Our AOT plugins must be in the registry before the parser meets their nodes.
        from lowlight.kernels.trt_plugins import register_plugins

        register_plugins()
    trt.init_libnvinfer_plugins(logger, "")

    builder = trt.Builder(logger)
    flags = set(plan.get("flags", []))
    net_flags = 0
    if "STRONGLY_TYPED" in flags:
        net_flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    if "PREFER_AOT_PYTHON_PLUGINS" in flags:
        net_flags |= 1 << int(trt.NetworkDefinitionCreationFlag.PREFER_AOT_PYTHON_PLUGINS)
    network = builder.create_network(net_flags)
    parser = trt.OnnxParser(network, logger)
    onnx_path = bundle / str(plan["onnx"])
    if not parser.parse_from_file(str(onnx_path)):
        errors = []
        for i in range(parser.num_errors):
            err = parser.get_error(i)
            errors.append(f"{err.node_name()} ({err.node_operator()}): {err.desc()}")
        raise TargetError(
            f"TensorRT {trt.__version__} could not parse {onnx_path.name}:\n  " + "\n  ".join(errors),
            "recompile for this device's TensorRT with --trt-version, or report the node above",
        )

    config = builder.create_builder_config()
    # Layer names (ONNX node names, fused ones joined by " + ") in the per-layer profile, not indices.
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(plan["workspace_bytes"]))
    if "FP16" in flags:
        config.set_flag(trt.BuilderFlag.FP16)
    if "INT8" in flags:
        config.set_flag(trt.BuilderFlag.INT8)
        cache_name = plan.get("calibration_cache")
        if cache_name:
            config.int8_calibrator = _calibrator(trt, _cache_for_this_trt(bundle / str(cache_name), str(trt.__version__)))
    if plan.get("dla_core") is not None:
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = int(plan["dla_core"])
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    for prof in plan.get("profiles", []):
        if not prof:
            continue
        profile = builder.create_optimization_profile()
        for name, s in prof.items():
            profile.set_shape(name, trt.Dims(s["min"]), trt.Dims(s["opt"]), trt.Dims(s["max"]))
        config.add_optimization_profile(profile)

    # Timing cache: tactic timings survive across builds of the same TRT + GPU.
    cache_path = Path(cache_dir) / str(plan.get("timing_cache", "timing.cache"))
    timing = config.create_timing_cache(cache_path.read_bytes() if cache_path.exists() else b"")
    config.set_timing_cache(timing, False)

    log(f"building TensorRT engine for {plan['target']} ({plan['precision']}, flags {sorted(flags)}) ...")
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise TargetError("TensorRT failed to build the engine (see its log above)", "try --precision fp16, or drop --dla")
    engine_path = bundle / str(plan["engine"])
    engine_path.write_bytes(bytes(memoryview(serialized)))
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    cache_path.write_bytes(bytes(memoryview(config.get_timing_cache().serialize())))
    return {
        "file": engine_path.name,
        "trt_version": str(trt.__version__),
        "arch": host_gpu_arch() or str(plan["arch"]),
        "dla_core": plan.get("dla_core"),
        "timing_cache": str(cache_path),
    }


def verify_engine(bundle_dir: str | Path, plan: dict[str, Any]) -> dict[str, Any]:
    """Run the engine on each bundled reference input; compare with the reference outputs.

    The comparison is `core.metrics.compare_outputs`, the one the compiler's verify
    stage uses on the host, so host and device numbers mean the same thing.
    """
    from lowlight.core.errors import VerificationError
    from lowlight.core.metrics import compare_outputs
    from lowlight.runtime.tensorrt_backend import TensorRTBackend

    bundle = Path(bundle_dir)
    ref = np.load(bundle / str(plan["verify"]["reference"]))
    backend = TensorRTBackend(bundle / str(plan["engine"]))
    inputs = sorted(k.split(":", 1)[1] for k in ref.files if k.startswith("input:"))
    names = [n for n in backend.output_names if f"output:{n}" in ref.files]
    samples = int(ref[f"input:{inputs[0]}"].shape[0]) if inputs else 0
    per_sample: list[dict[str, dict[str, float]]] = []
    for i in range(samples):  # reference.npz stacks samples on a leading axis
        outputs = backend.run({n: ref[f"input:{n}"][i] for n in inputs})
        want = {n: ref[f"output:{n}"][i] for n in names}
        # every output of a bundle TensorRT builds is an image: float RGB, or camera bytes (--pixel-format)
        per_sample.append(compare_outputs(outputs, want, names))
    scores = {n: min(s[n].get("psnr_db", float("inf")) for s in per_sample) for n in names} if per_sample else {}
    means = {n: float(np.mean([s[n].get("psnr_db", float("inf")) for s in per_sample])) for n in names} if per_sample else {}
    worst = min(scores.values()) if scores else float("inf")
    mean = min(means.values()) if means else float("inf")
    floor = float(plan["verify"]["min_fidelity"])
    # The host's rule (lowlight.compile.verify): mean >= budget, every sample >= budget - margin.
    margin = float(plan["verify"].get("worst_sample_margin_db", 0.0))
    result = {"fidelity_psnr_db": scores, "fidelity_psnr_db_mean": means, "per_sample": per_sample, "min_fidelity": floor,
              "worst_sample_floor": floor - margin, "what_ran": "the TensorRT engine on this device (not an emulation)",
              "passed": mean >= floor and worst >= floor - margin}
    if not result["passed"]:
        raise VerificationError(
            f"engine output is {mean:.2f} dB mean / {worst:.2f} dB worst sample from the FP32 reference, "
            f"below {floor} dB mean or {floor - margin} dB per sample",
            "rebuild with --precision fp16, or recompile with more calibration frames",
        )
    return result


#: Per-layer profile of the engine on the device, in trtexec's `--exportProfile` JSON shape.
ENGINE_LAYERS = "engine_profile_layers.json"


def _stats(ms: list[float]) -> dict[str, float]:
    """trtexec's latency statistics (min, max, mean, median, percentile(90/95/99%)) plus std."""
    a = np.asarray(ms, dtype=np.float64)
    return {"min": float(a.min()), "max": float(a.max()), "mean": float(a.mean()), "median": float(np.median(a)),
            "percentile(90%)": float(np.percentile(a, 90)), "percentile(95%)": float(np.percentile(a, 95)),
            "percentile(99%)": float(np.percentile(a, 99)), "std": float(a.std())}


def _time_backend(backend: Any, iterations: int) -> dict[str, Any]:
    """H2D, GPU compute and D2H apart (CUDA events around each part), and their sum (trtexec's "Latency")."""
    cuda = backend._cuda  # the backend's buffers and stream: what `lowlight-run` itself runs
    stream = backend._stream
    h2d, compute, d2h, total = [], [], [], []
    for _ in range(iterations):
        ev = [cuda.Event() for _ in range(4)]
        ev[0].record(stream)
        for n in backend.input_names:
            cuda.memcpy_htod_async(backend._device[n], backend._host[n], stream)
        ev[1].record(stream)
        if backend._graph_exec is not None:
            backend._graph_exec.launch(stream)
        elif not backend._context.execute_async_v3(stream.handle):
            raise RuntimeError("TensorRT execute_async_v3 failed (see the TensorRT log above)")
        ev[2].record(stream)
        for n in backend.output_names:
            cuda.memcpy_dtoh_async(backend._host[n], backend._device[n], stream)
        ev[3].record(stream)
        ev[3].synchronize()
        h2d.append(ev[0].time_till(ev[1]))
        compute.append(ev[1].time_till(ev[2]))
        d2h.append(ev[2].time_till(ev[3]))
        total.append(ev[0].time_till(ev[3]))
    return {"H2D Latency": _stats(h2d), "GPU Compute Time": _stats(compute), "D2H Latency": _stats(d2h),
            "Latency": _stats(total), "cuda_graph": backend._graph_exec is not None}


def layer_profile(backend: Any, iterations: int, modules: dict[str, dict[str, str]] | None = None) -> list[dict[str, Any]]:
    """Per-layer times over `iterations` synchronous runs (IProfiler; no CUDA graph: the profiler needs each layer).

    Returns trtexec's `--exportProfile` shape: `[{"count": N}, {"name", "timeMs", "averageMs",
    "medianMs", "percentage"}, ...]`; each layer also names the PyTorch module of its first ONNX node.
    """
    import tensorrt as trt

    times: dict[str, list[float]] = {}

    class LayerProfiler(trt.IProfiler):
        def __init__(self) -> None:
            trt.IProfiler.__init__(self)

        def report_layer_time(self, layer_name: str, ms: float) -> None:
            times.setdefault(layer_name, []).append(float(ms))

    context = backend._context
    engine = backend._engine
    bindings = [int(backend._device[engine.get_tensor_name(i)]) for i in range(engine.num_io_tensors)]
    context.profiler = LayerProfiler()
    for _ in range(iterations):
        if not context.execute_v2(bindings):
            raise RuntimeError("TensorRT execute_v2 failed while profiling layers")
    total = sum(sum(v) for v in times.values()) or 1.0
    rows: list[dict[str, Any]] = [{"count": iterations}]
    for name, v in sorted(times.items(), key=lambda kv: -sum(kv[1])):
        first = name.split(" + ")[0].strip()
        mod = (modules or {}).get(first, {})
        rows.append({"name": name, "timeMs": sum(v), "averageMs": sum(v) / len(v), "medianMs": float(np.median(v)),
                     "percentage": 100.0 * sum(v) / total, "module": mod.get("module", "")})
    return rows


def device_versions() -> dict[str, Any]:
    """TensorRT, CUDA (driver and the toolkit pycuda was built with), GPU, and on a Jetson L4T/JetPack."""
    import subprocess

    import tensorrt as trt

    info: dict[str, Any] = {"tensorrt": str(trt.__version__)}
    try:
        import pycuda.driver as cuda  # type: ignore[import-not-found]

        cuda.init()
        drv = int(cuda.get_driver_version())
        info["cuda_driver"] = f"{drv // 1000}.{drv % 1000 // 10}"
        info["cuda_toolkit"] = ".".join(map(str, cuda.get_version()))
        info["gpu"] = str(cuda.Device(0).name())
    except Exception as exc:  # versions are a record, never a reason to fail the build
        info["cuda_error"] = f"{exc.__class__.__name__}: {exc}"
    try:
        info["nvidia_driver"] = Path("/proc/driver/nvidia/version").read_text().splitlines()[0].strip()
    except OSError:
        pass
    try:
        info["l4t"] = Path("/etc/nv_tegra_release").read_text().splitlines()[0].lstrip("# ").strip()
    except OSError:
        pass
    try:
        out = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "nvidia-jetpack"], capture_output=True, text=True, timeout=10)
        if out.returncode == 0 and out.stdout.strip():
            info["jetpack"] = out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def profile_engine(bundle_dir: str | Path, plan: dict[str, Any], iterations: int = 200, warmup: int = 20,
                   modules: dict[str, dict[str, str]] | None = None) -> dict[str, Any]:
    """Latency of the engine on this device without and with a CUDA graph, and its per-layer profile.

    Writes ENGINE_LAYERS into the bundle; returns the manifest's `engine_profile` entry.
    Feeds are the bundle's first reference input (real pixels: INT8 timings can depend on data).
    """
    from lowlight.runtime.tensorrt_backend import TensorRTBackend

    bundle = Path(bundle_dir)
    ref = np.load(bundle / str(plan["verify"]["reference"]))
    result: dict[str, Any] = {"device": plan.get("device"), "trt_version": None, "iterations": iterations, "warmup": warmup}
    layers: list[dict[str, Any]] = []
    for mode, graph in (("without_cuda_graph", False), ("with_cuda_graph", True)):
        backend = TensorRTBackend(bundle / str(plan["engine"]), cuda_graph=graph, warmup=warmup)
        for n in backend.input_names:
            if f"input:{n}" in ref.files:
                np.copyto(backend._host[n], ref[f"input:{n}"][0], casting="same_kind")
        result[mode] = _time_backend(backend, iterations)
        if not graph:
            layers = layer_profile(backend, max(10, iterations // 10), modules)
    import tensorrt as trt

    result["trt_version"] = str(trt.__version__)
    (bundle / ENGINE_LAYERS).write_text(json.dumps(layers, indent=1) + "\n")
    result["layers"] = ENGINE_LAYERS
    return result
