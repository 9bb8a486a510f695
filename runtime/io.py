"""Image and video I/O for the runtime (OpenCV, no PyTorch)."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

from lowlight.core.errors import InputError, LowlightError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}
VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v"}


def read_image(path: str | Path, error: type[LowlightError] = InputError) -> np.ndarray:
    """HxWx3 float32 RGB in [0,1]; raises `error` if the file cannot be decoded."""
    import cv2

    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise error(f"cannot decode image {path}", "check the file is a valid PNG/JPEG/BMP/TIFF")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0


def write_image(path: str | Path, rgb: np.ndarray) -> None:
    """Write HxWx3 float RGB in [0,1] as an 8-bit image."""
    import cv2

    bgr = cv2.cvtColor((np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8), cv2.COLOR_RGB2BGR)
    if not cv2.imwrite(str(path), bgr):
        raise InputError(f"cannot write image {path}", "check the folder exists and is writable")


def video_info(path: str | Path) -> tuple[float, int, int, int]:
    """(fps, frame count, width, height) of a video; raises InputError if it cannot be opened."""
    import cv2

    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            raise InputError(f"cannot open video {path}", "check the file exists and is a video OpenCV can decode")
        return (
            float(cap.get(cv2.CAP_PROP_FPS) or 25.0),
            int(cap.get(cv2.CAP_PROP_FRAME_COUNT)),
            int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)),
            int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)),
        )
    finally:
        cap.release()


def read_video_frames(
    path: str | Path, limit: int | None = None, every: int = 1, error: type[LowlightError] = InputError
) -> Iterator[np.ndarray]:
    """Yield HxWx3 float32 RGB frames in [0,1]; raises `error` if the video cannot be decoded."""
    import cv2

    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        cap.release()
        raise error(
            f"cannot decode video {path}", "check the file is a complete video (mp4/avi...) that OpenCV/FFmpeg can read"
        )
    try:
        i = n = 0
        while limit is None or n < limit:
            ok, bgr = cap.read()
            if not ok:
                break
            if i % every == 0:
                n += 1
                yield cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0
            i += 1
        if i == 0:
            raise error(f"cannot decode any frame of video {path}", "check the file is a complete, playable video")
    finally:
        cap.release()


def fit_frame(frame: np.ndarray, h: int, w: int) -> np.ndarray:
    """Resize (keeping aspect) so the frame covers h x w, then centre-crop to exactly h x w."""
    import cv2

    H, W = frame.shape[:2]
    s = max(h / H, w / W)
    if abs(s - 1.0) > 1e-6:
        interp = cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR
        frame = cv2.resize(frame, (max(w, round(W * s)), max(h, round(H * s))), interpolation=interp)
    H, W = frame.shape[:2]
    y, x = (H - h) // 2, (W - w) // 2
    return np.ascontiguousarray(frame[y : y + h, x : x + w]).astype(np.float32)
