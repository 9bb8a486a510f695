"""Synthetic low-light raw (calibration/raw.py): Brooks unprocessing + ELD noise, checked by numbers."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lowlight.calibration import raw as R
from lowlight.calibration.frames import read_image


def psnr(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
    d = (a.astype(np.float64) - b.astype(np.float64)) ** 2
    if mask is not None:
        d = d[:, mask]
    return float(10 * np.log10(1.0 / d.mean()))


@pytest.fixture(scope="module")
def photo(data_dir: Path) -> np.ndarray:
    # kodim05 has bright, saturated regions, so the highlight handling is exercised
    return read_image(data_dir / "clean" / "kodim05.png")


def bin2(x: np.ndarray) -> np.ndarray:
    """2x2 box downsample of HxWx3 (even sizes) -> [3, H/2, W/2]."""
    h, w = x.shape[0] // 2, x.shape[1] // 2
    return x[: 2 * h, : 2 * w].reshape(h, 2, w, 2, 3).mean(axis=(1, 3)).transpose(2, 0, 1)


def test_emulated_camera_matrix():
    assert R.RGB2CAM.shape == (3, 3) and R.RGB2CAM.dtype == np.float32
    np.testing.assert_allclose(R.RGB2CAM.sum(axis=1), 1.0, atol=1e-6)
    # the numbers written in the docstring
    np.testing.assert_allclose(R.RGB2CAM[0], [0.646005, 0.271431, 0.082563], atol=1e-6)
    np.testing.assert_allclose(R.RGB2CAM @ R.CAM2RGB, np.eye(3), atol=1e-5)
    assert R.PLANES == ("R", "Gr", "Gb", "B")


def test_round_trip_is_exact_away_from_highlights(photo: np.ndarray):
    """isp(unprocess(x)) == x when every Bayer quad is flat (the 2x2-binned photo, nearest-upsampled)."""
    ref = bin2(photo)  # [3, h, w]
    up = np.repeat(np.repeat(ref.transpose(1, 2, 0), 2, axis=0), 2, axis=1)
    meta = R.RawMeta(rgb_gain=1 / 0.8, red_gain=2.2, blue_gain=1.7, ratio=200.0)
    out = R.isp(R.unprocess(up, meta), meta)
    assert out.shape == ref.shape and out.dtype == np.float32
    dark = ref.max(axis=0) < 0.85  # highlights are deliberately not inverted exactly (safe gains)
    assert dark.mean() > 0.8
    assert psnr(out, ref, dark) > 100.0  # measured 146 dB (float32 round-off); 140-146 on all 42 photos
    assert psnr(out, ref) > 40.0  # whole image incl. highlights: measured 83 dB (52-146 over the 42 photos)
    # highlights stay white-ish rather than turning coloured/dim
    white = ref.min(axis=0) > 0.97
    if white.any():
        assert out[:, white].min() > 0.9


def brooks_unprocess(srgb: np.ndarray, meta: R.RawMeta) -> np.ndarray:
    """Brooks' unprocess() written out on the full image, then mosaicked (reference for the per-site version)."""
    x = np.clip(srgb.astype(np.float64), 0, 1)
    x = np.maximum(0.5 - np.sin(np.arcsin(1 - 2 * x) / 3), 1e-8) ** 2.2
    x = x @ R.RGB2CAM.astype(np.float64).T
    gains = np.array([1 / meta.red_gain, 1, 1 / meta.blue_gain]) / meta.rgb_gain
    mask = (np.maximum(x.mean(axis=-1, keepdims=True) - 0.9, 0) / 0.1) ** 2
    x = np.clip(x * np.maximum(mask + (1 - mask) * gains, gains), 0, 1)
    return np.stack([x[0::2, 0::2, 0], x[0::2, 1::2, 1], x[1::2, 0::2, 1], x[1::2, 1::2, 2]])


def test_unprocess_matches_brooks_reference(photo: np.ndarray):
    meta = R.RawMeta(rgb_gain=0.9, red_gain=2.3, blue_gain=1.6, ratio=100.0)  # rgb_gain < 1: highlights clip
    crop = photo[:128, :192]
    np.testing.assert_allclose(R.unprocess(crop, meta), brooks_unprocess(crop, meta), atol=2e-6)


def test_safe_gain_inversion_keeps_white_saturated():
    """Brooks' safe inversion: white stays saturated in every plane; mid-grey gets the exact inverse gains."""
    meta = R.RawMeta(rgb_gain=1.25, red_gain=2.2, blue_gain=1.7, ratio=100.0)
    white = R.unprocess(np.ones((4, 4, 3), np.float32), meta)
    np.testing.assert_allclose(white, 1.0, atol=1e-5)
    np.testing.assert_allclose(R.isp(white, meta), 1.0, atol=1e-5)
    grey = R.unprocess(np.full((4, 4, 3), 0.5, np.float32), meta)
    lin = (0.5 - np.sin(np.arcsin(0.0) / 3)) ** 2.2  # inverse smoothstep(0.5) = 0.5, then gamma
    expected = lin / meta.rgb_gain / np.array([meta.red_gain, 1, 1, meta.blue_gain])
    np.testing.assert_allclose(grey[:, 0, 0], expected, rtol=1e-5)


def test_round_trip_full_resolution_photo(photo: np.ndarray):
    """Raw Bayer sampling of a real photo vs its 2x2-binned version: limited by the colour sites' offsets."""
    meta = R.RawMeta(rgb_gain=1.1, red_gain=2.0, blue_gain=1.8, ratio=100.0)
    out = R.isp(R.unprocess(photo, meta), meta)
    ref = bin2(photo)
    assert out.shape == ref.shape == (3, photo.shape[0] // 2, photo.shape[1] // 2)
    # measured 22.3 dB on kodim05, 19-33 dB over the photos: R and B come from single
    # sites half a pixel apart, not box means
    assert 20.0 < psnr(out, ref) < 40.0
    # but the colours agree on average: no tint, no tone shift
    np.testing.assert_allclose(out.mean(axis=(1, 2)), ref.mean(axis=(1, 2)), atol=0.01)


def test_unprocess_shapes_ranges_and_odd_sizes(photo: np.ndarray):
    meta = R.random_meta(np.random.default_rng(3))
    clean = R.unprocess(photo[:101, :77], meta)
    assert clean.shape == (4, 50, 38) and clean.dtype == np.float32
    assert clean.min() >= 0.0 and clean.max() <= 1.0
    # linear and white-balance-inverted: darker than the photo, red/blue pulled down vs green
    assert clean.mean() < photo[:100, :76].mean()
    # the planes are Bayer sites: R at [0::2, 0::2] equals unprocessing just those pixels
    again = R.unprocess(photo[:100, :76], meta)
    np.testing.assert_array_equal(clean, again)
    with pytest.raises(ValueError):
        R.unprocess(photo[:1, :5], meta)
    with pytest.raises(ValueError):
        R.unprocess(photo[..., 0], meta)


def test_gain_vector():
    rng = np.random.default_rng(0)
    metas = [R.random_meta(rng) for _ in range(500)]
    for m in metas[:20]:
        g = m.gain()
        assert g.shape == (4,) and g.dtype == np.float32
        assert g[1] == g[2] and (g > 0).all()
        np.testing.assert_allclose(g, m.ratio * m.rgb_gain * np.array([m.red_gain, 1, 1, m.blue_gain]), rtol=1e-6)
        np.testing.assert_allclose(g / m.ratio, m.wb(), rtol=1e-6)
    red = np.array([m.red_gain for m in metas])
    blue = np.array([m.blue_gain for m in metas])
    ratio = np.array([m.ratio for m in metas])
    inv = np.array([1 / m.rgb_gain for m in metas])
    assert 1.9 <= red.min() and red.max() <= 2.4 and 1.5 <= blue.min() and blue.max() <= 1.9
    assert 100 <= ratio.min() and ratio.max() <= 300 and abs(ratio.mean() - 200) < 10
    assert abs(inv.mean() - 0.8) < 0.02 and abs(inv.std() - 0.1) < 0.02
    narrow = R.random_meta(rng, ratio=(150, 150))
    assert narrow.ratio == 150
    with pytest.raises(ValueError):
        R.random_meta(rng, ratio=(0, 10))


def test_raw_is_dark_and_quantised(photo: np.ndarray):
    rng = np.random.default_rng(1)
    meta = R.RawMeta(rgb_gain=1.25, red_gain=2.1, blue_gain=1.7, ratio=200.0)
    clean = R.unprocess(photo, meta)
    raw = R.low_light(clean, meta, rng, k=1.0, read_sigma=2.0)
    assert raw.shape == clean.shape and raw.dtype == np.float32
    assert raw.min() >= 0.0 and raw.max() <= 1.0 / 200 * 1.5
    assert abs(raw.mean() / clean.mean() * meta.ratio - 1.0) < 0.03
    dn = raw.astype(np.float64) * R.SATURATION
    np.testing.assert_allclose(dn, np.rint(dn), atol=1e-3)  # integer DN
    # the random draw is dark too, and brightening by the gain gives back the exposure
    raw2 = R.low_light(clean, meta, rng)
    assert raw2.mean() < 0.02
    noisy = R.lrgb(raw, meta.gain())
    target = R.lrgb(clean, meta.wb())
    assert abs(noisy.mean() / target.mean() - 1.0) < 0.05


@pytest.mark.parametrize("k", [0.5, 2.0, 8.0])
def test_noise_variance_follows_the_model(k: float):
    """Flat patch: mean = y, variance = K y + sigma^2 + 1/12 (DN), for the Sony A7S2 read-noise line."""
    rng = np.random.default_rng(int(k * 10))
    meta = R.RawMeta(rgb_gain=1.0, red_gain=2.0, blue_gain=1.6, ratio=100.0)
    level = 0.9
    flat = np.full((4, 128, 128), level, dtype=np.float32)
    sigma = float(np.exp(R.READ_SLOPE * np.log(k) + R.READ_BIAS))
    dn = R.low_light(flat, meta, rng, k=k, read_sigma=sigma).astype(np.float64) * R.SATURATION
    y = level * R.SATURATION / meta.ratio
    expected = k * y + sigma**2 + 1 / 12
    assert abs(dn.mean() - y) < 0.02 * y
    assert abs(dn.var() / expected - 1.0) < 0.05, (dn.var(), expected)
    # shot noise only: variance grows with the signal at fixed K
    dark = R.low_light(flat * 0.25, meta, rng, k=k, read_sigma=0.0).astype(np.float64) * R.SATURATION
    assert abs(dark.var() / (k * y * 0.25 + 1 / 12) - 1.0) < 0.06


def test_noise_parameter_distribution():
    rng = np.random.default_rng(5)
    ks, sigmas = np.array([R.sample_noise(rng) for _ in range(4000)]).T
    assert ks.min() >= 0.1 and ks.max() <= 30
    lk, ls = np.log(ks), np.log(sigmas)
    # log K uniform: its mean is the middle of [log 0.1, log 30]
    assert abs(lk.mean() - 0.5 * (np.log(0.1) + np.log(30))) < 0.06
    slope, bias = np.polyfit(lk, ls, 1)
    assert abs(slope - R.READ_SLOPE) < 0.03 and abs(bias - R.READ_BIAS) < 0.03
    assert abs((ls - (slope * lk + bias)).std() - R.READ_SIGMA) < 0.02
    with pytest.raises(ValueError):
        R.low_light(np.zeros((4, 2, 2), np.float32), R.random_meta(rng), rng, k=0.0, read_sigma=1.0)


def test_lrgb_matches_isp_and_batches(photo: np.ndarray):
    rng = np.random.default_rng(2)
    meta = R.random_meta(rng)
    clean = R.unprocess(photo[:64, :96], meta)
    # the model's preprocessing, finished by the fixed colour/tone steps, is the ISP of the clean raw
    np.testing.assert_allclose(R.lrgb_to_srgb(R.lrgb(clean, meta.wb())), R.isp(clean, meta), atol=1e-6)
    raw = R.low_light(clean, meta, rng)
    one = R.lrgb(raw, meta.gain())
    assert one.shape == (3, 32, 48) and one.dtype == np.float32 and 0 <= one.min() and one.max() <= 1
    manual = np.clip(raw * meta.gain()[:, None, None], 0, 1)
    np.testing.assert_allclose(one[1], 0.5 * (manual[1] + manual[2]), atol=1e-7)
    np.testing.assert_allclose(one[0], manual[0], atol=1e-7)
    meta2 = R.random_meta(rng)
    batched = R.lrgb(np.stack([raw, raw]), np.stack([meta.gain(), meta2.gain()]))
    assert batched.shape == (2, 3, 32, 48)
    np.testing.assert_array_equal(batched[0], one)
    np.testing.assert_array_equal(batched[1], R.lrgb(raw, meta2.gain()))
    with pytest.raises(ValueError):
        R.lrgb(raw[:3], meta.gain())


def test_raw_pair_and_batch(photo: np.ndarray):
    raw, gain, target = R.raw_pair(photo, np.random.default_rng(0), crop=128)
    assert raw.shape == (4, 64, 64) and gain.shape == (4,) and target.shape == (3, 64, 64)
    assert all(a.dtype == np.float32 for a in (raw, gain, target))
    assert 0 <= raw.min() and raw.max() <= 1 and 0 <= target.min() and target.max() <= 1
    assert 100 * 0.8 < gain[1] < 300 / 0.4
    # whole photo, odd size -> cropped to even
    raw, gain, target = R.raw_pair(photo[:99, :131], np.random.default_rng(0))
    assert raw.shape == (4, 49, 65) and target.shape == (3, 49, 65)
    with pytest.raises(ValueError):
        R.raw_pair(photo, np.random.default_rng(0), crop=127)
    with pytest.raises(ValueError):
        R.raw_pair(photo[:64, :64], np.random.default_rng(0), crop=128)

    photos = [photo, photo[::-1, ::-1].copy()]
    b = R.raw_batch(photos, 3, 96, np.random.default_rng(7))
    assert b["raw"].shape == (3, 4, 48, 48) and b["gain"].shape == (3, 4) and b["target"].shape == (3, 3, 48, 48)
    assert all(v.dtype == np.float32 for v in b.values())
    assert (b["gain"][:, 1] == b["gain"][:, 2]).all()
    # deterministic for a seed, different for another
    again = R.raw_batch(photos, 3, 96, np.random.default_rng(7))
    for key in b:
        np.testing.assert_array_equal(b[key], again[key])
    other = R.raw_batch(photos, 3, 96, np.random.default_rng(8))
    assert not np.array_equal(b["raw"], other["raw"])
    with pytest.raises(ValueError):
        R.raw_batch([], 1, 96, np.random.default_rng(0))
