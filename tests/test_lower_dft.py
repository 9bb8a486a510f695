"""DFT -> MatMul lowering: numerically equal to onnxruntime's DFT, FP16-safe, no DFT left."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from lowlight.passes.dft import dft_matrix, lower_dft
from lowlight.core.errors import TargetError


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def _dft_model(shape: list[int], *, inverse: int, onesided: int, length: int | None, axis: int,
               opset: int = 20, pre_scale: float | None = None, post_scale: float | None = None) -> onnx.ModelProto:
    inits, nodes, src = [], [], "x"
    if pre_scale is not None:
        inits.append(numpy_helper.from_array(np.array(pre_scale, np.float32), "pre"))
        nodes.append(helper.make_node("Div", ["x", "pre"], ["xs"], name="pre_div"))
        src = "xs"
    inputs = [src, "L" if length is not None else ""]
    if length is not None:
        inits.append(numpy_helper.from_array(np.array(length, np.int64), "L"))
    attrs = {"inverse": inverse, "onesided": onesided}
    if opset >= 20:
        inits.append(numpy_helper.from_array(np.array(axis, np.int64), "axis"))
        inputs.append("axis")
    else:
        attrs["axis"] = axis
    dst = "y" if post_scale is None else "yd"
    nodes.append(helper.make_node("DFT", inputs, [dst], name="the_dft", **attrs))
    if post_scale is not None:
        inits.append(numpy_helper.from_array(np.array(post_scale, np.float32), "post"))
        nodes.append(helper.make_node("Mul", ["yd", "post"], ["y"], name="post_mul"))
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


CASES = [
    # (shape, inverse, onesided, length, axis)
    ([2, 6, 10, 1], 0, 1, None, 2),   # rfft along the last signal axis
    ([2, 6, 10, 1], 0, 1, None, 1),   # rfft along the other axis
    ([2, 6, 9, 1], 0, 1, None, -2),   # odd length, negative axis
    ([2, 6, 10, 1], 0, 0, None, 2),   # full real -> complex
    ([2, 6, 10, 2], 0, 0, None, 1),   # complex forward
    ([2, 6, 10, 2], 1, 0, None, 2),   # complex inverse
    ([2, 6, 10, 2], 1, 0, None, 1),
    ([2, 6, 6, 2], 1, 1, 10, 2),      # irfft (c2r) to even length
    ([2, 6, 5, 2], 1, 1, 9, 2),       # irfft to odd length
    ([2, 7, 6, 2], 1, 1, 12, 1),      # irfft along the other axis
    ([2, 6, 10, 1], 0, 0, 14, 2),     # zero-padded dft_length
    ([2, 6, 10, 1], 0, 1, 8, 2),      # truncated dft_length
]


@pytest.mark.parametrize("shape,inverse,onesided,length,axis", CASES)
def test_single_dft_matches_onnxruntime(shape, inverse, onesided, length, axis) -> None:
    rng = np.random.default_rng(0)
    model = _dft_model(shape, inverse=inverse, onesided=onesided, length=length, axis=axis)
    x = rng.random(shape, dtype=np.float32)
    want = _run(model, {"x": x})[0]
    lowered = lower_dft(model)
    assert not any(n.op_type == "DFT" for n in lowered.graph.node)
    got = _run(lowered, {"x": x})[0]
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= 1e-4


def test_opset17_axis_attribute() -> None:
    model = _dft_model([2, 6, 10, 1], inverse=0, onesided=1, length=None, axis=1, opset=17)
    x = np.random.default_rng(1).random([2, 6, 10, 1], dtype=np.float32)
    assert np.abs(_run(lower_dft(model), {"x": x})[0] - _run(model, {"x": x})[0]).max() <= 1e-4


def test_scalar_div_and_mul_are_folded_into_the_matrix() -> None:
    model = _dft_model([1, 4, 16, 1], inverse=0, onesided=1, length=None, axis=2, pre_scale=4.0, post_scale=0.5)
    lowered = lower_dft(model)
    ops = [n.op_type for n in lowered.graph.node]
    assert ops == ["Reshape", "MatMul", "Reshape"]
    x = np.random.default_rng(2).random([1, 4, 16, 1], dtype=np.float32)
    assert np.abs(_run(lowered, {"x": x})[0] - _run(model, {"x": x})[0]).max() <= 1e-5


def test_matrix_matches_numpy_fft() -> None:
    x = np.random.default_rng(3).random(12)
    w = dft_matrix(12, 12, inverse=False, onesided=True, complex_in=False, dtype=np.float64)
    y = x @ w
    ref = np.fft.rfft(x)
    assert np.allclose(y[0::2], ref.real) and np.allclose(y[1::2], ref.imag)
    spec = np.fft.rfft(x)
    inter = np.stack([spec.real, spec.imag], -1).reshape(-1)
    w_inv = dft_matrix(7, 12, inverse=True, onesided=True, complex_in=True, dtype=np.float64)
    assert np.allclose(inter @ w_inv, np.fft.irfft(spec, 12))


def test_no_dft_is_a_noop() -> None:
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])])
    model = helper.make_model(graph)
    assert lower_dft(model) is model


def test_dynamic_axis_length_fails_with_the_node_named() -> None:
    model = _dft_model([1, "H", "W", 1], inverse=0, onesided=1, length=None, axis=2)
    with pytest.raises(TargetError, match="the_dft"):
        lower_dft(model)


# -- the real thing: PyTorch rfft2 -> gate -> irfft2 through the dynamo exporter --

torch = pytest.importorskip("torch")


class _SpectralGate(torch.nn.Module):
    """The FBS pattern of AMNet: rfft2 (ortho), sigmoid gate on re/im, irfft2."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(2 * ch, ch, 1)

    def forward(self, x):  # type: ignore[no-untyped-def]
        h, w = x.shape[-2:]
        f = torch.fft.rfft2(x, norm="ortho")
        g = torch.sigmoid(self.conv(torch.cat([f.real, f.imag], 1)))
        return torch.fft.irfft2(f * g, s=(h, w), norm="ortho")


def _export(module: torch.nn.Module, x: torch.Tensor) -> onnx.ModelProto:
    prog = torch.onnx.export(module.eval(), (x,), dynamo=True, verbose=False)
    return prog.model_proto


@pytest.fixture(scope="module")
def exported() -> tuple[onnx.ModelProto, torch.nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    m = _SpectralGate(3)
    x = torch.rand(1, 3, 24, 30)
    return _export(m, x), m, x


def test_exported_rfft2_irfft2_lowers_exactly(exported) -> None:
    model, module, x = exported
    assert sum(n.op_type == "DFT" for n in model.graph.node) == 4
    lowered = lower_dft(model)
    onnx.checker.check_model(lowered, full_check=True)
    assert not any(n.op_type == "DFT" for n in lowered.graph.node)
    feeds = {model.graph.input[0].name: x.numpy()}
    ref = _run(model, feeds)[0]
    got = _run(lowered, feeds)[0]
    assert np.abs(got - ref).max() <= 1e-4
    with torch.no_grad():
        assert np.abs(got - module(x).numpy()).max() <= 1e-4
    # Orthonormal scaling folded in: no entry above 2/sqrt(n) (2 for c2r's conjugate half).
    for init in lowered.graph.initializer:
        if init.name.endswith("_W"):
            w = numpy_helper.to_array(init)
            assert np.abs(w).max() <= 2.0 / np.sqrt(min(24, 30)) + 1e-6, init.name


def _to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """Cast every float tensor of a small graph to FP16 (what a TensorRT FP16 build computes in)."""
    m = onnx.ModelProto.FromString(model.SerializeToString())
    for init in m.graph.initializer:
        if init.data_type == TensorProto.FLOAT:
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16), init.name))
    for node in m.graph.node:
        for a in node.attribute:
            if a.name == "value" and a.t.data_type == TensorProto.FLOAT:
                a.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(a.t).astype(np.float16), a.t.name))
    for v in (*m.graph.input, *m.graph.output):
        if v.type.tensor_type.elem_type == TensorProto.FLOAT:
            v.type.tensor_type.elem_type = TensorProto.FLOAT16
    del m.graph.value_info[:]
    return m


def test_lowered_spectral_path_is_fp16_safe() -> None:
    # 256x256: the unnormalised DC bin of an all-ones image is 65536 > FP16 max (65504).
    class RoundTrip(torch.nn.Module):
        def forward(self, x):  # type: ignore[no-untyped-def]
            f = torch.fft.rfft2(x, norm="ortho")
            return torch.fft.irfft2(f * 0.5, s=x.shape[-2:], norm="ortho")

    x = torch.ones(1, 1, 256, 256)
    lowered = lower_dft(_export(RoundTrip(), x))
    half = _to_fp16(lowered)
    name = half.graph.input[0].name
    for arr in (np.ones((1, 1, 256, 256), np.float16), np.random.default_rng(4).random((1, 1, 256, 256)).astype(np.float16)):
        out = _run(half, {name: arr})[0].astype(np.float32)
        assert np.isfinite(out).all()
        assert np.abs(out - 0.5 * arr.astype(np.float32)).max() <= 2e-2


def test_spectrum_feeding_two_dfts_keeps_both_exact() -> None:
    """The orthonormal re-scaling hands the leftover factor to every consuming DFT."""
    axis = numpy_helper.from_array(np.array(1, np.int64), "a1")
    axis2 = numpy_helper.from_array(np.array(2, np.int64), "a2")
    nodes = [helper.make_node("DFT", ["x", "", "a1"], ["spec"], name="fwd"),
             helper.make_node("DFT", ["spec", "", "a1"], ["y1"], name="inv_h", inverse=1),
             helper.make_node("DFT", ["spec", "", "a2"], ["y2"], name="fwd_w")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8, 6, 1])],
                          [helper.make_tensor_value_info("y1", TensorProto.FLOAT, None),
                           helper.make_tensor_value_info("y2", TensorProto.FLOAT, None)], [axis, axis2])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 20)])
    x = np.random.default_rng(5).random([2, 8, 6, 1], dtype=np.float32)
    want, got = _run(model, {"x": x}), _run(lower_dft(model), {"x": x})
    for w, o in zip(want, got):
        assert np.abs(w - o).max() <= 1e-4
