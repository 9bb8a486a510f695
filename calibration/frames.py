"""Read frames for calibration/verification: a folder of images or a video file."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from lowlight.runtime.errors import CalibrationError
from lowlight.runtime.io import VIDEO_SUFFIXES, IMAGE_SUFFIXES, read_image, read_video_frames


def load_frames(source: str | Path, limit: int | None = None, every: int = 1) -> list[np.ndarray]:
    """HxWx3 float32 RGB frames in [0,1] from an image folder or a video (every `every`-th frame).

    Raises CalibrationError if the source is missing, empty or unreadable.
    """
    source = Path(source)
    if not source.exists():
        raise CalibrationError(f"calibration source {source} does not exist", "pass --calib DIR|VIDEO")
    if source.is_dir():
        files = sorted(p for p in source.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise CalibrationError(
                f"calibration folder {source} has no images ({', '.join(sorted(IMAGE_SUFFIXES))})",
                "point --calib at a folder of frames from your camera, or at a video",
            )
        frames = []
        for f in files[:limit] if limit else files:
            frames.append(read_image(f, error=CalibrationError))
        return frames
    if source.suffix.lower() in VIDEO_SUFFIXES:
        frames = list(read_video_frames(source, limit=limit, every=every, error=CalibrationError))
        if not frames:
            raise CalibrationError(f"video {source} has no frames", "check the file plays, or pass an image folder")
        return frames
    if source.suffix.lower() in IMAGE_SUFFIXES:
        return [read_image(source, error=CalibrationError)]
    raise CalibrationError(
        f"calibration source {source} is neither a folder, an image nor a video "
        f"({', '.join(sorted(VIDEO_SUFFIXES))})",
        "pass --calib DIR|VIDEO",
    )


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
