"""TensorRT INT8 calibration cache (TensorRT 10.x implicit quantization).

TensorRT 10.x can build INT8 from a float ONNX plus a calibration cache: a
text file whose first line names the TensorRT version and calibrator
(`TRT-100300-MinMaxCalibration`, version code = major*10000 + minor*100 +
patch), then one line per tensor, `name: hhhhhhhh`, the big-endian IEEE-754
bits of the float32 scale (dynamic range / 127). With a cache present the
builder skips calibration and uses the scales as-is.

Our statistics come from the Q/DQ graph the quantize stage calibrated: every
QuantizeLinear on an activation carries that tensor's symmetric scale, so the
cache is the same numbers in TensorRT's format, keyed by the tensor names of
the float ONNX the engine is built from.
"""
from __future__ import annotations

import struct
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import onnx

#: The calibrator whose cache we write: min-max matches how the Q/DQ scales were
#: chosen, and TensorRT only reads a cache whose header names its calibrator.
ALGORITHM = "MinMaxCalibration"


def header(trt_code: int, algorithm: str = ALGORITHM) -> str:
    """First line of a cache for TensorRT version code `trt_code` (e.g. 100300)."""
    return f"TRT-{trt_code}-{algorithm}"


def scales_from_qdq(qdq: "onnx.ModelProto") -> dict[str, float]:
    """Activation tensor name -> per-tensor scale, from the QuantizeLinear nodes.

    Weights (initializer inputs) are skipped: in implicit mode TensorRT
    quantizes weights itself. Per-channel activation scales cannot be written
    to a cache and are skipped too.
    """
    from onnx import numpy_helper

    inits = {i.name: i for i in qdq.graph.initializer}
    consts = {n.output[0]: n.attribute[0].t for n in qdq.graph.node if n.op_type == "Constant" and n.attribute}
    out: dict[str, float] = {}
    for node in qdq.graph.node:
        if node.op_type != "QuantizeLinear" or node.input[0] in inits or node.input[0] in consts:
            continue
        proto = inits.get(node.input[1]) or consts.get(node.input[1])
        if proto is None:
            continue
        scale = numpy_helper.to_array(proto)
        if scale.size != 1:
            continue
        out[node.input[0]] = float(np.float32(scale.reshape(())))
    return out


def dequantized_names(qdq: "onnx.ModelProto") -> dict[str, list[str]]:
    """Tensor quantized -> names of its DequantizeLinear outputs (its float re-entries)."""
    q_out = {n.output[0]: n.input[0] for n in qdq.graph.node if n.op_type == "QuantizeLinear"}
    out: dict[str, list[str]] = {}
    for n in qdq.graph.node:
        if n.op_type == "DequantizeLinear" and n.input[0] in q_out:
            out.setdefault(q_out[n.input[0]], []).append(n.output[0])
    return out


def tensor_names(model: "onnx.ModelProto") -> set[str]:
    """Every tensor TensorRT can see by name: graph inputs and node outputs."""
    names = {i.name for i in model.graph.input}
    for n in model.graph.node:
        names.update(o for o in n.output if o)
    return names


def write_cache(path: str | Path, scales: dict[str, float], trt_code: int, algorithm: str = ALGORITHM) -> Path:
    """Write `scales` in TensorRT's calibration cache text format; returns the path."""
    path = Path(path)
    lines = [header(trt_code, algorithm)]
    for name in sorted(scales):
        bits = struct.pack(">f", scales[name]).hex()
        lines.append(f"{name}: {bits}")
    path.write_text("\n".join(lines) + "\n")
    return path


def read_cache(path: str | Path) -> tuple[str, dict[str, float]]:
    """Parse a cache back: (header, {tensor name: scale})."""
    text = Path(path).read_text().splitlines()
    if not text or not text[0].startswith("TRT-"):
        from lowlight.core.errors import BundleError

        raise BundleError(f"{path} is not a TensorRT calibration cache (no TRT- header)", "recompile with --precision int8")
    scales: dict[str, float] = {}
    for line in text[1:]:
        if not line.strip():
            continue
        # Tensor names may contain ':' (e.g. "input:0"): split at the last one.
        name, _, bits = line.rpartition(":")
        scales[name] = struct.unpack(">f", bytes.fromhex(bits.strip()))[0]
    return text[0], scales


def cache_for_float_model(
    qdq: "onnx.ModelProto", float_model: "onnx.ModelProto", path: str | Path, trt_code: int
) -> tuple[Path, list[str]]:
    """Write the cache for building `float_model`; returns (path, names dropped).

    Only names that exist in the float graph are kept, so every entry matches a
    tensor the TensorRT parser will create from that ONNX.
    """
    scales = scales_from_qdq(qdq)
    known = tensor_names(float_model)
    aliases = dequantized_names(qdq)
    kept: dict[str, float] = {}
    dropped: list[str] = []
    for name, scale in scales.items():
        # Quantizers may rename a tensor (onnxruntime does for graph outputs:
        # "out" -> "out_QuantizeLinear_Input"); the DequantizeLinear output then
        # carries the float graph's name.
        match = name if name in known else next((a for a in aliases.get(name, []) if a in known), None)
        if match is None:
            dropped.append(name)
        else:
            kept[match] = scale
    dropped.sort()
    return write_cache(path, kept, trt_code), dropped
