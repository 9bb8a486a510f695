"""Read frames for calibration/verification: a folder of images or a video file.

`select_data` is what the compile pipeline uses: samples spread evenly over the
whole source, calibration and verification never sharing a frame, and a JSON
record of exactly which frames were used. `load_frames` is the plain reader
(from the start of a folder) kept for training and benchmarks.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from lowlight.core.errors import CalibrationError, LowlightError
from lowlight.runtime.io import IMAGE_SUFFIXES, VIDEO_SUFFIXES, fit_frame, pixels_to_unit, read_image, read_video_frames

__all__ = ["load_frames", "fit_frame", "select_frames", "select_data", "FrameSet", "DataSelection", "MIN_CALIBRATION_FRAMES",
           "exposure_bracket", "BRACKET_GAINS", "BRACKET_FRAMES", "spread"]

#: Exposure gains of `exposure_bracket`. A camera's auto-exposure delivers frames brighter than
#: a night calibration set; on AMNet tiny, INT8 with every node quantized kept 42 dB on the
#: shipped night samples but fell to 30 dB on the same frames at gain 4 and to 33.6 dB on the
#: brightest held-out real photo (mean 0.45): a float set chosen on the samples alone misses that.
BRACKET_GAINS = (2.0, 4.0)
#: Calibration frames (spread over the set) that the bracket repeats: the measurement runs every candidate
#: graph on these, and a multi-component program records its inputs on them through PyTorch
BRACKET_FRAMES = 8


def exposure_bracket(frames: list[np.ndarray], gains: tuple[float, ...] = BRACKET_GAINS) -> list[np.ndarray]:
    """The frames again at each exposure gain (linear scale of the [0, 1] pixels, clipped at 1), gain by gain."""
    return [np.clip(f * np.float32(g), 0.0, 1.0).astype(f.dtype, copy=False) for g in gains for f in frames]


def load_frames(source: str | Path, limit: int | None = None, every: int = 1) -> list[np.ndarray]:
    """HxWx3 float32 RGB frames in [0,1] from an image folder or a video (every `every`-th frame).

    Raises CalibrationError if the source is missing, empty or unreadable, or `limit`/`every` is below 1.
    """
    if limit is not None:
        _check_count(limit, "limit", "pass limit=None for every frame, or a count >= 1")
    _check_count(every, "every", "pass every=1 for every frame")
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


# -- selection for the compile pipeline ---------------------------------------------------

#: Below this many calibration frames INT8 activation ranges rest on too few samples: warn (16+ is better).
MIN_CALIBRATION_FRAMES = 8
#: Below this many held-out frames the fidelity figure is a weak estimate: warn.
MIN_VERIFICATION_FRAMES = 4

ROLES = ("calibration", "verification", "ground_truth")
_SOURCE_FLAG = {"calibration": "--calib", "verification": "--verify-data", "ground_truth": "--ground-truth"}
_COUNT_FLAG = {"calibration": "--calib-frames", "verification": "--verify-frames", "ground_truth": "--verify-frames"}
_SEEK_AFTER = 48  # frames: a longer gap to the next pick is crossed by seeking, a shorter one by decoding through


def _check_count(n: Any, name: str, fix: str) -> None:
    """Counts are >= 1: 0 or -3 used to mean 'all' or 'all but 3' by accident of slicing."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise CalibrationError(f"{name} must be a whole number >= 1, got {n!r}", fix)


def spread(start: int, stop: int, k: int) -> list[int]:
    """k distinct indices spread evenly over [start, stop) (the centres of k equal parts); all if k >= stop - start."""
    n = stop - start
    if k >= n:
        return list(range(start, stop))
    return [start + (2 * i + 1) * n // (2 * k) for i in range(k)]


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _pixel_sha256(frame: np.ndarray) -> str:
    """Content of a decoded frame: equal for the same picture stored as PNG, BMP or a lossless video frame."""
    h = hashlib.sha256(str(frame.shape).encode())
    h.update(np.ascontiguousarray(frame, dtype=np.float32).tobytes())
    return h.hexdigest()


class _Video:
    """Random access to a video's frames without holding them: seek across long gaps, decode through short ones."""

    def __init__(self, path: Path, role: str) -> None:
        import cv2

        self.path, self.role = path, role
        self.cap = self._open()
        self.count = int(self.cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        if self.count <= 0:  # some containers do not say: count by decoding through once
            while self.cap.grab():
                self.count += 1
            self.cap.release()
            self.cap = self._open()
        self.pos = 0  # index of the frame the next read() returns

    def _open(self) -> Any:
        import cv2

        cap = cv2.VideoCapture(str(self.path))
        if not cap.isOpened():
            cap.release()
            raise CalibrationError(
                f"cannot decode video {self.path}",
                f"check the file is a complete video OpenCV/FFmpeg can read, or pass an image folder to {_SOURCE_FLAG[self.role]}",
            )
        return cap

    def read(self, idx: int) -> np.ndarray:
        import cv2

        if idx < self.pos or idx - self.pos > _SEEK_AFTER:
            if not self.cap.set(cv2.CAP_PROP_POS_FRAMES, idx):  # backend cannot seek: decode from the start
                self.cap.release()
                self.cap, self.pos = self._open(), 0
            else:
                self.pos = idx
        while self.pos < idx:
            if not self.cap.grab():
                raise CalibrationError(f"frame {idx} of {self.path} cannot be decoded (the video ends early)")
            self.pos += 1
        ok, bgr = self.cap.read()
        if not ok:
            raise CalibrationError(f"frame {idx} of {self.path} cannot be decoded")
        self.pos += 1
        return pixels_to_unit(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), self.path, CalibrationError)

    def close(self) -> None:
        self.cap.release()


class _Source:
    """The frames a source offers, by index: the sorted images of a folder, one image, or a video's frames."""

    def __init__(self, path: str | Path, role: str) -> None:
        self.path = path = Path(path)
        flag = _SOURCE_FLAG[role]
        self.files: list[Path] = []
        self.video: _Video | None = None
        if not path.exists():
            raise CalibrationError(f"{role.replace('_', ' ')} source {path} does not exist", f"pass {flag} DIR|VIDEO")
        if path.is_dir():
            self.kind = "folder"
            self.files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            if not self.files:
                raise CalibrationError(
                    f"{role.replace('_', ' ')} folder {path} has no images ({', '.join(sorted(IMAGE_SUFFIXES))})",
                    f"point {flag} at a folder of frames from your camera, or at a video",
                )
        elif path.suffix.lower() in VIDEO_SUFFIXES:
            self.kind = "video"
            self.video = _Video(path, role)
            if self.video.count == 0:
                self.video.close()
                raise CalibrationError(f"video {path} has no frames", f"check the file plays, or pass an image folder to {flag}")
        elif path.suffix.lower() in IMAGE_SUFFIXES:
            self.kind, self.files = "image", [path]
        else:
            raise CalibrationError(
                f"{role.replace('_', ' ')} source {path} is neither a folder, an image nor a video "
                f"({', '.join(sorted(IMAGE_SUFFIXES | VIDEO_SUFFIXES))})",
                f"pass {flag} DIR|VIDEO",
            )

    @property
    def available(self) -> int:
        return self.video.count if self.video else len(self.files)

    @property
    def unit(self) -> str:
        return "frames" if self.video else "files"

    def name(self, idx: int) -> str:
        return f"frame {idx}" if self.video else self.files[idx].name

    def file_sha256(self, idx: int) -> str | None:
        return None if self.video else _sha256_file(self.files[idx])

    def read(self, idx: int) -> np.ndarray:
        if self.video:
            return self.video.read(idx)
        return read_image(self.files[idx], error=CalibrationError)

    def close(self) -> None:
        if self.video:
            self.video.close()


@dataclass
class FrameSet:
    """The frames one role (calibration, verification, ground truth) uses, and exactly which ones they are."""

    role: str
    source: Path
    kind: str  # folder | video | image
    requested: int
    available: int  # items in the whole source
    frames: list[np.ndarray] = field(default_factory=list, repr=False)
    items: list[dict[str, Any]] = field(default_factory=list)  # {"index", "file"?, "sha256"} in source order
    part: tuple[int, int] | None = None  # [start, stop) of the source this role drew from, when it was split
    split: str | None = None
    source_sha256: str | None = None  # the video file's hash (a folder's files are hashed one by one)
    skipped: list[dict[str, Any]] = field(default_factory=list)  # unreadable: {"index", "file"?, "reason"}
    excluded: list[dict[str, Any]] = field(default_factory=list)  # also in the set it had to stay apart from
    warnings: list[str] = field(default_factory=list)
    keys: dict[str, str] = field(default_factory=dict, repr=False)  # content key -> item name, for exclusion

    @property
    def count(self) -> int:
        return len(self.frames)

    @property
    def files(self) -> list[str]:
        return [it["file"] for it in self.items if "file" in it]

    @property
    def indices(self) -> list[int]:
        return [it["index"] for it in self.items]

    @property
    def sha256(self) -> str:
        """One hash of the selection, `sha256sum`-style lines: changes if any frame or the choice changes."""
        lines = "".join(f"{it['sha256']}  {it.get('file', 'frame %d' % it['index'])}\n" for it in self.items)
        return hashlib.sha256(lines.encode()).hexdigest()

    def record(self) -> dict[str, Any]:
        """JSON-able account for the manifest and the reports."""
        rec: dict[str, Any] = {
            "source": str(self.source),
            "kind": self.kind,
            "requested": self.requested,
            "count": self.count,
            "available": self.available,
            "part": list(self.part) if self.part else None,
            "split": self.split,
            "sha256": self.sha256,
            "items": [dict(it) for it in self.items],
            "skipped": [dict(s) for s in self.skipped],
            "excluded": [dict(e) for e in self.excluded],
            "warnings": list(self.warnings),
        }
        if self.source_sha256:
            rec["source_sha256"] = self.source_sha256
        return rec


def _refuse_eval(path: Path) -> None:
    """Evaluation data is never calibrated on: it would make the reported scores optimistic."""
    from lowlight.calibration.data import shared_data_dir

    shared = shared_data_dir(required=False)
    if shared is None:
        return
    try:
        path.resolve().relative_to((shared / "eval").resolve())
    except ValueError:
        return
    raise CalibrationError(
        f"{path} is evaluation data ({shared / 'eval'}), which is never used for calibration",
        "pass --calib with frames from your camera (or ../shared/data/lowlight_real)",
    )


def _nearest_unused(idx: int, start: int, stop: int, tried: set[int]) -> int | None:
    """The untried index closest to idx inside [start, stop), the earlier one on a tie."""
    for d in range(1, stop - start):
        for j in (idx - d, idx + d):
            if start <= j < stop and j not in tried:
                return j
    return None


def select_frames(
    source: str | Path,
    count: int,
    role: str = "calibration",
    exclude: FrameSet | Iterable[str] | None = None,
    *,
    part: tuple[int, int] | None = None,
    batch: int = 1,
    say: Callable[[str], None] | None = None,
) -> FrameSet:
    """`count` frames spread evenly over `source` (or its `part`), none of them in `exclude`.

    A pick that cannot be decoded (a truncated JPEG...) or whose content is in
    `exclude` (a FrameSet, or its content keys) is skipped, replaced by the
    nearest unused item, and listed in the record. Fewer frames than asked,
    fewer than MIN_CALIBRATION_FRAMES, or a count that is not a multiple of
    `batch` give warnings (also passed to `say`); no usable frame, or fewer
    than one batch, raise CalibrationError. Videos are read by seeking, one
    frame in memory per pick.
    """
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")
    _check_count(count, f"the number of {role.replace('_', ' ')} frames", f"pass {_COUNT_FLAG[role]} N with N >= 1 (16 or more is better)")
    _check_count(batch, "the batch size", "use a shape whose batch is >= 1")
    path = Path(source)
    if role == "calibration":
        _refuse_eval(path)
    src = _Source(path, role)
    try:
        return _select(src, count, role, exclude, part, batch, say)
    finally:
        src.close()


def _select(src: _Source, count: int, role: str, exclude: FrameSet | Iterable[str] | None,
            part: tuple[int, int] | None, batch: int, say: Callable[[str], None] | None) -> FrameSet:
    start, stop = part if part else (0, src.available)
    if not 0 <= start < stop <= src.available:
        raise ValueError(f"part {part} is outside the {src.available} items of {src.path}")
    away = exclude.keys if isinstance(exclude, FrameSet) else {k: k for k in (exclude or ())}
    away_role = exclude.role if isinstance(exclude, FrameSet) else "excluded"
    fs = FrameSet(role, src.path, src.kind, count, src.available, part=(start, stop) if part else None)
    if src.video:
        fs.source_sha256 = _sha256_file(src.path)
    queue = spread(start, stop, count)
    tried = set(queue)
    got: list[tuple[int, np.ndarray, dict[str, Any], dict[str, str]]] = []
    misses = 0  # decode failures (and, for videos, decoded overlaps): bounded so a broken video is not read to the end
    while queue and len(got) < count:
        idx = queue.pop(0)
        name = src.name(idx)
        ref = {"index": idx} if src.video else {"index": idx, "file": name}
        file_sha = src.file_sha256(idx)
        keys = {f"file:{file_sha}": name} if file_sha else {}
        clash = next((k for k in keys if k in away), None)
        if clash is None:
            try:
                frame = src.read(idx)
            except LowlightError as e:
                fs.skipped.append({**ref, "reason": e.what})
                fs.warnings.append(f"skipped {name} of {src.path}: {e.what}")
                misses += 1
            else:
                px = _pixel_sha256(frame)
                keys[f"px:{px}"] = name
                clash = f"px:{px}" if f"px:{px}" in away else None
                if clash is None:
                    got.append((idx, frame, {**ref, "sha256": file_sha or px}, keys))
                    continue
                misses += bool(src.video)
        if clash is not None:
            fs.excluded.append({**ref, "same_as": away[clash]})
            fs.warnings.append(f"left out {name} of {src.path}: the same image as {away_role} {away[clash]}")
        nxt = _nearest_unused(idx, start, stop, tried) if misses <= max(8, count) else None
        if nxt is not None:
            tried.add(nxt)
            queue.insert(0, nxt)
    got.sort(key=lambda g: g[0])
    for _, frame, item, keys in got:
        fs.frames.append(frame)
        fs.items.append(item)
        fs.keys.update(keys)
    _check_set(fs, src, count, batch, stop - start)
    for w in fs.warnings:
        if say:
            say(f"    warning: {w}")
    return fs


def _check_set(fs: FrameSet, src: _Source, count: int, batch: int, pool: int) -> None:
    """Refuse a set that cannot make one batch; warn about small or odd ones."""
    label = fs.role.replace("_", " ")
    flag = _SOURCE_FLAG[fs.role]
    if fs.count < batch:
        why = f"{len(fs.skipped)} unreadable" + (f", {len(fs.excluded)} already used for calibration" if fs.role != "calibration" else "")
        if fs.skipped:
            why += f"; {fs.skipped[0].get('file', 'frame %d' % fs.skipped[0]['index'])}: {fs.skipped[0]['reason']}"
        raise CalibrationError(
            f"{src.path} gave {fs.count} usable {label} frame(s) ({why}), fewer than one batch of {batch}",
            f"pass {flag} with more readable frames" + (" that are not used for calibration" if fs.role != "calibration" else ""),
        )
    if fs.count < count:
        where = f"its part for {label} has {pool}" if fs.part else f"it has {src.available}"
        fs.warnings.append(f"{fs.count} {label} frames from {src.path} instead of the {count} asked for ({where} {src.unit})")
    if fs.role == "calibration" and fs.count < MIN_CALIBRATION_FRAMES:
        fs.warnings.append(
            f"only {fs.count} calibration frame(s): INT8 ranges measured on fewer than {MIN_CALIBRATION_FRAMES} "
            "are unreliable; calibrate on 16 or more frames from your camera"
        )
    if fs.role == "verification" and fs.count < MIN_VERIFICATION_FRAMES:
        fs.warnings.append(f"only {fs.count} verification frame(s): the fidelity figure rests on very few samples")
    if fs.count % batch:
        fs.warnings.append(
            f"{fs.count} {label} frames make {fs.count // batch} batch(es) of {batch}: the last {fs.count % batch} are not used"
        )


@dataclass
class DataSelection:
    """The calibration, verification and ground-truth frames of one compile, disjoint from calibration."""

    calibration: FrameSet | None
    verification: FrameSet
    ground_truth: FrameSet | None = None

    @property
    def warnings(self) -> list[str]:
        return [w for s in (self.calibration, self.verification, self.ground_truth) if s for w in s.warnings]

    def record(self) -> dict[str, Any]:
        """{"calibration": ..., "verification": ..., "ground_truth": ...}: null where a set is not used."""
        return {
            "calibration": self.calibration.record() if self.calibration else None,
            "verification": self.verification.record(),
            "ground_truth": self.ground_truth.record() if self.ground_truth else None,
        }


def _same_source(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and a.samefile(b)
    except OSError:
        return a.resolve() == b.resolve()


def split_parts(n: int, calib_count: int, verify_count: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """Disjoint [start, stop) parts of one source of n items: calibration first, verification last.

    Contiguous parts (not interleaved) so neighbouring video frames, nearly
    identical, never land on both sides; sizes follow the requested counts.
    """
    n_verify = min(n - 1, max(1, round(n * verify_count / (calib_count + verify_count))))
    return (0, n - n_verify), (n - n_verify, n)


def select_data(
    calib: str | Path | None,
    calib_count: int,
    verify: str | Path,
    verify_count: int,
    ground_truth: str | Path | None = None,
    gt_count: int | None = None,
    *,
    batch: int = 1,
    say: Callable[[str], None] | None = None,
) -> DataSelection:
    """Calibration (None: not needed, e.g. fp16), verification and ground-truth frames that never share a frame.

    When calibration and verification name the same folder or video it is
    split into a calibration part and a later verification part (said via
    `say` and recorded); otherwise verification and ground truth leave out
    any frame whose content equals a calibration frame.
    """
    _check_count(calib_count, "the number of calibration frames", "pass --calib-frames N with N >= 1 (16 or more is better)")
    _check_count(verify_count, "the number of verification frames", "pass --verify-frames N with N >= 1")
    calib_part = verify_part = None
    split = None
    if calib is not None and _same_source(Path(calib), Path(verify)):
        src = _Source(Path(calib), "calibration")
        n, unit, names = src.available, src.unit, [f.name for f in src.files]
        src.close()
        if n < 2 * batch:
            raise CalibrationError(
                f"calibration and verification both read {calib}, whose {n} {unit} cannot be split into "
                f"two disjoint parts of at least {batch} (held-out frames must not be calibrated on)",
                "pass --verify-data with other frames from the same camera, or add frames to the source",
            )
        calib_part, verify_part = split_parts(n, calib_count, verify_count)
        if calib_part[1] - calib_part[0] < batch or verify_part[1] - verify_part[0] < batch:
            calib_part, verify_part = (0, n - batch), (n - batch, n)
        def span(a: int, b: int) -> str:
            return f"{names[a]}..{names[b - 1]}" if names else f"{a}-{b - 1}"

        split = (
            f"calibration and verification both read {calib}, so it is split: {unit} {span(*calib_part)} for "
            f"calibration, {span(*verify_part)} held out for verification ({n} in all)"
        )
        if say:
            say(f"    data: {split}")
    cal = select_frames(calib, calib_count, "calibration", part=calib_part, batch=batch, say=say) if calib is not None else None
    ver = select_frames(verify, verify_count, "verification", exclude=cal, part=verify_part, batch=batch, say=say)
    if split:
        assert cal is not None
        cal.split = ver.split = split
    gt = None
    if ground_truth is not None:
        gt = select_frames(ground_truth, gt_count or verify_count, "ground_truth", exclude=cal, batch=batch, say=say)
    return DataSelection(cal, ver, gt)
