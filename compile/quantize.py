"""Quantize stage: FP16 conversion, or INT8 post-training Q/DQ calibrated on real frames.

Three INT8 engines: NNCF, onnxruntime's static quantizer and, for TensorRT
targets, NVIDIA's Model Optimizer (`nvidia-modelopt`, ONNX PTQ; the optional
``[modelopt]`` extra). The Q/DQ flavour is the target's: TensorRT takes only
symmetric int8 with zero-point 0 (per-channel weights on axis 0); onnxruntime on
x86 runs uint8 activations x int8 weights (U8S8) fastest. For the CPU target
NNCF and ORT are run and timed here, and the faster artifact that keeps fidelity
wins: on conv U-Nets ORT's U8S8 Q/DQ is typically the fast one. For TensorRT
targets NNCF and Model Optimizer are run (speed can only be timed on the device):
the faithful artifact with the largest INT8 share of the matrix FLOPs wins.
A family's keep-float policy is a floor; which other nodes stay float is measured
(`compile.sensitivity`), per engine, on the engine's own Q/DQ graph.
"""
from __future__ import annotations

import contextlib
import io
import logging
import time
import warnings
from pathlib import Path
from typing import Any, Iterable

import numpy as np

import onnx

from lowlight.compile.export import save_onnx
from lowlight.core.onnx_graph import GraphIndex, has_custom_nodes, ort_session
from lowlight.compile.simplify import onnx_runner

QUANTIZED_OPS = ["Conv", "MatMul", "Gemm"]

#: Weight bits of the onnxruntime U8S8 flavour: 7 (int8 storage, values in [-64, 63]), in both engines.
#: x86 processors without VNNI (AVX2, AVX-512F) multiply u8 x s8 pairs with vpmaddubsw, whose int16 pair sums
#: saturate at 32767 when 255 * 127 * 2 = 64770 is reachable; the fused QLinearConv then differs from the Q/DQ
#: graph it came from. Measured on GM-MoE small (top-2, 128x160, experts quantized, 2-core EPYC with AVX2 only):
#: 8-bit weights 35.8 dB worst frame to the float graph unfused and 12.0 dB with onnxruntime's fusions;
#: 7-bit weights 36.4 and 36.5 dB. A bundle runs on whatever x86 the vehicle has, so the flavour is portable
#: rather than tuned to the compiling host (onnxruntime's `reduce_range`; NNCF's overflow fix on every layer).
#: TensorRT targets (s8s8 on DP4A/tensor cores) keep 8 bits.
ORT_U8S8_WEIGHT_BITS = 7


def weight_bits(flavour: str) -> int:
    """Weight bits of a Q/DQ flavour: ORT_U8S8_WEIGHT_BITS for onnxruntime's U8S8 (and OpenVINO's INT8, whose CPU
    kernels are u8 x s8 too), 8 for TensorRT's s8s8. The engines' half-range switches follow it."""
    return ORT_U8S8_WEIGHT_BITS if flavour == "ort-u8s8" else 8


def to_fp16(src: str | Path, dst: str | Path, keep_float: list[str]) -> dict[str, Any]:
    """FP16 weights and activations, float32 inputs/outputs; `keep_float` nodes (and DFT) stay FP32."""
    import onnx
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    model = onnx.load(str(src))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        half = convert_float_to_float16(
            model,
            keep_io_types=True,
            op_block_list=list(DEFAULT_OP_BLOCK_LIST) + ["DFT"],
            node_block_list=keep_float,
        )
    save_onnx(half, dst)
    return {"engine": "onnxruntime.transformers.float16", "kept_float": len(keep_float)}


def fp16_autocast(src: str | Path, dst: str | Path, keep_float: list[str], feeds: list[dict[str, np.ndarray]]) -> dict[str, Any]:
    """FP16 for TensorRT targets by NVIDIA Model Optimizer's AutoCast (`compile.modelopt_ptq.autocast`): the graph
    runs once in FP32 on `feeds` and the nodes whose values leave +-512 stay FP32 beside `keep_float`."""
    from lowlight.compile import modelopt_ptq

    return modelopt_ptq.autocast(src, dst, keep_float, feeds)


def _nncf_int8(src: Path, dst: Path, feeds: list[dict[str, np.ndarray]], flavour: str, keep_float: list[str]) -> None:
    import nncf
    import onnx
    from nncf.common.quantization.structs import QuantizationScheme
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, QuantizationParameters
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    model = onnx.shape_inference.infer_shapes(onnx.load(str(src)), data_prop=True)  # NNCF needs every edge typed
    if flavour == "trt-s8s8":
        # Symmetric everywhere; NNCF still picks unsigned for non-negative tensors
        # (forcing signed conflicts with its HW configs), fixed up below.
        preset = nncf.QuantizationPreset.PERFORMANCE
        advanced = AdvancedQuantizationParameters(
            activations_quantization_params=QuantizationParameters(mode=QuantizationScheme.SYMMETRIC),
        )
    else:
        from nncf.quantization.advanced_parameters import OverflowFix

        preset = nncf.QuantizationPreset.MIXED  # asymmetric activations, symmetric weights
        # half-range (7-bit) weights on every layer, not only the first (NNCF's default)
        advanced = AdvancedQuantizationParameters(
            overflow_fix=OverflowFix.ENABLE if weight_bits(flavour) == 7 else OverflowFix.DISABLE)
    # Global min/max over the calibration set rather than NNCF's default mean of
    # per-sample extremes: a frame brighter than the average must not clip.
    advanced.activations_range_estimator_params = RangeEstimatorParametersSet.MINMAX
    ignored = nncf.IgnoredScope(names=keep_float, validate=False) if keep_float else None
    nncf_log = logging.getLogger("nncf")
    level = nncf_log.level
    nncf_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            q = nncf.quantize(
                model,
                nncf.Dataset(feeds),
                preset=preset,
                subset_size=len(feeds),
                ignored_scope=ignored,
                advanced_parameters=advanced,
            )
    finally:
        nncf_log.setLevel(level)
    if flavour == "trt-s8s8":
        q = unsigned_to_signed_qdq(q)
    save_onnx(q, dst)


def unsigned_to_signed_qdq(model: "onnx.ModelProto") -> "onnx.ModelProto":
    """Rewrite symmetric uint8 Q/DQ (zero-point 0) as int8 with zero-point 0, the only form TensorRT takes.

    A uint8 grid [0, 255]*s becomes an int8 grid [0, 127]*(255/127 s): the same
    range with half the levels, which is what TensorRT does for non-negative
    tensors anyway. Asymmetric uint8 (non-zero zero-point) cannot be converted.
    """
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    done: set[str] = set()
    for n in model.graph.node:
        if n.op_type not in ("QuantizeLinear", "DequantizeLinear") or len(n.input) < 3:
            continue
        zp_name, scale_name = n.input[2], n.input[1]
        zp = inits.get(zp_name)
        if zp is None or zp.data_type != onnx.TensorProto.UINT8:
            continue
        zp_arr = numpy_helper.to_array(zp)
        if np.any(zp_arr != 0):
            raise ValueError(f"{n.name}: asymmetric uint8 Q/DQ cannot be made TensorRT-compatible")
        if zp_name not in done:
            zp.CopyFrom(numpy_helper.from_array(zp_arr.astype(np.int8), zp_name))
            done.add(zp_name)
        if scale_name not in done:
            scale = numpy_helper.to_array(inits[scale_name])
            inits[scale_name].CopyFrom(numpy_helper.from_array((scale * (255.0 / 127.0)).astype(scale.dtype), scale_name))
            done.add(scale_name)
    # stale uint8 type annotations of the quantized tensors would fail type checking
    stale = [v for v in model.graph.value_info if v.type.tensor_type.elem_type == onnx.TensorProto.UINT8]
    for v in stale:
        model.graph.value_info.remove(v)
    return model


class _Reader:
    """onnxruntime CalibrationDataReader over a list of feeds."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self._it: Iterable[dict[str, np.ndarray]] = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)  # type: ignore[call-overload]


def _ort_int8(src: Path, dst: Path, feeds: list[dict[str, np.ndarray]], flavour: str, keep_float: list[str]) -> None:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    symmetric = flavour == "trt-s8s8"
    ort_log = logging.getLogger()
    level = ort_log.level
    ort_log.setLevel(logging.ERROR)
    try:
        quantize_static(
            str(src),
            str(dst),
            _Reader(feeds),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=QUANTIZED_OPS,
            per_channel=True,
            reduce_range=weight_bits(flavour) == 7,
            activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=keep_float,
            # TensorRT wants float biases (it folds them itself), not int32 Q/DQ ones
            extra_options={"ActivationSymmetric": symmetric, "WeightSymmetric": True, "QuantizeBias": not symmetric},
        )
    finally:
        ort_log.setLevel(level)


def modelopt_missing() -> str | None:
    """Why NVIDIA Model Optimizer's ONNX tools cannot be imported here, or None."""
    from lowlight.compile import modelopt_ptq

    return modelopt_ptq.missing()


def _modelopt_int8(src: Path, dst: Path, feeds: list[dict[str, np.ndarray]], flavour: str, keep_float: list[str]) -> None:
    """NVIDIA Model Optimizer's ONNX PTQ (`compile.modelopt_ptq.int8`): Q/DQ by TensorRT's rules, symmetric int8."""
    from lowlight.compile import modelopt_ptq
    from lowlight.core.errors import LowlightError

    if flavour != "trt-s8s8":
        raise LowlightError("Model Optimizer writes TensorRT's Q/DQ, not onnxruntime's U8S8",
                            "use --int8-engine auto, nncf or ort for the cpu target")
    modelopt_ptq.int8(src, dst, feeds, keep_float)


ENGINES = {"nncf": _nncf_int8, "ort": _ort_int8, "modelopt": _modelopt_int8}


def int8_matrix_share(float_path: str | Path, qdq: "str | Path | onnx.ModelProto") -> float:
    """Share of the float graph's Conv/ConvTranspose/MatMul/Gemm FLOPs that run quantized in `qdq` (read a
    DequantizeLinear output): a device-free proxy of TensorRT INT8 speed, where INT8 has twice FP16's peak."""
    from lowlight.compile.roofline import MATRIX_OPS, node_flops, static_shapes
    from lowlight.compile.sensitivity import quantized_nodes

    fm = onnx.load(str(float_path))
    shapes = static_shapes(fm)
    flops = {n.name: node_flops(n, shapes) for n in fm.graph.node if n.op_type in MATRIX_OPS and n.name}
    q = set(quantized_nodes(qdq if isinstance(qdq, onnx.ModelProto) else onnx.load(str(qdq))))
    total = sum(flops.values())
    return sum(v for n, v in flops.items() if n in q) / total if total else 0.0


def time_onnx(path: str | Path, feed: dict[str, np.ndarray], runs: int = 5) -> float:
    """Median seconds per run with onnxruntime on this machine (after one warm-up run)."""
    sess = ort_session(path)
    sess.run(None, feed)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        sess.run(None, feed)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def qdq_fidelity(float_path: str | Path, q_path: str | Path, feeds: list[dict[str, np.ndarray]]) -> float:
    """Mean PSNR (dB) of the quantized graph's outputs vs the float graph's."""
    from lowlight.core.metrics import psnr

    # One session at a time: at 8x1280x720 each onnxruntime session holds several GB of arena.
    ref = onnx_runner(float_path)
    want = [ref(f)[0] for f in feeds]
    del ref
    q = onnx_runner(q_path)
    return float(np.mean([psnr(q(f)[0], w) for f, w in zip(feeds, want)]))


def activation_bytes(model: "str | Path | onnx.ModelProto") -> int:
    """Bytes of every intermediate tensor of one inference, from the graph's inferred static shapes."""
    model = onnx.shape_inference.infer_shapes(model if isinstance(model, onnx.ModelProto) else onnx.load(str(model)))
    total = 0
    for v in model.graph.value_info:
        t = v.type.tensor_type
        dims = [d.dim_value for d in t.shape.dim]
        if dims and all(d > 0 for d in dims):
            total += int(np.prod(dims)) * onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).itemsize
    return total


def available_memory() -> int:
    """MemAvailable of this host in bytes (Linux); a large number where it cannot be read."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 1 << 60


def nncf_blocker(src: "str | Path | onnx.ModelProto") -> str | None:
    """Why NNCF cannot calibrate `src` on this host, or None.

    NNCF's ONNX statistics pass makes every activation a graph output, so one
    inference keeps all of them alive at once: AMNet base on one 8x3x1280x720
    clip needs more than 24 GB that way (measured: killed by the OOM killer),
    while onnxruntime's calibrator reduces each tensor to its min/max inside the
    graph and needs the memory of a plain inference.
    """
    need, have = activation_bytes(src), available_memory()
    if need > have // 2:
        return (f"NNCF's statistics pass keeps every activation of a sample alive ({need / 2**30:.1f} GiB for this graph), "
                f"more than half the {have / 2**30:.1f} GiB available")
    return None


def quantize_int8(
    src: str | Path,
    dst: str | Path,
    feeds: list[dict[str, np.ndarray]],
    flavour: str,
    keep_float: list[str],
    engine: str = "auto",
    check_feeds: list[dict[str, np.ndarray]] | None = None,
    min_fidelity: float = 35.0,
    say: Any = print,
    budget_db: float | None = None,
    measure_feeds: list[dict[str, np.ndarray]] | None = None,
    measure_skip: tuple[str, ...] = (),
) -> dict[str, Any]:
    """INT8 Q/DQ of `src` into `dst`; returns a report of every engine tried and the one chosen.

    `keep_float`: the family's floor, never quantized. `budget_db`: after each engine's
    calibration, the fewest of its quantized nodes that bring the worst check frame to this
    PSNR against the float graph return to float (`compile.sensitivity.measure_float_set`;
    reported per engine as "float_nodes"), measured on `measure_feeds` (default `feeds`), never
    giving back nodes named with a prefix in `measure_skip`;
    None: only the floor stays float.
    engine="auto": for onnxruntime flavour ("ort-u8s8"), run NNCF and ORT, time both
    here and keep the fastest whose fidelity to the float graph is >= min_fidelity;
    for TensorRT flavour, NNCF and Model Optimizer (where installed), keeping the faithful
    one with the largest INT8 share of the matrix FLOPs (`int8_matrix_share`; TensorRT
    speed can only be measured on the device). Graphs with TensorRT plugin nodes: ORT only.
    """
    src, dst = Path(src), Path(dst)
    check_feeds = check_feeds or feeds[:2]
    src_model = onnx.load(str(src))
    has_plugins = has_custom_nodes(src_model)
    if engine == "nncf" and has_plugins:
        from lowlight.core.errors import LowlightError

        raise LowlightError(
            "NNCF cannot quantize a graph with TensorRT plugin nodes (its statistics model drops their "
            "function bodies, so onnxruntime cannot run it)",
            "use --int8-engine ort (or auto, which picks it for such graphs)",
        )
    too_big = nncf_blocker(src_model) if engine in ("auto", "nncf") else None
    if engine == "nncf" and too_big:
        from lowlight.core.errors import LowlightError

        raise LowlightError(f"NNCF cannot calibrate this graph here: {too_big}",
                            "use --int8-engine ort (or auto), or compile a smaller --shape and tile at run time")
    modelopt_why = modelopt_missing() if flavour == "trt-s8s8" and engine == "auto" and not has_plugins else None
    if engine == "auto":
        if has_plugins:
            # TensorRT plugin nodes: NNCF's statistics model drops the model-local
            # function bodies onnxruntime needs to run them; ORT's quantizer keeps them
            # (and so would Model Optimizer's calibration run, which cannot execute them either)
            candidates = ["ort"]
        elif flavour == "ort-u8s8":
            candidates = ["nncf", "ort"]
        else:
            candidates = ["nncf"] + ([] if modelopt_why else ["modelopt"])
    else:
        candidates = [engine]
    if too_big and "nncf" in candidates:
        candidates.remove("nncf")
        if not candidates:  # TensorRT flavour: onnxruntime's quantizer writes the same symmetric Q/DQ
            candidates = ["ort"]
        say(f"    NNCF skipped: {too_big}")
    report: dict[str, Any] = {"flavour": flavour, "calibration_samples": len(feeds), "kept_float": keep_float, "engines": {},
                              "weight_bits": weight_bits(flavour)}
    if too_big:
        report["nncf_skipped"] = too_big
    if modelopt_why:
        report["modelopt_skipped"] = modelopt_why
        say(f"    Model Optimizer not tried: {modelopt_why} (pip install 'lowlight-compile[modelopt]')")
    by_share = flavour == "trt-s8s8" and len(candidates) > 1
    float_time = time_onnx(src, check_feeds[0]) if len(candidates) > 1 and not by_share else None
    if float_time is not None:
        report["float_seconds"] = float_time
    best: tuple[float, str] | None = None
    for name in candidates:
        out = dst.with_name(f"{dst.stem}.{name}{dst.suffix}")
        say(f"    INT8 calibration with {name} on {len(feeds)} samples")
        ENGINES[name](src, out, feeds, flavour, keep_float)
        measured: dict[str, Any] | None = None
        if budget_db is not None:
            from lowlight.compile.sensitivity import measure_float_set

            relaxed, measured = measure_float_set(src, out, measure_feeds or feeds, budget_db, floor=keep_float,
                                                     keep_fused=flavour == "ort-u8s8", skip=measure_skip, say=say)
            if measured["given_back"]:
                save_onnx(relaxed, out)
        entry: dict[str, Any] = {"fidelity_db_vs_float": qdq_fidelity(src, out, check_feeds)}
        if measured is not None:
            from lowlight.compile.sensitivity import quantized_nodes

            entry["float_nodes"] = measured
            # A search that gave every node back leaves a float graph: on a host where INT8 does not pay it is
            # also the fastest candidate, and was picked as "INT8" (AMNet base during its exposure-context
            # fine-tune: NNCF 90 of 90 back, chosen over ORT's 34 + 5 of 88 back at 38.2 dB)
            entry["int8_nodes"] = len(quantized_nodes(relaxed))  # the graph just saved (or left as calibrated)
            entry["met_budget"] = bool(measured["final_db"]["worst"] >= budget_db)
        if by_share:
            # TensorRT's speed can only be timed on the device; the INT8 share of the matrix work ranks the
            # candidates (INT8 has twice FP16's tensor-core peak on Orin and Ampere/Hopper)
            entry["int8_matrix_share"] = round(int8_matrix_share(src, out), 4)
        elif len(candidates) > 1:
            entry["seconds"] = time_onnx(out, check_feeds[0])
            entry["speedup_vs_float"] = float_time / entry["seconds"]  # type: ignore[operator]
            if flavour == "ort-u8s8":
                # A Q/DQ conv onnxruntime cannot fuse into QLinearConv runs dequantize + float conv: seen with
                # NNCF's graph of tiny AMNet (4 of 19 convs), never with ORT's own (21 of 21).
                from lowlight.compile.openvino import ort_int8_fusion

                entry["fusion"] = ort_int8_fusion(out)
        report["engines"][name] = entry
        if entry.get("int8_nodes") == 0:
            entry["rejected"] = "no INT8 compute left: the measured float set gave every quantized node back"
            say(f"    {name}: {entry['rejected']}")
        # candidates whose measured float set met the budget rank before those that ran out of nodes to give back
        score = (not entry.get("met_budget", True), -entry["int8_matrix_share"] if by_share else entry.get("seconds", 0.0))
        if (entry["fidelity_db_vs_float"] >= min_fidelity and entry.get("fusion", {}).get("fused", True) and "rejected" not in entry
                and (best is None or score < best[0])):
            best = (score, name)
    if best is None:  # every faithful engine left convolutions unfused: the fastest faithful one, as before the check
        ok = [((False, e.get("seconds", 0.0)), n) for n, e in report["engines"].items()
              if e["fidelity_db_vs_float"] >= min_fidelity and "rejected" not in e]
        best = min(ok) if ok else None
    if best is None:  # none meets the budget: keep the most faithful, verify will fail loudly
        best = ((False, 0.0), max(report["engines"], key=lambda n: report["engines"][n]["fidelity_db_vs_float"]))
    chosen = best[1]
    if len(candidates) > 1:
        report["chosen_by"] = ("largest INT8 share of the matrix FLOPs among engines >= min_fidelity (TensorRT timing "
                               "needs the device)" if by_share else "fastest onnxruntime timing among engines >= min_fidelity "
                               "whose Q/DQ convolutions onnxruntime fused") + (
                               "; with --min-fidelity measured float sets, those that met the budget first, and none that "
                               "gave every node back" if budget_db is not None else "")
    dst.with_name(f"{dst.stem}.{chosen}{dst.suffix}").replace(dst)
    for name in candidates:
        dst.with_name(f"{dst.stem}.{name}{dst.suffix}").unlink(missing_ok=True)
    report["engine"] = chosen
    fm = report["engines"][chosen].get("float_nodes", {})
    back = [g["node"] for g in fm.get("given_back", [])] + list(fm.get("given_back_for_fusion", []))
    report["kept_float"] = list(keep_float) + [n for n in back if n not in keep_float]
    return report


def qdq_zero_points(path: str | Path) -> list[tuple[str, str, list[int]]]:
    """(node name, zero-point dtype, zero-point values) of every QuantizeLinear/DequantizeLinear."""
    index = GraphIndex(onnx.load(str(path)))
    out = []
    for n in index.graph.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2:
            zp = index.constant(n.input[2])
            if zp is not None:
                out.append((n.name, str(zp.dtype), [int(v) for v in np.ravel(zp)]))
    return out
