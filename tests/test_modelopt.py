"""NVIDIA Model Optimizer as the TensorRT targets' third INT8 engine (compile.quantize), on a small conv chain."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from lowlight.compile.quantize import ENGINES, int8_matrix_share, modelopt_missing, quantize_int8
from lowlight.compile.sensitivity import quantized_nodes
from lowlight.core.errors import LowlightError
from lowlight.core.onnx_graph import ort_session

pytestmark = pytest.mark.skipif(modelopt_missing() is not None,
                                reason=f"NVIDIA Model Optimizer's ONNX quantizer does not import: {modelopt_missing()}")

#: output channels of conv0..conv3 (input 3 channels, 3x3 kernels)
WIDTHS = (16, 16, 16, 3)


def _chain(path: Path, size: int = 32) -> None:
    """x -> conv0 -> relu -> conv1 -> relu -> conv2 -> relu -> conv3 -> y."""
    rng = np.random.default_rng(0)
    nodes, inits, src, cin = [], [], "x", 3
    for i, cout in enumerate(WIDTHS):
        inits += [numpy_helper.from_array((rng.standard_normal((cout, cin, 3, 3)) * 0.2).astype(np.float32), f"w{i}"),
                  numpy_helper.from_array((rng.standard_normal(cout) * 0.02).astype(np.float32), f"b{i}")]
        nodes.append(helper.make_node("Conv", [src, f"w{i}", f"b{i}"], [f"c{i}"], name=f"conv{i}", pads=[1, 1, 1, 1]))
        src, cin = f"c{i}", cout
        if i < len(WIDTHS) - 1:
            nodes.append(helper.make_node("Relu", [src], [f"r{i}"], name=f"relu{i}"))
            src = f"r{i}"
    g = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, size, size])],
                          [helper.make_tensor_value_info(src, TensorProto.FLOAT, [1, 3, size, size])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(path))


def _feeds(n: int, seed: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.random((1, 3, 32, 32), dtype=np.float32)} for _ in range(n)]


def _psnr_to_float(fp: Path, qp: Path, feeds: list[dict[str, np.ndarray]]) -> float:
    f, q = ort_session(str(fp)), ort_session(str(qp))
    mse = max(float(np.mean((f.run(None, x)[0] - q.run(None, x)[0]) ** 2)) for x in feeds)
    peak = max(float(np.abs(f.run(None, x)[0]).max()) for x in feeds)
    return 10 * np.log10(peak**2 / mse)


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_modelopt_writes_tensorrt_qdq_and_keeps_the_floor_float(tmp_path: Path) -> None:
    src, dst = tmp_path / "src" / "float.onnx", tmp_path / "out" / "int8.onnx"
    src.parent.mkdir()
    dst.parent.mkdir()
    _chain(src)
    before = _sha(src)
    ENGINES["modelopt"](src, dst, _feeds(8, 0), "trt-s8s8", ["conv1"])
    assert _sha(src) == before and sorted(p.name for p in src.parent.iterdir()) == ["float.onnx"]  # input untouched
    assert sorted(p.name for p in dst.parent.iterdir()) == ["int8.onnx"]  # no stray intermediate files
    q = onnx.load(str(dst))
    inits = {i.name: numpy_helper.to_array(i) for i in q.graph.initializer}
    qdq = [n for n in q.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert qdq
    for n in qdq:  # TensorRT's form: signed int8, zero-point 0
        zp = inits[n.input[2]]
        assert zp.dtype == np.int8 and not zp.any()
    dq_out = {o: n for n in qdq if n.op_type == "DequantizeLinear" for o in n.output}
    readers = {n.op_type for n in q.graph.node for i in n.input if i in dq_out}
    assert readers == {"Conv"}  # Q/DQ on the inputs of the matrix ops, not on every tensor
    assert quantized_nodes(q) == ["conv0", "conv2", "conv3"]  # the floor (conv1) stays float
    w0 = next(dq_out[i] for n in q.graph.node if n.name == "conv0" for i in n.input if i in dq_out and "w0" in dq_out[i].input[0])
    assert inits[w0.input[1]].shape == (WIDTHS[0],)  # per-channel weight scales
    assert _psnr_to_float(src, dst, _feeds(4, 1)) > 30


def test_int8_matrix_share_counts_the_quantized_flops(tmp_path: Path) -> None:
    _chain(tmp_path / "f.onnx")
    ENGINES["modelopt"](tmp_path / "f.onnx", tmp_path / "q.onnx", _feeds(4, 0), "trt-s8s8", ["conv1"])
    macs = [cout * cin for cout, cin in zip(WIDTHS, (3,) + WIDTHS[:-1])]  # same H x W x 9 for every conv
    assert int8_matrix_share(tmp_path / "f.onnx", tmp_path / "q.onnx") == pytest.approx(1 - macs[1] / sum(macs))
    assert int8_matrix_share(tmp_path / "f.onnx", tmp_path / "f.onnx") == 0.0


def test_auto_for_tensorrt_tries_nncf_and_modelopt_and_keeps_the_larger_int8_share(tmp_path: Path) -> None:
    _chain(tmp_path / "f.onnx")
    rep = quantize_int8(tmp_path / "f.onnx", tmp_path / "q.onnx", _feeds(8, 0), "trt-s8s8", [], engine="auto",
                        check_feeds=_feeds(2, 1), min_fidelity=25.0, say=lambda _: None)
    assert set(rep["engines"]) == {"nncf", "modelopt"}
    faithful = {n: e["int8_matrix_share"] for n, e in rep["engines"].items() if e["fidelity_db_vs_float"] >= 25.0}
    assert faithful and rep["engine"] == max(faithful, key=faithful.get)
    assert "INT8 share" in rep["chosen_by"] and "seconds" not in rep["engines"]["modelopt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.onnx", "q.onnx"]  # the loser's artifact is gone
    assert int8_matrix_share(tmp_path / "f.onnx", tmp_path / "q.onnx") == pytest.approx(rep["engines"][rep["engine"]]["int8_matrix_share"], abs=1e-4)


def test_modelopt_refuses_the_cpu_flavour(tmp_path: Path) -> None:
    _chain(tmp_path / "f.onnx")
    with pytest.raises(LowlightError, match="TensorRT's Q/DQ"):
        ENGINES["modelopt"](tmp_path / "f.onnx", tmp_path / "q.onnx", _feeds(2, 0), "ort-u8s8", [])


def _layernorm_like(path: Path) -> None:
    """conv -> relu -> x300 -> square -> mean over channels -> sqrt -> /300: an RMS norm whose sum of squares
    leaves FP16's range (65504) while its input and output do not (NAFNet's LayerNorm2d has the same shape)."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array((rng.standard_normal((8, 3, 3, 3)) * 0.3).astype(np.float32), "w"),
             numpy_helper.from_array(np.zeros(8, np.float32), "b"),
             numpy_helper.from_array(np.array(300.0, np.float32), "k")]
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("Mul", ["r", "k"], ["s"], name="scale"),
             helper.make_node("Mul", ["s", "s"], ["sq"], name="square"),
             helper.make_node("ReduceMean", ["sq"], ["v"], name="mean", axes=[1], keepdims=1),
             helper.make_node("Sqrt", ["v"], ["rms"], name="sqrt"),
             helper.make_node("Div", ["rms", "k"], ["y"], name="unscale")]
    g = helper.make_graph(nodes, "rms", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 16, 16])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(path))


def test_autocast_keeps_the_nodes_that_overflow_fp16_in_fp32(tmp_path: Path) -> None:
    from lowlight.compile.quantize import fp16_autocast, to_fp16

    _layernorm_like(tmp_path / "f.onnx")
    feeds = [{"x": np.random.default_rng(i).random((1, 3, 16, 16), dtype=np.float32)} for i in range(4)]
    rep = fp16_autocast(tmp_path / "f.onnx", tmp_path / "auto.onnx", [], feeds)
    assert {"square", "mean"} <= set(rep["fp32_by_measurement"]) and "conv" not in rep["fp32_by_measurement"]
    to_fp16(tmp_path / "f.onnx", tmp_path / "half.onnx", [])

    def dtype_of(path: Path, tensor: str) -> int:
        typed = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
        return next(v.type.tensor_type.elem_type for v in typed.graph.value_info if v.name == tensor)

    # onnxruntime's converter computes the sum of squares (up to 6.6e5 here) in FP16, which TensorRT would run as
    # inf; AutoCast keeps it FP32 (onnxruntime's CPU kernels upcast FP16 themselves, so only the graph shows it)
    assert dtype_of(tmp_path / "half.onnx", "sq") == onnx.TensorProto.FLOAT16
    assert dtype_of(tmp_path / "auto.onnx", "sq") == onnx.TensorProto.FLOAT
    assert dtype_of(tmp_path / "auto.onnx", "r") == onnx.TensorProto.FLOAT16  # the conv runs in FP16
    ref = ort_session(str(tmp_path / "f.onnx")).run(None, feeds[0])[0]
    auto = ort_session(str(tmp_path / "auto.onnx")).run(None, feeds[0])[0]
    np.testing.assert_allclose(auto, ref, rtol=1e-2, atol=1e-2)
    kept = fp16_autocast(tmp_path / "f.onnx", tmp_path / "kept.onnx", ["conv"], feeds)
    assert "conv" not in kept["fp32_by_measurement"] and kept["kept_float"] == 1  # the floor is reported apart


def test_onnxruntime_quantizer_still_works_after_modelopt_in_the_same_process(tmp_path: Path) -> None:
    """Model Optimizer patches onnxruntime's quantization classes process-wide when it runs; it runs in a child
    process, so a later onnxruntime INT8 (the cpu target in the same compile or test session) is unaffected."""
    from onnxruntime.quantization.calibrate import MinMaxCalibrater

    before = MinMaxCalibrater.collect_data
    _chain(tmp_path / "f.onnx")
    ENGINES["modelopt"](tmp_path / "f.onnx", tmp_path / "mo.onnx", _feeds(4, 0), "trt-s8s8", [])
    assert MinMaxCalibrater.collect_data is before
    ENGINES["ort"](tmp_path / "f.onnx", tmp_path / "ort.onnx", _feeds(4, 0), "ort-u8s8", [])
    assert _psnr_to_float(tmp_path / "f.onnx", tmp_path / "ort.onnx", _feeds(2, 1)) > 25


def test_fp16_engine_autocast_is_refused_where_it_cannot_run(tmp_path: Path) -> None:
    from lowlight.compile.options import CompileOptions
    from lowlight.compile.pipeline import compile_bundle

    with pytest.raises(LowlightError, match="TensorRT targets") as err:
        compile_bundle(CompileOptions(model="amnet", config="tiny", target="cpu", precision="fp16", fp16_engine="autocast",
                                      out=str(tmp_path / "b"), quiet=True))
    assert "--fp16-engine" in (err.value.fix or "") and not (tmp_path / "b").exists()
