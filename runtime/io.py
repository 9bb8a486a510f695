"""Image and video I/O for the runtime (OpenCV, no PyTorch)."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

from lowlight.core.errors import InputError, LowlightError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}
VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v"}


def read_image(path: str | Path, error: type[LowlightError] = InputError) -> np.ndarray:
    """HxWx3 float32 RGB in [0,1] at the file's full bit depth; raises `error` if it cannot be decoded.

    16-bit files are scaled by 65535, not cut to 8 bits: a dark frame's signal
    lives in the low bits. Gray becomes 3 equal channels, alpha is dropped
    (IMREAD_COLOR | IMREAD_ANYDEPTH also keeps the EXIF orientation). A file
    whose data stops early is refused: OpenCV would silently fill the rest gray.
    """
    import cv2

    img = cv2.imread(str(path), cv2.IMREAD_COLOR | cv2.IMREAD_ANYDEPTH)
    broken = image_truncation(path) if img is not None or _has_image_signature(path) else None
    if img is None and not broken:
        raise error(f"cannot decode image {path}", "check the file is a valid PNG/JPEG/BMP/TIFF")
    if broken:
        raise error(f"image {path} is truncated ({broken})", "copy the file again from the camera, or remove it")
    rgb = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    return pixels_to_unit(rgb, path, error)


def pixels_to_unit(pixels: np.ndarray, path: str | Path = "image", error: type[LowlightError] = InputError) -> np.ndarray:
    """Decoded pixels as float32 in [0,1], scaled by their integer type's full range."""
    if pixels.dtype == np.uint8:
        return pixels.astype(np.float32) / 255.0
    if pixels.dtype == np.uint16:
        return pixels.astype(np.float32) / 65535.0
    if pixels.dtype in (np.float32, np.float64):  # float TIFF: already linear values, clip stray HDR highlights
        return np.clip(np.nan_to_num(pixels.astype(np.float32)), 0.0, 1.0)
    raise error(f"image {path} has {pixels.dtype} pixels, which this tool does not read", "save it as an 8- or 16-bit PNG/TIFF")


_JPEG_EOI = b"\xff\xd9"
_PNG_IEND = b"IEND\xaeB`\x82"


def _has_image_signature(path: str | Path) -> bool:
    """True if the file starts like a JPEG or PNG (so a failed decode means its data stops early)."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError:
        return False
    return head.startswith(b"\xff\xd8") or head.startswith(b"\x89PNG\r\n\x1a\n")


def image_truncation(path: str | Path) -> str | None:
    """Why a JPEG/PNG's data stops early, or None if it is complete (other formats: None).

    Fast path: a complete JPEG ends with the EOI marker, a PNG with its IEND
    chunk. Files with trailing bytes after it (some cameras append data) are
    then decoded with Pillow, which raises on a truncated stream, if installed.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    end = {".jpg": _JPEG_EOI, ".jpeg": _JPEG_EOI, ".png": _PNG_IEND}.get(suffix)
    if end is None:
        return None
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - 4096))
            tail = f.read().rstrip(b"\x00")  # zero padding after the end marker is harmless
    except OSError:  # missing or unreadable: the decoder's error says so
        return None
    if tail.endswith(end):
        return None
    try:
        from PIL import Image
    except ImportError:  # runtime-only install: trust the marker
        return f"no {'EOI marker' if end == _JPEG_EOI else 'IEND chunk'} at the end of the file"
    try:
        with Image.open(path) as im:
            im.load()
    except Exception as e:  # noqa: BLE001 - Pillow raises OSError/SyntaxError/ValueError for broken files
        return f"the image data stops early: {e}"
    return None


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
