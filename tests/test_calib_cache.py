"""TensorRT calibration cache: exact format, round trip, names consistent with the float ONNX."""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from lowlight.targets.tensorrt.calib_cache import cache_for_float_model, header, read_cache, scales_from_qdq, tensor_names, write_cache


def test_format_and_round_trip(tmp_path: Path) -> None:
    scales = {"rgb": 0.125, "enc/conv1:0": 1 / 127, "x": 3.0e-5}
    path = write_cache(tmp_path / "c.cache", scales, 100300)
    lines = path.read_text().splitlines()
    assert lines[0] == "TRT-100300-MinMaxCalibration" == header(100300)
    assert "rgb: 3e000000" in lines  # 0.125 as big-endian float32 bits
    hdr, back = read_cache(path)
    assert hdr == lines[0]
    assert back == {k: struct.unpack(">f", struct.pack(">f", v))[0] for k, v in scales.items()}


def _float_and_qdq(tmp_path: Path) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.2, "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((3, 8, 1, 1)).astype(np.float32) * 0.2, "w2")
    nodes = [helper.make_node("Conv", ["rgb", "w1"], ["feat"], name="enc", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["feat"], ["act"], name="relu"),
             helper.make_node("Conv", ["act", "w2"], ["res"], name="dec"),
             helper.make_node("Add", ["res", "rgb"], ["out"], name="skip")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("rgb", TensorProto.FLOAT, [1, 3, 16, 16])],
                          [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 3, 16, 16])], [w1, w2])
    flt = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(flt, tmp_path / "f.onnx")

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter([{"rgb": rng.random((1, 3, 16, 16), dtype=np.float32)} for _ in range(8)])

        def get_next(self):  # type: ignore[no-untyped-def]
            return next(self.it, None)

    quantize_static(str(tmp_path / "f.onnx"), str(tmp_path / "q.onnx"), Reader(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                    extra_options={"ActivationSymmetric": True, "WeightSymmetric": True})
    return flt, onnx.load(tmp_path / "q.onnx")


def test_scales_come_from_activation_quantizers(tmp_path: Path) -> None:
    flt, qdq = _float_and_qdq(tmp_path)
    scales = scales_from_qdq(qdq)
    assert "rgb" in scales and "w1" not in scales and "w2" not in scales
    assert {"rgb", "feat", "act", "res"} <= set(scales)
    # The input's scale is its calibrated max / 127: inputs are in [0, 1).
    assert 0.9 / 127 < scales["rgb"] <= 1.0 / 127 + 1e-9


def test_cache_names_match_the_float_graph(tmp_path: Path) -> None:
    flt, qdq = _float_and_qdq(tmp_path)
    # A Q/DQ tensor the float graph does not have is dropped, not written.
    extra = helper.make_node("QuantizeLinear", ["ghost", qdq.graph.node[0].input[1]], ["ghost_q"], name="ghost")
    qdq.graph.node.append(extra)
    path, dropped = cache_for_float_model(qdq, flt, tmp_path / "calibration.cache", 100300)
    _, scales = read_cache(path)
    assert dropped == ["ghost"]
    assert set(scales) <= tensor_names(flt)
    # onnxruntime renamed the output's quantized tensor; the cache uses the float name.
    assert {"rgb", "feat", "act", "res", "out"} <= set(scales)


def test_engine_build_restamps_the_header_for_the_device_trt(tmp_path: Path) -> None:
    from lowlight.targets.tensorrt.engine import _restamped_cache

    path = write_cache(tmp_path / "c.cache", {"rgb": 0.5}, 100300)
    before = path.read_bytes()
    out = _restamped_cache(path, "10.3.0.30", tmp_path / "cache").read_text().splitlines()
    assert out == ["TRT-100300-MinMaxCalibration", "rgb: 3f000000"]
    assert _restamped_cache(path, "10.13.2", tmp_path / "cache").read_text().startswith("TRT-101302-MinMaxCalibration\n")
    assert path.read_bytes() == before  # the bundle's cache is left as compiled
