"""Calibration/verification data: disjoint sets, even spread, full bit depth, broken files, small counts, records."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from lowlight.calibration.data import SAMPLES_DIR
from lowlight.calibration.frames import load_frames, select_data, select_frames, spread
from lowlight.compile.verify import to_markdown
from lowlight.core.errors import CalibrationError, InputError
from lowlight.runtime.io import read_image


def _folder(root: Path, n: int, prefix: str = "f", suffix: str = ".png", seed: int = 0) -> Path:
    """n distinct small images whose mean level encodes their number (i * 8 + 20 out of 255)."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        img = np.full((24, 32, 3), 20 + 8 * i, np.uint8)
        img[0, :4] = rng.integers(0, 255, (4, 3))  # distinct content even for equal levels across folders
        assert cv2.imwrite(str(root / f"{prefix}{i:02d}{suffix}"), img)
    return root


def _video(path: Path, n: int) -> Path:
    """An MJPG video (every frame a keyframe) whose frame i shows i: left half (i % 16) * 16, right half (i // 16) * 16."""
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (32, 24))
    for i in range(n):
        img = np.zeros((24, 32, 3), np.uint8)
        img[:, :16], img[:, 16:] = (i % 16) * 16, (i // 16) * 16
        w.write(img)
    w.release()
    return path


def _frame_number(rgb: np.ndarray) -> int:
    """Undo `_video`'s drawing (JPEG error is a few levels, far below the step of 16)."""
    return round(float(rgb[4:20, 2:14].mean()) * 255 / 16) + 16 * round(float(rgb[4:20, 18:30].mean()) * 255 / 16)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- finding 8: held-out frames are never calibrated on, and the record says which were used --------------


def test_same_folder_is_split_into_disjoint_calibration_and_verification_parts(tmp_path: Path):
    src = _folder(tmp_path / "cam", 10)
    said: list[str] = []
    d = select_data(src, 16, src, 8, say=said.append)
    # 10 files, 16:8 asked -> verification keeps round(10 * 8/24) = 3 files at the end, calibration the first 7
    assert d.calibration.files == [f"f{i:02d}.png" for i in range(7)]
    assert d.verification.files == ["f07.png", "f08.png", "f09.png"]
    assert not set(d.calibration.files) & set(d.verification.files)
    assert d.calibration.part == (0, 7) and d.verification.part == (7, 10)
    assert d.calibration.split == d.verification.split and "f00.png..f06.png for calibration" in d.calibration.split
    assert any("split" in s for s in said)
    # the frames are the files named: level 20 + 8 i
    assert [round(float(f.mean()) * 255) for f in d.verification.frames][1:] == [20 + 8 * 8, 20 + 8 * 9]

    # the shipped samples (the default --calib, and the default verification without ../shared/data): 18 -> 12 + 6
    s = select_data(SAMPLES_DIR, 16, SAMPLES_DIR, 8)
    assert s.calibration.count == 12 and s.verification.count == 6
    assert not {i["sha256"] for i in s.calibration.items} & {i["sha256"] for i in s.verification.items}


def test_same_video_is_split_and_sampled_evenly_by_seeking(tmp_path: Path):
    video = _video(tmp_path / "clip.avi", 200)
    d = select_data(video, 4, video, 2)
    # 200 frames, 4:2 -> calibration part 0-132, verification 133-199; picks at the centres of equal parts
    assert d.calibration.part == (0, 133) and d.verification.part == (133, 200)
    assert d.calibration.indices == spread(0, 133, 4) == [16, 49, 83, 116]
    assert d.verification.indices == [149, 183]
    # the frames read are the frames named (level == index), whether reached by decoding through or seeking
    assert [_frame_number(f) for f in d.calibration.frames + d.verification.frames] == [16, 49, 83, 116, 149, 183]
    rec = d.record()
    assert rec["calibration"]["kind"] == "video" and rec["calibration"]["source_sha256"] == _sha(video)
    assert rec["verification"]["items"][0]["index"] == 149


def test_folder_is_sampled_over_its_whole_length_not_from_the_start(tmp_path: Path):
    src = _folder(tmp_path / "many", 20)
    fs = select_frames(src, 4, "calibration")
    assert fs.indices == [2, 7, 12, 17] and fs.files == ["f02.png", "f07.png", "f12.png", "f17.png"]


def test_identical_files_in_different_sources_are_left_out_of_verification(tmp_path: Path):
    calib = _folder(tmp_path / "calib", 6, seed=1)
    verify = _folder(tmp_path / "verify", 3, prefix="v", seed=2)
    shutil.copyfile(calib / "f02.png", verify / "v01.png")  # a byte-identical copy under another name
    img = cv2.imread(str(calib / "f04.png"))
    cv2.imwrite(str(verify / "v01b.bmp"), img)  # same pixels, other format: caught by the pixel hash
    d = select_data(calib, 6, verify, 4)
    assert d.verification.files == ["v00.png", "v02.png"]
    assert [(e["file"], e["same_as"]) for e in d.verification.excluded] == [("v01.png", "f02.png"), ("v01b.bmp", "f04.png")]
    assert any("v01.png" in w and "f02.png" in w for w in d.verification.warnings)
    calib_shas = {i["sha256"] for i in d.calibration.items}
    assert not calib_shas & {i["sha256"] for i in d.verification.items}

    # all of verification is calibration data -> refused, not silently verified on calibration frames
    with pytest.raises(CalibrationError, match="already used for calibration"):
        select_data(calib, 6, calib / "f03.png", 1)


def test_record_has_sources_file_hashes_counts_and_is_json(tmp_path: Path):
    src = _folder(tmp_path / "cam", 5)
    other = _folder(tmp_path / "ver", 3, prefix="v", seed=3)
    d = select_data(src, 5, other, 3)
    rec = json.loads(json.dumps(d.record()))
    cal, ver = rec["calibration"], rec["verification"]
    assert cal["source"] == str(src) and cal["kind"] == "folder" and (cal["count"], cal["available"], cal["requested"]) == (5, 5, 5)
    assert cal["items"][3] == {"index": 3, "file": "f03.png", "sha256": _sha(src / "f03.png")}
    assert ver["count"] == 3 and rec["ground_truth"] is None
    listing = "".join(f"{_sha(src / n)}  {n}\n" for n in sorted(p.name for p in src.iterdir()))
    assert cal["sha256"] == hashlib.sha256(listing.encode()).hexdigest()
    cv2.imwrite(str(src / "f03.png"), np.zeros((24, 32, 3), np.uint8))  # one file changes -> the selection hash changes
    assert select_frames(src, 5).sha256 != cal["sha256"]
    # fp16/fp32 need no calibration: recorded as such, verification takes the whole source
    assert select_data(None, 16, src, 8).record()["calibration"] is None


def test_verification_markdown_lists_the_data(tmp_path: Path):
    src = _folder(tmp_path / "cam", 10)
    data = select_data(src, 16, src, 8).record()
    report = {"frames": 3, "fidelity_psnr_db": 40.0, "fidelity_psnr_db_min": 39.0, "fidelity_ssim": 0.99,
              "max_abs_error": 0.01, "min_fidelity_db": 35.0, "passed": True}
    md = to_markdown(report, data=data)
    assert "## Data" in md
    assert f"- calibration: 7 of 10 files (16 asked for) from `{src}`" in md
    assert f"selection sha256 `{data['verification']['sha256'][:16]}`" in md
    assert "files: f07.png, f08.png, f09.png" in md and "held out for verification" in md
    assert "- ground truth: not used" in md
    assert "- warning: only 7 calibration frame(s)" in md


# -- finding 9: careful reading ------------------------------------------------------------------------


def test_16_bit_png_is_read_at_full_depth_gray_and_alpha_included(tmp_path: Path):
    levels = np.arange(24 * 32, dtype=np.uint16).reshape(24, 32)  # 0..767 of 65535: all in the low byte
    bgr = np.stack([levels, levels + 1, levels + 2], -1)
    cv2.imwrite(str(tmp_path / "c.png"), bgr)
    cv2.imwrite(str(tmp_path / "g.png"), levels)
    cv2.imwrite(str(tmp_path / "a.png"), np.dstack([bgr, np.full_like(levels, 65535)]))
    c, g, a = (read_image(tmp_path / n) for n in ("c.png", "g.png", "a.png"))
    assert c.shape == g.shape == a.shape == (24, 32, 3) and c.dtype == np.float32
    np.testing.assert_allclose(c[..., 2], levels / 65535.0, rtol=0, atol=1e-7)  # BGR file -> RGB: blue was levels
    np.testing.assert_allclose(c[..., 0], (levels + 2) / 65535.0, rtol=0, atol=1e-7)
    assert float(c[5, 10, 2]) * 65535 == pytest.approx(5 * 32 + 10, abs=1e-3)  # 8-bit reading would give 0
    np.testing.assert_array_equal(g[..., 0], g[..., 1])
    np.testing.assert_allclose(g[..., 0], levels / 65535.0, rtol=0, atol=1e-7)
    np.testing.assert_array_equal(a, c)
    # 8-bit files are unchanged: /255
    cv2.imwrite(str(tmp_path / "e.png"), np.full((4, 4, 3), 51, np.uint8))
    assert float(read_image(tmp_path / "e.png").max()) == pytest.approx(0.2)


def test_truncated_jpeg_is_skipped_with_a_warning_or_refused(tmp_path: Path):
    src = _folder(tmp_path / "cam", 4, suffix=".jpg")
    data = (src / "f02.jpg").read_bytes()
    (src / "f02.jpg").write_bytes(data[: len(data) // 2])  # cv2 alone would fill the rest gray, silently
    with pytest.raises(InputError, match="truncated"):
        read_image(src / "f02.jpg")
    fs = select_frames(src, 3, "calibration")
    # picks 0, 2, 3 of 4; f02 failed and was replaced by its nearest unused neighbour f01
    assert fs.files == ["f00.jpg", "f01.jpg", "f03.jpg"]
    assert [s["file"] for s in fs.skipped] == ["f02.jpg"] and "truncated" in fs.skipped[0]["reason"]
    assert any(w.startswith("skipped f02.jpg") for w in fs.record()["warnings"])
    # trailing bytes after the EOI marker (some cameras append data) are not mistaken for truncation
    (tmp_path / "tail.jpg").write_bytes((src / "f03.jpg").read_bytes() + b"extra camera data")
    assert read_image(tmp_path / "tail.jpg").shape == (24, 32, 3)
    # nothing usable left -> an error with a fix
    only = tmp_path / "broken"
    only.mkdir()
    (only / "x.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(CalibrationError, match="0 usable calibration frame.*x.jpg.*truncated") as e:
        select_frames(only, 4, "calibration")
    assert e.value.fix


def test_few_calibration_frames_and_odd_batches_warn_and_below_a_batch_refuse(tmp_path: Path):
    src = _folder(tmp_path / "cam", 3)
    said: list[str] = []
    fs = select_frames(src, 16, "calibration", batch=2, say=said.append)
    assert fs.count == 3
    assert any("3 calibration frames" in w and "instead of the 16" in w for w in fs.warnings)
    assert any("only 3 calibration frame(s)" in w for w in fs.warnings)
    assert any("make 1 batch(es) of 2: the last 1 are not used" in w for w in fs.warnings)
    assert len(said) == len(fs.warnings) == 3 and fs.record()["warnings"] == fs.warnings
    assert select_frames(_folder(tmp_path / "ok", 8), 8, "calibration").warnings == []
    with pytest.raises(CalibrationError, match="fewer than one batch of 4"):
        select_frames(src, 16, "calibration", batch=4)


@pytest.mark.parametrize("count", [0, -3, 2.5, True])
def test_counts_below_one_are_refused(tmp_path: Path, count):
    src = _folder(tmp_path / "cam", 3)
    with pytest.raises(CalibrationError, match=">= 1") as e:
        select_frames(src, count, "calibration")
    assert "--calib-frames" in e.value.fix
    with pytest.raises(CalibrationError, match=">= 1"):
        select_data(src, 4, src, count)
    with pytest.raises(CalibrationError, match=">= 1"):
        load_frames(src, limit=count)
    assert len(load_frames(src, limit=2)) == 2 and len(load_frames(src)) == 3  # plain reads still work


def test_eval_data_is_never_calibrated_on(data_dir: Path):
    with pytest.raises(CalibrationError, match="evaluation data") as e:
        select_frames(data_dir / "eval" / "clean", 4, "calibration")
    assert "--calib" in e.value.fix
    assert select_frames(data_dir / "eval" / "clean", 2, "ground_truth").count == 2  # verifying on it is fine


def test_pipeline_refuses_bad_calibration_data_before_export(tmp_path: Path):
    from conftest import compile_tiny

    broken = tmp_path / "broken"
    broken.mkdir()
    _folder(tmp_path / "src", 1, suffix=".jpg")
    data = (tmp_path / "src" / "f00.jpg").read_bytes()
    (broken / "x.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(CalibrationError, match="truncated"):
        compile_tiny(tmp_path / "out", tmp_path / "cache", precision="int8", calib=str(broken))
    assert not (tmp_path / "cache" / "export").exists()  # failed in the data step, before any export
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_int8_compile_on_one_folder_records_a_disjoint_split(tmp_path: Path, cache_dir: Path):
    """--calib and --verify-data the same folder (the default without ../shared/data): split, recorded, reported."""
    from conftest import compile_tiny

    # one INT8 engine: the split is the subject here, not which engine wins
    r = compile_tiny(tmp_path / "b", cache_dir, precision="int8", int8_engine="ort", calib_frames=8, verify_frames=3,
                     verify_data=str(SAMPLES_DIR))
    data = r.manifest["data"]
    cal, ver = data["calibration"], data["verification"]
    # 18 samples, 8:3 asked -> the last round(18 * 3/11) = 5 are held out; picks at the centres of equal parts
    assert cal["part"] == [0, 13] and ver["part"] == [13, 18] and "held out for verification" in cal["split"]
    assert [i["index"] for i in cal["items"]] == spread(0, 13, 8) == [0, 2, 4, 5, 7, 8, 10, 12]
    assert [i["file"] for i in ver["items"]] == ["night_kodim19.png", "night_kodim21.png", "night_kodim23.png"]
    assert not {i["sha256"] for i in cal["items"]} & {i["sha256"] for i in ver["items"]}
    assert cal["sha256"] != ver["sha256"] and data["ground_truth"] is None
    assert json.loads((r.bundle / "manifest.json").read_text())["data"] == data
    assert r.verification["frames"] == 3 and r.verification["passed"]
