"""Streaming sessions: causal windows, AMNet's cached per-frame features, native geometry, exposure, soak, sources."""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from lowlight.core.errors import InputError
from lowlight.core.metrics import psnr
from lowlight.runtime import load
from lowlight.runtime.io import LatestFrameReader, open_capture, read_video_frames
from tests.conftest import compile_tiny


@pytest.fixture(scope="module")
def stream_bundle(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path, data_dir: Path):
    """Tiny AMNet compiled with --stream yes at 64x64: encoder + temporal/decoder components."""
    return compile_tiny(tmp_path_factory.mktemp("s") / "tiny-stream", cache_dir, precision="fp32", shape="1x3x64x64",
                        family_options={"stream": "yes"}).bundle


@pytest.fixture(scope="module")
def night(data_dir: Path) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """12 real frames of vtest.avi (a 100x150 crop, not a multiple of the tile), darkened x0.25, and the originals."""
    day = [np.ascontiguousarray(f[100:200, 200:350]) for f in read_video_frames(data_dir / "video" / "vtest.avi", limit=12)]
    return [(f * 0.25).astype(np.float32) for f in day], day


def test_stream_bundle_declares_its_window(stream_bundle: Path) -> None:
    sess = load(stream_bundle, verbose=False)
    assert sorted(sess.manifest["components"]) == ["decoder", "encoder"]
    assert sess.program["stream"] == {"window": ["rgb_0", "rgb_1"], "cached": ["encoder"]}  # tiny: 1 temporal block
    assert sess.stream("rgb_f32").window == 2 and sess.manifest["verification"]["passed"]


def test_cached_features_equal_the_uncached_clip_path(stream_bundle: Path, fp32_bundle, night) -> None:
    """One encoder pass per frame (cached) == the whole clip bundle run on every causal window."""
    frames, _ = night
    cached = load(stream_bundle, verbose=False).stream("rgb_f32", exposure=None)
    recompute = load(stream_bundle, verbose=False).stream("rgb_f32", exposure=None, cache=False)
    clip = load(fp32_bundle.bundle, verbose=False).stream("rgb_f32", exposure=None)  # T=4, uncached
    calls = {"encoder": 0}
    inner = cached.session._call

    def counting(component: str, feeds: dict) -> dict:
        calls[component] = calls.get(component, 0) + 1
        return inner(component, feeds)

    cached.session._call = counting  # type: ignore[method-assign]
    for f in frames:
        a, b, c = cached(f), recompute(f), clip(f)
        assert a.shape == f.shape
        assert np.abs(a - b).max() <= 1e-4 and np.abs(a - c).max() <= 1e-4
    tiles = cached._plan.count
    assert calls["encoder"] == tiles * len(frames) and calls["decoder"] == tiles * len(frames)


def test_stream_equals_the_causal_window_by_hand(fp32_bundle, night) -> None:
    frames, _ = night
    frames = [np.ascontiguousarray(f[:64, :64]) for f in frames[:7]]  # one tile: the bundle's own size
    sess = load(fp32_bundle.bundle, verbose=False)
    stream = sess.stream("rgb_f32", exposure=None)
    for t, f in enumerate(frames):
        out = stream(f)
        window = [frames[max(j, 0)] for j in range(t - 3, t + 1)]  # 4 frames ending at t, the first repeated before it
        ref = sess(rgb=np.stack([w.transpose(2, 0, 1) for w in window])[None])[0, -1].transpose(1, 2, 0)
        assert np.abs(out - ref).max() <= 1e-6
    stream.reset()
    fresh = sess.stream("rgb_f32", exposure=None)
    assert np.array_equal(stream(frames[5]), fresh(frames[5]))  # reset forgets the past


@pytest.mark.parametrize("h,w,fmt", [(101, 157, "bgr24"), (157, 61, "rgb24"), (30, 40, "bgr24"), (72, 130, "nv12"), (90, 62, "yuyv")])
def test_output_geometry_equals_input(stream_bundle: Path, h: int, w: int, fmt: str) -> None:
    from lowlight.runtime.pixel_formats import from_rgb

    rgb = np.random.default_rng(h).random((h, w, 3)).astype(np.float32) * 0.2
    frame = from_rgb(rgb, fmt)
    stream = load(stream_bundle, verbose=False).stream(fmt)
    for _ in range(3):
        out = stream(frame)
        assert out.shape == frame.shape and out.dtype == np.uint8
    assert stream.stats.enhanced == 3 and stream.stats.skipped == 0


def test_tiles_stay_within_half_a_db_of_the_whole_frame(stream_bundle: Path, cache_dir: Path, night, tmp_path: Path) -> None:
    """The 64-px bundle tiled over 96x128 frames vs the same model compiled for 96x128."""
    frames, day = night
    whole = compile_tiny(tmp_path / "whole", cache_dir, precision="fp32", shape="1x3x96x128", family_options={"stream": "yes"}).bundle
    tiled_s = load(stream_bundle, verbose=False).stream("rgb_f32", exposure=None)
    whole_s = load(whole, verbose=False).stream("rgb_f32", exposure=None)
    p_tiled, p_whole = [], []
    for f, d in zip(frames, day):
        a, b = tiled_s(np.ascontiguousarray(f[:96, :128])), whole_s(np.ascontiguousarray(f[:96, :128]))
        p_tiled.append(psnr(a, d[:96, :128]))
        p_whole.append(psnr(b, d[:96, :128]))
    assert tiled_s._plan.count > 1 and whole_s._plan.count == 1
    assert abs(np.mean(p_tiled) - np.mean(p_whole)) <= 0.5, (np.mean(p_tiled), np.mean(p_whole))


def test_exposure_blend_keeps_well_exposed_frames(stream_bundle: Path, data_dir: Path) -> None:
    """An undarkened real clip keeps >= 25 dB to its input; the same clip darkened is still enhanced."""
    day = [np.ascontiguousarray(f[::2, ::2]) for f in read_video_frames(data_dir / "video" / "car-detection.mp4", limit=40, every=8)]
    on = load(stream_bundle, verbose=False).stream("rgb_f32")
    off = load(stream_bundle, verbose=False).stream("rgb_f32", exposure=None)
    kept = [psnr(on(f), f) for f in day]
    blown = [psnr(off(f), f) for f in day]
    assert min(kept) >= 25.0, kept
    assert np.mean(blown) < np.mean(kept)  # without the blend the model brightens daylight further
    dark = load(stream_bundle, verbose=False).stream("rgb_f32")
    night = (day[0] * 0.25).astype(np.float32)
    assert dark(night).mean() > 1.5 * night.mean()  # dark frames are enhanced as before


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


def test_soak_bad_frames_counted_memory_flat(stream_bundle: Path) -> None:
    """600 frames (the 10,000-frame run is benchmarks/streaming.py --soak): bad frames skipped, memory flat."""
    stream = load(stream_bundle, verbose=False).stream("bgr24")
    rng = np.random.default_rng(0)
    good = [(rng.random((48, 80, 3)) * 60).astype(np.uint8) for _ in range(8)]
    bad = {"size": np.zeros((40, 80, 3), np.uint8), "shape": np.zeros((48 * 80 * 3 // 2,), np.uint8),
           "dtype": np.full((48, 80, 3), np.nan, np.float32)}
    warm = None
    for i in range(600):
        if i == 100:
            warm = _rss_mb()
        if i % 50 == 49:
            out = stream(list(bad.values())[(i // 50) % 3])
            assert out is None
        else:
            assert stream(good[i % 8]).shape == (48, 80, 3)
    grown = (_rss_mb() - warm) / warm
    assert grown < 0.05, f"RSS grew {grown:.1%} after warm-up"
    s = stream.stats.as_dict()
    assert s["frames"] == 600 and s["skipped"] == 12 and s["enhanced"] == 588
    assert set(s["bad"]) == {"size", "shape", "uint8"} and s["latency_ms"]["p99"] >= s["latency_ms"]["p50"] > 0
    assert len(stream._features) <= stream.window * stream._plan.count  # the cache holds the window only


def test_bad_frames_raise_when_asked(stream_bundle: Path) -> None:
    stream = load(stream_bundle, verbose=False).stream("nv12", on_bad="raise")
    with pytest.raises(InputError, match="H, W even"):
        stream(np.zeros((10, 8), np.uint8))
    nan = np.zeros((32, 32, 3), np.float32)
    nan[0, 0, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        load(stream_bundle, verbose=False).stream("rgb_f32", on_bad="raise")(nan)


def test_latest_frame_wins_and_drops_are_counted() -> None:
    """A camera faster than inference: the reader hands out the newest frame and counts the rest."""
    produced = iter(range(200))

    def read() -> np.ndarray | None:
        time.sleep(0.001)
        i = next(produced, None)
        return None if i is None else np.full((2, 2, 3), i % 256, np.uint8)

    reader = LatestFrameReader(read)
    got = []
    while (item := reader.read(timeout=5)) is not None:
        got.append(item)
        time.sleep(0.01)  # slow inference
    reader.close()
    indices = [i for i, _, _ in got]
    assert indices == sorted(indices) and len(set(indices)) == len(indices)
    assert reader.captured == 200 and reader.dropped == 200 - len(got) > 0
    assert all(f[0, 0, 0] == i % 256 for i, _, f in got) and all(b[1] >= a[1] for a, b in zip(got, got[1:]))


def test_live_sources_say_what_is_missing() -> None:
    from lowlight.runtime.io import gstreamer_available

    if not gstreamer_available():
        with pytest.raises(InputError, match="no GStreamer") as e:
            open_capture("videotestsrc ! videoconvert ! appsink")
        assert "pip" in e.value.what and "Jetson" in e.value.fix
    with pytest.raises(InputError, match="does not exist"):
        open_capture("/dev/video99")


def _photos(folder: Path, sizes: list[tuple[int, int]]) -> list[str]:
    folder.mkdir()
    rng = np.random.default_rng(1)
    names = []
    for i, (h, w) in enumerate(sizes):
        name = f"p{i}_{h}x{w}.png"
        cv2.imwrite(str(folder / name), cv2.GaussianBlur((rng.random((h, w, 3)) * 70).astype(np.uint8), (5, 5), 2))
        names.append(name)
    return names


def test_lowlight_run_keeps_names_sizes_and_is_order_independent(fp32_bundle, tmp_path: Path) -> None:
    from lowlight.runtime.cli import main

    names = _photos(tmp_path / "in", [(61, 93), (120, 50), (40, 40)])  # odd, portrait, smaller than a tile
    assert main([str(fp32_bundle.bundle), "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--quiet"]) == 0
    for name in names:
        src, out = cv2.imread(str(tmp_path / "in" / name)), cv2.imread(str(tmp_path / "out" / name))
        assert out is not None and out.shape == src.shape
        alone = tmp_path / f"alone-{name}"
        alone.mkdir()
        shutil.copy(tmp_path / "in" / name, alone / name)
        assert main([str(fp32_bundle.bundle), "--input", str(alone), "--output", str(tmp_path / f"o-{name}"), "--quiet"]) == 0
        assert np.array_equal(cv2.imread(str(tmp_path / f"o-{name}" / name)), out)  # alone == in its folder


def test_lowlight_run_video_keeps_its_size(stream_bundle: Path, tmp_path: Path, data_dir: Path) -> None:
    from lowlight.runtime.cli import main

    src = tmp_path / "clip.avi"
    w = cv2.VideoWriter(str(src), cv2.VideoWriter.fourcc(*"MJPG"), 10.0, (150, 100))
    for f in read_video_frames(data_dir / "video" / "vtest.avi", limit=8):
        w.write(cv2.cvtColor((f[100:200, 200:350] * 255).astype(np.uint8), cv2.COLOR_RGB2BGR))
    w.release()
    assert main([str(stream_bundle), "--input", str(src), "--output", str(tmp_path / "out.mp4"), "--darken", "0.25", "--quiet"]) == 0
    cap = cv2.VideoCapture(str(tmp_path / "out.mp4"))
    assert (int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)), int(cap.get(cv2.CAP_PROP_FRAME_COUNT))) == (150, 100, 8)
    cap.release()
