"""`lowlight-run BUNDLE --input DIR|VIDEO --output DIR|VIDEO`: enhance footage clip by clip."""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np

from lowlight.core.errors import InputError, LowlightError
from lowlight.runtime.io import IMAGE_SUFFIXES, VIDEO_SUFFIXES, fit_frame, read_image, read_video_frames, video_info, write_image


def source_frames(path: Path) -> tuple[Iterator[np.ndarray], int, float]:
    """(frames, count, fps) from a folder of images or a video."""
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise InputError(f"input folder {path} has no images", "pass a folder of PNG/JPEG frames or a video")
        return (read_image(f) for f in files), len(files), 10.0
    if path.suffix.lower() in VIDEO_SUFFIXES:
        fps, count, _, _ = video_info(path)
        return read_video_frames(path), count, fps
    raise InputError(f"input {path} is neither a folder nor a video ({', '.join(sorted(VIDEO_SUFFIXES))})", "pass --input DIR|VIDEO")


def group(frames: Iterator[np.ndarray], size: int) -> Iterator[list[np.ndarray]]:
    buf: list[np.ndarray] = []
    for f in frames:
        buf.append(f)
        if len(buf) == size:
            yield buf
            buf = []
    if buf:
        yield buf


def enhance(bundle: str, input_path: str, output_path: str, darken: float | None = None, backend: str = "auto", quiet: bool = False) -> int:
    """Enhance every frame of `input_path` into `output_path`; returns the number of frames written."""
    from tqdm import tqdm

    from lowlight.runtime.session import load

    sess = load(bundle, backend=backend, verbose=not quiet)
    names = list(sess.inputs)
    if names != ["rgb"]:
        raise InputError(
            f"this bundle takes inputs {names}; lowlight-run feeds RGB footage only",
            "compile with --modalities rgb, or call lowlight.runtime.load(bundle) from Python with every input",
        )
    shape = sess.inputs["rgb"]
    clip = len(shape) == 5  # [B,T,3,H,W] video model, else [B,3,H,W] image model
    b, t = (shape[0], shape[1]) if clip else (shape[0], 1)
    h, w = shape[-2], shape[-1]
    src, out = Path(input_path), Path(output_path)
    frames, count, fps = source_frames(src)
    to_video = out.suffix.lower() in VIDEO_SUFFIXES
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    writer = None
    written = 0
    try:
        if to_video:
            import cv2

            writer = cv2.VideoWriter(str(tmp / f"video{out.suffix}"), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
        bar = tqdm(total=count or None, desc=f"enhance ({sess.backend_name})", unit="frame", disable=quiet)
        for chunk in group(frames, b * t):
            n = len(chunk)
            x = np.stack([fit_frame(f, h, w) for f in chunk] + [fit_frame(chunk[-1], h, w)] * (b * t - n))  # pad the tail
            if darken is not None:
                x = np.clip(x * darken, 0, 1)
            x = x.transpose(0, 3, 1, 2).reshape(shape).astype(np.float32)
            y = sess(rgb=x).reshape(b * t, 3, h, w).transpose(0, 2, 3, 1)[:n]
            for frame in y:
                if writer is not None:
                    writer.write(cv2.cvtColor((np.clip(frame, 0, 1) * 255 + 0.5).astype(np.uint8), cv2.COLOR_RGB2BGR))
                else:
                    write_image(tmp / f"{written:06d}.png", frame)
                written += 1
            bar.update(n)
        bar.close()
        if writer is not None:
            writer.release()
            writer = None
            os.replace(tmp / f"video{out.suffix}", out)
        else:
            if out.exists():
                shutil.rmtree(out)
            tmp.rename(out)
    finally:
        if writer is not None:
            writer.release()
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return written


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="lowlight-run", description="Enhance low-light footage with a compiled bundle.")
    p.add_argument("bundle", help="bundle directory written by lowlight-compile")
    p.add_argument("--input", required=True, help="folder of frames or a video file")
    p.add_argument("--output", required=True, help="output folder (PNG frames) or video file (.mp4/.avi)")
    p.add_argument("--darken", type=float, default=None, help="multiply input by this first (demo: fake night from daytime footage)")
    p.add_argument("--backend", choices=["auto", "tensorrt", "onnxruntime"], default="auto")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    try:
        n = enhance(args.bundle, args.input, args.output, args.darken, args.backend, args.quiet)
    except LowlightError as exc:
        print(f"error: {exc.what}", file=sys.stderr)
        if exc.fix:
            print(f"  fix: {exc.fix}", file=sys.stderr)
        return 2
    print(f"wrote {n} enhanced frames to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
