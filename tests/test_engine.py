"""Engine build / TensorRT runtime: what can be checked here, and the real build where TensorRT imports."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from lowlight.core.errors import BundleError, TargetError
from lowlight.runtime.tensorrt_backend import host_trt_version, tensorrt_available
from lowlight.targets import get_target
from lowlight.targets.tensorrt import cmd_build_engine
from lowlight.core.metrics import psnr
from lowlight.targets.tensorrt.engine import build_blocker

HAVE_TRT = host_trt_version() is not None
needs_trt = pytest.mark.skipif(not HAVE_TRT, reason="TensorRT cannot be imported here (only tensorrt-stubs are installed)")


def test_build_blocker_explains_why() -> None:
    from lowlight.runtime.tensorrt_backend import host_is_jetson

    if not host_is_jetson():
        reason = build_blocker(get_target("jetson-orin"))
        assert reason is not None and "must be built on the Jetson" in reason
    if not HAVE_TRT:
        reason = build_blocker(get_target("rtx-4090"))
        assert reason is not None and "TensorRT is not installed" in reason


def test_tensorrt_available_names_both_sides() -> None:
    ok, why = tensorrt_available({"engine": None})
    assert not ok and "build-engine" in why
    ok, why = tensorrt_available({"engine": {"file": "model.engine", "trt_version": "10.3.0", "arch": "sm_87"}})
    if not HAVE_TRT:
        assert not ok and "10.3.0" in why and "sm_87" in why
    ok, why = tensorrt_available({})
    assert not ok


def test_psnr() -> None:
    a = np.zeros((4, 4), np.float32)
    assert psnr(a, a) == float("inf")
    assert abs(psnr(a + 0.1, a) - 20.0) < 1e-4


def _host_target() -> str:
    """A registered desktop target with this host's GPU architecture (rtx-4090 without a GPU)."""
    from lowlight.runtime.tensorrt_backend import host_gpu_arch
    from lowlight.targets import names

    arch = host_gpu_arch()
    for name in names():
        t = get_target(name)
        if t.runtime == "tensorrt" and t.facts.get("arch") == arch and not name.startswith("jetson"):
            return name
    return "rtx-4090"


def _bundle(tmp_path: Path) -> Path:
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    g = helper.make_graph([helper.make_node("Relu", ["rgb"], ["out"], name="r")], "g",
                          [helper.make_tensor_value_info("rgb", TensorProto.FLOAT, [1, 3, 16, 16])],
                          [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 3, 16, 16])])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), bundle / "model.onnx")
    x = np.random.default_rng(0).random((2, 1, 3, 16, 16), dtype=np.float32)  # 2 samples stacked on a leading axis
    np.savez(bundle / "reference.npz", **{"input:rgb": x, "output:out": np.maximum(x, 0)})
    ctx = {"model_path": str(bundle / "model.onnx"), "float_model_path": str(bundle / "model.onnx"), "precision": "fp16",
           "input_shapes": {"rgb": [1, 3, 16, 16]}, "output_names": ["out"], "reference_path": str(bundle / "reference.npz"),
           "cache_dir": str(tmp_path / "cache"), "dla": False, "verify": {"min_fidelity": 35.0}}
    target = get_target(_host_target(), host_trt_version() or "10.13")
    entries = target.finish_bundle(str(bundle), ctx)
    (bundle / "manifest.json").write_text(json.dumps({"files": {"model.onnx": "x"}, **entries}))
    return bundle


def _args(bundle: Path, *extra: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cmd_build_engine.add_arguments(parser)
    return parser.parse_args([str(bundle), *extra])


@pytest.mark.skipif(HAVE_TRT, reason="checks the no-TensorRT path")
def test_build_engine_command_refuses_with_reason_here(tmp_path: Path) -> None:
    bundle = _bundle(tmp_path)
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["engine"] is None and "TensorRT is not installed" in manifest["engine_status"]
    assert manifest["tensorrt"]["plan"] == "build_plan.json"
    with pytest.raises(TargetError) as err:
        cmd_build_engine.run(_args(bundle))
    assert "TensorRT is not installed" in err.value.what and "TensorRT 10.13" in (err.value.fix or "")
    with pytest.raises(BundleError):
        cmd_build_engine.run(_args(tmp_path))


def test_update_manifest_hashes_new_files(tmp_path: Path) -> None:
    import hashlib

    (tmp_path / "model.engine").write_bytes(b"engine")
    (tmp_path / "model.onnx").write_bytes(b"onnx")
    (tmp_path / "manifest.json").write_text(json.dumps({
        "format_version": 1, "model": "model.onnx", "inputs": [{"name": "rgb", "shape": [1, 3, 16, 16]}],
        "outputs": [{"name": "enhanced", "shape": [1, 3, 16, 16]}], "files": {"model.onnx": "0" * 64}, "engine": None, "tensorrt": {"plan": "p"},
    }))
    entries = {"engine": {"file": "model.engine", "trt_version": "10.3.0", "arch": "sm_87"}, "engine_status": "built"}
    m = cmd_build_engine.update_manifest(tmp_path, entries, {"engine_verify": {"passed": True}}, ["model.engine"])
    assert m["engine"]["file"] == "model.engine" and m["tensorrt"] == {"plan": "p", "engine_verify": {"passed": True}}
    assert m["files"]["model.engine"] == hashlib.sha256(b"engine").hexdigest()
    assert json.loads((tmp_path / "manifest.json").read_text())["files"]["model.onnx"] == hashlib.sha256(b"onnx").hexdigest()


@needs_trt
def test_build_and_run_engine_on_this_gpu(tmp_path: Path) -> None:
    from lowlight.runtime.tensorrt_backend import TensorRTBackend

    bundle = _bundle(tmp_path)
    assert cmd_build_engine.run(_args(bundle, "--force", "--cache-dir", str(tmp_path / "cache"))) == 0
    manifest = json.loads((bundle / "manifest.json").read_text())
    ok, why = tensorrt_available(manifest)
    assert ok, why
    backend = TensorRTBackend.from_bundle(bundle, manifest, cuda_graph=True)
    x = np.random.default_rng(1).random((1, 3, 8, 8), dtype=np.float32) - 0.5
    out = backend.run({"rgb": x})["out"]
    assert np.abs(out - np.maximum(x, 0)).max() < 1e-2
    assert any((tmp_path / "cache").iterdir())  # timing cache kept for the next build


polygraphy = pytest.importorskip("polygraphy", reason="Polygraphy is in the [trt] and [dev] extras")


def test_engine_verification_runs_polygraphys_runner_and_comparator(tmp_path: Path) -> None:
    """verify_engine with an onnxruntime runner in place of TrtRunner: the same loaders, files and comparator."""
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx

    from lowlight.targets.tensorrt.build_plan import load_plan
    from lowlight.targets.tensorrt.engine import verify_engine

    bundle = _bundle(tmp_path)
    plan = load_plan(bundle)
    assert (bundle / plan["polygraphy"]["inputs"]).is_file()  # the files `polygraphy run --load-*` reads
    result = verify_engine(bundle, plan, runner=OnnxrtRunner(SessionFromOnnx(str(bundle / "model.onnx"))))
    assert result["passed"] and result["polygraphy"]["passed"]
    assert result["fidelity_psnr_db"]["out"] == float("inf")  # Relu in ORT is exact
    assert "onnxrt-runner" in result["what_ran"]


def test_engine_verification_fails_below_the_budget_on_both_sides(tmp_path: Path) -> None:
    """A runner whose output is off by 0.05 (26 dB) fails both Polygraphy's PSNR check and our gate."""
    from polygraphy.backend.base import BaseRunner

    from lowlight.core.errors import VerificationError
    from lowlight.targets.tensorrt.build_plan import load_plan
    from lowlight.targets.tensorrt.engine import verify_engine

    class Off(BaseRunner):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__(name="off-by-0.05")

        def activate_impl(self) -> None: ...

        def deactivate_impl(self) -> None: ...

        def get_input_metadata_impl(self) -> object:
            from polygraphy.common import TensorMetadata

            return TensorMetadata().add("rgb", np.float32, (1, 3, 16, 16))

        def infer_impl(self, feed_dict: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            self.inference_time = 0.0  # Polygraphy's Comparator sums it
            return {"out": np.maximum(feed_dict["rgb"], 0) + np.float32(0.05)}

    bundle = _bundle(tmp_path)
    with pytest.raises(VerificationError) as err:
        verify_engine(bundle, load_plan(bundle), runner=Off())
    assert "26.02 dB" in err.value.what and "Polygraphy's comparator: failed" in err.value.what


def test_polygraphy_reads_the_bundles_reference_files(tmp_path: Path) -> None:
    """The JSON the compiler writes without Polygraphy installed is what Polygraphy itself loads."""
    from polygraphy.comparator import RunResults
    from polygraphy.json import load_json

    from lowlight.targets.tensorrt.build_plan import POLYGRAPHY_RUNNER, load_plan

    bundle = _bundle(tmp_path)
    plan = load_plan(bundle)
    feeds = load_json(str(bundle / plan["polygraphy"]["inputs"]))
    ref = np.load(bundle / "reference.npz")
    assert np.array_equal(feeds[0]["rgb"], ref["input:rgb"][0])
    rr = RunResults.load(str(bundle / plan["polygraphy"]["outputs"]))
    assert rr[0][0] == POLYGRAPHY_RUNNER and np.array_equal(rr[0][1][0]["out"], ref["output:out"][0])
