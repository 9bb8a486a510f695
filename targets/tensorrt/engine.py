"""Build, verify and profile a TensorRT engine from a bundle's build plan.

The build and the verification go through Polygraphy's loaders, runner and
comparator (pip install 'lowlight-compile[trt]'); the latency split (H2D, GPU
compute, D2H, with and without a CUDA graph) and the per-layer profile use the
TensorRT API directly, since Polygraphy's runner reports only whole-inference
time. Strongly typed networks for TensorRT 11.x (precisions from the ONNX types and
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


def _network_loader(onnx_path: Path, flags: set[str]) -> Any:
    """Polygraphy's ONNX network loader, or ours where a creation flag it does not expose is needed.

    Polygraphy's `CreateNetwork` sets STRONGLY_TYPED but not PREFER_AOT_PYTHON_PLUGINS
    (0.53), which our AOT plugins need; only then the network is made here, in the
    (builder, network, parser) shape Polygraphy's engine loader takes.
    """
    from polygraphy.backend.trt import NetworkFromOnnxPath

    strongly_typed = "STRONGLY_TYPED" in flags
    if "PREFER_AOT_PYTHON_PLUGINS" not in flags:
        return NetworkFromOnnxPath(str(onnx_path), strongly_typed=strongly_typed)

    def load() -> tuple[Any, Any, Any]:
        import tensorrt as trt
        from polygraphy.backend.trt import util as trt_util

        builder = trt.Builder(trt_util.get_trt_logger())
        net_flags = 1 << int(trt.NetworkDefinitionCreationFlag.PREFER_AOT_PYTHON_PLUGINS)
        if strongly_typed:
            net_flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
        network = builder.create_network(net_flags)
        parser = trt.OnnxParser(network, trt_util.get_trt_logger())
        if not parser.parse_from_file(str(onnx_path)):
            errors = [f"{e.node_name()} ({e.node_operator()}): {e.desc()}" for e in (parser.get_error(i) for i in range(parser.num_errors))]
            raise _ParseError("\n  ".join(errors))
        return builder, network, parser

    return load


class _ParseError(Exception):
    """The ONNX parser's errors, one line per failing node."""


def _restamped_cache(path: Path, trt_version: str, cache_dir: Path) -> Path:
    """A copy of the calibration cache with its header re-stamped for the TensorRT that builds (10.3.0.30 -> 100300).

    TensorRT ignores a cache whose header names another version; the plan's
    version may lack the patch level the device reports. The bundle's own file
    is left as compiled.
    """
    from lowlight.targets.tensorrt.calib_cache import ALGORITHM, header

    lines = path.read_text().splitlines()
    lines[0] = header(TrtVersion.parse(trt_version).code, ALGORITHM)
    out = cache_dir / f"calibration-{TrtVersion.parse(trt_version).code}-{path.stat().st_size}.cache"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    return out


def build_engine(bundle_dir: str | Path, plan: dict[str, Any], cache_dir: str | Path,
                 log: Callable[[str], None] = print) -> dict[str, Any]:
    """Build `plan["engine"]` inside `bundle_dir` with Polygraphy's loaders; returns manifest entries for it.

    NetworkFromOnnxPath -> CreateConfig (precision flags, the calibration cache
    through Polygraphy's Calibrator with no data, profiles, workspace, timing
    cache, DLA) -> EngineBytesFromNetwork: the chain `polygraphy convert` runs,
    so a user can reproduce a build with the command the plan prints.
    """
    import tensorrt as trt
    from polygraphy.backend.trt import Calibrator, CreateConfig, EngineBytesFromNetwork, PostprocessConfig, Profile
    from polygraphy.exception import PolygraphyException

    from lowlight.core.errors import TargetError
    from lowlight.runtime.tensorrt_backend import host_gpu_arch

    bundle = Path(bundle_dir)
    if plan.get("plugins"):
        # Our AOT plugins must be in the registry before the parser meets their nodes.
        from lowlight.kernels.trt_plugins import register_plugins

        register_plugins()
    trt.init_libnvinfer_plugins(trt.Logger(trt.Logger.WARNING), "")

    flags = set(plan.get("flags", []))
    onnx_path = bundle / str(plan["onnx"])
    network = _network_loader(onnx_path, flags)
    calibrator = None
    if "INT8" in flags and plan.get("calibration_cache"):
        # No data: the cache holds every scale, Polygraphy's Calibrator hands it to TensorRT.
        cache = _restamped_cache(bundle / str(plan["calibration_cache"]), str(trt.__version__), Path(cache_dir))
        calibrator = Calibrator([], cache=str(cache), BaseClass=trt.IInt8MinMaxCalibrator)
    profiles = []
    for prof in plan.get("profiles", []):
        if prof:
            p = Profile()
            for name, s in prof.items():
                p.add(name, min=tuple(s["min"]), opt=tuple(s["opt"]), max=tuple(s["max"]))
            profiles.append(p)
    cache_path = Path(cache_dir) / str(plan.get("timing_cache", "timing.cache"))
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    dla = plan.get("dla_core")
    config = CreateConfig(
        fp16="FP16" in flags, int8="INT8" in flags, calibrator=calibrator, profiles=profiles or None,
        memory_pool_limits={trt.MemoryPoolType.WORKSPACE: int(plan["workspace_bytes"])},
        # Layer names (ONNX node names, fused ones joined by " + ") in the per-layer profile, not indices.
        profiling_verbosity=trt.ProfilingVerbosity.DETAILED,
        # Timing cache: tactic timings survive across builds of the same TRT + GPU.
        load_timing_cache=str(cache_path) if cache_path.exists() else None,
        use_dla=dla is not None, allow_gpu_fallback=dla is not None,
    )
    if dla is not None:  # CreateConfig picks DLA core 0; the plan may name another
        def set_core(builder: Any, net: Any, cfg: Any) -> None:
            cfg.DLA_core = int(dla)

        config = PostprocessConfig(config, set_core)

    log(f"building TensorRT engine for {plan['target']} ({plan['precision']}, flags {sorted(flags)}) with Polygraphy's loaders ...")
    try:
        serialized = EngineBytesFromNetwork(network, config=config, save_timing_cache=str(cache_path))()
    except _ParseError as exc:
        raise TargetError(f"TensorRT {trt.__version__} could not parse {onnx_path.name}:\n  {exc}",
                          "recompile for this device's TensorRT with --trt-version, or report the node above") from None
    except PolygraphyException as exc:  # parse or build failure; TensorRT's own log is above
        raise TargetError(f"TensorRT {trt.__version__} failed on {onnx_path.name}: {exc}",
                          "try --precision fp16, or drop --dla; recompile with --trt-version if the parser failed") from None
    engine_path = bundle / str(plan["engine"])
    engine_path.write_bytes(bytes(serialized))
    return {
        "file": engine_path.name,
        "trt_version": str(trt.__version__),
        "arch": host_gpu_arch() or str(plan["arch"]),
        "dla_core": dla,
        "timing_cache": str(cache_path),
        "built_with": "polygraphy " + _polygraphy_version(),
    }


def _polygraphy_version() -> str:
    import polygraphy

    return str(polygraphy.__version__)


def _reference_runs(bundle: Path, plan: dict[str, Any]) -> tuple[list[dict[str, np.ndarray]], Any]:
    """(feeds, reference RunResults): the bundle's Polygraphy files, the ones `polygraphy run --load-*` reads.

    Bundles written before those files existed fall back to reference.npz.
    """
    from polygraphy.comparator import IterationResult, RunResults
    from polygraphy.json import load_json

    from lowlight.targets.tensorrt.polygraphy_files import POLYGRAPHY_RUNNER

    poly = plan.get("polygraphy") or {}
    if poly.get("inputs") and (bundle / str(poly["inputs"])).is_file() and (bundle / str(poly["outputs"])).is_file():
        feeds = [dict(f) for f in load_json(str(bundle / str(poly["inputs"])))]
        return feeds, RunResults.load(str(bundle / str(poly["outputs"])))
    ref = np.load(bundle / str(plan["verify"]["reference"]))
    inputs = sorted(k.split(":", 1)[1] for k in ref.files if k.startswith("input:"))
    outputs = sorted(k.split(":", 1)[1] for k in ref.files if k.startswith("output:"))
    n = int(ref[f"input:{inputs[0]}"].shape[0]) if inputs else 0
    feeds = [{k: ref[f"input:{k}"][i] for k in inputs} for i in range(n)]
    results = RunResults()
    results.append((POLYGRAPHY_RUNNER, [IterationResult({k: ref[f"output:{k}"][i] for k in outputs}, runner_name=POLYGRAPHY_RUNNER)
                                        for i in range(n)]))
    return feeds, results


def verify_engine(bundle_dir: str | Path, plan: dict[str, Any], runner: Any = None) -> dict[str, Any]:
    """Run the engine on the bundle's reference inputs (Polygraphy's TrtRunner and Comparator); gate on PSNR.

    Polygraphy's comparator checks every output of every sample against
    `min_fidelity - worst_sample_margin_db` (its PSNR peaks at the reference's
    maximum); the gate itself is `core.metrics.compare_outputs`, the one the
    compiler's verify stage uses on the host, so host and device numbers mean
    the same thing. `runner`: any Polygraphy runner (default: TrtRunner on the
    bundle's engine); tests pass an onnxruntime runner.
    """
    from polygraphy.comparator import Comparator, PsnrCompareFunc

    from lowlight.core.errors import VerificationError
    from lowlight.core.metrics import compare_outputs

    bundle = Path(bundle_dir)
    feeds, reference = _reference_runs(bundle, plan)
    if runner is None:
        from polygraphy.backend.common import BytesFromPath
        from polygraphy.backend.trt import EngineFromBytes, TrtRunner

        runner = TrtRunner(EngineFromBytes(BytesFromPath(str(bundle / str(plan["engine"])))))
    floor = float(plan["verify"]["min_fidelity"])
    # The host's rule (lowlight.compile.verify): mean >= budget, every sample >= budget - margin.
    margin = float(plan["verify"].get("worst_sample_margin_db", 0.0))
    results = Comparator.run([runner], data_loader=feeds)
    ran = results[0][1]
    want = reference[0][1]
    names = [n for n in want[0].keys() if n in ran[0]] if want and ran else []
    # every output of a bundle TensorRT builds is an image: float RGB, or camera bytes (--pixel-format)
    per_sample = [compare_outputs(dict(got), dict(ref), names) for got, ref in zip(ran, want)]
    results.extend(reference)
    accuracy = Comparator.compare_accuracy(results, compare_func=PsnrCompareFunc(psnr_threshold=floor - margin))
    poly_passed = bool(accuracy)
    scores = {n: min(s[n].get("psnr_db", float("inf")) for s in per_sample) for n in names} if per_sample else {}
    means = {n: float(np.mean([s[n].get("psnr_db", float("inf")) for s in per_sample])) for n in names} if per_sample else {}
    worst = min(scores.values()) if scores else float("inf")
    mean = min(means.values()) if means else float("inf")
    result = {"fidelity_psnr_db": scores, "fidelity_psnr_db_mean": means, "per_sample": per_sample, "min_fidelity": floor,
              "worst_sample_floor": floor - margin, "what_ran": f"{runner.name} on this device (not an emulation)",
              "polygraphy": {"version": _polygraphy_version(), "compare": f"psnr >= {floor - margin} dB per output and sample",
                             "passed": poly_passed},
              "passed": mean >= floor and worst >= floor - margin and poly_passed}
    if not result["passed"]:
        raise VerificationError(
            f"engine output is {mean:.2f} dB mean / {worst:.2f} dB worst sample from the FP32 reference, "
            f"below {floor} dB mean or {floor - margin} dB per sample (Polygraphy's comparator: "
            f"{'passed' if poly_passed else 'failed'})",
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
