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
