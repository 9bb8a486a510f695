"""lowlight-run never loses a user's data and says what went wrong: --output rules, checks before work, bad frames.

Each test asserts the exit code, the message, and the file system afterwards
(what still exists, byte for byte).
"""
from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import numpy as np
import pytest

from lowlight.runtime.cli import MARKER, main

slow = pytest.mark.slow


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under root (hidden ones included) with its bytes."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def make_frames(folder: Path, n: int, size: tuple[int, int] = (80, 96)) -> Path:
    """`n` small random PNG frames (fast to decode; the tiny bundle is 64x64)."""
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(n)
    for i in range(n):
        cv2.imwrite(str(folder / f"f{i:03d}.png"), (rng.random((*size, 3)) * 60).astype(np.uint8))
    return folder


def make_avi(path: Path, n: int, size: tuple[int, int] = (96, 80)) -> Path:
    """A short MJPG video (every frame a keyframe, so a cut file still decodes up to the cut)."""
    import cv2

    rng = np.random.default_rng(n)
    w = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), 10.0, size)
    for _ in range(n):
        w.write((rng.random((size[1], size[0], 3)) * 255).astype(np.uint8))
    w.release()
    return path


def run(bundle, *args: str | Path) -> int:
    return main([str(bundle.bundle), *(str(a) for a in args), "--quiet"])


@pytest.fixture
def no_work(monkeypatch):
    """Fail the test if any frame reaches the model: the checks must come first."""
    from lowlight.runtime.session import Session

    def refuse(self, **feeds):  # noqa: ANN001
        raise AssertionError("the model ran before the output checks")

    monkeypatch.setattr(Session, "__call__", refuse)


# --- what --output may replace ---------------------------------------------------------------


@slow
def test_output_equal_to_input_folder_is_refused_even_with_overwrite(fp32_bundle, tmp_path: Path, capsys, no_work) -> None:
    frames = make_frames(tmp_path / "photos", 3)
    before = snapshot(tmp_path)
    for extra in ([], ["--overwrite"]):
        assert run(fp32_bundle, "--input", frames, "--output", frames, *extra) == 2
        err = capsys.readouterr().err
        assert "is the input" in err and "fix:" in err and "Traceback" not in err
    assert run(fp32_bundle, "--input", frames, "--output", frames / "sub", "--overwrite") == 2
    assert "is inside the input" in capsys.readouterr().err
    assert run(fp32_bundle, "--input", frames, "--output", tmp_path, "--overwrite") == 2
    assert "contains the input" in capsys.readouterr().err
    assert snapshot(tmp_path) == before and sorted(p.name for p in tmp_path.iterdir()) == ["photos"]


@slow
def test_output_equal_to_input_video_is_refused_even_with_overwrite(fp32_bundle, tmp_path: Path, capsys, no_work) -> None:
    video = make_avi(tmp_path / "clip.avi", 3)
    before = snapshot(tmp_path)
    assert run(fp32_bundle, "--input", video, "--output", video, "--overwrite") == 2
    assert "is the input" in capsys.readouterr().err
    assert snapshot(tmp_path) == before and sorted(p.name for p in tmp_path.iterdir()) == ["clip.avi"]


@slow
def test_foreign_folder_is_refused_and_replaced_only_with_overwrite(fp32_bundle, tmp_path: Path, capsys) -> None:
    frames = make_frames(tmp_path / "in", 2)
    out = tmp_path / "work"
    out.mkdir()
    (out / ".hidden").write_text("secret\n")
    (out / "notes.txt").write_text("keep me\n")
    before = snapshot(tmp_path)
    assert run(fp32_bundle, "--input", frames, "--output", out) == 2
    err = capsys.readouterr().err
    assert "already exists and is not a lowlight-run output folder" in err and "--overwrite" in err
    assert snapshot(tmp_path) == before
    assert run(fp32_bundle, "--input", frames, "--output", out, "--overwrite") == 0
    assert sorted(p.name for p in out.iterdir()) == ["f000.png", "f001.png", MARKER]  # photos keep their names
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "work"]  # no lock, partial or old copy left


@slow
def test_own_output_and_empty_folder_are_replaced_with_a_marker(fp32_bundle, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    out.mkdir()  # empty: allowed
    old = os.umask(0o022)
    try:
        assert run(fp32_bundle, "--input", make_frames(tmp_path / "a", 6), "--output", out) == 0
    finally:
        os.umask(old)
    assert out.stat().st_mode & 0o777 == 0o755  # the user's umask, not tempfile's 0700
    assert run(fp32_bundle, "--input", make_frames(tmp_path / "b", 3), "--output", out) == 0  # ours: replaced
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith(f"wrote 3 enhanced frames to {out}; ")
    assert re.search(r"; [0-9.]+ frames/s end to end \(decode, enhance, encode and write\), enhance p50 [0-9.]+ ms/frame$", last)
    assert sorted(p.name for p in out.iterdir()) == ["f000.png", "f001.png", "f002.png", MARKER]
    info = json.loads((out / MARKER).read_text())
    assert info["input"] == str((tmp_path / "b").resolve()) and info["bundle"] == str(fp32_bundle.bundle.resolve())
    assert info["frames"] == {"input": 3, "decoded": 3, "written": 3, "skipped": 0}
    assert info["skipped"] == [] and info["truncated"] is None and re.match(r"\d{4}-\d\d-\d\dT", info["date"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "out"]


@slow
def test_existing_video_is_kept_unless_overwrite(fp32_bundle, tmp_path: Path, capsys) -> None:
    import cv2

    frames = make_frames(tmp_path / "in", 5)
    out = tmp_path / "film.mp4"
    out.write_bytes(b"my holiday film")
    assert run(fp32_bundle, "--input", frames, "--output", out) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and "--overwrite" in err
    assert out.read_bytes() == b"my holiday film"
    assert run(fp32_bundle, "--input", frames, "--output", out, "--overwrite") == 0
    cap = cv2.VideoCapture(str(out))
    # native resolution: the photos' 96x80, not the bundle's compiled 64x64
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 5 and int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)) == 96
    cap.release()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["film.mp4", "in"]


# --- mistakes found before any work ----------------------------------------------------------


@slow
@pytest.mark.parametrize(
    "output, words",
    [
        ("notes.txt", "is a file, not a lowlight-run output folder"),  # a file where a folder is meant
        ("old.mp4", "is an existing folder, not a video file"),  # a folder where a video is meant
        ("notes.txt/out", "lies under"),  # under a file
        ("notes.txt/out.mp4", "lies under"),
    ],
)
def test_output_of_the_wrong_kind_fails_before_work(fp32_bundle, tmp_path: Path, capsys, no_work, output, words) -> None:
    frames = make_frames(tmp_path / "in", 2)
    (tmp_path / "notes.txt").write_text("keep me\n")
    (tmp_path / "old.mp4").mkdir()
    (tmp_path / "old.mp4" / "x.png").write_bytes(b"png")
    before = snapshot(tmp_path)
    assert run(fp32_bundle, "--input", frames, "--output", tmp_path / output, "--overwrite") == 2
    err = capsys.readouterr().err
    assert words in err and "fix:" in err and "Traceback" not in err
    assert snapshot(tmp_path) == before and sorted(p.name for p in tmp_path.iterdir()) == ["in", "notes.txt", "old.mp4"]


@slow
def test_unwritable_output_fails_before_work(fp32_bundle, tmp_path: Path, capsys, no_work) -> None:
    frames = make_frames(tmp_path / "in", 2)
    if os.geteuid() == 0:  # root writes anywhere chmod allows nothing: /proc takes no new files even from root
        out = Path("/proc/lowlight-run-test-out")
    else:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        out = ro / "out"
    assert run(fp32_bundle, "--input", frames, "--output", out) == 2
    err = capsys.readouterr().err
    assert "is not writable" in err and "fix:" in err
    assert not out.exists()


@slow
def test_video_suffix_without_an_encoder_fails_before_work(fp32_bundle, tmp_path: Path, capsys, monkeypatch, no_work) -> None:
    import lowlight.runtime.io as io

    monkeypatch.setitem(io.VIDEO_FOURCC, ".webm", "MJPG")  # a codec WebM refuses: how a build without VP8 behaves
    frames = make_frames(tmp_path / "in", 2)
    assert run(fp32_bundle, "--input", frames, "--output", tmp_path / "x.webm") == 2
    err = capsys.readouterr().err
    assert "cannot encode .webm video" in err and ".avi" in err and ".mp4" in err
    assert "FFMPEG" not in err  # OpenCV's chatter from the probe is silenced
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]


@slow
def test_webm_output_uses_a_codec_webm_takes(fp32_bundle, tmp_path: Path) -> None:
    import cv2

    assert run(fp32_bundle, "--input", make_frames(tmp_path / "in", 3), "--output", tmp_path / "x.webm") == 0
    cap = cv2.VideoCapture(str(tmp_path / "x.webm"))
    n = 0
    while cap.read()[0]:
        n += 1
    assert n == 3


@slow
def test_missing_input_fails_before_anything_is_created(fp32_bundle, tmp_path: Path, capsys) -> None:
    assert run(fp32_bundle, "--input", tmp_path / "nope", "--output", tmp_path / "new" / "out") == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "fix:" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("value", ["-1", "0", "inf", "nan", "1.5", "-0.0", "dark"])
def test_darken_outside_0_1_is_refused_by_argparse(tmp_path: Path, capsys, value: str) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["bundle", "--input", str(tmp_path), "--output", str(tmp_path / "o"), f"--darken={value}"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--darken" in err and "(0, 1]" in err and "camera" not in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_darken_accepts_the_whole_open_closed_interval() -> None:
    from lowlight.runtime.cli import darken_factor

    assert darken_factor("1") == 1.0 and darken_factor("0.25") == 0.25 and darken_factor("1e-3") == 1e-3
    assert not math.isnan(darken_factor("0.5"))


# --- bad frames: reported, not silently dropped, not fatal unless --strict --------------------


@slow
def test_truncated_video_is_reported_and_strict_keeps_the_previous_output(fp32_bundle, tmp_path: Path, capsys) -> None:
    full = make_avi(tmp_path / "full.avi", 20)
    cut = tmp_path / "cut.avi"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    out = tmp_path / "out"
    assert run(fp32_bundle, "--input", cut, "--output", out) == 0
    line = capsys.readouterr().out
    m = re.search(r"the input video is truncated: the container says 20 frames, only (\d+) decoded", line)
    assert m and 0 < int(m.group(1)) < 20, line
    got = int(m.group(1))
    info = json.loads((out / MARKER).read_text())
    assert info["truncated"] == f"the container says 20 frames, only {got} decoded"
    assert info["frames"]["input"] == 20 and info["frames"]["written"] == got == len(list(out.glob("*.png")))
    before = snapshot(tmp_path)
    assert run(fp32_bundle, "--input", cut, "--output", out, "--strict") == 2
    err = capsys.readouterr().err
    assert "truncated" in err and "--strict" in err and "left as it was" in err
    assert snapshot(tmp_path) == before and sorted(p.name for p in tmp_path.iterdir()) == ["cut.avi", "full.avi", "out"]


@slow
def test_a_corrupt_frame_is_skipped_and_counted_or_stops_with_strict(fp32_bundle, tmp_path: Path, capsys) -> None:
    frames = make_frames(tmp_path / "in", 20)
    (frames / "f007.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)  # a copy that stopped early
    out = tmp_path / "out"
    assert run(fp32_bundle, "--input", frames, "--output", out) == 0
    line = capsys.readouterr().out
    assert "wrote 19 enhanced frames" in line and "skipped 1 of 20 frames that could not be read (f007.png)" in line
    assert len(list(out.glob("*.png"))) == 19
    info = json.loads((out / MARKER).read_text())
    assert info["frames"] == {"input": 20, "decoded": 19, "written": 19, "skipped": 1}
    assert [s["frame"] for s in info["skipped"]] == ["f007.png"] and "f007.png" in info["skipped"][0]["why"]
    before = snapshot(tmp_path)
    assert run(fp32_bundle, "--input", frames, "--output", out, "--strict") == 2
    err = capsys.readouterr().err
    assert "f007.png" in err and "--strict" in err and "left as it was" in err and "Traceback" not in err
    assert snapshot(tmp_path) == before and sorted(p.name for p in tmp_path.iterdir()) == ["in", "out"]


@slow
def test_no_readable_frame_writes_nothing(fp32_bundle, tmp_path: Path, capsys) -> None:
    frames = tmp_path / "in"
    frames.mkdir()
    (frames / "a.png").write_bytes(b"not a png")
    assert run(fp32_bundle, "--input", frames, "--output", tmp_path / "out") == 2
    assert "no frame of" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]


# --- interrupts and system errors ------------------------------------------------------------


@slow
@pytest.mark.parametrize("output", ["out", "out.mp4"])
def test_interrupt_exits_130_and_keeps_the_previous_output(fp32_bundle, tmp_path: Path, capsys, monkeypatch, output) -> None:
    from lowlight.runtime.session import Session

    frames = make_frames(tmp_path / "in", 6)
    out = tmp_path / output
    real = Session.__call__
    calls = []

    def interrupted(self, **feeds):  # noqa: ANN001
        calls.append(1)
        if len(calls) == 2:  # after the first clip's frames were written to the partial output
            raise KeyboardInterrupt
        return real(self, **feeds)

    monkeypatch.setattr(Session, "__call__", interrupted)
    assert run(fp32_bundle, "--input", frames, "--output", out) == 130
    assert f"nothing was written to {out}" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]
    monkeypatch.setattr(Session, "__call__", real)
    assert run(fp32_bundle, "--input", frames, "--output", out) == 0
    before = snapshot(tmp_path)
    calls.clear()
    monkeypatch.setattr(Session, "__call__", interrupted)
    assert run(fp32_bundle, "--input", frames, "--output", out, "--overwrite") == 130
    assert f"{out} was left as it was" in capsys.readouterr().err
    assert snapshot(tmp_path) == before and sorted(p.name for p in tmp_path.iterdir()) == ["in", output]


@slow
def test_disk_full_while_writing_is_a_message_and_keeps_the_previous_output(fp32_bundle, tmp_path: Path, capsys, monkeypatch) -> None:
    import errno

    import lowlight.runtime.cli as cli

    frames = make_frames(tmp_path / "in", 3)
    out = tmp_path / "out"
    assert run(fp32_bundle, "--input", frames, "--output", out) == 0
    before = snapshot(tmp_path)

    def full(path, rgb):  # noqa: ANN001
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(cli, "write_image", full)
    assert run(fp32_bundle, "--input", frames, "--output", out) == 2
    err = capsys.readouterr().err
    assert "No space left on device" in err and "left as it was" in err and "fix:" in err and "Traceback" not in err
    assert snapshot(tmp_path) == before and sorted(p.name for p in tmp_path.iterdir()) == ["in", "out"]


@slow
def test_backend_load_failure_is_a_message(fp32_bundle, tmp_path: Path, capsys, monkeypatch) -> None:
    import lowlight.runtime.session as session

    def broken(*a, **k):  # noqa: ANN002, ANN003
        raise RuntimeError("CUDA driver version is insufficient\nstack...")

    monkeypatch.setattr(session, "load", broken)
    assert run(fp32_bundle, "--input", make_frames(tmp_path / "in", 2), "--output", tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert "cannot load bundle" in err and "CUDA driver version is insufficient" in err and "stack" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]
