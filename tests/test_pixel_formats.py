"""Camera pixel formats (BT.601 limited range for NV12/YUYV) against OpenCV's own conversions."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from lowlight.core.errors import InputError
from lowlight.runtime.pixel_formats import PIXEL_FORMATS, from_rgb, to_rgb


def _rgb8(h: int = 36, w: int = 50, smooth: bool = False) -> np.ndarray:
    x = (np.random.default_rng(0).random((h, w, 3)) * 255).astype(np.uint8)
    return cv2.GaussianBlur(x, (9, 9), 3) if smooth else x


def _nv12_from_cv(rgb8: np.ndarray) -> np.ndarray:
    h, w = rgb8.shape[:2]
    i420 = cv2.cvtColor(rgb8, cv2.COLOR_RGB2YUV_I420).reshape(-1)
    n = (h // 2) * (w // 2)
    u, v = i420[h * w : h * w + n].reshape(h // 2, w // 2), i420[h * w + n :].reshape(h // 2, w // 2)
    return np.concatenate([i420[: h * w].reshape(h, w), np.stack([u, v], -1).reshape(h // 2, w)])


def test_decode_matches_opencv_within_one_level() -> None:
    rgb8 = _rgb8()
    nv12 = _nv12_from_cv(rgb8)
    ref = cv2.cvtColor(nv12, cv2.COLOR_YUV2RGB_NV12).astype(np.float32) / 255
    assert np.abs(to_rgb(nv12, "nv12") - ref).max() * 255 <= 1.0  # OpenCV rounds in fixed point
    yuyv = cv2.cvtColor(rgb8, cv2.COLOR_RGB2YUV_YUYV)
    ref = cv2.cvtColor(yuyv, cv2.COLOR_YUV2RGB_YUYV).astype(np.float32) / 255
    assert np.abs(to_rgb(yuyv, "yuyv") - ref).max() * 255 <= 1.0
    assert np.array_equal(to_rgb(rgb8[..., ::-1].copy(), "bgr24"), rgb8.astype(np.float32) / 255)
    assert np.array_equal(to_rgb(rgb8, "rgb24"), rgb8.astype(np.float32) / 255)


def test_encode_matches_opencv() -> None:
    rgb8 = _rgb8()
    # Luma is per pixel: equal to OpenCV's within rounding, and YUYV (OpenCV averages chroma pairs too) throughout.
    yuyv = cv2.cvtColor(rgb8, cv2.COLOR_RGB2YUV_YUYV)
    assert np.abs(from_rgb(rgb8 / 255.0, "yuyv").astype(int) - yuyv).max() <= 1
    mine, ref = from_rgb(rgb8 / 255.0, "nv12").astype(int), _nv12_from_cv(rgb8)
    assert np.abs(mine[:36] - ref[:36]).max() <= 1
    # NV12 chroma: we average each 2x2 block, OpenCV's I420 encoder samples it; equal on smooth images.
    smooth = _rgb8(smooth=True)
    assert np.abs(from_rgb(smooth / 255.0, "nv12").astype(int)[36:] - _nv12_from_cv(smooth)[36:]).max() <= 6
    assert np.array_equal(from_rgb(rgb8 / 255.0, "bgr24"), rgb8[..., ::-1])


@pytest.mark.parametrize("fmt", PIXEL_FORMATS)
def test_round_trip_and_limited_range(fmt: str) -> None:
    x = _rgb8(smooth=True) / 255.0
    back = to_rgb(from_rgb(x, fmt), fmt)
    assert back.shape == x.shape and back.dtype == np.float32
    assert np.abs(back - x).max() * 255 <= (1 if fmt.endswith("24") else 12)  # chroma subsampling of a blurred noise image
    if fmt in ("nv12", "yuyv"):
        black, white = from_rgb(np.zeros((4, 4, 3)), fmt), from_rgb(np.ones((4, 4, 3)), fmt)
        assert black.reshape(-1)[0] == 16 and white.reshape(-1)[0] == 235  # BT.601 limited range luma


@pytest.mark.parametrize("fmt,frame,msg", [
    ("nv12", np.zeros((10, 8), np.uint8), "H, W even"),
    ("yuyv", np.zeros((4, 5, 2), np.uint8), "W even"),
    ("bgr24", np.zeros((4, 4, 3), np.float32), "uint8"),
    ("bgr24", np.zeros((4, 4), np.uint8), "H x W x 3"),
])
def test_bad_frames_say_what(fmt: str, frame: np.ndarray, msg: str) -> None:
    with pytest.raises(InputError, match=msg):
        to_rgb(frame, fmt)
    with pytest.raises(InputError, match="unknown pixel format"):
        to_rgb(frame, "rgb565")


# -- conversion inside the compiled graph (--pixel-format) ----------------------------------------


@pytest.mark.parametrize("fmt", ["bgr24", "rgb24", "nv12", "yuyv"])
@pytest.mark.parametrize("lead", [(2,), (1, 3)])  # image batches [B,3,H,W] and clips [B,T,3,H,W]
def test_graph_conversion_equals_the_host_conversion(fmt: str, lead: tuple[int, ...]) -> None:
    """decode -> model -> encode in one ONNX graph gives the bytes of the numpy path (itself tested against OpenCV)."""
    import io

    import onnx
    import onnxruntime as ort
    import torch

    from lowlight.passes.pixel_format import frame_shape, wrap_pixel_format
    from lowlight.runtime import pixel_formats as pf

    h, w = 16, 24
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 3, 3, padding=1), torch.nn.Sigmoid()).eval()

    class Clip(torch.nn.Module):  # the model sees [*lead, 3, H, W]
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x.reshape(-1, 3, h, w)).reshape(x.shape)

    buf = io.BytesIO()
    torch.onnx.export(Clip(), (torch.rand(*lead, 3, h, w),), buf, input_names=["rgb"], output_names=["enhanced"], dynamo=False, opset_version=17)
    core = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    wrapped = wrap_pixel_format(onnx.load_from_string(buf.getvalue()), fmt, "rgb", "enhanced")
    sess = ort.InferenceSession(wrapped.SerializeToString(), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["frame"] and sess.get_inputs()[0].type == "tensor(uint8)"
    rng = np.random.default_rng(1)
    imgs = rng.random((int(np.prod(lead)), h, w, 3)).astype(np.float32)
    frames = np.stack([pf.from_rgb(i, fmt) for i in imgs]).reshape(*lead, *frame_shape(fmt, h, w))
    got = sess.run(None, {"frame": frames})[0]
    x = np.stack([pf.to_rgb(f, fmt).transpose(2, 0, 1) for f in frames.reshape(-1, *frame_shape(fmt, h, w))]).reshape(*lead, 3, h, w)
    y = core.run(None, {"rgb": x.astype(np.float32)})[0]
    want = np.stack([pf.from_rgb(i.transpose(1, 2, 0), fmt) for i in y.reshape(-1, 3, h, w)]).reshape(got.shape)
    diff = np.abs(got.astype(int) - want.astype(int))
    assert got.dtype == np.uint8 and diff.max() <= 1 and (diff == 0).mean() > 0.99


def test_pixel_format_bundle_takes_camera_bytes(tmp_path, data_dir) -> None:
    """--pixel-format bgr24: the bundle's input and output are the camera's bytes; stream() hands them over as they are."""
    import json
    from pathlib import Path

    import lowlight.runtime as rt
    from lowlight.calibration.data import SAMPLES_DIR
    from lowlight.compile.cli import main
    from lowlight.runtime import pixel_formats as pf

    toy = Path(__file__).resolve().parent / "families" / "toy.py"
    common = ["--model", f"{toy}:ToyDenoiser", "--shape", "1x3x32x48", "--pixel-format", "bgr24", "--verify-frames", "3",
              "--profile-runs", "2", "--quiet", "--cache-dir", str(tmp_path / "c"), "--calib", str(SAMPLES_DIR)]
    assert main(common + ["--out", str(tmp_path / "cpu")]) == 0
    m = json.loads((tmp_path / "cpu" / "manifest.json").read_text())
    assert m["inputs"] == [{"name": "frame", "shape": [1, 32, 48, 3], "dtype": "uint8", "layout": "bgr24"}]
    assert m["outputs"][0]["dtype"] == "uint8" and m["pixel_format"]["max_abs_levels"] <= 1
    sess = rt.load(tmp_path / "cpu", verbose=False)
    frame = (np.random.default_rng(0).random((32, 48, 3)) * 80).astype(np.uint8)
    out = sess.stream(pixel_format="bgr24")(frame)
    assert out.dtype == np.uint8 and out.shape == frame.shape
    with pytest.raises(Exception, match="does not match"):
        sess.stream(pixel_format="nv12")
    ref = np.load(tmp_path / "cpu" / "reference.npz")
    assert ref["input:frame"].dtype == np.uint8 and ref["output:enhanced_frame"].shape == (min(2, 3), 1, 32, 48, 3)
    # the same conversion is in the graph TensorRT builds from (no host step on the Jetson)
    assert main(common + ["--target", "jetson-orin", "--out", str(tmp_path / "orin")]) == 0
    orin = json.loads((tmp_path / "orin" / "manifest.json").read_text())
    assert orin["inputs"][0]["dtype"] == "uint8" and (tmp_path / "orin" / "build_plan.json").is_file()
    # lowlight-run decodes files to float RGB at any size: it says where such a bundle belongs
    from lowlight.runtime.cli import main as run_main

    import cv2

    (tmp_path / "in").mkdir()
    cv2.imwrite(str(tmp_path / "in" / "a.png"), frame)
    assert run_main([str(tmp_path / "cpu"), "--input", str(tmp_path / "in"), "--output", str(tmp_path / "o"), "--quiet"]) == 2
    assert not (tmp_path / "o").exists()
    assert pf.check_format("bgr24") == "bgr24"
