"""Target registry, TensorRT capabilities per version, lowering choice, bundle finishing."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from lowlight.compile import cmd_targets
from lowlight.core.errors import TargetError
from lowlight.core.trt_version import TrtVersion
from lowlight.targets import get_target, names

ALL = ["jetson-orin", "jetson-orin-agx-32", "jetson-orin-nx-16", "jetson-orin-nano-8", "jetson-thor",
       "rtx-3090", "rtx-4090", "a100", "h100", "cpu"]


def test_every_device_is_registered() -> None:
    assert set(ALL) <= set(names())
    assert get_target("jetson-orin-agx-64") is get_target("jetson-orin")


@pytest.mark.parametrize("name,arch,fp16,int8,bw,dla", [
    ("jetson-orin", "sm_87", 42.5, 85, 204.8, 2),
    ("jetson-orin-agx-32", "sm_87", 27, 54, 204.8, 2),
    ("jetson-orin-nx-16", "sm_87", 19, 38, 102.4, 2),
    ("jetson-orin-nano-8", "sm_87", 10.2, 20, 68, 0),
    ("rtx-3090", "sm_86", 71, 284, 936, 0),
    ("rtx-4090", "sm_89", 165, 661, 1008, 0),
    ("a100", "sm_80", 312, 624, 2039, 0),
    ("h100", "sm_90", 989, 1979, 3350, 0),
])
def test_peaks_match_design_table(name, arch, fp16, int8, bw, dla) -> None:
    f = get_target(name).facts
    assert (f["arch"], f["fp16_tflops"], f["int8_tops"], f["dram_gbps"], f["dla_cores"]) == (arch, fp16, int8, bw, dla)


def test_defaults() -> None:
    orin = get_target("jetson-orin")
    assert orin.facts["trt_version"] == "10.3" and orin.facts["stack"] == "JetPack 6.2"
    assert orin.default_precision == "fp16" and orin.qdq_flavour == "trt-s8s8"
    assert get_target("cpu").default_precision == "fp32"
    assert get_target("jetson-orin", "11.4").facts["stack"] == "JetPack 7.2.2+"


@pytest.mark.parametrize("version,dft,jit,aot,typed,cache", [
    ("10.3", False, False, False, False, True),
    ("10.6", False, True, False, False, True),
    ("10.9", False, True, True, False, True),
    ("11.0", False, True, True, True, False),
    ("11.2", True, True, True, True, False),
    ("11.4", True, True, True, True, False),
])
def test_capabilities_follow_the_trt_version(version, dft, jit, aot, typed, cache) -> None:
    c = get_target("jetson-orin", version).caps
    assert (c.onnx_dft, c.jit_plugins, c.aot_plugins, c.strongly_typed_only, c.implicit_int8_cache) == (dft, jit, aot, typed, cache)


@pytest.mark.parametrize("name,version,dla", [
    ("jetson-orin", "10.3", True),
    ("jetson-orin", "11.0", False),
    ("jetson-orin", "11.3", False),
    ("jetson-orin", "11.4.0", False),
    ("jetson-orin", "11.4.1", True),
    ("jetson-orin", "11.4", True),          # "11.4" = newest 11.4.x, as JetPack 7.2.2+ ships
    ("jetson-orin-agx-32", "11.4.1", True),
    ("jetson-orin-nx-16", "10.3", True),
    ("jetson-orin-nx-16", "11.4.1", False),  # 11.4.1 brings DLA back on AGX Orin only
    ("jetson-orin-nano-8", "10.3", False),   # no DLA cores
    ("rtx-4090", "10.13", False),
])
def test_dla_availability(name, version, dla) -> None:
    assert get_target(name, version).caps.dla is dla


def test_imoe_layer_needs_sm10_and_trt11() -> None:
    assert get_target("jetson-thor", "11.4").caps.imoe_layer
    assert not get_target("jetson-thor").caps.imoe_layer      # default 10.13
    assert not get_target("h100", "11.4").caps.imoe_layer     # sm_90
    assert not get_target("jetson-orin", "11.4").caps.imoe_layer


def test_lowering_passes_by_version() -> None:
    assert [n for n, _ in get_target("jetson-orin").lowering_passes()] == ["decompose-custom-ops", "dft-to-matmul"]
    assert [n for n, _ in get_target("rtx-4090").lowering_passes()] == ["plugin-nodes", "dft-to-matmul"]
    assert [n for n, _ in get_target("jetson-orin", "11.4").lowering_passes()] == ["plugin-nodes"]


def test_version_parsing_and_errors() -> None:
    assert TrtVersion.parse("10.3.0.30") == TrtVersion(10, 3, 0)
    assert TrtVersion.parse("10.3").code == 100300
    assert TrtVersion.parse("10.3.0.26").code == 100300 and TrtVersion.parse("10.13.2").code == 101302
    assert TrtVersion.parse("10.0.0b6") == TrtVersion(10, 0, 0)  # early-access tag ignored
    assert str(TrtVersion.parse("11.4")) == "11.4" and str(TrtVersion.parse(" 10.3.0.26 ")) == "10.3.0"
    assert TrtVersion.try_parse("?") is None and TrtVersion.try_parse(None) is None and TrtVersion.try_parse("11") is None
    with pytest.raises(TargetError, match="MAJOR.MINOR"):
        TrtVersion.parse("eleven")
    with pytest.raises(TargetError):
        get_target("jetson-orin", "eleven")
    with pytest.raises(TargetError):
        get_target("cpu", "10.3")
    with pytest.raises(TargetError, match="unknown target"):
        get_target("jetson-xavier")


def test_version_order_and_matching() -> None:
    v = TrtVersion.parse
    assert v("10.3") < v("10.13") < v("11.0") < v("11.4.0") < v("11.4.1") < v("11.4")  # "11.4" = newest 11.4.x
    assert sorted([v("11.4"), v("10.3.0"), v("11.4.1")]) == [v("10.3.0"), v("11.4.1"), v("11.4")]
    assert v("11.4").at_least(11, 4, 1) and not v("11.4.0").at_least(11, 4, 1) and v("10.3.0.26") >= v("10.3.0")
    # Engine portability: same major.minor, patch compared only where both know it.
    assert v("10.3").matches(v("10.3.0.30")) and v("10.3.0.26").matches(v("10.3.0.30"))
    assert not v("10.3.0").matches(v("10.3.1")) and not v("10.3").matches(v("10.4"))


def test_a_target_is_one_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A module dropped into targets/ that lists `TARGETS` is registered, aliases included, with no other edit."""
    import sys

    import lowlight.targets as registry

    (tmp_path / "toy_npu.py").write_text(
        "from lowlight.targets.base import Target\n"
        "TOY = Target(name='toy-npu', summary='a toy NPU', runtime='onnxruntime',\n"
        "             default_precision='int8', qdq_flavour='ort-u8s8', facts={'backend': 'toy'})\n"
        "TARGETS = [(TOY, ('toy',))]\n"
    )
    monkeypatch.setattr(registry, "__path__", [*registry.__path__, str(tmp_path)])
    monkeypatch.setattr(registry, "_REGISTRY", {})
    monkeypatch.setattr(registry, "_discovered", False)
    try:
        toy = get_target("toy")
        assert toy is get_target("toy-npu") and toy.default_precision == "int8"
        assert {"toy", "toy-npu", "cpu", "jetson-orin"} <= set(names())
        assert ("toy-npu", ("toy",)) in [(t.name, a) for t, a in registry.listed()]
        rows = cmd_targets.rows()
        assert [r["name"] for r in rows][-1] == "cpu" and any(r["name"] == "toy-npu" for r in rows)
    finally:
        sys.modules.pop("lowlight.targets.toy_npu", None)


def test_a_malformed_targets_list_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    import lowlight.targets as registry

    (tmp_path / "broken_target.py").write_text("TARGETS = ['not-a-target']\n")
    monkeypatch.setattr(registry, "__path__", [*registry.__path__, str(tmp_path)])
    monkeypatch.setattr(registry, "_REGISTRY", {})
    monkeypatch.setattr(registry, "_discovered", False)
    try:
        with pytest.raises(TypeError, match="broken_target.TARGETS"):
            names()
        assert registry._discovered is False  # the next lookup tries again instead of seeing an empty registry
    finally:
        sys.modules.pop("lowlight.targets.broken_target", None)


def _tiny_model() -> onnx.ModelProto:
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    nodes = [helper.make_node("Conv", ["rgb", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Div", ["c", "two"], ["d"], name="halve"),
             helper.make_node("Sigmoid", ["d"], ["out"], name="gate")]
    two = numpy_helper.from_array(np.array(2.0, np.float32), "two")
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("rgb", TensorProto.FLOAT, [1, 3, 8, 8])],
                          [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 4, 8, 8])], [w, two])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 20)])


def test_dla_option_checks() -> None:
    m = _tiny_model()
    warnings = get_target("jetson-orin").check_graph(m, {"dla": True, "precision": "fp16"})
    assert any("1 x Div: DLA has no Div (halve)" in w for w in warnings)
    assert not any("conv" in w for w in warnings)
    with pytest.raises(TargetError, match="no DLA"):
        get_target("jetson-orin-nano-8").check_graph(m, {"dla": True, "precision": "fp16"})
    with pytest.raises(TargetError, match="11.0-11.3"):
        get_target("jetson-orin", "11.2").check_graph(m, {"dla": True, "precision": "fp16"})
    with pytest.raises(TargetError, match="FP16 or INT8"):
        get_target("jetson-orin").check_graph(m, {"dla": True, "precision": "fp32"})
    assert get_target("jetson-orin").check_graph(m, {"dla": False, "precision": "fp16"}) == []


def test_targets_command_prints_every_target(capsys) -> None:
    parser = argparse.ArgumentParser()
    cmd_targets.add_arguments(parser)
    assert cmd_targets.run(parser.parse_args([])) == 0
    out = capsys.readouterr().out
    for name in ALL:
        assert name in out
    assert cmd_targets.run(parser.parse_args(["--json", "--trt-version", "11.4"])) == 0
    rows = json.loads(capsys.readouterr().out)
    orin = next(r for r in rows if r["name"] == "jetson-orin")
    assert orin["onnx_dft"] is True and orin["implicit_int8_cache"] is False


def _context(tmp: Path, precision: str) -> dict:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    flt = tmp / "float.onnx"
    onnx.save(_tiny_model(), flt)
    staging = tmp / "staging"
    staging.mkdir()
    model_path = staging / "model.onnx"
    if precision == "int8":
        class Reader(CalibrationDataReader):
            def __init__(self) -> None:
                self.batches = iter([{"rgb": np.random.default_rng(i).random((1, 3, 8, 8), dtype=np.float32)} for i in range(4)])

            def get_next(self):  # type: ignore[no-untyped-def]
                return next(self.batches, None)

        quantize_static(str(flt), str(model_path), Reader(), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True})
    else:
        onnx.save(_tiny_model(), model_path)
    return {"model_path": str(model_path), "float_model_path": str(flt), "precision": precision,
            "input_shapes": {"rgb": [1, 3, 8, 8]}, "output_names": ["out"],
            "reference_path": str(staging / "reference.npz"), "cache_dir": str(tmp / "cache"),
            "dla": False, "verify": {"min_fidelity": 35.0}}


def test_finish_bundle_10x_int8_writes_cache_and_plan(tmp_path: Path) -> None:
    ctx = _context(tmp_path, "int8")
    entries = get_target("jetson-orin").finish_bundle(str(tmp_path / "staging"), ctx)
    assert entries["engine"] is None and entries["tensorrt"]["finish_command"] == "lowlight-compile build-engine BUNDLE"
    assert "built on the Jetson" in entries["engine_status"]
    assert "calibration cache" in entries["engine_status"]
    plan = json.loads((tmp_path / "staging" / "build_plan.json").read_text())
    assert plan["trt_version"] == "10.3" and plan["arch"] == "sm_87"
    assert plan["onnx"] == "model_float.onnx" and plan["calibration_cache"] == "calibration.cache"
    assert {"FP16", "INT8"} <= set(plan["flags"]) and "STRONGLY_TYPED" not in plan["flags"]
    assert plan["profiles"] == [{"rgb": {"min": [1, 3, 8, 8], "opt": [1, 3, 8, 8], "max": [1, 3, 8, 8]}}]
    assert plan["workspace_bytes"] == 4 << 30
    assert (tmp_path / "staging" / "model_float.onnx").exists()
    assert (tmp_path / "staging" / "calibration.cache").read_text().startswith("TRT-100300-MinMaxCalibration\n")


def test_finish_bundle_11x_int8_is_strongly_typed_without_cache(tmp_path: Path) -> None:
    ctx = _context(tmp_path, "int8")
    entries = get_target("jetson-orin", "11.4").finish_bundle(str(tmp_path / "staging"), ctx)
    plan = json.loads((tmp_path / "staging" / "build_plan.json").read_text())
    assert plan["flags"] == ["STRONGLY_TYPED"] and plan["onnx"] == "model.onnx"
    assert plan["calibration_cache"] is None and entries["tensorrt"]["calibration_cache"] is None
    assert not (tmp_path / "staging" / "calibration.cache").exists()


def test_finish_bundle_fp16_dla(tmp_path: Path) -> None:
    ctx = _context(tmp_path, "fp16")
    ctx["dla"] = True
    get_target("jetson-orin").finish_bundle(str(tmp_path / "staging"), ctx)
    plan = json.loads((tmp_path / "staging" / "build_plan.json").read_text())
    assert plan["dla_core"] == 0 and "GPU_FALLBACK" in plan["flags"] and "FP16" in plan["flags"]


# -- the reference model: tiny AMNet through each TensorRT generation's passes --

@pytest.fixture(scope="module")
def amnet_tiny(tmp_path_factory):  # type: ignore[no-untyped-def]
    pytest.importorskip("torch")
    from lowlight.compile.export import export_onnx
    from lowlight.kernels.onnx_export import attach_functions
    from lowlight.models import build

    x = np.random.default_rng(0).random((1, 2, 3, 64, 64), dtype=np.float32)
    path = tmp_path_factory.mktemp("amnet") / "amnet_tiny.onnx"
    export_onnx(build("amnet", "tiny"), {"rgb": x}, "out", path)
    return attach_functions(onnx.load(path)), x


def _lower(model: onnx.ModelProto, target) -> onnx.ModelProto:  # type: ignore[no-untyped-def]
    for _, fn in target.lowering_passes():
        model = fn(model)
    return model


@pytest.mark.parametrize("version,dft_left,plugins", [(None, 0, 0), ("10.13", 0, 4), ("11.4", 8, 4)])
def test_amnet_tiny_lowers_for_each_trt_generation(amnet_tiny, version, dft_left, plugins) -> None:
    import onnxruntime as ort

    model, x = amnet_tiny
    target = get_target("jetson-orin", version) if version else get_target("jetson-orin")
    lowered = _lower(model, target)
    assert sum(n.op_type == "DFT" for n in lowered.graph.node) == dft_left
    assert sum(n.domain == "lowlight" for n in lowered.graph.node) == plugins
    assert target.check_graph(lowered, {"dla": False, "precision": "fp16"}) == []
    run = lambda m: ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"rgb": x})[0]  # noqa: E731
    assert np.abs(run(lowered) - run(model)).max() <= 1e-4


# -- end to end: `lowlight-compile --target jetson-orin [--trt-version 11.4]` on the tiny AMNet --

@pytest.fixture(scope="module")
def tiny_checkpoint() -> str | None:
    """The shipped tiny reference weights (None = use them)."""
    return None


def _compile(tmp_path: Path, cache_dir: Path, ckpt: str | None, **kw):  # type: ignore[no-untyped-def]
    from conftest import compile_tiny

    opts = dict(checkpoint=ckpt, target="jetson-orin", calib_frames=16, verify_frames=2, profile_runs=2)
    opts.update(kw)
    return compile_tiny(tmp_path / "bundle", cache_dir, **opts)


def _ref_error(bundle: Path, onnx_name: str) -> float:
    import onnxruntime as ort

    ref = np.load(bundle / "reference.npz")
    sess = ort.InferenceSession(str(bundle / onnx_name), providers=["CPUExecutionProvider"])
    x = ref["input:rgb"][0]
    out = next(k for k in ref.files if k.startswith("output:"))
    return float(np.abs(sess.run(None, {"rgb": x})[0] - ref[out][0]).max())


@pytest.mark.slow
def test_e2e_jetson_orin_fp16_default(tmp_path: Path, cache_dir: Path, tiny_checkpoint) -> None:
    from lowlight.targets.tensorrt.op_support import find_problems

    r = _compile(tmp_path, cache_dir, tiny_checkpoint, precision=None)
    m = r.manifest
    assert m["target"] == "jetson-orin" and m["precision"] == "fp16" and m["runtime"] == "tensorrt"
    model = onnx.load(str(r.bundle / "model.onnx"))
    assert m["ops"].get("DFT", 0) == 0 and not any(n.op_type == "DFT" for n in model.graph.node)
    assert find_problems(model, get_target("jetson-orin")) == []
    assert m["engine"] is None and "built on the Jetson" in m["engine_status"]
    plan = json.loads((r.bundle / "build_plan.json").read_text())
    assert plan["trt_version"] == "10.3" and plan["flags"] == ["FP16"] and plan["calibration_cache"] is None
    assert plan["inputs"] == {"rgb": {"shape": [1, 4, 3, 64, 64], "dtype": "float32"}}
    assert "build_plan.json" in m["files"] and not (r.bundle / "calibration.cache").exists()
    assert r.verification["passed"]
    from lowlight.compile.quantize import modelopt_missing

    q = m["stages"]["quantize"]  # FP16 by AutoCast where Model Optimizer is installed (dev), else onnxruntime's converter
    assert q["engine"] == ("onnxruntime.transformers.float16" if modelopt_missing() else "modelopt.autocast")
    if not modelopt_missing():
        assert q["calibration_samples"] > 0 and isinstance(q["fp32_by_measurement"], list)


@pytest.mark.slow
def test_e2e_jetson_orin_int8_has_cache_and_exact_float_graph(tmp_path: Path, cache_dir: Path, tiny_checkpoint) -> None:
    from lowlight.targets.tensorrt.calib_cache import read_cache, tensor_names
    from lowlight.targets.tensorrt.op_support import find_problems

    r = _compile(tmp_path, cache_dir, tiny_checkpoint, precision="int8")
    b = r.bundle
    qdq, flt = onnx.load(str(b / "model.onnx")), onnx.load(str(b / "model_float.onnx"))
    for model in (qdq, flt):
        assert not any(n.op_type == "DFT" for n in model.graph.node)
        assert find_problems(model, get_target("jetson-orin")) == []
    # The lowered float graph (DFT -> MatMul) equals the FP32 PyTorch model.
    assert _ref_error(b, "model_float.onnx") <= 1e-3
    header, scales = read_cache(b / "calibration.cache")
    assert header == "TRT-100300-MinMaxCalibration" and len(scales) > 10
    assert set(scales) <= tensor_names(flt)  # every entry names a tensor of the ONNX TensorRT parses
    assert all(0 < s < 1 for s in scales.values())
    plan = json.loads((b / "build_plan.json").read_text())
    assert plan["onnx"] == "model_float.onnx" and plan["int8_mode"] == "implicit-calibration-cache"
    assert {"calibration.cache", "model_float.onnx"} <= set(r.manifest["files"])


@pytest.mark.slow
def test_e2e_jetson_orin_trt_11_4_keeps_dft(tmp_path: Path, cache_dir: Path, tiny_checkpoint) -> None:
    r = _compile(tmp_path, cache_dir, tiny_checkpoint, precision="fp16", trt_version="11.4")
    m = r.manifest
    assert m["ops"].get("DFT", 0) == 8
    assert not (r.bundle / "calibration.cache").exists()
    plan = json.loads((r.bundle / "build_plan.json").read_text())
    assert plan["trt_version"] == "11.4" and plan["flags"][0] == "STRONGLY_TYPED"
    assert {p["op"] for p in plan["plugins"]} == {"SpectralGate", "IlluminationGate"}
    assert r.verification["passed"]


@pytest.mark.slow
def test_e2e_jetson_orin_trt_11_4_int8_with_nncf_says_why_not(tmp_path: Path, cache_dir: Path, tiny_checkpoint) -> None:
    from lowlight.core.errors import LowlightError

    with pytest.raises(LowlightError, match="--int8-engine ort"):
        _compile(tmp_path, cache_dir, tiny_checkpoint, precision="int8", trt_version="11.4", int8_engine="nncf")
    assert not any(tmp_path.iterdir()) or all(p.name.startswith("cache") for p in tmp_path.iterdir())


@pytest.mark.slow
def test_e2e_jetson_orin_trt_11_4_int8_has_no_cache(tmp_path: Path, cache_dir: Path, tiny_checkpoint) -> None:
    # auto picks onnxruntime's quantizer: it keeps the plugin nodes' local functions (NNCF does not).
    r = _compile(tmp_path, cache_dir, tiny_checkpoint, precision="int8", trt_version="11.4")
    assert r.manifest["stages"]["quantize"]["engine"] == "ort"
    assert r.manifest["ops"].get("DFT", 0) == 8 and r.manifest["ops"]["QuantizeLinear"] > 10
    assert not (r.bundle / "calibration.cache").exists()
    plan = json.loads((r.bundle / "build_plan.json").read_text())
    assert plan["flags"][0] == "STRONGLY_TYPED" and plan["int8_mode"] == "explicit-qdq" and plan["onnx"] == "model.onnx"


@pytest.mark.slow
def test_e2e_unsupported_op_fails_the_compile_with_the_node_named(tmp_path: Path, cache_dir: Path, tiny_checkpoint) -> None:
    """A target whose TensorRT lacks DFT, with the DFT lowering switched off: the compile must stop at the check."""
    import dataclasses

    import lowlight.targets as registry
    from lowlight.targets.tensorrt import TensorRTTarget

    class NoDftLowering(TensorRTTarget):
        def lowering_passes(self):  # type: ignore[no-untyped-def]
            return [p for p in super().lowering_passes() if p[0] != "dft-to-matmul"]

    base = get_target("jetson-orin")
    fields = {f.name: getattr(base, f.name) for f in dataclasses.fields(base)}
    registry.register(NoDftLowering(**{**fields, "name": "test-orin-no-dft-lowering"}))
    try:
        with pytest.raises(TargetError) as err:
            _compile(tmp_path, cache_dir, tiny_checkpoint, target="test-orin-no-dft-lowering", precision="fp16")
    finally:
        registry._REGISTRY.pop("test-orin-no-dft-lowering", None)
    assert "(DFT): TensorRT 10.3's ONNX parser has no DFT" in err.value.what
    assert "--trt-version 11.2" in err.value.what
    assert not (tmp_path / "bundle").exists()  # no half bundle


def test_dla_sees_quantized_weights_as_constants() -> None:
    from lowlight.targets.tensorrt.dla import dla_fallbacks

    w = numpy_helper.from_array(np.ones((16, 16), np.int8), "w_q")
    sc = numpy_helper.from_array(np.array(0.1, np.float32), "sc")
    zp = numpy_helper.from_array(np.array(0, np.int8), "zp")
    nodes = [helper.make_node("DequantizeLinear", ["w_q", "sc", "zp"], ["w"], name="dq_w"),
             helper.make_node("MatMul", ["x", "w"], ["y"], name="mm_const"),
             helper.make_node("MatMul", ["x", "x"], ["out"], name="mm_dynamic")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 16, 16])],
                          [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 1, 16, 16]),
                           helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 16, 16])], [w, sc, zp])
    falls = dla_fallbacks(helper.make_model(g, opset_imports=[helper.make_opsetid("", 20)]))
    assert [(f.node, f.reason) for f in falls] == [("mm_dynamic", "MatMul on DLA needs a constant operand")]
