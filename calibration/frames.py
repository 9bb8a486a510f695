"""Read frames for calibration/verification: a folder of images or a video file."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from lowlight.core.errors import CalibrationError
from lowlight.runtime.io import IMAGE_SUFFIXES, VIDEO_SUFFIXES, fit_frame, read_image, read_video_frames

__all__ = ["load_frames", "fit_frame"]


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
