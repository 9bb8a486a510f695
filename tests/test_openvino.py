"""The OpenVINO backend of the cpu target, BF16, and `--backend auto`'s measured choice (issue 14, parts 3-4).

Tests that build or run OpenVINO models skip (with the reason) only where `import openvino` fails;
the refusals (BF16 without the processor for it, BF16 or --backend on a TensorRT target) run everywhere.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import compile_tiny
from lowlight.compile.cli import main as compile_main
from lowlight.core.errors import InputError, TargetError

try:
    import openvino  # noqa: F401

    HAVE_OPENVINO = True
except ImportError:
    HAVE_OPENVINO = False
needs_openvino = pytest.mark.skipif(not HAVE_OPENVINO, reason="openvino is not installed (pip install 'lowlight-compile[openvino]')")


def _bf16_here() -> bool:
    from lowlight.compile.openvino import bf16_support

    return bool(bf16_support()["available"])


@pytest.fixture(scope="module")
def ov_fp32(tmp_path_factory, cache_dir, data_dir):
    return compile_tiny(tmp_path_factory.mktemp("ov") / "tiny-ov-fp32", cache_dir, precision="fp32", backend="openvino")


@pytest.fixture(scope="module")
def auto_int8(tmp_path_factory, cache_dir, data_dir):
    return compile_tiny(tmp_path_factory.mktemp("ov") / "tiny-auto-int8", cache_dir, precision="int8", backend="auto")


# -- the runtime ------------------------------------------------------------------------


@needs_openvino
@pytest.mark.slow
def test_openvino_bundle_runs_like_the_onnxruntime_one(ov_fp32, fp32_bundle):
    import lowlight.runtime as rt

    m = ov_fp32.manifest
    assert m["backend"] == m["runtime"] == "openvino" and m["precision"] == "fp32"
    comp = m["components"]["model"]
    assert comp["file"] == "model.xml" and comp["external_data"] == ["model.bin"] and comp["format"] == "openvino-ir"
    assert {"model.xml", "model.bin"} <= set(m["files"]) and "model" not in m  # no ONNX graph in an OpenVINO bundle
    assert m["openvino"]["inference_precision_hint"] == "f32" and m["tools"]["openvino"]
    assert m["host_cpu"]["bf16"]["available"] in (True, False) and m["host_cpu"]["bf16"]["why"]
    assert m["verification"]["passed"] and m["verification"]["backend"].startswith("openvino")
    assert m["profile"]["latency_ms"]["p50"] > 0
    prof = json.loads((ov_fp32.bundle / "profile.json").read_text())
    assert prof["backend"].startswith("openvino") and prof["top_op_types"]  # OpenVINO's own per-node counters

    ov_sess = rt.load(ov_fp32.bundle, verbose=False)
    ort_sess = rt.load(fp32_bundle.bundle, verbose=False)
    assert ov_sess.backend_name.startswith("openvino") and ort_sess.backend_name.startswith("onnxruntime")
    x = np.load(fp32_bundle.bundle / "reference.npz")["input:rgb"][0]
    a, b = ov_sess(rgb=x), ort_sess(rgb=x)
    assert a.shape == b.shape == (1, 4, 3, 64, 64) and a.dtype == np.float32
    assert float(np.abs(a - b).max()) < 1e-3
    assert set(ov_sess.run(rgb=x)) == {"enhanced"}
    with pytest.raises(InputError, match="OpenVINO IR"):  # verified on OpenVINO: never run on another backend
        rt.load(ov_fp32.bundle, backend="onnxruntime", verbose=False)
    with pytest.raises(InputError, match="not OpenVINO"):
        rt.load(fp32_bundle.bundle, backend="openvino", verbose=False)


@needs_openvino
@pytest.mark.slow
def test_fp32_bundle_pins_the_f32_hint(ov_fp32):
    import openvino as ov

    import lowlight.runtime as rt

    sess = rt.load(ov_fp32.bundle, verbose=False)
    assert str(sess.backend.compiled.get_property("INFERENCE_PRECISION_HINT")) == str(ov.Type.f32)
    assert sess.backend.precision_hint == "f32"
    # Why it is pinned: unpinned, OpenVINO runs this "FP32" IR in BF16 on a processor that has it.
    default = ov.Core().compile_model(str(ov_fp32.bundle / "model.xml"), "CPU").get_property("INFERENCE_PRECISION_HINT")
    assert (str(default) == str(ov.Type.bf16)) == _bf16_here()


@needs_openvino
@pytest.mark.slow
def test_bf16_bundle_where_the_processor_has_it(tmp_path, cache_dir, data_dir):
    if not _bf16_here():
        pytest.skip("this processor has no native BF16 (the refusal is tested below)")
    import openvino as ov

    import lowlight.runtime as rt

    r = compile_tiny(tmp_path / "bf16", cache_dir, precision="bf16", backend="auto")  # OpenVINO is the only BF16 backend
    m = r.manifest
    assert m["precision"] == "bf16" and m["backend"] == "openvino" and m["openvino"]["inference_precision_hint"] == "bf16"
    assert m["host_cpu"]["bf16"]["available"] is True
    assert 35 < m["verification"]["fidelity_psnr_db"] < 120  # BF16 (8-bit mantissa): faithful, and visibly not FP32
    sess = rt.load(r.bundle, verbose=False)
    assert str(sess.backend.compiled.get_property("INFERENCE_PRECISION_HINT")) == str(ov.Type.bf16)


def test_bf16_refused_on_a_host_without_it(tmp_path, monkeypatch):
    from lowlight.compile import openvino as ovc
    from lowlight.compile.options import CompileOptions
    from lowlight.compile.pipeline import compile_bundle

    monkeypatch.setattr(ovc, "openvino_missing", lambda: None)  # the processor is what is missing here, not OpenVINO
    monkeypatch.setattr(ovc, "bf16_support", lambda: {"available": False, "cpu_flags": [], "openvino_capabilities": ["FP32", "INT8"],
                                                      "why": "OpenVINO's CPU plugin does not list BF16 among this processor's capabilities"})
    with pytest.raises(TargetError) as exc:
        compile_bundle(CompileOptions(config="tiny", precision="bf16", backend="auto", out=str(tmp_path / "b"), quiet=True))
    assert "native BF16" in exc.value.what and "--precision fp32" in (exc.value.fix or "")
    assert not (tmp_path / "b").exists()  # refused before any work
    with pytest.raises(TargetError, match="OpenVINO"):  # onnxruntime has no BF16 path at all
        ovc.candidates_for("bf16", "onnxruntime", None, None)


def test_bf16_and_backend_refused_on_a_tensorrt_target(tmp_path, capsys):
    from lowlight.targets import get_target

    with pytest.raises(TargetError, match="cpu target only"):
        get_target("jetson-orin").resolve_precision("bf16")
    common = ["--model", "amnet", "--config", "tiny", "--target", "jetson-orin", "--out", str(tmp_path / "b"),
              "--cache-dir", str(tmp_path / "c"), "--quiet"]
    assert compile_main(common + ["--precision", "bf16"]) == 2
    assert "cannot build bf16" in capsys.readouterr().err
    for backend in ("openvino", "onnxruntime"):
        assert compile_main(common + ["--backend", backend]) == 2
        err = capsys.readouterr().err
        assert f"--backend {backend} is not available for target 'jetson-orin'" in err and "fix:" in err
    assert not (tmp_path / "b").exists()


def test_precision_and_backend_interaction():
    from lowlight.compile.openvino import candidates_for

    assert candidates_for("fp32", "auto", None, None)[0] == [("onnxruntime", "fp32"), ("openvino", "fp32")]  # fp32 never becomes bf16
    assert candidates_for("int8", "auto", None, None)[0] == [("onnxruntime", "int8"), ("openvino", "int8")]
    assert candidates_for("bf16", "auto", None, None)[0] == [("openvino", "bf16")]
    assert candidates_for("fp16", "auto", None, None)[0] == [("onnxruntime", "fp16")]
    want, left = candidates_for("int8", "auto", "openvino is not installed", None)
    assert want == [("onnxruntime", "int8")] and "lowlight-compile[openvino]" in left[0]["rejected"]  # today's behaviour
    assert candidates_for("fp32", "auto", None, "nv12")[0] == [("onnxruntime", "fp32")]
    with pytest.raises(TargetError, match="fp16"):
        candidates_for("fp16", "openvino", None, None)
    with pytest.raises(TargetError) as exc:
        candidates_for("fp32", "openvino", "openvino is not installed", None)
    assert "lowlight-compile[openvino]" in (exc.value.fix or "")


# -- --backend auto -----------------------------------------------------------------------


@needs_openvino
@pytest.mark.slow
def test_auto_verifies_and_times_every_candidate(auto_int8):
    m = auto_int8.manifest
    sel = m["backend_selection"]
    assert sel["mode"] == "auto" and sel["timing"]["interleaved"] and sel["timing"]["rounds"] >= 5
    cands = {(c["backend"], c["precision"]): c for c in sel["candidates"]}
    assert set(cands) == {("onnxruntime", "int8"), ("openvino", "int8")}
    for c in cands.values():
        assert c["passed"] and c["fidelity_psnr_db"] > 35 and not c.get("rejected")
        # every quantized conv in an int8 kernel; how many are quantized is the measured float set's call (9 of 19 on tiny)
        assert c["fusion"]["fused"] and c["fusion"]["quantized_convs"] >= 5
        assert len(c["times_ms"]) == sel["timing"]["rounds"] and c["median_ms"] == pytest.approx(float(np.median(c["times_ms"])), abs=1e-3)
    chosen = [c for c in cands.values() if c.get("chosen")]
    assert len(chosen) == 1 and chosen[0]["median_ms"] == min(c["median_ms"] for c in cands.values())
    assert sel["chosen"] == f"{chosen[0]['backend']} int8" and m["backend"] == chosen[0]["backend"]
    assert "fastest of 2" in sel["reason"]
    assert sel["bf16"]["why"]
    md = (auto_int8.bundle / "verification.md").read_text()
    assert "## Backend selection" in md and "openvino | int8" in md and "onnxruntime | int8" in md
    vj = json.loads((auto_int8.bundle / "verification.json").read_text())
    assert vj["backend_selection"]["chosen"] == sel["chosen"]
    if m["backend"] == "openvino":
        assert m["stages"]["quantize"]["engine"] == "nncf (OpenVINO model)" and m["ops"]["FakeQuantize"] > 10


@needs_openvino
@pytest.mark.slow
def test_auto_rejects_an_unfused_int8_candidate(tmp_path, cache_dir, data_dir, monkeypatch, auto_int8):
    from lowlight.compile import openvino as ovc

    # OpenVINO reports its quantized convolutions as running in float: the candidate must lose, whatever its speed.
    monkeypatch.setattr(ovc, "ov_int8_fusion", lambda model, compiled: {
        "backend": "openvino", "quantized_convs": 19, "int8_kernels": 0, "float_kernels": ["node_conv2d"], "fused": False, "how": "test"})
    r = compile_tiny(tmp_path / "b", cache_dir, precision="int8", backend="auto")  # stages cached by auto_int8
    sel = r.manifest["backend_selection"]
    ov_c = next(c for c in sel["candidates"] if c["backend"] == "openvino")
    assert "19 of 19 quantized convolutions run in float kernels" in ov_c["rejected"] and "median_ms" not in ov_c
    assert r.manifest["backend"] == "onnxruntime" and sel["chosen"] == "onnxruntime int8" and "model.onnx" in r.manifest["files"]


def _fq_conv(levels: int) -> "object":
    import openvino as ov
    import openvino.opset13 as ops

    x = ops.parameter([1, 8, 16, 16], np.float32, name="x")
    lo, hi = np.zeros((1, 1, 1, 1), np.float32), np.ones((1, 1, 1, 1), np.float32)
    w = np.random.default_rng(0).standard_normal((8, 8, 3, 3)).astype(np.float32)
    wl = -np.abs(w).max(axis=(1, 2, 3), keepdims=True)
    fq_w = ops.fake_quantize(ops.constant(w), wl, -wl, wl, -wl, 255 if levels == 256 else levels)
    conv = ops.convolution(ops.fake_quantize(x, lo, hi, lo, hi, levels), fq_w, [1, 1], [1, 1], [1, 1], [1, 1], name="conv")
    return ov.Model([ops.relu(conv)], [x], "fq_conv")


@needs_openvino
def test_openvino_fusion_check_rejects_an_unfused_graph():
    import openvino as ov

    from lowlight.compile.openvino import ov_int8_fusion

    core = ov.Core()
    for levels, fused in ((256, True), (17, False)):  # 17 levels: no integer kernel takes it, the conv runs in f32
        model = _fq_conv(levels)
        rep = ov_int8_fusion(model, core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"}))
        assert rep["quantized_convs"] == 1 and rep["fused"] is fused
        assert rep["float_kernels"] == ([] if fused else ["conv"])


def _qdq_conv(path: Path, output_q: bool) -> Path:
    """x -> Q/DQ -> Conv (DQ weights) [-> Q/DQ]: onnxruntime fuses it to QLinearConv only with the output Q."""
    w = np.random.default_rng(0).integers(-100, 100, (8, 8, 3, 3)).astype(np.int8)
    inits = [numpy_helper.from_array(np.float32(1 / 255), "s"), numpy_helper.from_array(np.uint8(0), "zp"),
             numpy_helper.from_array(w, "w_q"), numpy_helper.from_array(np.float32(0.01), "ws"), numpy_helper.from_array(np.int8(0), "wzp")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["xq"]), helper.make_node("DequantizeLinear", ["xq", "s", "zp"], ["xd"]),
             helper.make_node("DequantizeLinear", ["w_q", "ws", "wzp"], ["wd"]),
             helper.make_node("Conv", ["xd", "wd"], ["c" if output_q else "y"], pads=[1, 1, 1, 1], name="conv")]
    if output_q:
        nodes += [helper.make_node("QuantizeLinear", ["c", "s", "zp"], ["cq"]), helper.make_node("DequantizeLinear", ["cq", "s", "zp"], ["y"])]
    g = helper.make_graph(nodes, "qdq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 16, 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 16, 16])], inits)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_onnxruntime_fusion_check_rejects_an_unfused_graph(tmp_path):
    from lowlight.compile.openvino import ort_int8_fusion

    fused = ort_int8_fusion(_qdq_conv(tmp_path / "fused.onnx", output_q=True))
    assert fused["quantized_convs"] == 1 and fused["int8_kernels"] == 1 and fused["fused"]
    unfused = ort_int8_fusion(_qdq_conv(tmp_path / "unfused.onnx", output_q=False))
    assert unfused["quantized_convs"] == 1 and unfused["int8_kernels"] == 0 and not unfused["fused"] and unfused["float_kernels"] == ["conv"]


def test_interleaved_timing_rotates_the_order():
    from lowlight.compile.openvino import pick, time_interleaved

    order: list[str] = []
    times = time_interleaved({"a": lambda: order.append("a"), "b": lambda: order.append("b"), "c": lambda: order.append("c")},
                             rounds=3, warmup=1)
    assert order[3:] == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]  # after one warm-up each, a rotated order per round
    assert all(len(v) == 3 for v in times.values())
    recs = [{"backend": "onnxruntime", "precision": "int8", "passed": True, "median_ms": 5.0, "fidelity_psnr_db": 48.0, "times_ms": [5.0]},
            {"backend": "openvino", "precision": "int8", "passed": True, "median_ms": 4.0, "fidelity_psnr_db": 47.0, "times_ms": [4.0],
             "rejected": "not fused"},
            {"backend": "openvino", "precision": "fp32", "passed": False, "median_ms": 1.0, "fidelity_psnr_db": 20.0}]
    assert pick(recs)[0] == 0  # the rejected and the failing ones never win, however fast


# -- the CLIs and the default install ---------------------------------------------------------


@needs_openvino
@pytest.mark.slow
def test_lowlight_run_on_an_openvino_bundle(ov_fp32, tmp_path, capsys):
    from lowlight.calibration.data import SAMPLES_DIR
    from lowlight.runtime.cli import main as run_main

    assert run_main([str(ov_fp32.bundle), "--input", str(SAMPLES_DIR), "--output", str(tmp_path / "out"), "--quiet"]) == 0
    marker = json.loads((tmp_path / "out" / "lowlight-run.json").read_text())
    assert marker["backend"].startswith("openvino") and marker["frames"]["written"] == len(list(SAMPLES_DIR.glob("*.png")))
    assert run_main([str(ov_fp32.bundle), "--input", str(SAMPLES_DIR), "--output", str(tmp_path / "o2"), "--backend", "onnxruntime", "--quiet"]) == 2
    assert "OpenVINO IR" in capsys.readouterr().err


@needs_openvino
@pytest.mark.slow
def test_runtime_without_openvino_says_how_to_install(ov_fp32):
    """An OpenVINO bundle on a runtime-only install (numpy + onnxruntime): an error with the pip command, and
    `import lowlight.runtime` itself imports neither openvino nor torch."""
    code = ("import sys; sys.modules['openvino'] = None\n"
            "import lowlight.runtime as rt\n"
            "assert 'torch' not in sys.modules\n"
            "try:\n    rt.load(sys.argv[1], verbose=False)\nexcept rt.LowlightError as e:\n    print(e.what); print(e.fix)\n")
    out = subprocess.run([sys.executable, "-c", code, str(ov_fp32.bundle)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "OpenVINO, which is not installed" in out.stdout and "pip install 'lowlight-compile[openvino]'" in out.stdout
    lazy = subprocess.run([sys.executable, "-c", "import sys, lowlight.runtime; print('openvino' in sys.modules, 'torch' in sys.modules)"],
                          capture_output=True, text=True, timeout=120, check=True)
    assert lazy.stdout.strip() == "False False"


def test_int8_of_a_route_no_calibration_frame_takes_says_what_and_how(tmp_path):
    """NNCF calibrates each If branch of an OpenVINO model on the samples that take it: a route that no
    calibration frame takes (GM-MoE top-2: one of 21 on the 16 shipped frames) gets a clear error, not NNCF's."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from lowlight.compile import openvino as ovc
    from lowlight.core.errors import TargetError

    rng = np.random.default_rng(0)

    def branch(name: str) -> onnx.GraphProto:
        w = numpy_helper.from_array(rng.standard_normal((3, 3, 3, 3)).astype(np.float32), f"{name}_w")
        return helper.make_graph([helper.make_node("Conv", ["x", w.name], [f"{name}_y"], pads=[1, 1, 1, 1])], name, [],
                                 [helper.make_tensor_value_info(f"{name}_y", TensorProto.FLOAT, [1, 3, 8, 8])], [w])

    nodes = [helper.make_node("ReduceMean", ["x"], ["m"], keepdims=0),
             helper.make_node("Greater", ["m", "big"], ["cond"]),  # never true for pixels in [0, 1]
             helper.make_node("If", ["cond"], ["y"], then_branch=branch("then"), else_branch=branch("else"))]
    g = helper.make_graph(nodes, "routed", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 8, 8])],
                          [numpy_helper.from_array(np.array(100.0, np.float32), "big")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(tmp_path / "routed.onnx"))
    ovc.to_ir(tmp_path / "routed.onnx", tmp_path / "model.xml")
    feeds = [{"x": rng.random((1, 3, 8, 8)).astype(np.float32)} for _ in range(4)]
    with pytest.raises(TargetError) as e:
        ovc.quantize_ir(tmp_path / "model.xml", tmp_path / "q.xml", feeds, [])
    assert "If branch" in e.value.what and "--backend onnxruntime" in e.value.fix
