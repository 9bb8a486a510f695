"""The cpu target's second backend: OpenVINO IR at FP32, BF16 or INT8, and the choice between backends.

What is built per component, from the lowered FP32 ONNX graph the onnxruntime path starts from too:

- **fp32**: `ov.convert_model` -> IR (weights kept FP32: `save_model` would halve them to FP16 by
  default), run with `INFERENCE_PRECISION_HINT` pinned to f32. OpenVINO's default hint on a CPU
  with AVX512-BF16/AMX is bf16, so an unpinned "FP32" bundle would run in BF16.
- **bf16**: the same FP32 IR, run with hint bf16; only on a processor that has BF16 (`bf16_support`).
- **int8**: NNCF on the OpenVINO model (OpenVINO's own INT8 path: FakeQuantize that its CPU plugin
  fuses into u8/i8 kernels), calibrated on the same feeds as the onnxruntime INT8 graph, with the
  family's keep-float nodes as NNCF's ignored scope; the float remainder runs with hint f32.

Measured on AMNet base 1x8x3x256x256 (2-core EPYC with AVX-512 VNNI + BF16, 2026-11): onnxruntime FP32
178 ms, OpenVINO FP32 179 ms, OpenVINO BF16 89 ms (62 dB to FP32), OpenVINO running our INT8 Q/DQ ONNX
115 ms, OpenVINO NNCF INT8 76 ms. Which wins depends on the host, so `--backend auto` measures:
every candidate is verified against the fidelity budget, INT8 candidates whose quantized convolutions
the backend left in float are rejected (`ov_int8_fusion`, `ort_int8_fusion`), and the survivors are
timed interleaved (`time_interleaved`) and the fastest median wins.

`import openvino` / `import nncf` happen inside the functions: the compiler imports this module
whether or not the `[openvino]` extra is installed.
"""
from __future__ import annotations

import contextlib
import io
import logging
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np

from lowlight.core.errors import TargetError

#: The OpenVINO precision hint each OpenVINO bundle precision pins (INT8: the float remainder in f32,
#: the keep-float policy's point; measured no faster at bf16 on tiny AMNet, 4.1 vs 4.2 ms).
HINTS = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}
OPENVINO_PRECISIONS = tuple(HINTS)
BACKENDS = ("auto", "onnxruntime", "openvino")
#: Op types whose quantized form must run in an integer kernel for an INT8 candidate to count as fused.
CONV_TYPES = ("Convolution", "GroupConvolution")
#: Interleaved timing of the contenders: rounds after one warm-up run each.
SELECT_ROUNDS = 7
INSTALL = "pip install 'lowlight-compile[openvino]'"


def openvino_missing() -> str | None:
    """Why OpenVINO (with NNCF for INT8) cannot be used for compiling here, or None."""
    try:
        import openvino  # noqa: F401
    except ImportError as exc:
        return f"openvino is not installed ({exc})"
    return None


def openvino_version() -> str:
    """OpenVINO's version string ('' where it is not installed)."""
    try:
        import openvino as ov

        return str(ov.__version__)
    except ImportError:
        return ""


def cpu_flags() -> set[str]:
    """The flags /proc/cpuinfo lists for the first processor (empty off Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def bf16_support() -> dict[str, Any]:
    """Does this host run BF16 natively? {"available", "cpu_flags", "openvino_capabilities", "why"}.

    Both must agree where both can say: the kernel's flags (avx512_bf16: Cooper Lake / Zen 4 and
    later; amx_bf16: Sapphire Rapids) and OpenVINO's CPU OPTIMIZATION_CAPABILITIES ("BF16"). Without
    OpenVINO there is no BF16 path to build at all.
    """
    from lowlight.runtime.openvino_backend import cpu_capabilities

    flags = sorted(cpu_flags() & {"avx512_bf16", "amx_bf16"})
    missing = openvino_missing()
    caps = [] if missing else cpu_capabilities()
    rec: dict[str, Any] = {"cpu_flags": flags, "openvino_capabilities": caps}
    if missing:
        rec.update(available=False, why=f"BF16 runs through OpenVINO, and {missing}")
    elif "BF16" not in caps:
        rec.update(available=False, why=f"OpenVINO's CPU plugin does not list BF16 among this processor's capabilities ({', '.join(caps) or 'none'})")
    elif Path("/proc/cpuinfo").is_file() and not flags:
        rec.update(available=False, why="the processor has neither avx512_bf16 nor amx_bf16 (/proc/cpuinfo flags)")
    else:
        rec.update(available=True, why="BF16 in OpenVINO's CPU capabilities" + (f" and {', '.join(flags)} in /proc/cpuinfo" if flags else ""))
    return rec


def require_bf16(support: dict[str, Any] | None = None) -> dict[str, Any]:
    """`bf16_support()`, or TargetError with what is missing and what to do instead."""
    support = support if support is not None else bf16_support()
    if not support["available"]:
        fix = (f"{INSTALL} (BF16 bundles run on OpenVINO)" if "not installed" in support["why"] else
               "compile on a processor with BF16 (AVX512-BF16 or AMX: Intel Cooper Lake / Sapphire Rapids and later, AMD Zen 4 "
               "and later), or use --precision fp32 or int8 here")
        raise TargetError(f"--precision bf16 needs a CPU with native BF16: {support['why']}", fix)
    return support


# -- building ---------------------------------------------------------------------------


def to_ir(onnx_path: str | Path, dst: str | Path) -> None:
    """The ONNX graph as OpenVINO IR (`dst` .xml + .bin beside it), weights kept FP32."""
    import openvino as ov

    model = ov.convert_model(str(onnx_path))
    # save_model compresses weights to FP16 by default: an FP32 bundle must keep FP32 weights.
    ov.save_model(model, str(dst), compress_to_fp16=False)


def ignored_names(model: Any, keep_float: list[str]) -> list[str]:
    """OpenVINO op names for the ONNX keep-float nodes.

    OpenVINO's ONNX frontend names each op after its ONNX node, and the ops it splits one node into
    `<node>/<part>` (a Conv with bias: `node_conv2d/WithoutBiases` + the `node_conv2d` Add).
    """
    keep = set(keep_float)
    out = []
    for op in model.get_ordered_ops():
        name = op.get_friendly_name()
        if name in keep or name.split("/", 1)[0] in keep:
            out.append(name)
    return out


def quantize_ir(src: str | Path, dst: str | Path, feeds: list[dict[str, np.ndarray]], keep_float: list[str],
                weight_bits: int = 7) -> dict[str, Any]:
    """NNCF post-training INT8 of the OpenVINO model at `src` into `dst`; returns what was done.

    The same choices as the ONNX NNCF path (`compile.quantize._nncf_int8`): the MIXED preset
    (asymmetric activations, symmetric weights), global min/max ranges, so a frame brighter
    than the calibration average does not clip, and 7-bit weights on every layer
    (`weight_bits`, the pipeline passes `compile.quantize.weight_bits("ort-u8s8")`: the CPU plugin's u8 x s8
    kernels on x86 without VNNI saturate the same pair sums).
    """
    import nncf
    import openvino as ov
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    model = ov.Core().read_model(str(src))
    routed = any(op.get_type_name() == "If" for op in model.get_ordered_ops())
    ignored = ignored_names(model, keep_float)
    advanced = AdvancedQuantizationParameters(overflow_fix=OverflowFix.ENABLE if weight_bits == 7 else OverflowFix.DISABLE)
    advanced.activations_range_estimator_params = RangeEstimatorParametersSet.MINMAX
    nncf_log = logging.getLogger("nncf")
    level = nncf_log.level
    nncf_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            q = nncf.quantize(model, nncf.Dataset(feeds), preset=nncf.QuantizationPreset.MIXED, subset_size=len(feeds),
                              ignored_scope=nncf.IgnoredScope(names=ignored, validate=False) if ignored else None,
                              advanced_parameters=advanced)
    except Exception as exc:
        if routed and "dataset must not be empty" in str(exc):
            # NNCF splits an If into its branches and calibrates each on the samples that take it; GM-MoE top-2 at
            # 128x160 had a route that none of its 16 calibration frames took
            raise TargetError(
                "NNCF's OpenVINO INT8 calibrates each If branch (routed experts) on the calibration frames that take "
                "it, and one branch was taken by none of them",
                "use --backend onnxruntime for INT8 of a routed model (its quantizer calibrates every expert on every "
                "frame), or add calibration frames (--calib) that take every route") from exc
        raise
    finally:
        nncf_log.setLevel(level)
    ov.save_model(q, str(dst), compress_to_fp16=False)
    fq = sum(1 for op in q.get_ordered_ops() if op.get_type_name() == "FakeQuantize")
    return {"engine": "nncf (OpenVINO model)", "calibration_samples": len(feeds), "kept_float": len(keep_float),
            "ignored_ops": len(ignored), "fake_quantize": fq, "preset": "MIXED", "range": "MINMAX",
            "weight_bits": weight_bits}


def ir_op_counts(xml: str | Path) -> dict[str, int]:
    """Op type -> count in an OpenVINO IR (Parameter/Result/Constant left out, as ONNX counts leave out inputs)."""
    import openvino as ov

    counts: dict[str, int] = {}
    for op in ov.Core().read_model(str(xml)).get_ordered_ops():
        t = op.get_type_name()
        if t not in ("Parameter", "Result", "Constant"):
            counts[t] = counts.get(t, 0) + 1
    return dict(sorted(counts.items()))


# -- INT8 fusion checks -------------------------------------------------------------------


def ov_int8_fusion(model: Any, compiled: Any) -> dict[str, Any]:
    """Did OpenVINO's CPU plugin run the quantized convolutions in integer kernels?

    `model`: the IR as read (ov.Model); `compiled`: it compiled for the CPU. A convolution is
    quantized when a FakeQuantize feeds its activation; in the runtime model (the executable
    graph) the layer holding it (by `originalLayersNames`) must have runtime precision u8/i8.
    """
    quantized = [op.get_friendly_name() for op in model.get_ordered_ops()
                 if op.get_type_name() in CONV_TYPES and op.input_value(0).get_node().get_type_name() == "FakeQuantize"]
    precision_of: dict[str, str] = {}
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        if "originalLayersNames" not in info or "runtimePrecision" not in info:
            continue
        prec = info["runtimePrecision"].astype(str)
        layer = info["layerType"].astype(str) if "layerType" in info else ""
        for name in info["originalLayersNames"].astype(str).split(","):
            if "Conv" in layer or name not in precision_of:  # the conv layer's own precision wins over fused neighbours
                precision_of[name] = prec
    unfused = [n for n in quantized if precision_of.get(n, "?").lower() not in ("u8", "i8")]
    return {"backend": "openvino", "quantized_convs": len(quantized), "int8_kernels": len(quantized) - len(unfused),
            "float_kernels": unfused[:20], "fused": not unfused,
            "how": "runtime model: layers holding a FakeQuantize-fed Convolution, runtimePrecision u8/i8"}


def ort_int8_fusion(onnx_path: str | Path) -> dict[str, Any]:
    """Did onnxruntime fuse the Q/DQ convolutions into QLinearConv?

    The graph optimised at ORT_ENABLE_EXTENDED (where onnxruntime's QDQ fusions run) is saved and
    read back: a Conv/FusedConv whose input is still a DequantizeLinear output runs in float
    (dequantize, float conv, quantize), slower than the FP32 graph.
    """
    import tempfile

    import onnx
    import onnxruntime as ort

    def dq_fed(m: Any) -> list[str]:
        dq = {o for n in m.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
        return [n.name for n in m.graph.node if n.op_type in ("Conv", "FusedConv") and n.input and n.input[0] in dq]

    quantized = dq_fed(onnx.load(str(onnx_path), load_external_data=False))
    with tempfile.TemporaryDirectory() as tmp:
        so = ort.SessionOptions()
        so.log_severity_level = 3
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        so.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
        opt = onnx.load(so.optimized_model_filepath)
    unfused = dq_fed(opt)
    fused = sum(1 for n in opt.graph.node if n.op_type == "QLinearConv")
    return {"backend": "onnxruntime", "quantized_convs": len(quantized), "int8_kernels": fused,
            "float_kernels": unfused[:20], "fused": not unfused,
            "how": "graph optimised at ORT_ENABLE_EXTENDED: Conv/FusedConv still fed by DequantizeLinear"}


# -- choosing ---------------------------------------------------------------------------


def time_interleaved(runners: dict[str, Callable[[], Any]], rounds: int = SELECT_ROUNDS, warmup: int = 2) -> dict[str, list[float]]:
    """Milliseconds per run of each runner, taken interleaved: round r runs every contender once, in an
    order rotated by r, so load from other processes (this host shares its 2 cores) falls on all of them
    alike rather than on whichever ran during a busy second."""
    names = list(runners)
    for n in names:
        for _ in range(warmup):
            runners[n]()
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for n in names[r % len(names):] + names[: r % len(names)]:
            t0 = time.perf_counter()
            runners[n]()
            times[n].append((time.perf_counter() - t0) * 1e3)
    return times


def candidates_for(precision: str, backend: str, ov_missing: str | None, pixel_format: str | None) -> tuple[list[tuple[str, str]], list[dict[str, Any]]]:
    """(the (backend, precision) pairs to build, the ones left out with why) for the cpu target.

    How `--precision` and `--backend auto` interact: the precision is what the user asked for and is
    never swapped (an fp32 request never gets BF16, however fast); auto picks the backend for it.
    fp32: onnxruntime and OpenVINO (hint f32); int8: onnxruntime's Q/DQ graph and OpenVINO's NNCF
    model; bf16: OpenVINO only; fp16: onnxruntime only.
    """
    want: list[tuple[str, str]] = []
    left_out: list[dict[str, Any]] = []
    if backend in ("auto", "onnxruntime") and precision != "bf16":
        want.append(("onnxruntime", precision))
    if backend in ("auto", "openvino") and precision in OPENVINO_PRECISIONS:
        why = None
        if ov_missing:
            why = f"{ov_missing}; {INSTALL}"
        elif pixel_format:
            why = "--pixel-format builds the camera conversion into the ONNX graph (onnxruntime and TensorRT only)"
        if why is None:
            want.append(("openvino", precision))
        else:
            left_out.append({"backend": "openvino", "precision": precision, "rejected": why})
    if backend == "openvino" and not want:
        if precision not in OPENVINO_PRECISIONS:
            raise TargetError(f"OpenVINO bundles are built at {', '.join(OPENVINO_PRECISIONS)}, not {precision}",
                              "use --precision fp32, bf16 or int8 with --backend openvino, or --backend onnxruntime for fp16")
        raise TargetError(f"--backend openvino cannot build here: {left_out[0]['rejected']}",
                          INSTALL if ov_missing else "drop --pixel-format (convert on the host with Session.stream), or use --backend onnxruntime")
    if backend == "onnxruntime" and precision == "bf16":
        raise TargetError("onnxruntime has no BF16 path for this CPU: BF16 bundles run on OpenVINO",
                          "use --backend openvino (or auto) with --precision bf16, or --precision fp32/int8 with onnxruntime")
    if not want:  # auto, bf16, without OpenVINO
        raise TargetError(f"no backend here can build {precision}: {left_out[0]['rejected'] if left_out else ''}", INSTALL)
    return want, left_out


def pick(records: list[dict[str, Any]]) -> tuple[int, str]:
    """(index of the chosen candidate, why) from candidate records (`passed`, `rejected`, `median_ms`).

    The fastest median among those that passed verification and were not rejected; if none is left,
    the most faithful one (the build then fails verification, or ships with the fusion warning).
    """
    ok = [i for i, r in enumerate(records) if r.get("passed") and not r.get("rejected")]
    if not ok:
        i = max(range(len(records)), key=lambda j: records[j].get("fidelity_psnr_db", float("-inf")))
        return i, "no candidate met every check; kept the most faithful (see each candidate's rejection)"
    if len(ok) == 1:
        r = records[ok[0]]
        others = len(records) - 1
        return ok[0], ("the only candidate" if others == 0 else
                       f"the only candidate of {len(records)} that met the fidelity budget and fused its INT8 convolutions")
    best = min(ok, key=lambda i: records[i]["median_ms"])
    r = records[best]
    rest = sorted((records[i] for i in ok if i != best), key=lambda x: x["median_ms"])
    vs = ", ".join(f"{x['backend']} {x['precision']} {x['median_ms']:.1f} ms" for x in rest)
    return best, (f"fastest of {len(ok)} candidates meeting the fidelity budget: {r['backend']} {r['precision']} "
                  f"{r['median_ms']:.1f} ms median vs {vs} (timed interleaved, {len(r.get('times_ms', []))} rounds)")


def to_markdown(selection: dict[str, Any]) -> list[str]:
    """The backend selection as markdown lines for verification.md."""
    lines = ["", "## Backend selection", "", f"- mode: {selection['mode']}; chosen: **{selection['chosen']}**",
             f"- why: {selection['reason']}"]
    if selection.get("bf16"):
        b = selection["bf16"]
        lines.append(f"- host BF16: {'yes' if b['available'] else 'no'} ({b['why']})")
    lines += ["", "| backend | precision | hint | fidelity dB (worst) | median ms | INT8 convs fused | result |",
              "|---|---|---|---:|---:|---|---|"]
    for c in selection["candidates"]:
        fid = f"{c['fidelity_psnr_db']:.2f} ({c['fidelity_psnr_db_min']:.2f})" if "fidelity_psnr_db" in c else "-"
        med = f"{c['median_ms']:.1f}" if c.get("median_ms") is not None else "-"
        fus = c.get("fusion")
        fused = "-" if not fus else f"{fus['int8_kernels']}/{fus['quantized_convs']}"
        res = "chosen" if c.get("chosen") else (f"rejected: {c['rejected']}" if c.get("rejected") else "passed")
        lines.append(f"| {c['backend']} | {c['precision']} | {c.get('hint') or '-'} | {fid} | {med} | {fused} | {res} |")
    return lines

