"""`lowlight-run BUNDLE --input DIR|VIDEO|/dev/videoN|PIPELINE --output DIR|VIDEO`: enhance footage at its own resolution.

Videos and live sources go through `Session.stream()` (causal, frame by frame:
no block edges); a folder of photos is enhanced one photo at a time (each
alone: order-independent) and each result keeps its photo's name (as PNG).
Every output has its input's size: frames of another size than the bundle's
are tiled with overlap and blended (`lowlight.runtime.tiling`).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import numpy as np

from lowlight.core.about import version
from lowlight.core.errors import BundleError, InputError, LowlightError, OutputError
from lowlight.runtime.io import (
    IMAGE_SUFFIXES,
    VIDEO_SUFFIXES,
    VideoFileWriter,
    check_video_encoder,
    read_image,
    live_kind,
    read_video_frames,
    video_info,
    write_image,
)

#: Marker file of an output folder this tool wrote: lets a later run replace it, and tells the user what is in it.
MARKER = "lowlight-run.json"
OUT_FOLDER = f"a lowlight-run output folder (it has no {MARKER})"


def darken_factor(text: str) -> float:
    """argparse type for --darken: a finite factor in (0, 1]; anything else would not make a darker frame."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}") from None
    if not check_darken(value):
        raise argparse.ArgumentTypeError(
            f"must be a finite number in (0, 1] (it multiplies every input pixel to fake night, e.g. 0.25), got {text}"
        )
    return value


def check_darken(value: float | None) -> bool:
    """True for None (no darkening) or a finite factor in (0, 1]: 0, negatives and NaN blank the frame, >1 brightens it."""
    return value is None or (isinstance(value, (int, float)) and math.isfinite(value) and 0 < value <= 1)


@dataclass
class Source:
    """The footage to enhance: `frames` yields (label, frame or None, why it is unreadable)."""

    path: Path
    kind: str  # "folder", "video" or "live"
    frames: Iterator[tuple[str, np.ndarray | None, str | None]]
    count: int  # image files found, or the frames the video container declares (0 = unknown)
    fps: float
    size: tuple[int, int] = (0, 0)  # (width, height) of a video or live source
    reader: object = None  # the LatestFrameReader of a live source (its `dropped` count)


def open_live(spec: str, max_frames: int | None = None) -> Source:
    """A V4L2 device, GStreamer pipeline or network stream, read latest-wins on its own thread."""
    import cv2

    from lowlight.runtime.io import LatestFrameReader, open_capture, pixels_to_unit

    cap = open_capture(spec)
    fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
    size = (int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)))
    reader = LatestFrameReader.from_capture(cap)

    def frames() -> Iterator[tuple[str, np.ndarray | None, str | None]]:
        n = 0
        try:
            while max_frames is None or n < max_frames:
                got = reader.read()
                if got is None:
                    return
                index, ts, bgr = got
                n += 1
                yield f"frame {index} (t={ts:.3f} s)", pixels_to_unit(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)), None
        finally:
            reader.close()

    return Source(Path(spec), "live", frames(), 0, fps if 0 < fps < 1000 else 30.0, size, reader)


def open_source(path: Path) -> Source:
    """Check the input and open it; raises InputError before any work if it cannot be used."""
    if not path.exists():
        raise InputError(f"--input {path} does not exist", "check the path: pass a folder of PNG/JPEG frames or a video file")
    if path.is_dir():
        try:
            files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        except OSError as exc:
            raise InputError(f"cannot list --input {path} ({exc.strerror or exc})", "check the folder's permissions") from None
        if not files:
            raise InputError(f"input folder {path} has no images", "pass a folder of PNG/JPEG frames or a video")
        return Source(path, "folder", _image_frames(files), len(files), 10.0)
    if path.suffix.lower() in VIDEO_SUFFIXES:
        fps, count, w, h = video_info(path)
        return Source(path, "video", ((f"frame {i}", f, None) for i, f in enumerate(read_video_frames(path))), count, fps, (w, h))
    raise InputError(f"input {path} is neither a folder nor a video ({', '.join(sorted(VIDEO_SUFFIXES))})", "pass --input DIR|VIDEO")


def _image_frames(files: list[Path]) -> Iterator[tuple[str, np.ndarray | None, str | None]]:
    """Each file decoded, or None with the reason: one bad frame must not cost the others."""
    for f in files:
        try:
            yield f.name, read_image(f), None
        except LowlightError as exc:
            yield f.name, None, exc.what
        except OSError as exc:  # e.g. a file that vanished or lost its permissions after the listing
            yield f.name, None, f"cannot read {f} ({exc.strerror or exc})"


def group(frames: Iterator[np.ndarray], size: int) -> Iterator[list[np.ndarray]]:
    buf: list[np.ndarray] = []
    for f in frames:
        buf.append(f)
        if len(buf) == size:
            yield buf
            buf = []
    if buf:
        yield buf


@dataclass
class RunResult:
    """What a run wrote and what it could not read (also in the output folder's lowlight-run.json)."""

    output: Path
    written: int
    expected: int  # frames the input promised: image files, or the video container's count (0 = unknown)
    decoded: int
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (frame, why) not enhanced
    backend: str = ""
    dropped: int = 0  # live sources: frames replaced by a newer one before inference took them
    stream: dict = field(default_factory=dict)  # the stream's statistics (latency p50/p99...)
    seconds: float = 0.0  # wall time from the first decode to the output in place: decode, enhance, encode, write

    @property
    def truncated(self) -> str | None:
        """Why the video input is shorter than its container says, or None."""
        if self.expected and self.decoded + len(self.skipped) < self.expected:
            return f"the container says {self.expected} frames, only {self.decoded} decoded"
        return None

    def summary(self) -> str:
        line = f"wrote {self.written} enhanced frames to {self.output}"
        if self.skipped:
            names = ", ".join(name for name, _ in self.skipped[:3]) + (", ..." if len(self.skipped) > 3 else "")
            line += f"; skipped {len(self.skipped)} of {self.expected} frames that could not be read ({names})"
        if self.truncated:
            line += f"; the input video is truncated: {self.truncated}"
        if self.dropped:
            line += f"; dropped {self.dropped} camera frames (inference slower than the camera: latest frame wins)"
        if self.written and self.seconds > 0:
            line += f"; {self.written / self.seconds:.1f} frames/s end to end (decode, enhance, encode and write)"
            p50 = self.stream.get("latency_ms", {}).get("p50") if isinstance(self.stream.get("latency_ms"), dict) else None
            if p50:
                line += f", enhance p50 {p50:.1f} ms/frame"
        if (self.skipped or self.truncated) and self.output.is_dir():
            line += f" (details in {self.output / MARKER})"
        return line


def _load_session(bundle: str, backend: str, quiet: bool):  # type: ignore[no-untyped-def]
    """`load()` with every failure as a LowlightError: a missing backend package, unreadable files, a broken model."""
    from lowlight.runtime.session import load

    try:
        return load(bundle, backend=backend, verbose=not quiet)
    except (LowlightError, MemoryError):
        raise
    except ImportError as exc:
        raise InputError(f"cannot load a runtime backend: {exc}", "install onnxruntime (pip install onnxruntime), OpenVINO for OpenVINO bundles "
                         "(pip install 'lowlight-compile[openvino]'), or TensorRT on the device") from None
    except OSError as exc:
        raise BundleError(f"cannot read bundle {bundle} ({exc.strerror or exc})", "check the bundle path and its permissions") from None
    except Exception as exc:  # noqa: BLE001 - backends raise their own exception types
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise BundleError(f"cannot load bundle {bundle}: {first}", "recompile the bundle, or copy it again from where it was built") from None


def enhance(
    bundle: str,
    input_path: str,
    output_path: str,
    darken: float | None = None,
    backend: str = "auto",
    quiet: bool = False,
    *,
    overwrite: bool = False,
    strict: bool = False,
    exposure: bool = True,
    max_frames: int | None = None,
) -> RunResult:
    """Enhance every frame of `input_path` into `output_path` (a folder of PNGs, or a video by its suffix).

    Every check (input, output path, bundle, video encoder) runs before the
    first frame: a mistake costs no time and writes nothing. The output is
    built beside its path and renamed into place at the end, so a failed or
    interrupted run leaves a previous output as it was. An existing output is
    replaced only if it is an empty folder or one this tool wrote (`MARKER`),
    or with `overwrite`; never the input or the bundle. Unreadable frames are
    skipped and counted, or stop the run with `strict`. `exposure` blends well-exposed
    frames toward their input (`lowlight.runtime.stream`); `max_frames` stops a live source.
    """
    from lowlight.core.fsio import OutputLock, claim_dir, claim_file, remove_stale

    if not check_darken(darken):
        raise InputError(f"darken must be a finite number in (0, 1], got {darken!r}", "pass e.g. darken=0.25 (it multiplies the input to fake night), or None")
    src, out = Path(input_path), Path(output_path)
    if _array_bundle(bundle):
        return enhance_raw(bundle, src, out, backend, quiet, overwrite=overwrite)
    to_video = out.suffix.lower() in VIDEO_SUFFIXES
    live = live_kind(str(input_path)) is not None
    if live and not to_video and not max_frames:
        raise InputError("a live source never ends, so a folder of PNG frames would grow without bound",
                         "pass --max-frames N, or write a video (--output out.mp4) and stop with Ctrl-C")
    source = open_live(str(input_path), max_frames) if live else open_source(src)
    if to_video:
        claim_file(out, "a video file", "--output", overwrite=overwrite, inputs=[src, bundle])
    else:
        claim_dir(out, MARKER, OUT_FOLDER, "--output", overwrite=overwrite, inputs=[src, bundle])
    sess = _load_session(bundle, backend, quiet)
    from lowlight.runtime.stream import EXPOSURE, FLOAT_FORMAT

    compiled = sess.manifest.get("pixel_format")
    if isinstance(compiled, dict):
        shape = next(iter(sess.inputs.values()))
        raise InputError(
            f"{bundle} takes {compiled.get('format')} camera bytes of shape {shape} (compiled with --pixel-format): "
            "it is made for a camera loop, while lowlight-run decodes files to float RGB at any size",
            f"call lowlight.runtime.load(bundle).stream(pixel_format={compiled.get('format')!r}) from the camera loop, "
            "or compile a bundle without --pixel-format for lowlight-run",
        )
    stream = sess.stream(FLOAT_FORMAT, exposure=EXPOSURE if exposure else None)  # refuses bundles it cannot feed
    shape = list(stream.tile_size)
    if to_video:
        if source.kind == "folder":
            # Each photo is still enhanced alone; the video takes the first photo's size and
            # photos of another size are skipped and reported (a video has one frame size).
            first = next(f for f in sorted(src.iterdir()) if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())
            try:
                h, w = read_image(first).shape[:2]
            except LowlightError:
                h, w = stream.tile_size
            source.size = (w, h)
        check_video_encoder(out.suffix, source.fps, source.size)
    result = RunResult(out, 0, source.count, 0, backend=sess.backend_name)
    t0 = time.perf_counter()
    with OutputLock(out, "--output"):
        for p in remove_stale(out):
            if not quiet:
                print(f"removed the leftover of an interrupted run: {p}", file=sys.stderr)
        try:
            if to_video:
                _run_to_video(stream, source, out, result, shape, darken, strict, quiet)
            else:
                _run_to_folder(stream, source, out, result, shape, darken, strict, quiet, bundle)
        finally:
            result.dropped = int(getattr(source.reader, "dropped", 0) or 0)
            result.stream = stream.stats.as_dict()
            result.seconds = time.perf_counter() - t0
    return result


def _array_bundle(bundle: str) -> str | None:
    """How a bundle that cannot take a stream of RGB images is fed, or None when it can: "raw" (packed
    Bayer, layout RGGB: DarkDiff), "named" (several named inputs and no stream window: MMAIF's frame pairs)."""
    import json

    try:
        manifest = json.loads((Path(bundle) / "manifest.json").read_text())
        inputs = manifest["inputs"]
        if str(inputs[0].get("layout", "")) == "RGGB":
            return "raw"
        stream = (manifest.get("program") or {}).get("stream")
        windowed = isinstance(stream, dict) and bool(stream.get("window"))
        names = [str(i["name"]) for i in inputs]
        return "named" if len(names) > 1 and not windowed and "rgb" not in names else None
    except (OSError, ValueError, KeyError, IndexError, TypeError, AttributeError):
        return None  # the session load reports a damaged bundle


def enhance_raw(bundle: str, src: Path, out: Path, backend: str = "auto", quiet: bool = False, *, overwrite: bool = False) -> RunResult:
    """Frames as `.npz` files holding one array per bundle input, to PNGs named after each file.

    DarkDiff: `raw` [4,h,w] (planes R,Gr,Gb,B black-subtracted and normalised) and `gain` [4]; MMAIF:
    its task's pair, e.g. `under` and `over` [3,H,W] or `visible` [3,H,W] and `infrared` [1,H,W] in [0, 1].
    A sampler's noise is drawn from the bundle's seed: the caller never passes it. A file, or a folder of
    them; each frame must have the compiled size (pad on the host)."""
    from lowlight.core.fsio import OutputLock, claim_dir, remove_stale

    files = sorted(f for f in src.iterdir() if f.suffix == ".npz" and f.is_file()) if src.is_dir() else [src]
    if not src.exists() or not files or any(f.suffix != ".npz" for f in files):
        if _array_bundle(bundle) == "raw":
            raise InputError(f"{bundle} takes packed Bayer raw frames; {src} is not a .npz file or a folder of them",
                             "save each frame with numpy.savez(path, raw=planes [4,h,w] (R,Gr,Gb,B, black-subtracted, / (white-black)), gain=[4])")
        names = ", ".join(f"{n}=[{','.join(map(str, shp[1:]))}]" for n, shp in _input_shapes(bundle).items())
        raise InputError(f"{bundle} takes several inputs per frame; {src} is not a .npz file or a folder of them",
                         f"save each frame with numpy.savez(path, {names}) (float32 in [0, 1])")
    claim_dir(out, MARKER, OUT_FOLDER, "--output", overwrite=overwrite, inputs=[src, bundle])
    sess = _load_session(bundle, backend, quiet)
    names = list(sess.inputs)
    result = RunResult(out, 0, len(files), 0, backend=sess.backend_name)
    t0 = time.perf_counter()
    with OutputLock(out, "--output"):
        for p in remove_stale(out):
            if not quiet:
                print(f"removed the leftover of an interrupted run: {p}", file=sys.stderr)
        from lowlight.core.fsio import commit_dir, staged_dir

        with staged_dir(out) as st:
            for f in files:
                try:
                    with np.load(f, allow_pickle=False) as z:
                        feed = {n: np.asarray(z[n], dtype=np.float32) for n in names}
                except (OSError, ValueError, KeyError) as exc:
                    raise InputError(f"{f} cannot be read as a frame of this bundle ({exc})",
                                     f"write it with numpy.savez and the arrays {', '.join(names)}") from None
                for n in names:  # one frame without its batch axis
                    if feed[n].ndim == len(sess.inputs[n]) - 1:
                        feed[n] = feed[n][None]
                result.decoded += 1
                srgb = sess(**feed)
                write_image(st / f"{f.stem}.png", np.clip(srgb[0].transpose(1, 2, 0), 0.0, 1.0))
                result.written += 1
            (st / MARKER).write_text(json.dumps({"tool": "lowlight-run", "bundle": str(bundle), "input": str(src),
                                                 "frames": result.written}) + "\n")
            commit_dir(st, out)
    result.seconds = time.perf_counter() - t0
    return result


def _input_shapes(bundle: str) -> dict[str, list[int]]:
    import json

    try:
        return {str(i["name"]): list(i["shape"]) for i in json.loads((Path(bundle) / "manifest.json").read_text())["inputs"]}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def _good_frames(source: Source, result: RunResult, strict: bool, out: Path) -> Iterator[tuple[str, np.ndarray]]:
    """The decodable frames; bad ones are recorded in `result` (or stop the run with --strict)."""
    for label, frame, why in source.frames:
        if frame is None:
            if strict:
                raise InputError(
                    f"{label} of {source.path} cannot be read: {why}; stopped (--strict), {_kept(out)}",
                    "replace or remove that frame, or run without --strict to skip unreadable frames (they are counted and reported)",
                )
            result.skipped.append((label, str(why)))
            continue
        result.decoded += 1
        yield label, frame


def _enhanced(stream, source: Source, result: RunResult, shape: list[int], darken: float | None, strict: bool, quiet: bool, out: Path) -> Iterator[tuple[str, np.ndarray]]:  # type: ignore[no-untyped-def]
    """(label, enhanced HxWx3 frame at the input's size) in input order.

    Videos stream causally (one window per frame, no block edges); each photo of a
    folder is enhanced alone (the stream is reset before it), so no photo depends on
    its neighbours or their order.
    """
    from tqdm import tqdm

    bar = tqdm(total=source.count or None, desc=f"enhance ({result.backend})", unit="frame", disable=quiet)
    try:
        for label, frame in _good_frames(source, result, strict, out):
            if source.kind == "folder":
                stream.reset()
            if source.kind == "folder" and source.size != (0, 0) and (frame.shape[1], frame.shape[0]) != source.size:
                why = f"{frame.shape[1]}x{frame.shape[0]} differs from the output video's {source.size[0]}x{source.size[1]}"
                if strict:
                    raise InputError(f"{label}: {why}; stopped (--strict), {_kept(out)}", "write a folder (--output DIR) to keep every photo's size")
                result.skipped.append((label, why))
                continue
            x = frame if darken is None else np.clip(frame * darken, 0, 1)
            bad_before = dict(stream.stats.bad)
            y = stream(np.ascontiguousarray(x, dtype=np.float32))
            if y is None:  # decoded but not enhanceable (NaN, a size change mid-video)
                why = "; ".join(k for k, v in stream.stats.bad.items() if v != bad_before.get(k)) or "bad frame"
                if strict:
                    raise InputError(f"{label} of {source.path} cannot be enhanced ({why}); stopped (--strict), {_kept(out)}",
                                     "repair the input, or run without --strict to skip such frames")
                result.skipped.append((label, why))
                continue
            yield label, y
            bar.update(1)
    finally:
        bar.close()
    if result.decoded == 0:
        raise InputError(f"no frame of {source.path} could be read ({result.skipped[0][1] if result.skipped else 'empty'})",
                         f"check the input frames; {_kept(out)}")
    if result.truncated and strict:
        raise InputError(
            f"input video {source.path} is truncated: {result.truncated}; stopped (--strict), {_kept(out)}",
            "copy the video again from the camera, or run without --strict to enhance the frames that decode",
        )


def output_name(label: str, taken: set[str], index: int, kind: str) -> str:
    """The PNG name of a result: the photo's own name (suffix .png), or NNNNNN.png for video frames.

    Two photos with one stem (a.jpg, a.png) keep their full names (a.jpg.png) so neither is lost.
    """
    if kind != "folder":
        name = f"{index:06d}.png"
    else:
        name = Path(label).stem + ".png"
        if name in taken:
            name = label + ".png"
    taken.add(name)
    return name


def _run_to_folder(stream, source: Source, out: Path, result: RunResult, shape: list[int], darken: float | None,  # type: ignore[no-untyped-def]
                   strict: bool, quiet: bool, bundle: str) -> None:
    """PNG frames into a partial folder, then the marker, then one rename over the previous output."""
    from lowlight.core.fsio import commit_dir, staged_dir

    with staged_dir(out) as tmp:
        taken: set[str] = set()
        for label, frame in _enhanced(stream, source, result, shape, darken, strict, quiet, out):
            write_image(tmp / output_name(label, taken, result.written, source.kind), frame)
            result.written += 1
        try:
            (tmp / MARKER).write_text(json.dumps(_marker(result, source, bundle, darken), indent=2) + "\n")
        except OSError as exc:
            raise OutputError(f"cannot write {out / MARKER} ({exc.strerror or exc})", "check the disk has free space") from None
        commit_dir(tmp, out)


def _run_to_video(stream, source: Source, out: Path, result: RunResult, shape: list[int], darken: float | None,  # type: ignore[no-untyped-def]
                  strict: bool, quiet: bool) -> None:
    """Encode into a partial file beside `out`, check it reads back, then rename it over `out`."""
    from lowlight.core.fsio import partial_file

    tmp = partial_file(out)
    writer = None
    try:
        writer = VideoFileWriter(tmp, source.fps, source.size)
        for _, frame in _enhanced(stream, source, result, shape, darken, strict, quiet, out):
            writer.write(frame)
            result.written += 1
        writer.close()
        os.replace(tmp, out)
    finally:
        if writer is not None:
            writer.abort()
        if tmp.exists():
            tmp.unlink()


def _marker(result: RunResult, source: Source, bundle: str, darken: float | None) -> dict[str, object]:
    """The content of lowlight-run.json: where the frames came from and what was not enhanced."""
    return {
        "tool": "lowlight-run",
        "date": datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds"),
        "bundle": str(Path(bundle).resolve()),
        "backend": result.backend,
        "input": str(source.path.resolve()),
        "input_kind": source.kind,
        "darken": darken,
        "frames": {"input": result.expected, "decoded": result.decoded, "written": result.written, "skipped": len(result.skipped)},
        "skipped": [{"frame": name, "why": why} for name, why in result.skipped],
        "truncated": result.truncated,
        "dropped": result.dropped,
        "stream": result.stream,
        "files": ("each photo's name with suffix .png (same size as the photo)" if source.kind == "folder"
                  else "000000.png ... in input order, at the input's size, skipped frames left out"),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="lowlight-run", description="Enhance low-light footage with a compiled bundle.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--version", action="version", version=f"lowlight-run {version()}")
    p.add_argument("bundle", help="bundle directory written by lowlight-compile")
    p.add_argument("--input", required=True,
                   help="folder of photos, a video file, a V4L2 camera (/dev/video0), an RTSP URL or a GStreamer pipeline "
                        "ending in appsink (needs an OpenCV built with GStreamer: the pip wheel is not); for bundles with "
                        "raw or several inputs (DarkDiff, MMAIF) a .npz file or a folder of them, one array per input")
    p.add_argument("--output", required=True,
                   help=f"output folder (PNG frames + {MARKER}) or video file (.mp4/.avi...); an existing one is replaced "
                        "only if it is empty or was written by lowlight-run")
    p.add_argument("--darken", type=darken_factor, default=None, metavar="FACTOR",
                   help="multiply the input by FACTOR in (0, 1] first: fakes night from daytime footage for a demo (0.25 = 4x darker)")
    p.add_argument("--backend", choices=["auto", "tensorrt", "onnxruntime", "openvino"], default="auto",
                   help="auto: the backend the bundle was compiled for (OpenVINO bundles on OpenVINO: "
                        "pip install 'lowlight-compile[openvino]'); else its TensorRT engine where it runs here, else onnxruntime")
    p.add_argument("--overwrite", action="store_true",
                   help="allow replacing an existing video file or a folder lowlight-run did not write (never the input)")
    p.add_argument("--strict", action="store_true",
                   help="stop (exit 2, previous output kept) at an unreadable frame or a truncated video instead of skipping and reporting it")
    p.add_argument("--quiet", action="store_true", help="no progress bar; print only the summary")
    p.add_argument("--no-exposure-blend", action="store_true",
                   help="enhance every frame fully; by default a well-exposed frame (mean luma >= 0.22) is kept as it is "
                        "and frames between 0.13 and 0.22 are blended toward the input")
    p.add_argument("--max-frames", type=int, default=None, metavar="N", help="stop after N frames (live sources never end)")
    args = p.parse_args(argv)
    out = Path(args.output)
    existed = os.path.lexists(out)
    try:
        result = enhance(args.bundle, args.input, args.output, args.darken, args.backend, args.quiet,
                         overwrite=args.overwrite, strict=args.strict, exposure=not args.no_exposure_blend,
                         max_frames=args.max_frames)
    except LowlightError as exc:
        return _fail(exc.what, exc.fix)
    except KeyboardInterrupt:
        print(f"\ninterrupted: {_kept(out, existed)} (the output is renamed into place only once complete)", file=sys.stderr)
        return 130
    except OSError as exc:  # anything the checks could not foresee: a disk filling up, a file vanishing
        where = f" ({exc.filename})" if exc.filename else ""
        return _fail(f"{exc.strerror or exc}{where}; {_kept(out, existed)}",
                     "check free disk space and the permissions of --input and --output, then run again")
    print(result.summary())
    return 0


def _kept(out: Path, existed: bool | None = None) -> str:
    """What a failed run left at `out` (called before the final rename, so what is there is the old output)."""
    present = os.path.lexists(out) if existed is None else existed
    if present:
        return f"{out} was left as it was"
    return f"nothing was written to {out}"


def _fail(what: str, fix: str | None) -> int:
    print(f"error: {what}", file=sys.stderr)
    if fix:
        print(f"  fix: {fix}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
