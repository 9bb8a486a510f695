"""Image and video I/O for the runtime (OpenCV, no PyTorch)."""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np

from lowlight.core.errors import InputError, LowlightError, OutputError

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


def _to_bgr8(rgb: np.ndarray) -> np.ndarray:
    """HxWx3 float RGB in [0,1] -> 8-bit BGR, the layout OpenCV's writers take."""
    import cv2

    return cv2.cvtColor((np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8), cv2.COLOR_RGB2BGR)


def write_image(path: str | Path, rgb: np.ndarray) -> None:
    """Write HxWx3 float RGB in [0,1] as an 8-bit image; raises OutputError if it cannot be written."""
    import cv2

    try:
        ok = cv2.imwrite(str(path), _to_bgr8(rgb))
    except cv2.error as exc:  # an unknown suffix or an encoder failure raises instead of returning False
        raise OutputError(f"cannot write image {path}: {str(exc).strip().splitlines()[-1]}", "write PNG/JPEG frames") from None
    if not ok:
        raise OutputError(f"cannot write image {path}", "check the folder exists, is writable and the disk has free space")


#: FourCC used for each video suffix: the codec its container takes in OpenCV's FFmpeg
#: build (mp4v is refused by WebM, which takes VP8 only).
VIDEO_FOURCC = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".mkv": "mp4v", ".avi": "mp4v", ".webm": "VP80"}


@contextmanager
def _quiet_opencv() -> Iterator[None]:
    """Silence stderr at the file-descriptor level while a video writer opens.

    A codec refused by a container (or one FFmpeg maps to another tag) prints
    FFmpeg/OpenCV chatter straight to fd 2, bypassing Python and OpenCV's
    log level; the user gets our one-line message instead.
    """
    import os
    import sys

    try:
        sys.stderr.flush()
        saved = os.dup(2)
        devnull = os.open(os.devnull, os.O_WRONLY)
    except OSError:  # no fd 2 to redirect (embedded use): chatter is harmless
        yield
        return
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def open_video_writer(path: str | Path, fps: float, size: tuple[int, int]):  # type: ignore[no-untyped-def]
    """An opened cv2.VideoWriter for `path` (codec from its suffix), or None if OpenCV cannot encode it."""
    import cv2

    fourcc = VIDEO_FOURCC.get(Path(path).suffix.lower(), "mp4v")
    try:
        with _quiet_opencv():  # WebM prints a harmless tag warning even for VP8, which it then encodes
            writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*fourcc), float(fps), size)
    except cv2.error:
        return None
    if not writer.isOpened():
        writer.release()
        return None
    return writer


def video_encoder_works(suffix: str, fps: float = 10.0, size: tuple[int, int] = (64, 64)) -> bool:
    """True if OpenCV here can encode a `suffix` video at this size: one frame is written to a probe
    file in the system temp folder (never beside the user's output) and read back."""
    import shutil
    import tempfile

    import cv2

    try:
        probe_dir = tempfile.mkdtemp(prefix="lowlight-probe-")
    except OSError:  # no temp folder: the real writer's own check still catches a missing codec
        return True
    try:
        path = Path(probe_dir) / f"probe{suffix}"
        writer = open_video_writer(path, fps, size)
        if writer is None:
            return False
        with _quiet_opencv():
            writer.write(np.zeros((size[1], size[0], 3), np.uint8))
            writer.release()
            if not path.is_file() or path.stat().st_size == 0:
                return False
            cap = cv2.VideoCapture(str(path))
            ok = cap.isOpened()
            cap.release()
        return ok
    finally:
        shutil.rmtree(probe_dir, ignore_errors=True)


def check_video_encoder(suffix: str, fps: float, size: tuple[int, int], flag: str = "--output") -> None:
    """Raise OutputError naming the suffixes that work if OpenCV cannot encode `suffix` videos (before any work)."""
    suffix = suffix.lower()
    if video_encoder_works(suffix, fps, size):
        return
    working = [s for s in sorted(VIDEO_SUFFIXES) if s != suffix and video_encoder_works(s, fps, size)]
    codec = VIDEO_FOURCC.get(suffix, "mp4v")
    fix = (f"end {flag} in one of {', '.join(working)}, or give a folder to get PNG frames" if working
           else f"give {flag} a folder to get PNG frames (this OpenCV encodes no video format)")
    raise OutputError(f"OpenCV on this machine cannot encode {suffix} video ({codec} codec at {size[0]}x{size[1]})", fix)


class VideoFileWriter:
    """Writes float RGB frames to a video file; `close()` proves the file is complete.

    OpenCV's VideoWriter drops frames silently (a full disk, a failed trailer),
    so the finished file is opened again: a file that does not open or holds
    fewer frames than written raises OutputError instead of being kept.
    """

    def __init__(self, path: str | Path, fps: float, size: tuple[int, int]) -> None:
        self.path, self.size, self.count = Path(path), size, 0
        self._writer = open_video_writer(self.path, fps, size)
        if self._writer is None:
            raise OutputError(f"cannot open a {self.path.suffix} video writer for {self.path}", "check the folder is writable, or write a folder of PNG frames")

    def write(self, rgb: np.ndarray) -> None:
        self._writer.write(_to_bgr8(rgb))
        self.count += 1

    def close(self) -> None:
        """Finish the file and check it reads back with every frame."""
        import cv2

        if self._writer is None:
            return
        self._writer.release()
        self._writer = None
        cap = cv2.VideoCapture(str(self.path))
        try:
            n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) if cap.isOpened() else -1
        finally:
            cap.release()
        if n < 0 or (n > 0 and n < self.count) or not self.path.is_file():
            got = "does not open" if n < 0 else f"holds {n} of {self.count} frames"
            raise OutputError(f"the video written to {self.path} {got}", "check the disk has free space, then run again")

    def abort(self) -> None:
        """Release the writer without checking (the partial file is removed by the caller)."""
        if self._writer is not None:
            self._writer.release()
            self._writer = None


def _sane_fps(fps: float) -> float:
    """The container's fps, or 25 where it is missing, zero, negative or not finite (a writer needs > 0)."""
    import math

    return fps if math.isfinite(fps) and 0 < fps < 1000 else 25.0


def video_info(path: str | Path, error: type[LowlightError] = InputError) -> tuple[float, int, int, int]:
    """(fps, frame count the container declares (0 = unknown), width, height); raises `error` if it cannot be opened."""
    import cv2

    try:
        cap = cv2.VideoCapture(str(path))
    except cv2.error as exc:
        raise error(f"cannot open video {path}: {str(exc).strip().splitlines()[-1]}", "check the file is a video OpenCV can decode") from None
    try:
        if not cap.isOpened():
            raise error(f"cannot open video {path}", "check the file exists and is a complete video (mp4/avi...) that OpenCV can decode")
        return (
            _sane_fps(float(cap.get(cv2.CAP_PROP_FPS) or 0.0)),
            max(0, int(cap.get(cv2.CAP_PROP_FRAME_COUNT))),
            int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)),
            int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)),
        )
    finally:
        cap.release()


def read_video_frames(
    path: str | Path, limit: int | None = None, every: int = 1, error: type[LowlightError] = InputError
) -> Iterator[np.ndarray]:
    """Yield HxWx3 float32 RGB frames in [0,1]; raises `error` if not even the first frame decodes.

    Decoding stops at the first frame that fails (a truncated file ends there):
    callers that must know compare the frames they got with `video_info`'s count.
    """
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
            try:
                ok, bgr = cap.read()
            except cv2.error:  # a damaged packet can raise instead of returning False: the stream ends here
                ok = False
            if not ok or bgr is None:
                break
            if i % every == 0:
                n += 1
                yield pixels_to_unit(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), path, error)
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


# -- live sources: V4L2 devices, GStreamer pipelines, network streams --------------------------

def gstreamer_available() -> bool:
    """True if the installed OpenCV was built with GStreamer (the pip wheels are not: use the
    system OpenCV on a Jetson, e.g. JetPack's python3-opencv, or GStreamer's own appsink)."""
    import cv2

    for line in cv2.getBuildInformation().splitlines():
        if line.strip().startswith("GStreamer:"):
            return "YES" in line.split(":", 1)[1].upper()
    return False


def live_kind(spec: str) -> str | None:
    """'v4l2' for /dev/videoN, 'gstreamer' for a pipeline (has '!'), 'network' for rtsp/http URLs, else None."""
    if spec.startswith("/dev/video"):
        return "v4l2"
    if "!" in spec:
        return "gstreamer"
    if spec.split("://", 1)[0].lower() in ("rtsp", "rtsps", "rtmp", "http", "https", "udp", "tcp") and "://" in spec:
        return "network"
    return None


def open_capture(spec: str, error: type[LowlightError] = InputError):  # type: ignore[no-untyped-def]
    """An opened cv2.VideoCapture for a live source; raises `error` saying why it cannot be opened."""
    import cv2

    kind = live_kind(spec)
    if kind == "gstreamer" and not gstreamer_available():
        raise error(
            "this OpenCV has no GStreamer support (the opencv-python pip wheels never do), so the pipeline cannot be opened",
            "on a Jetson use the system OpenCV (JetPack's python3-opencv, built with GStreamer) in the venv "
            "(--system-site-packages), or pass a V4L2 device (--input /dev/video0) or a video file",
        )
    api = {"v4l2": cv2.CAP_V4L2, "gstreamer": cv2.CAP_GSTREAMER, "network": cv2.CAP_FFMPEG}.get(kind or "", cv2.CAP_ANY)
    if kind == "v4l2" and not Path(spec).exists():
        raise error(f"camera device {spec} does not exist", "check `ls /dev/video*` and that this user is in the 'video' group")
    try:
        cap = cv2.VideoCapture(spec, api)
    except cv2.error as exc:
        raise error(f"cannot open {spec}: {str(exc).strip().splitlines()[-1]}", "check the device or pipeline") from None
    if not cap.isOpened():
        cap.release()
        raise error(f"cannot open live source {spec}", "check the device is free (no other program reading it) and readable, or the pipeline ends in appsink")
    return cap


class LatestFrameReader:
    """Reads a live source on its own thread and keeps only the newest frame (latest wins).

    When inference is slower than the camera, `read()` returns the newest frame and the
    frames it replaced are counted in `dropped` (never queued: a queue adds latency
    without bound). Each frame comes with its capture timestamp (seconds, the source's
    own clock where it has one (CAP_PROP_POS_MSEC), else time.monotonic at grab) and its
    index in the camera's sequence, so dropped frames show as gaps.
    """

    def __init__(self, read_frame, timestamp=None) -> None:  # type: ignore[no-untyped-def]
        import threading

        self._read, self._timestamp = read_frame, timestamp
        self._cond = threading.Condition()
        self._latest: tuple[int, float, np.ndarray] | None = None
        self._taken = -1
        self.captured = self.dropped = 0
        self.ended = False
        self._stop = False
        self._thread = threading.Thread(target=self._loop, name="lowlight-capture", daemon=True)
        self._thread.start()

    @classmethod
    def from_capture(cls, cap) -> "LatestFrameReader":  # type: ignore[no-untyped-def]
        import time

        import cv2

        def read() -> np.ndarray | None:
            ok, frame = cap.read()
            return frame if ok else None

        def stamp() -> float:
            ms = float(cap.get(cv2.CAP_PROP_POS_MSEC) or 0.0)
            return ms / 1e3 if ms > 0 else time.monotonic()

        reader = cls(read, stamp)
        reader._cap = cap
        return reader

    def _loop(self) -> None:
        import time

        while not self._stop:
            frame = self._read()
            if frame is None:
                break
            ts = self._timestamp() if self._timestamp else time.monotonic()
            with self._cond:
                if self._latest is not None and self._latest[0] > self._taken:
                    self.dropped += 1  # replaced before anyone read it
                self._latest = (self.captured, ts, frame)
                self.captured += 1
                self._cond.notify_all()
        with self._cond:
            self.ended = True
            self._cond.notify_all()

    def read(self, timeout: float | None = 5.0) -> tuple[int, float, np.ndarray] | None:
        """(index, timestamp, frame) of the newest unread frame; None when the source ended (or timed out)."""
        with self._cond:
            ok = self._cond.wait_for(lambda: (self._latest is not None and self._latest[0] > self._taken) or self.ended, timeout)
            if not ok or self._latest is None or self._latest[0] <= self._taken:
                return None
            self._taken = self._latest[0]
            return self._latest

    def close(self) -> None:
        self._stop = True
        self._thread.join(timeout=2.0)
        cap = getattr(self, "_cap", None)
        if cap is not None:
            cap.release()
