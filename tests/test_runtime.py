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
    video = data_dir / "video" / "vtest.avi"
    assert main([str(fp32_bundle.bundle), "--input", str(video), "--output", str(tmp_path / "night.mp4"), "--darken", "0.25", "--quiet"]) == 0
    import cv2

    cap = cv2.VideoCapture(str(tmp_path / "night.mp4"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) > 100 and int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)) == 64


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
