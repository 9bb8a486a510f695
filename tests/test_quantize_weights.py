"""Weight grids of the INT8 flavours: 7-bit weights for onnxruntime U8S8 (no u8 x s8 pair saturation on x86
without VNNI), full 8 bits for TensorRT's s8s8."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from lowlight.compile.quantize import ORT_U8S8_WEIGHT_BITS, quantize_int8
from qdq_toy import dark_feeds, toy_graph


def _weight_codes(path: Path) -> list[np.ndarray]:
    """The int8 weight tensors that DequantizeLinear nodes read (initializers; activations are computed)."""
    m = onnx.load(str(path))
    inits = {i.name: i for i in m.graph.initializer}
    out = []
    for n in m.graph.node:
        if n.op_type == "DequantizeLinear" and n.input[0] in inits and inits[n.input[0]].data_type == TensorProto.INT8:
            out.append(numpy_helper.to_array(inits[n.input[0]]))
    return out


@pytest.mark.parametrize("engine", ["nncf", "ort"])
def test_onnxruntime_flavour_quantizes_weights_to_7_bits(tmp_path: Path, engine: str) -> None:
    toy_graph(tmp_path / "f.onnx")
    rep = quantize_int8(tmp_path / "f.onnx", tmp_path / "q.onnx", dark_feeds(8, 0), "ort-u8s8", [], engine=engine)
    codes = _weight_codes(tmp_path / "q.onnx")
    assert len(codes) == 3  # the three convs' weights
    top = max(int(np.abs(c.astype(np.int32)).max()) for c in codes)
    assert ORT_U8S8_WEIGHT_BITS == 7 and rep["weight_bits"] == 7
    assert 60 <= top <= 64, top  # the 7-bit grid is used, and nothing beyond it


def test_tensorrt_flavour_keeps_8_bit_weights(tmp_path: Path) -> None:
    toy_graph(tmp_path / "f.onnx")
    rep = quantize_int8(tmp_path / "f.onnx", tmp_path / "q.onnx", dark_feeds(8, 0), "trt-s8s8", [], engine="nncf")
    top = max(int(np.abs(c.astype(np.int32)).max()) for c in _weight_codes(tmp_path / "q.onnx"))
    assert rep["weight_bits"] == 8 and top == 127


def _run(path: Path, fused: bool, x: np.ndarray) -> np.ndarray:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if fused
                                   else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_fused_u8s8_conv_equals_its_qdq_graph_on_bright_inputs(tmp_path: Path) -> None:
    """The case that saturates 8-bit weights on AVX2: bright inputs (u8 codes near 255) into a conv whose
    neighbouring weights share a large magnitude and sign. With 7-bit weights onnxruntime's fused QLinearConv
    computes what the Q/DQ graph says, on every x86 processor (with 8-bit weights this host, AVX2 without
    VNNI, measured 26 against a 0.05 tolerance; a VNNI host passes either way)."""
    rng = np.random.default_rng(1)
    w = np.where(rng.random((16, 32, 3, 3)) < 0.5, -1.0, 1.0).astype(np.float32)
    w[:, ::2] = w[:, 1::2]  # pairs of input channels with equal weights: the pair sums vpmaddubsw forms
    g = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], name="conv", pads=[1, 1, 1, 1])], "bright",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 32, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 8, 8])],
                          [numpy_helper.from_array(w, "w")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(tmp_path / "f.onnx"))
    feeds = [{"x": (0.9 + 0.1 * rng.random((1, 32, 8, 8))).astype(np.float32)} for _ in range(4)]
    quantize_int8(tmp_path / "f.onnx", tmp_path / "q.onnx", feeds, "ort-u8s8", [], engine="ort")
    x = feeds[0]["x"]
    fused, qdq = _run(tmp_path / "q.onnx", True, x), _run(tmp_path / "q.onnx", False, x)
    scale = float(np.abs(qdq).max())
    assert float(np.abs(fused - qdq).max()) <= 1e-3 * scale
