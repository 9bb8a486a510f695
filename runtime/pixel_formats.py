"""Camera pixel formats <-> float RGB in [0,1], in numpy (no OpenCV needed on the vehicle).

| format | array (uint8) | what it is |
|---|---|---|
| `bgr24` | H x W x 3 | OpenCV's default: blue, green, red bytes per pixel |
| `rgb24` | H x W x 3 | red, green, blue bytes per pixel |
| `nv12`  | (H*3/2) x W | YUV 4:2:0: a full-size Y plane, then one plane of interleaved U,V at half width and half height (H, W even) |
| `yuyv`  | H x W x 2 | YUV 4:2:2 packed (also called YUY2): Y0 U Y1 V for each pair of pixels (W even); what most USB/V4L2 cameras send |

The YUV formats use **BT.601, limited ("video") range**: Y in 16..235, U/V in
16..240 around 128, the convention of V4L2 cameras, Jetson's nvarguscamerasrc
NV12 and OpenCV's `COLOR_YUV2RGB_NV12` / `COLOR_YUV2RGB_YUYV` (which the tests
compare against). Full-range (JPEG) YUV and BT.709 are not handled: convert
those before feeding, or they come out with crushed blacks and a slight hue shift.

Chroma is upsampled by nearest neighbour (each U/V sample covers its 2x2 or 2x1
block), as OpenCV does; on output, chroma is the mean of each block.

This is the host path, around a float bundle. A bundle compiled with
`--pixel-format` converts inside its graph instead (`passes/pixel_format.py`,
the same arithmetic, tested to match this module).
"""
from __future__ import annotations

import numpy as np

from lowlight.core.errors import InputError

PIXEL_FORMATS = ("bgr24", "rgb24", "nv12", "yuyv")

# BT.601 limited range, the matrix of ITU-R BT.601 scaled for Y 16..235 and C 16..240.
_KY = 255.0 / 219.0  # 1.164
_RV, _GU, _GV, _BU = 1.596027, -0.391762, -0.812968, 2.017232
# Forward (RGB in [0,1] -> Y'CbCr 8-bit): Kr = 0.299, Kb = 0.114.
_KR, _KB = 0.299, 0.114
_KG = 1.0 - _KR - _KB


def check_format(fmt: str) -> str:
    """`fmt` if known, else InputError listing the formats."""
    if fmt not in PIXEL_FORMATS:
        raise InputError(f"unknown pixel format {fmt!r}", f"use one of {', '.join(PIXEL_FORMATS)}")
    return fmt


def frame_size(frame: np.ndarray, fmt: str) -> tuple[int, int]:
    """(H, W) of the image a `fmt` frame holds; raises InputError if the array cannot be one."""
    check_format(fmt)
    if not isinstance(frame, np.ndarray):
        raise InputError(f"a {fmt} frame must be a numpy array, got {type(frame).__name__}", "pass the camera's uint8 buffer as a numpy array")
    if frame.dtype != np.uint8:
        raise InputError(f"a {fmt} frame must be uint8, got {frame.dtype}", "pass the camera's 8-bit buffer (frame.astype(np.uint8) if it is already 0..255)")
    s = frame.shape
    if fmt in ("bgr24", "rgb24"):
        if len(s) != 3 or s[2] != 3 or s[0] < 1 or s[1] < 1:
            raise InputError(f"a {fmt} frame must be H x W x 3, got shape {list(s)}", "pass one colour frame (e.g. cv2 VideoCapture.read())")
        return s[0], s[1]
    if fmt == "nv12":
        if len(s) != 2 or s[0] % 3 or s[0] < 3 or s[1] % 2 or (s[0] // 3 * 2) % 2:
            raise InputError(f"an nv12 frame must be (H*3/2) x W with H, W even, got shape {list(s)}", "pass the Y plane followed by the interleaved UV plane as one 2-D array")
        return s[0] // 3 * 2, s[1]
    if len(s) != 3 or s[2] != 2 or s[1] % 2:
        raise InputError(f"a yuyv frame must be H x W x 2 with W even, got shape {list(s)}", "pass the packed YUYV buffer reshaped to H x W x 2")
    return s[0], s[1]


def _yuv_to_rgb(y: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    y = (y.astype(np.float32) - 16.0) * _KY
    u = u.astype(np.float32) - 128.0
    v = v.astype(np.float32) - 128.0
    rgb = np.stack([y + _RV * v, y + _GU * u + _GV * v, y + _BU * u], axis=-1)
    return np.clip(rgb / 255.0, 0.0, 1.0)


def to_rgb(frame: np.ndarray, fmt: str) -> np.ndarray:
    """A uint8 camera frame in `fmt` -> H x W x 3 float32 RGB in [0,1]."""
    h, w = frame_size(frame, fmt)
    if fmt == "rgb24":
        return frame.astype(np.float32) / 255.0
    if fmt == "bgr24":
        return frame[..., ::-1].astype(np.float32) / 255.0
    if fmt == "nv12":
        y = frame[:h]
        uv = frame[h:].reshape(h // 2, w // 2, 2)
        u = uv[..., 0].repeat(2, 0).repeat(2, 1)
        v = uv[..., 1].repeat(2, 0).repeat(2, 1)
        return _yuv_to_rgb(y, u, v)
    y = frame[..., 0]
    c = frame[..., 1].reshape(h, w // 2, 2)  # U at even pixels, V at odd ones
    u = c[..., 0].repeat(2, 1)
    v = c[..., 1].repeat(2, 1)
    return _yuv_to_rgb(y, u, v)


def _rgb_to_yuv(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Float Y (16..235), Cb, Cr (16..240) per pixel from RGB in [0,1]."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    yl = _KR * r + _KG * g + _KB * b
    y = 16.0 + 219.0 * yl
    u = 128.0 + 224.0 * (b - yl) / (2 * (1 - _KB))
    v = 128.0 + 224.0 * (r - yl) / (2 * (1 - _KR))
    return y, u, v


def _u8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def from_rgb(rgb: np.ndarray, fmt: str) -> np.ndarray:
    """H x W x 3 float RGB in [0,1] -> a uint8 frame in `fmt` (NV12/YUYV need even sizes)."""
    check_format(fmt)
    rgb = np.clip(np.asarray(rgb, np.float32), 0.0, 1.0)
    h, w = rgb.shape[:2]
    if fmt == "rgb24":
        return _u8(rgb * 255.0)
    if fmt == "bgr24":
        return np.ascontiguousarray(_u8(rgb * 255.0)[..., ::-1])
    if w % 2 or (fmt == "nv12" and h % 2):
        raise InputError(f"cannot write a {h}x{w} frame as {fmt}: chroma needs even sizes", "use bgr24/rgb24 for odd sizes")
    y, u, v = _rgb_to_yuv(rgb)
    if fmt == "nv12":
        def sub(c: np.ndarray) -> np.ndarray:
            return c.reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))
        uv = np.stack([sub(u), sub(v)], axis=-1).reshape(h // 2, w)
        return np.concatenate([_u8(y), _u8(uv)], axis=0)
    u2 = u.reshape(h, w // 2, 2).mean(axis=2)
    v2 = v.reshape(h, w // 2, 2).mean(axis=2)
    c = np.stack([u2, v2], axis=-1).reshape(h, w)
    return np.stack([_u8(y), _u8(c)], axis=-1)
