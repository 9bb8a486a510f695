"""Reference weights on real cameras: the shared degradation mix, the per-recipe evaluation, the lattice and halo
measures, and the shipped AMNet base weights against the aims."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lowlight.calibration.degrade import RECIPES, camera_capture, camera_mix, lamps, recipe_pairs
from lowlight.core.metrics import halo_undershoot, lattice_ratio, luma, psnr


def _blur(x: np.ndarray, sigma: float) -> np.ndarray:
    import cv2

    return cv2.GaussianBlur(x.astype(np.float32), (0, 0), sigma)


def _night(seed: int = 0, size: int = 256) -> np.ndarray:
    """A dark frame with i.i.d. sensor noise and two bright lamps."""
    rng = np.random.default_rng(seed)
    img = np.full((size, size, 3), 0.03, np.float32) + rng.normal(0, 0.006, (size, size, 3)).astype(np.float32)
    yy, xx = np.mgrid[0:size, 0:size]
    for cy, cx in ((70, 80), (180, 170)):
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < 12**2] = 0.95
    return np.clip(img, 0, 1)


# -- the artefact measures ----------------------------------------------------------------------------------------

def test_lattice_is_about_one_for_a_tone_curve_and_large_for_added_blotches():
    img = _night()
    curve = img ** 0.45  # a concave brightening curve: amplifies noise by at most the local gain
    assert lattice_ratio(img, curve) <= 1.05
    blotches = _blur(np.random.default_rng(1).normal(0, 1, img.shape[:2]), 5)[..., None]
    lattice = np.clip(curve + 0.5 * blotches / blotches.std() * curve.std(), 0, 1)
    assert lattice_ratio(img, lattice) > 1.5
    denoised = _blur(curve, 3)
    assert lattice_ratio(img, denoised) < 0.9


def test_halo_is_zero_for_a_global_curve_and_measures_a_dark_ring():
    img = _night()
    assert halo_undershoot(img, img) < 0.005  # the fitted curve is piecewise linear: the input scores about 0
    curve = img ** 0.45
    assert halo_undershoot(img, curve) < 0.01
    # a local gain that drops near the lamps: what a model that never saw lights in a dark frame does
    near = _blur((luma(img) > 0.6).astype(np.float32), 10)
    ringed = np.clip(curve * (1 - 0.5 * np.clip(near / near.max() * 3, 0, 1))[..., None], 0, 1)
    ringed[luma(img) > 0.6] = curve[luma(img) > 0.6]
    assert halo_undershoot(img, ringed) > 0.1
    assert np.isnan(halo_undershoot(np.full_like(img, 0.03), curve))  # no lights, nothing to measure


# -- the training mix -----------------------------------------------------------------------------------------------

def _photo() -> np.ndarray:
    from lowlight.calibration.frames import load_frames
    from lowlight.models.train_loop import split_photos

    return load_frames(split_photos()[0][0])[0][:128, :128]


def test_camera_capture_recipes_darken_or_keep_and_share_parameters_over_a_clip():
    clean = _photo()
    clip = np.stack([clean] * 3)
    for recipe in RECIPES:
        low, target = camera_capture(clip, np.random.default_rng(0), recipe, jpeg_p=0.0, lamps_p=0.0)
        assert np.array_equal(target, clip)
        assert low.shape == clip.shape and low.dtype == np.float32 and 0 <= low.min() and low.max() <= 1
        assert np.allclose(low * 255, np.round(low * 255), atol=1e-3)  # 8-bit like a camera's output
        means = low.mean(axis=(1, 2, 3))
        assert np.ptp(means) < 0.01 * clean.mean() + 2e-3  # one exposure for the clip, fresh noise per frame
        assert not np.array_equal(low[0], low[1])
        if recipe == "normal":
            assert psnr(low[0], clean) > 25
        else:
            assert means.mean() < 0.75 * clean.mean()
    with pytest.raises(ValueError, match="unknown degradation recipe"):
        camera_capture(clean, np.random.default_rng(0), "sepia")


def test_lamps_glow_scales_with_the_exposure_like_the_scene():
    from lowlight.calibration.raw import inverse_tone, tone

    clean = _photo()
    light = lamps(clean.shape[:2], np.random.default_rng(3))
    assert light.max() >= 1.5 and np.median(light) < 0.05  # saturated cores, a glow that fades
    low, target = camera_capture(clean, np.random.default_rng(3), "linear", ratio=(40.0, 40.0), lamps_p=1.0, jpeg_p=0.0)
    _, plain = camera_capture(clean, np.random.default_rng(3), "linear", ratio=(40.0, 40.0), lamps_p=0.0, jpeg_p=0.0)
    assert np.array_equal(plain, clean)
    # the target is the normal exposure of scene + lamps: the light the dark frame recorded, times the ratio
    extra = (inverse_tone(target) - inverse_tone(clean)) / 40.0  # lamp light per unit of the dark exposure
    glowing = (extra > 0.01) & (target < 0.95).all(axis=-1, keepdims=True)
    recorded = inverse_tone(low) / (inverse_tone(clean) / 40.0 + extra)  # 1 up to the cast and the noise
    assert glowing.sum() > 100 and 0.8 < float(np.median(recorded[glowing])) < 1.25
    lit = luma(target) > 0.99  # lamp cores and their glow: saturated in the target ...
    glow = lit & (luma(low) < 0.7)  # ... where the dark frame shows a glow the model must brighten, not keep
    assert lit.any() and glow.sum() > 0.2 * lit.sum()
    far = luma(target - clean) < 1e-3  # away from the lamps the target is the clean photo, the input 40x darker
    assert far.mean() > 0.2 and low[far].mean() < 0.4 * clean[far].mean()


def test_jpeg_and_mix_are_deterministic_per_seed():
    clean = _photo()
    a, _ = camera_mix(clean, np.random.default_rng(7))
    b, _ = camera_mix(clean, np.random.default_rng(7))
    assert np.array_equal(a, b)
    q, _ = camera_capture(clean, np.random.default_rng(1), "normal", jpeg_p=1.0)
    r, _ = camera_capture(clean, np.random.default_rng(1), "normal", jpeg_p=0.0)
    assert 25 < psnr(q, r) < 60  # compressed, not identical


def test_recipe_pairs_are_deterministic_and_normal_is_the_photo_itself():
    photos = [_photo()]
    for recipe in RECIPES:
        p1, p2 = recipe_pairs(photos, recipe, size=64), recipe_pairs(photos, recipe, size=64)
        assert all(np.array_equal(a[0], b[0]) for a, b in zip(p1, p2))
        assert p1[0][0].shape == (64, 64, 3)
    (low, clean), = recipe_pairs(photos, "normal", size=64)
    assert np.array_equal(low, clean)


# -- the evaluation -------------------------------------------------------------------------------------------------

def test_recipe_scores_of_the_identity_enhancer():
    from lowlight.models.evaluate import recipe_scores

    scores = recipe_scores(lambda x: x, [_photo()], size=64)
    assert set(scores) == set(RECIPES)
    assert scores["srgb"]["gain_db"] == 0.0 and scores["linear"]["gain_db"] == 0.0
    assert scores["normal"]["psnr_out_vs_in"] == float("inf")


def test_zoo_eval_scores_weights_and_writes_json(tmp_path: Path, monkeypatch, capsys):
    import lowlight.models.evaluate as ev
    from lowlight.compile.cli import main

    photos = [_photo()]
    monkeypatch.setattr(ev, "photo_sets", lambda crop=256: {"heldout": photos})
    monkeypatch.setattr(ev, "real_photos", lambda *a, **k: [("night.png", _night(size=128))])
    out = tmp_path / "scores.json"
    assert main(["zoo", "eval", "amnet", "--config", "tiny", "--threads", "2", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert set(res["recipes"]["heldout"]) == set(RECIPES) and set(res["aims"]) >= {"identity", "lattice", "halo"}
    assert "aims (held-out photos; real photos)" in capsys.readouterr().out
    # an existing file is never replaced without --overwrite
    assert main(["zoo", "eval", "amnet", "--config", "tiny", "--json", str(out)]) == 2


# -- the shipped weights hold the aims ------------------------------------------------------------------------------

#: Real photos where the first reference weights drew the worst lattice (01, 18, 26, 27, 29) and halo (12, 25, 34).
WORST_REAL = ("01.jpg", "12.jpg", "18.jpg", "25.jpg", "26.jpg", "27.jpg", "29.jpg", "34.jpg")


def test_shipped_amnet_base_holds_its_measured_quality():
    """The shipped AMNet base against what the first reference weights did (README, Reference models).

    Holds: no lattice above the input's level on the photos that showed it (median <= 1; it was 1.8-3.0 on 01,
    18, 26, 27, 29), normal exposures come out as themselves (>= 25 dB output vs input since the exposure context,
    was 10.2 before the camera mix and 21.6 without the context; under 5% of pixels >= 0.98, was 21.7%), +8 dB on
    the linear-light recipe (+8.07 on the 6 held-out photos, +13.6 on CBSD68), the dark ring next to lights gone
    on these photos (halo, was a mean of 0.12 without the context).
    Not yet met (the issue stays open): +8 dB on every recipe (sRGB +5.96 held-out; +11.9 on CBSD68).
    """
    import torch

    from lowlight.models import get_family, load
    from lowlight.models.evaluate import photo_sets, real_artifacts, real_photos, recipe_scores

    torch.set_num_threads(2)
    fam = get_family("amnet")
    enhance = fam.enhancer(load("amnet", config="base"))
    held = recipe_scores(enhance, photo_sets()["heldout"])
    assert held["linear"]["gain_db"] >= 7.9 and held["srgb"]["gain_db"] >= 5.8, held
    assert held["normal"]["psnr_out_vs_in"] >= 25.0 and held["normal"]["saturated"] < 0.05, held
    real = real_artifacts(enhance, [p for p in real_photos() if p[0] in WORST_REAL])
    assert real["lattice"]["median"] <= 1.0, real
    assert real["halo"]["mean"] <= 0.06, real  # 0.044 on these photos with the exposure context (all photos: 0.12 without)
    meta = json.loads(fam.weights_path("base").with_suffix(".json").read_text())
    assert meta["recipes"]["heldout"]["linear"]["gain_db"] == pytest.approx(held["linear"]["gain_db"], abs=0.05)
