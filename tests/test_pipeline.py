"""The whole pipeline on the tiny AMNet: FP32 and INT8 CPU bundles, caching, no half bundles."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from conftest import TINY_SHAPE, compile_tiny
from lowlight.compile.quantize import qdq_zero_points, quantize_int8
from lowlight.compile.simplify import run_onnx
from lowlight.models import get_family, load
from lowlight.core.errors import CalibrationError, ShapeError, VerificationError

pytestmark = pytest.mark.slow


def _amnet_lowered(cache_dir: Path) -> Path:
    """The lowered tiny AMNet graph in the session's stage cache (other families' graphs are there too)."""
    for path in sorted(Path(cache_dir, "lower").glob("*/model.onnx")):
        graph = onnx.load(str(path), load_external_data=False).graph
        if [i.name for i in graph.input] == ["rgb"] and [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim] == [1, 4, 3, 64, 64]:
            return path
    raise AssertionError("no lowered tiny AMNet graph in the stage cache")


def test_fp32_bundle_matches_pytorch_within_1e3(fp32_bundle):
    root = fp32_bundle.bundle
    ref = np.load(root / "reference.npz")
    fam = get_family("amnet")
    module = fam.export_module(load("amnet", "tiny"), modalities="rgb")
    x = ref["input:rgb"][0]
    with torch.no_grad():
        expected = module(torch.from_numpy(x)).numpy()
    got = run_onnx(root / "model.onnx", {"rgb": x})[0]
    assert got.shape == expected.shape == (1, 4, 3, 64, 64)
    assert float(np.abs(got - expected).max()) <= 1e-3
    v = fp32_bundle.verification
    assert v["passed"] and v["max_abs_error"] <= 1e-3 and v["fidelity_psnr_db"] > 60


def test_bundle_layout_and_manifest(fp32_bundle):
    root = fp32_bundle.bundle
    m = json.loads((root / "manifest.json").read_text())
    for name in ("model.onnx", "reference.npz"):  # what a backend loads: checked on every load
        assert name in m["files"] and len(m["files"][name]) == 64
    for name in ("verification.json", "verification.md", "profile.json", "profile.md"):  # reports: hashed apart
        assert name in m["reports"] and len(m["reports"][name]) == 64 and name not in m["files"]
    assert m["inputs"] == [{"name": "rgb", "shape": [1, 4, 3, 64, 64], "dtype": "float32", "layout": "BTCHW", "range": [0.0, 1.0]}]
    assert m["outputs"][0]["layout"] == "BTCHW" and m["format_version"] == 2
    assert list(m["components"]) == ["model"] and m["components"]["model"]["file"] == "model.onnx"
    assert m["program"]["steps"] == [{"op": "call", "component": "model", "in": {"rgb": "rgb"}, "out": {"enhanced": "enhanced"}}]
    assert m["family_options"] == {"modalities": "rgb", "stream": "no"}
    assert m["precision"] == "fp32" and m["target"] == "cpu" and m["family"] == "amnet"
    assert {"torch", "onnx", "onnxruntime"} <= set(m["tools"])
    assert m["verification"]["passed"] is True
    assert m["profile"]["latency_ms"]["p50"] > 0
    # on the cpu target the FFTs become MatMuls (faster in onnxruntime) and our custom ops are decomposed
    assert "DFT" not in m["ops"] and m["ops"]["MatMul"] >= 8 and not any("::" in k for k in m["ops"])
    prof = json.loads((root / "profile.json").read_text())
    assert prof["top_op_types"] and prof["latency_ms"]["p50"] <= prof["latency_ms"]["p99"]


def test_int8_bundle_has_qdq_and_float_nodes_chosen_by_measurement(int8_bundle):
    """AMNet's hand rule (spectral path, boundary convs) is FP16's floor only: under INT8 every node starts
    quantized and the measured sensitivity gives back the fewest nodes that meet the budget."""
    root = int8_bundle.bundle
    m = int8_bundle.manifest
    assert m["precision"] == "int8" and m["qdq_flavour"] == "ort-u8s8"
    assert m["ops"]["QuantizeLinear"] > 10 and m["ops"]["DequantizeLinear"] > 10
    q = m["stages"]["quantize"]
    assert q["engine"] in ("nncf", "ort") and set(q["engines"]) == {"nncf", "ort"}  # both measured on cpu
    for name, entry in q["engines"].items():
        assert entry["seconds"] > 0 and entry["fidelity_db_vs_float"] > 30
        fm = entry["float_nodes"]
        assert fm["budget_db"] == 38.0 and fm["floor"] == 0  # --min-fidelity 35 + 3 dB margin; no floor for AMNet
        # the calibration frames and 8 of them at gains 2 and 4 (one sample per frame for AMNet)
        assert fm["frames"] == q["calibration_samples"] + 2 * min(8, q["calibration_samples"])
        assert fm["final_db"]["worst"] >= fm["budget_db"] or len(fm["given_back"]) == fm["candidates"]
        assert len(fm["given_back"]) < fm["candidates"] / 2  # a few nodes, not the hand rule's whole regions
        for g in fm["given_back"]:
            # 0 for a node given back for a frame other than the two the shares were ranked on
            assert g["alone_db"] > 0 and 0 <= g["share_of_int8_error"] <= 1
    chosen = q["engines"][q["engine"]]["float_nodes"]
    back = {g["node"] for g in chosen["given_back"]} | set(chosen.get("given_back_for_fusion", []))
    assert set(q["kept_float"]) == back
    model = onnx.load(str(root / "model.onnx"))
    producers = {o: n for n in model.graph.node for o in n.output}
    dq_fed = {n.name for n in model.graph.node if any(producers.get(i) is not None and producers[i].op_type == "DequantizeLinear"
                                                      for i in n.input)}
    # the lowered DFT matrices are candidates like any node: quantized unless the measurement gave them back
    dft = [n.name for n in model.graph.node if n.op_type == "MatMul" and "DFT" in n.name]
    assert dft and all((n in dq_fed) != (n in back) for n in dft)
    assert not back & dq_fed
    assert int8_bundle.verification["fidelity_psnr_db"] >= 35
    assert int8_bundle.verification["fidelity_psnr_db_min"] >= 35  # the worst-sample aim, on real photos
    card = (root / "MODEL_CARD.md").read_text()
    assert f"+ {len(back)} of {chosen['candidates']} quantized nodes given back by measured sensitivity" in card


def test_trt_flavour_qdq_zero_points_are_all_zero_int8(int8_bundle, tmp_path: Path, cache_dir: Path):
    """TensorRT takes only symmetric int8 Q/DQ: every zero-point must be int8 0."""
    fam = get_family("amnet")
    from lowlight.calibration.data import SAMPLES_DIR
    from lowlight.calibration.frames import load_frames

    lowered = _amnet_lowered(cache_dir)
    feeds = fam.make_inputs(load_frames(SAMPLES_DIR, limit=4), TINY_SHAPE, "tiny")
    for engine in ("nncf", "ort"):
        out = tmp_path / f"trt-{engine}.onnx"
        quantize_int8(lowered, out, feeds, "trt-s8s8", [], engine=engine, say=lambda *_: None)
        zps = qdq_zero_points(out)
        assert len(zps) > 20
        assert {dtype for _, dtype, _ in zps} == {"int8"}
        assert {v for _, _, vals in zps for v in vals} == {0}


def test_nncf_is_skipped_when_its_statistics_pass_cannot_fit(int8_bundle, tmp_path: Path, cache_dir: Path, monkeypatch):
    """NNCF holds every activation of a sample at once: a graph whose activations exceed half the free
    memory is calibrated by onnxruntime's quantizer (auto), and a forced NNCF is refused with the fix."""
    import lowlight.compile.quantize as q
    from lowlight.calibration.data import SAMPLES_DIR
    from lowlight.calibration.frames import load_frames
    from lowlight.core.errors import LowlightError

    lowered = _amnet_lowered(cache_dir)
    need = q.activation_bytes(lowered)
    assert need > 1_000_000  # AMNet tiny at 1x4x3x64x64: megabytes of activations
    feeds = get_family("amnet").make_inputs(load_frames(SAMPLES_DIR, limit=4), TINY_SHAPE, "tiny")
    monkeypatch.setattr(q, "available_memory", lambda: need)  # half of it is less than the need
    said: list[str] = []
    report = quantize_int8(lowered, tmp_path / "q.onnx", feeds, "ort-u8s8", [], say=said.append)
    assert report["engine"] == "ort" and list(report["engines"]) == ["ort"]
    assert "NNCF's statistics pass" in report["nncf_skipped"] and any("NNCF skipped" in s for s in said)
    with pytest.raises(LowlightError) as err:
        quantize_int8(lowered, tmp_path / "n.onnx", feeds, "ort-u8s8", [], engine="nncf", say=said.append)
    assert "--int8-engine ort" in (err.value.fix or "") and not (tmp_path / "n.onnx").exists()


def test_second_run_is_cached_and_force_redoes(tmp_path: Path, cache_dir: Path, fp32_bundle, capsys):
    compile_tiny(tmp_path / "again", cache_dir, precision="fp32", quiet=False)
    err = capsys.readouterr().err
    assert "export: torch.onnx (dynamo) at 1x4x3x64x64 done" in err and "cached" in err.split("[3/8]")[0]
    compile_tiny(tmp_path / "forced", cache_dir, precision="fp32", quiet=False, force=True)
    err = capsys.readouterr().err
    assert "cached" not in err.split("[3/8]")[0]


def test_failed_verification_leaves_nothing(tmp_path: Path, cache_dir: Path, fp32_bundle):
    out = tmp_path / "never"
    with pytest.raises(VerificationError) as e:
        compile_tiny(out, cache_dir, precision="fp16", min_fidelity=500.0)
    assert "--min-fidelity 500" in str(e.value) and "fix:" in str(e.value)
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_existing_bundle_survives_a_failed_rebuild(tmp_path: Path, cache_dir: Path, fp32_bundle):
    out = tmp_path / "keep"
    compile_tiny(out, cache_dir, precision="fp32")
    before = (out / "manifest.json").read_text()
    with pytest.raises(VerificationError):
        compile_tiny(out, cache_dir, precision="fp16", min_fidelity=500.0)
    assert (out / "manifest.json").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep"]


def test_ground_truth_drop_is_reported(tmp_path: Path, cache_dir: Path, data_dir: Path, fp32_bundle):
    r = compile_tiny(tmp_path / "gt", cache_dir, precision="fp16", ground_truth=str(data_dir / "eval" / "clean"), verify_frames=2)
    gt = r.verification["ground_truth"]
    assert gt["pairs"] == 2 and abs(gt["drop_db"]) < 0.3 and gt["fp32_psnr_db"] > gt["input_psnr_db"]


@pytest.mark.parametrize("make, words", [
    (lambda d: d, "has no images"),
    (lambda d: (d / "notes.txt").write_text("x") and d / "notes.txt", "neither a folder"),
    (lambda d: d / "missing", "does not exist"),
])
def test_bad_calibration_source(tmp_path: Path, cache_dir: Path, make, words):
    (tmp_path / "calib").mkdir()
    src = make(tmp_path / "calib")
    with pytest.raises(CalibrationError, match=words):
        compile_tiny(tmp_path / "out", cache_dir, precision="int8", calib=str(src))
    assert not (tmp_path / "out").exists()


def test_unreadable_calibration_image_and_video(tmp_path: Path, cache_dir: Path):
    (tmp_path / "frames").mkdir()
    (tmp_path / "frames" / "a.png").write_bytes(b"not a png")
    with pytest.raises(CalibrationError, match="cannot decode image"):
        compile_tiny(tmp_path / "out", cache_dir, precision="int8", calib=str(tmp_path / "frames"))
    (tmp_path / "clip.mp4").write_bytes(b"\x00" * 1000)
    with pytest.raises(CalibrationError, match="cannot decode video"):
        compile_tiny(tmp_path / "out", cache_dir, precision="int8", calib=str(tmp_path / "clip.mp4"))


def test_bad_shape_fails_before_any_work(tmp_path: Path, cache_dir: Path):
    with pytest.raises(ShapeError, match="dimension 4 \\(width\\) is 66"):
        compile_tiny(tmp_path / "out", cache_dir, precision="fp32", shape="1x4x3x64x66")
    assert not (tmp_path / "out").exists()
