"""Reports people can trust: profiles that add up, verification that shows its work, cards and metadata."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest


def test_latency_statistics_and_supported_percentiles() -> None:
    from lowlight.compile.profile import latency_stats, supported_percentiles, trtexec_summary

    ms = list(range(1, 101))  # 1..100 ms
    s = latency_stats(ms)
    assert (s["min"], s["max"], s["mean"], s["median"]) == (1.0, 100.0, 50.5, 50.5)
    assert s["p90"] == pytest.approx(90.1) and s["p99"] == pytest.approx(99.01)
    assert s["std"] == pytest.approx(np.std(ms, ddof=1))
    # a percentile pX needs at least 100/(100-X) runs: one run past it
    assert supported_percentiles(9) == ["p50"]
    assert supported_percentiles(10) == ["p50", "p90"]
    assert supported_percentiles(20) == ["p50", "p90", "p95"]
    assert supported_percentiles(100) == ["p50", "p90", "p95", "p99"]
    t = trtexec_summary(latency_stats([1.0, 2.0, 3.0] * 4), 12, 4, 0.024)
    assert t["Latency"]["percentile(90%)"] is not None and t["Latency"]["percentile(99%)"] is None
    assert t["Throughput"] == pytest.approx(500.0)


def test_kernel_names_resolve_to_graph_nodes() -> None:
    from lowlight.compile.profile import resolve_node

    index = {"names": {"node_conv2d_5", "node_select_1"}, "outputs": {"relu_2": "node_relu_2", "conv2d_5": "node_conv2d_5"}}
    assert resolve_node("node_conv2d_5_token_64", index) == "node_conv2d_5"
    assert resolve_node("conv2d_5_nchwc", index) == "node_conv2d_5"
    assert resolve_node("relu_2_nchwc", index) == "node_relu_2"
    assert resolve_node("node_select_1/GatherSliceToSplitFusion", index) == "node_select_1"
    assert resolve_node("ReorderOutput", index) == ""


def test_profile_adds_up_and_maps_nodes_to_modules(fp32_bundle, tmp_path: Path) -> None:
    import shutil

    from lowlight.compile.profile import profile_bundle

    b = tmp_path / "b"
    shutil.copytree(fp32_bundle.bundle, b)
    r = profile_bundle(b, runs=12, warmup=2)
    lat = r["latency_ms"]
    assert lat["min"] <= lat["median"] <= lat["max"] and lat["std"] >= 0
    assert r["runs"] == 12 and r["percentiles_supported"] == ["p50", "p90"]
    assert r["trtexec"]["Latency"]["median"] == lat["median"] and r["trtexec"]["Latency"]["percentile(99%)"] is None
    env = r["environment"]
    assert env["usable_cores"] >= 1 and env["versions"]["onnxruntime"] and env["date"].endswith("Z")
    assert len(env["load_average"]) == 3 and "threads" in env
    rec = r["reconcile"]
    # kernels + between kernels + glue = the profiled run; scaled, the same parts = the headline median
    parts = rec["kernels_ms_per_run"] + rec["between_kernels_ms"] + rec["program_glue_ms"]
    assert parts == pytest.approx(rec["profiled_run_ms"], rel=0.02)
    assert parts * rec["scale_to_headline"] == pytest.approx(lat["median"], rel=0.02)
    assert sum(o["share"] for o in r["top_op_types"]) == pytest.approx(1.0)
    layers = json.loads((b / "profile_layers.json").read_text())
    assert layers[0] == {"count": rec["profiled_runs"]}
    assert {"name", "timeMs", "averageMs", "medianMs", "percentage"} <= set(layers[1])
    assert sum(x["timeMs"] for x in layers[1:]) == pytest.approx(rec["kernels_ms_per_run"], rel=1e-6)
    assert sum(x["percentage"] for x in layers[1:]) == pytest.approx(100.0)
    rows = list(csv.DictReader((b / "profile_layers.csv").open()))
    assert len(rows) == len(layers) - 1
    convs = [x for x in layers[1:] if x["opType"] == "Conv"]
    assert convs and all(x["module"].startswith("model") for x in convs), convs[:3]  # every Conv back to a module
    assert any(x["moduleClass"] == "torch.nn.modules.conv.Conv2d" for x in convs)
    md = (b / "profile.md").read_text()
    assert "How the operator tables add up" in md and "p99 n/a (needs >= 100 runs, have 12)" in md
    m = json.loads((b / "manifest.json").read_text())
    assert {"profile_layers.json", "profile_layers.csv", "report.html"} <= set(m["reports"])


def test_verification_gates_the_worst_sample_too() -> None:
    from lowlight.compile.verify import WORST_SAMPLE_MARGIN_DB, verify
    from lowlight.core.errors import VerificationError

    rng = np.random.default_rng(0)
    refs = [{"y": rng.random((1, 3, 32, 32)).astype(np.float32)} for _ in range(5)]
    feeds = [{"x": r["y"]} for r in refs]
    noise = {0: 1e-3, 1: 1e-3, 2: 1e-3, 3: 1e-3, 4: 0.05}  # one bad sample: ~26 dB; the others ~60 dB

    def run(feed):
        i = next(k for k, f in enumerate(feeds) if f is feed)
        return {"y": feed["x"] + np.float32(noise[i]) * rng.standard_normal(feed["x"].shape).astype(np.float32)}

    with pytest.raises(VerificationError) as exc:
        verify(run, refs, feeds, 35.0, 0.3, ["y"])
    rep = exc.value.report  # type: ignore[attr-defined]
    assert rep["fidelity_psnr_db"] > 35.0  # the mean alone would have passed
    assert rep["worst_sample"]["index"] == 4 and rep["fidelity_psnr_db_min"] < 35.0 - WORST_SAMPLE_MARGIN_DB
    assert "worst sample (#4)" in exc.value.what
    assert [r["index"] for r in rep["per_sample"]] == [0, 1, 2, 3, 4] and all("ssim" in r for r in rep["per_sample"])
    worst: list = []
    ok = verify(run, refs, feeds, 20.0, 0.3, ["y"], worst=worst, emulation="onnxruntime emulation")
    assert ok["passed"] and ok["emulation"] == "onnxruntime emulation" and len(worst) == 3 and worst[0][1] == 4


def test_bundle_shows_its_verification_and_carries_a_card(int8_bundle) -> None:
    import cv2
    import onnx

    root = int8_bundle.bundle
    v = json.loads((root / "verification.json").read_text())
    assert v["gate"].startswith("mean PSNR >= 35 dB and every sample >= 32 dB")
    assert len(v["per_sample"]) == v["frames"] and v["worst_sample"]["psnr_db"] == v["fidelity_psnr_db_min"]
    maps = v["error_maps"]
    assert maps and maps[0]["index"] == v["worst_sample"]["index"]
    img = cv2.imread(str(root / maps[0]["file"]))
    assert img is not None and img.shape[1] == 4 * img.shape[0]  # input | reference | artifact | error, square frames
    md = (root / "verification.md").read_text()
    assert "## Per sample" in md and maps[0]["file"] in md
    card = (root / "MODEL_CARD.md").read_text()
    for section in ("## Architecture", "## Inputs and outputs", "## Training data", "## Fidelity", "## Engine compatibility"):
        assert section in card
    assert "`rgb` float32 1x4x3x64x64, layout BTCHW, values in [0, 1]" in card and "amnet_tiny.safetensors" in card
    meta = {p.key: p.value for p in onnx.load(str(root / "model.onnx"), load_external_data=False).metadata_props}
    assert meta["lowlight.precision"] == "int8" and meta["lowlight.target"] == "cpu"
    assert json.loads(meta["lowlight.inputs"])[0]["layout"] == "BTCHW"
    assert "worst sample" in meta["lowlight.fidelity"] and "lowlight.node_modules" in meta
    m = json.loads((root / "manifest.json").read_text())
    assert "MODEL_CARD.md" in m["reports"] and "verify_worst_1.png" in m["reports"] and "model.onnx" in m["files"]


def test_tensorrt_plan_writes_polygraphy_files_and_command(tmp_path: Path) -> None:
    import base64
    import io

    from lowlight.targets.tensorrt.build_plan import POLYGRAPHY_INPUTS, POLYGRAPHY_OUTPUTS, polygraphy_command, write_polygraphy_json

    x = np.arange(24, dtype=np.float32).reshape(2, 1, 3, 2, 2)
    np.savez(tmp_path / "reference.npz", **{"input:rgb": x, "output:out": x * 2})
    assert write_polygraphy_json(tmp_path) == (POLYGRAPHY_INPUTS, POLYGRAPHY_OUTPUTS)

    def arr(d):  # Polygraphy's ndarray encoding
        assert d["polygraphy_class"] == "ndarray"
        return np.load(io.BytesIO(base64.b64decode(d["array"])), allow_pickle=False)

    feeds = json.loads((tmp_path / POLYGRAPHY_INPUTS).read_text())
    assert len(feeds) == 2 and np.array_equal(arr(feeds[1]["rgb"]), x[1])
    rr = json.loads((tmp_path / POLYGRAPHY_OUTPUTS).read_text())
    assert rr["polygraphy_class"] == "RunResults"
    runner, its = rr["lst"][0]
    assert its[0]["polygraphy_class"] == "IterationResult" and np.array_equal(arr(its[1]["outputs"]["out"]), x[1] * 2)
    try:  # where Polygraphy is installed (the [trt] extra), it reads them back itself
        from polygraphy.comparator import RunResults  # type: ignore[import-not-found]
    except ImportError:
        pass
    else:
        loaded = RunResults.load(str(tmp_path / POLYGRAPHY_OUTPUTS))
        assert np.array_equal(loaded[runner][0]["out"], x[0] * 2)
    cmd = polygraphy_command("model_float.onnx", ["FP16", "INT8"], "calibration.cache", 35.0)
    assert cmd.startswith("polygraphy run model_float.onnx --trt --fp16 --int8 --calibration-cache calibration.cache")
    assert f"--load-inputs {POLYGRAPHY_INPUTS} --load-outputs {POLYGRAPHY_OUTPUTS}" in cmd and "--compare-func psnr --psnr-threshold 35" in cmd


def test_tensorrt_profile_md_keeps_device_and_host_apart() -> None:
    from lowlight.compile.profile import to_markdown

    r = {"host": "cpu", "environment": {}, "backend": "onnxruntime", "runtime": "tensorrt", "target": "jetson-orin",
         "precision": "int8", "input_shape": [1, 3, 8, 8], "frames_per_run": 1, "runs": 3, "warmup": 1,
         "latency_ms": {k: 1.0 for k in ("min", "max", "mean", "median", "std", "p50", "p90", "p95", "p99")},
         "percentiles_supported": ["p50"], "fps": 1000.0, "top_op_types": [], "top_nodes": [], "roofline": None,
         "device": {"device": "AGX Orin", "trt_version": "10.3", "iterations": 200, "layers": "engine_profile_layers.json",
                    "with_cuda_graph": {"GPU Compute Time": {"median": 0.5}, "Latency": {"median": 0.7}}}}
    md = to_markdown(r)
    host, device = md.index("## Host measurement (this CPU, onnxruntime: NOT the target device)"), md.index("## Device measurement")
    assert host < device and "GPU Compute Time median 0.500 ms" in md[device:] and "engine_profile_layers.json" in md
    r["device"] = None
    assert "Not measured yet: run `lowlight-compile build-engine BUNDLE` on the device" in to_markdown(r)
