"""Roofline: exact FLOP counts per node and the roofline bound of docs/targets.md."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from lowlight.compile.roofline import estimate, to_markdown
from lowlight.targets import get_target


def _save(tmp_path: Path, nodes, inits, inp, out) -> Path:
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(*inp)], [helper.make_tensor_value_info(*out)], inits)
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def _conv_model(tmp_path: Path) -> Path:
    # Input [B=1, T=2, 3, 64, 64] -> reshape to frames -> 3x3 conv 3->16 -> sigmoid.
    w = numpy_helper.from_array(np.zeros((16, 3, 3, 3), np.float32), "w")
    shp = numpy_helper.from_array(np.array([2, 3, 64, 64], np.int64), "shp")
    nodes = [helper.make_node("Reshape", ["rgb", "shp"], ["frames"], name="to_frames"),
             helper.make_node("Conv", ["frames", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Sigmoid", ["c"], ["out"], name="gate")]
    return _save(tmp_path, nodes, [w, shp], ("rgb", TensorProto.FLOAT, [1, 2, 3, 64, 64]),
                 ("out", TensorProto.FLOAT, [2, 16, 64, 64]))


def test_conv_flops_and_orin_latency(tmp_path: Path) -> None:
    est = estimate(_conv_model(tmp_path), get_target("jetson-orin"), "fp16")
    conv = 2 * (2 * 16 * 64 * 64) * 3 * 9          # 2 * outputs * Cin * k*k
    sig = 4 * 2 * 16 * 64 * 64                       # 4 FLOPs per sigmoid output
    assert est["matrix_gflops"] * 1e9 == pytest.approx(conv)
    assert est["gflops"] * 1e9 == pytest.approx(conv + sig)
    assert est["frames_per_call"] == 2
    assert est["compute_ms"] == pytest.approx((conv + sig) / 42.5e12 * 1e3)
    # fused: weights + graph input + output at 2 bytes/element over 204.8 GB/s
    fused = 2 * (16 * 3 * 9 + 2 * 3 * 64 * 64 + 2 * 16 * 64 * 64)
    assert est["fused_mb"] * 1e6 == pytest.approx(fused)
    assert est["fused_memory_ms"] == pytest.approx(fused / 204.8e9 * 1e3)
    assert est["bound_ms"] == pytest.approx(max(est["compute_ms"], est["fused_memory_ms"]))
    assert est["roundtrip_ms"] >= est["bound_ms"]
    assert est["per_frame_bound_ms"] == pytest.approx(est["bound_ms"] / 2)
    assert est["top_nodes"][0]["name"] in ("conv", "gate")
    md = to_markdown(est, measured_ms=1.5)
    assert "jetson-orin" in md and "measured on this host" in md and "| Conv | 1 |" in md


def test_design_example_compute_bound() -> None:
    # docs/targets.md: AGX Orin FP16, G = 50 GFLOP/MP at 1280x720 -> 1.08 ms compute-bound.
    g_per_mp, mp = 50.0, 1280 * 720 / 1e6
    assert g_per_mp * mp / 42.5 == pytest.approx(1.084, abs=1e-3)


def test_precision_changes_peak_and_bytes(tmp_path: Path) -> None:
    path = _conv_model(tmp_path)
    fp16 = estimate(path, get_target("jetson-orin"), "fp16")
    int8 = estimate(path, get_target("jetson-orin"), "int8")
    assert int8["compute_ms"] == pytest.approx(fp16["compute_ms"] / 2)
    assert int8["fused_mb"] == pytest.approx(fp16["fused_mb"] / 2)


def test_matmul_flops(tmp_path: Path) -> None:
    w = numpy_helper.from_array(np.zeros((40, 42), np.float32), "W")
    path = _save(tmp_path, [helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")], [w],
                 ("x", TensorProto.FLOAT, [1, 3, 16, 40]), ("y", TensorProto.FLOAT, [1, 3, 16, 42]))
    est = estimate(path, get_target("h100"), "fp16")
    assert est["gflops"] * 1e9 == pytest.approx(2 * 3 * 16 * 40 * 42)


def test_cpu_has_counts_but_no_prediction(tmp_path: Path) -> None:
    est = estimate(_conv_model(tmp_path), get_target("cpu"), "fp32")
    assert est["bound_ms"] is None and est["gflops"] > 0 and "no peak" in est["note"]
    assert "n/a" in to_markdown(est)
