"""TensorRT op-support table and the compile-time check that names unsupported nodes."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from lowlight.core.errors import TargetError
from lowlight.targets import get_target
from lowlight.targets.tensorrt import trt_ops
from lowlight.targets.tensorrt.op_support import check_model, find_problems


def _model(nodes, inits=(), x_shape=(1, 3, 8, 8), opset=20, extra_opsets=()) -> onnx.ModelProto:
    g = helper.make_graph(list(nodes), "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], list(inits))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset), *extra_opsets])


def test_table_by_version() -> None:
    v103, v113, v1013, v112 = (trt_ops.supported_ops(v) for v in [(10, 3), (11, 3), (10, 13), (11, 2)])
    assert "DFT" not in v103 and "DFT" not in trt_ops.supported_ops((11, 1)) and "DFT" in v112
    assert {"Conv", "MatMul", "Sigmoid", "Tanh", "Resize", "LayerNormalization", "GroupNormalization"} <= v103
    assert "STFT" not in v103 and "STFT" in v1013
    assert "Attention" not in v1013 and "Attention" in trt_ops.supported_ops((10, 14))
    assert "DFT" in v113
    assert trt_ops.first_version_with("DFT") == (11, 2)
    assert trt_ops.first_version_with("StringNormalizer") is None


def test_dft_fails_on_10_3_with_node_and_fix_named() -> None:
    length = numpy_helper.from_array(np.array(8, np.int64), "L")
    axis = numpy_helper.from_array(np.array(-2, np.int64), "ax")
    m = _model([helper.make_node("Unsqueeze", ["x", "u"], ["xu"], name="unsq"),
                helper.make_node("DFT", ["xu", "L", "ax"], ["y"], name="fbs_rfft_w", onesided=1)],
               [length, axis, numpy_helper.from_array(np.array([-1], np.int64), "u")])
    with pytest.raises(TargetError) as err:
        check_model(m, get_target("jetson-orin"))
    assert "fbs_rfft_w (DFT)" in err.value.what and "--trt-version 11.2" in err.value.what
    check_model(m, get_target("jetson-orin", "11.4"))  # 11.4 keeps DFT


def test_custom_domain_nodes() -> None:
    lowlight = helper.make_opsetid("lowlight", 1)
    m = _model([helper.make_node("SpectralGate", ["x"], ["y"], name="sg0", domain="lowlight", plugin_namespace="lowlight")],
               extra_opsets=[lowlight])
    with pytest.raises(TargetError, match="sg0 .SpectralGate.*10.9"):
        check_model(m, get_target("jetson-orin"))
    check_model(m, get_target("jetson-orin", "10.9"))
    vendor = _model([helper.make_node("FusedConv", ["x"], ["y"], name="ms0", domain="com.microsoft")],
                    extra_opsets=[helper.make_opsetid("com.microsoft", 1)])
    assert [p.node for p in find_problems(vendor, get_target("h100"))] == ["ms0"]


def test_attribute_and_input_restrictions() -> None:
    scales = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "s")
    cubic = _model([helper.make_node("Resize", ["x", "", "s"], ["y"], name="up", mode="cubic")], [scales])
    assert [(p.node, p.op_type) for p in find_problems(cubic, get_target("jetson-orin"))] == [("up", "Resize")]
    linear = _model([helper.make_node("Resize", ["x", "", "s"], ["y"], name="up", mode="linear")], [scales])
    assert find_problems(linear, get_target("jetson-orin")) == []

    sc = numpy_helper.from_array(np.array(0.1, np.float32), "sc")
    zp = numpy_helper.from_array(np.array(3, np.int8), "zp")
    q = _model([helper.make_node("QuantizeLinear", ["x", "sc", "zp"], ["q"], name="q0"),
                helper.make_node("DequantizeLinear", ["q", "sc", "zp"], ["y"], name="dq0")], [sc, zp])
    assert {p.node for p in find_problems(q, get_target("jetson-orin"))} == {"q0", "dq0"}

    # Slice with tensor axes: rejected before 10.3, accepted from 10.3 (onnx-tensorrt changelog).
    nodes = [helper.make_node("Shape", ["x"], ["shp"], name="shape"),
             helper.make_node("Slice", ["shp", "st", "en"], ["ax"], name="pick"),
             helper.make_node("Slice", ["x", "st", "en", "ax"], ["y"], name="dyn_slice")]
    inits = [numpy_helper.from_array(np.array([0], np.int64), "st"), numpy_helper.from_array(np.array([1], np.int64), "en")]
    sl = _model(nodes, inits)
    assert [p.node for p in find_problems(sl, get_target("jetson-orin", "10.2"))] == ["dyn_slice"]
    assert find_problems(sl, get_target("jetson-orin", "10.3")) == []


def test_1d_conv_is_rejected() -> None:
    w = numpy_helper.from_array(np.zeros((2, 3, 3), np.float32), "w")
    m = _model([helper.make_node("Conv", ["x", "w"], ["y"], name="conv1d")], [w], x_shape=(1, 3, 16))
    assert [p.node for p in find_problems(m, get_target("jetson-orin"))] == ["conv1d"]


def test_lowered_spectral_graph_passes_10_3() -> None:
    torch = pytest.importorskip("torch")
    from lowlight.passes.dft import lower_dft

    class Gate(torch.nn.Module):
        def forward(self, x):  # type: ignore[no-untyped-def]
            f = torch.fft.rfft2(x, norm="ortho")
            return torch.fft.irfft2(f * torch.sigmoid(f.real).unsqueeze(-1).squeeze(-1), s=x.shape[-2:], norm="ortho")

    m = torch.onnx.export(Gate().eval(), (torch.rand(1, 2, 16, 16),), dynamo=True, verbose=False).model_proto
    with pytest.raises(TargetError):
        check_model(m, get_target("jetson-orin"))
    check_model(lower_dft(m), get_target("jetson-orin"))


def test_if_branches_are_checked_too() -> None:
    then_g = helper.make_graph([helper.make_node("DFT", ["x"], ["t"], name="inner_dft")], "then", [],
                               [helper.make_tensor_value_info("t", TensorProto.FLOAT, None)])
    else_g = helper.make_graph([helper.make_node("Relu", ["x"], ["e"], name="inner_relu")], "else", [],
                               [helper.make_tensor_value_info("e", TensorProto.FLOAT, None)])
    cond = numpy_helper.from_array(np.array(True), "cond")
    m = _model([helper.make_node("If", ["cond"], ["y"], name="route", then_branch=then_g, else_branch=else_g)], [cond])
    problems = find_problems(m, get_target("jetson-orin"))
    assert [(p.node, p.op_type) for p in problems] == [("route/then_branch/inner_dft", "DFT")]
    assert find_problems(m, get_target("jetson-orin", "11.4")) == []
