"""Runtime: loads bundles without PyTorch, checks inputs, refuses tampered bundles, runs footage."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lowlight.runtime import load
from lowlight.core.errors import BundleError, InputError

pytestmark = pytest.mark.slow


def test_session_runs_named_inputs(fp32_bundle):
    sess = load(fp32_bundle.bundle, verbose=False)
    x = np.random.default_rng(0).random((1, 4, 3, 64, 64), dtype=np.float32) * 0.2
    y = sess(rgb=x)
    assert y.shape == x.shape and y.dtype == np.float32 and 0 <= y.min() and y.max() <= 1
    assert sess.backend_name.startswith("onnxruntime")


def test_runtime_never_imports_torch(fp32_bundle):
    code = (
        "import sys, numpy as np, lowlight.runtime as rt\n"
        f"s = rt.load({str(fp32_bundle.bundle)!r}, verbose=False)\n"
        "s(rgb=np.zeros((1,4,3,64,64), np.float32))\n"
        "bad = [m for m in sys.modules if m == 'torch' or m.startswith('torch.')]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("feeds, words", [
    ({"rgb": np.full((1, 4, 3, 64, 64), np.nan, np.float32)}, "NaN/Inf"),
    ({"rgb": np.full((1, 4, 3, 64, 64), np.inf, np.float32)}, "NaN/Inf"),
    ({"rgb": np.zeros((1, 4, 3, 64, 32), np.float32)}, "compiled for [1, 4, 3, 64, 64]"),
    ({"rgb": np.zeros((1, 4, 3, 64, 64), np.uint8)}, "astype(np.float32) / 255"),
    ({"image": np.zeros((1, 4, 3, 64, 64), np.float32)}, "missing ['rgb']"),
])
def test_bad_runtime_inputs(fp32_bundle, feeds, words):
    sess = load(fp32_bundle.bundle, verbose=False)
    with pytest.raises(InputError) as e:
        sess(**feeds)
    assert words in str(e.value)


FIX_ARRAY = "pass a numpy float32 array of the compiled shape"


@pytest.mark.parametrize("value, what", [
    (None, "input 'rgb' expected a numpy array, got NoneType"),
    ("frame.png", "input 'rgb' expected a numpy array, got str"),
    ({"r": 1}, "input 'rgb' expected a numpy array, got dict"),
    (b"\x00" * 16, "input 'rgb' expected a numpy array, got bytes"),
    (3.5, "input 'rgb' expected a numpy array, got float"),
    (["a", "b"], "input 'rgb' is a list of non-numeric values (dtype <U1)"),
    ([[0.1, 0.2], [0.3]], "input 'rgb' is a list that does not form an array"),
    ([None, None], "input 'rgb' is a list of non-numeric values (dtype object)"),
])
def test_non_array_inputs(fp32_bundle, value, what):
    sess = load(fp32_bundle.bundle, verbose=False)
    with pytest.raises(InputError) as e:
        sess(rgb=value)
    assert e.value.what.startswith(what)
    assert e.value.fix.startswith(FIX_ARRAY)


def test_numeric_list_is_accepted(fp32_bundle):
    sess = load(fp32_bundle.bundle, verbose=False)
    x = np.random.default_rng(1).random((1, 4, 3, 64, 64), dtype=np.float32) * 0.3
    np.testing.assert_allclose(sess(rgb=x.tolist()), sess(rgb=x), atol=1e-6)


def test_frames_in_0_255_are_refused(fp32_bundle):
    sess = load(fp32_bundle.bundle, verbose=False)
    x = np.random.default_rng(2).random((1, 4, 3, 64, 64), dtype=np.float32) * 0.3
    with pytest.raises(InputError) as e:
        sess(rgb=x * 255)
    assert e.value.what == f"input 'rgb' has values from {x.min() * 255:g} to {x.max() * 255:g}, outside its declared range [0,1]"
    assert "looks like 0..255: divide by 255" in e.value.fix
    with pytest.raises(InputError, match="looks like 0..255"):
        sess(rgb=np.full((1, 4, 3, 64, 64), 255.0, np.float64))  # float64 too, at the very top


@pytest.mark.parametrize("lo, hi, fix", [
    (-0.2, 0.9, "scale frames into [0,1]"),  # negative beyond the 5% slack
    (0.0, 300.0, "scale frames into [0,1]"),  # above 255: not 8-bit frames
    (0.0, 1.2, "scale frames into [0,1]"),  # past the slack, too small for 0..255
    (-1.0, 1.0, "looks like -1..1: map it to 0..1 with (frame + 1) / 2"),
])
def test_out_of_range_inputs_are_refused(fp32_bundle, lo, hi, fix):
    sess = load(fp32_bundle.bundle, verbose=False)
    x = np.full((1, 4, 3, 64, 64), 0.5, np.float32)
    x[0, 0, 0, 0, :2] = lo, hi
    with pytest.raises(InputError) as e:
        sess(rgb=x)
    assert e.value.what == f"input 'rgb' has values from {lo:g} to {hi:g}, outside its declared range [0,1]"
    assert fix in e.value.fix


def test_slightly_noisy_inputs_pass(fp32_bundle):
    sess = load(fp32_bundle.bundle, verbose=False)
    x = np.random.default_rng(3).random((1, 4, 3, 64, 64), dtype=np.float32)
    x[0, 0, 0, 0, :2] = -0.049, 1.049  # resize/denoise overshoot, inside the 5% slack
    y = sess(rgb=x)
    assert y.shape == x.shape and np.isfinite(y).all()
    x[0, 0, 0, 0, 0] = -0.051
    with pytest.raises(InputError, match="values from -0.051 to 1.049"):
        sess(rgb=x)


def test_declared_range_is_honoured(fp32_bundle, tmp_path: Path):
    from lowlight.core.bundle import write_manifest

    copy = tmp_path / "b"
    shutil.copytree(fp32_bundle.bundle, copy)
    man = json.loads((copy / "manifest.json").read_text())
    man["inputs"][0]["range"] = [-1, 1]
    write_manifest(copy, man)
    sess = load(copy, verbose=False)
    assert sess.ranges == {"rgb": (-1.0, 1.0)}
    sess(rgb=np.full((1, 4, 3, 64, 64), -0.95, np.float32))  # fine for this bundle, refused for [0,1]
    with pytest.raises(InputError) as e:
        sess(rgb=np.full((1, 4, 3, 64, 64), 200.0, np.float32))
    assert e.value.what == "input 'rgb' has values from 200 to 200, outside its declared range [-1,1]"
    assert e.value.fix == "scale frames into [-1,1], the range the model was compiled and calibrated for"
    with pytest.raises(InputError) as e:
        sess(rgb=np.zeros((1, 4, 3, 64, 64), np.uint8))
    assert e.value.what == "input 'rgb' has dtype uint8; expected float32 values in [-1,1]"


def test_nan_is_reported_before_range(fp32_bundle):
    sess = load(fp32_bundle.bundle, verbose=False)
    x = np.full((1, 4, 3, 64, 64), 300.0, np.float32)
    x[0, 0, 0, 0, :3] = np.nan
    with pytest.raises(InputError) as e:
        sess(rgb=x)
    assert e.value.what == "input 'rgb' contains 3 NaN/Inf value(s)"


def test_tampered_bundle_is_refused(fp32_bundle, tmp_path: Path):
    copy = tmp_path / "b"
    shutil.copytree(fp32_bundle.bundle, copy)
    data = bytearray((copy / "model.onnx").read_bytes())
    data[-10] ^= 0xFF
    (copy / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="model.onnx \\(sha256 mismatch\\)"):
        load(copy, verbose=False)
    (copy / "model.onnx").unlink()
    with pytest.raises(BundleError, match="model.onnx \\(missing\\)"):
        load(copy, verbose=False)


def test_not_a_bundle(tmp_path: Path):
    with pytest.raises(BundleError, match="no manifest.json"):
        load(tmp_path, verbose=False)


def test_lowlight_run_on_frames_and_video(fp32_bundle, tmp_path: Path, data_dir: Path):
    from lowlight.runtime.cli import main

    frames = tmp_path / "in"
    frames.mkdir()
    from lowlight.calibration.data import SAMPLES_DIR

    for p in sorted(SAMPLES_DIR.glob("*.png"))[:6]:  # 6 frames = one full clip of 4 + a padded one
        shutil.copy(p, frames / p.name)
    assert main([str(fp32_bundle.bundle), "--input", str(frames), "--output", str(tmp_path / "out"), "--quiet"]) == 0
    outs = sorted((tmp_path / "out").glob("*.png"))
    assert len(outs) == 6
    import cv2

    # the first 12 frames of the real clip, at its native 768x432 (the tiny bundle tiles it)
    src = cv2.VideoCapture(str(data_dir / "video" / "car-detection.mp4"))
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 12.5, (768, 432))
    for _ in range(12):
        ok, frame = src.read()
        assert ok
        writer.write(frame)
    writer.release()
    src.release()
    assert main([str(fp32_bundle.bundle), "--input", str(video), "--output", str(tmp_path / "night.mp4"), "--darken", "0.25", "--quiet"]) == 0
    cap = cv2.VideoCapture(str(tmp_path / "night.mp4"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 12
    assert (int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))) == (768, 432)


def test_lowlight_run_undecodable_video(fp32_bundle, tmp_path: Path, capsys):
    from lowlight.runtime.cli import main

    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00\x01" * 500)
    assert main([str(fp32_bundle.bundle), "--input", str(bad), "--output", str(tmp_path / "o.mp4"), "--quiet"]) == 2
    assert "cannot" in capsys.readouterr().err
    assert not (tmp_path / "o.mp4").exists() and not any(p.name.startswith(".o.mp4") for p in tmp_path.iterdir())


def test_profile_command_rewrites_reports(fp32_bundle, tmp_path: Path):
    from lowlight.compile.cli import main

    copy = tmp_path / "b"
    shutil.copytree(fp32_bundle.bundle, copy)
    assert main(["profile", str(copy), "--runs", "3", "--warmup", "1"]) == 0
    prof = json.loads((copy / "profile.json").read_text())
    assert prof["runs"] == 3
    load(copy, verbose=False)  # manifest hashes were refreshed with the new reports
