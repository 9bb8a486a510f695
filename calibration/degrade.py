"""Synthetic low-light data: the paper's degradation model, clips with camera motion,
event voxels and pseudo-IR (AnyMod-LLVE, "Large-Scale Synthetic Multi-modal Pre-training").

Everything is numpy and seeded by the caller's Generator, so training and
evaluation pairs are reproducible.
"""
from __future__ import annotations

import numpy as np

#: Probability of an extremely dark sample (illumination 1-10%), the paper's long tail.
EXTREME_TAIL_P = 0.1


def sample_illumination(rng: np.random.Generator) -> float:
    """Illumination scale: uniform 10-50%, with a 1-10% extreme tail."""
    if rng.random() < EXTREME_TAIL_P:
        return float(rng.uniform(0.01, 0.10))
    return float(rng.uniform(0.10, 0.50))


def degrade(
    clean: np.ndarray,
    rng: np.random.Generator,
    scale: float | None = None,
    photons: float | None = None,
    read_sigma: float | None = None,
) -> np.ndarray:
    """Darken a clean HxWxC float32 image in [0,1] and add shot + read noise.

    Shot noise is Poisson in photon counts (Gaussian approximation, variance
    proportional to signal), read noise is signal-independent Gaussian.
    """
    scale = sample_illumination(rng) if scale is None else scale
    photons = float(rng.uniform(300.0, 3000.0)) if photons is None else photons
    read_sigma = float(rng.uniform(0.002, 0.012)) if read_sigma is None else read_sigma
    signal = clean.astype(np.float32) * scale
    shot = rng.standard_normal(signal.shape).astype(np.float32) * np.sqrt(signal / photons)
    read = rng.standard_normal(signal.shape).astype(np.float32) * read_sigma
    return np.clip(signal + shot + read, 0.0, 1.0).astype(np.float32)


def degrade_clip(clean_clip: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Degrade a TxHxWxC clip with one illumination/noise level and fresh noise per frame."""
    scale = sample_illumination(rng)
    photons = float(rng.uniform(300.0, 3000.0))
    read_sigma = float(rng.uniform(0.002, 0.012))
    return np.stack([degrade(f, rng, scale, photons, read_sigma) for f in clean_clip])


def motion_clip(
    image: np.ndarray, frames: int, size: tuple[int, int], rng: np.random.Generator, max_step: int = 3
) -> np.ndarray:
    """A clip of `frames` crops of `image` (HxWxC) whose window drifts a few pixels per frame.

    Small camera motion between frames, so the temporal module and event voxels
    see real changes. Returns frames x h x w x C.
    """
    h, w = size
    H, W = image.shape[:2]
    if H < h or W < w:
        raise ValueError(f"image {H}x{W} is smaller than the crop {h}x{w}")
    y = int(rng.integers(0, max(1, H - h + 1)))
    x = int(rng.integers(0, max(1, W - w + 1)))
    vy, vx = rng.integers(-max_step, max_step + 1, size=2)
    out = []
    for _ in range(frames):
        out.append(image[y : y + h, x : x + w])
        # bounce off the borders so the window stays inside the photo
        if not 0 <= y + vy <= H - h:
            vy = -vy
        if not 0 <= x + vx <= W - w:
            vx = -vx
        y = int(np.clip(y + vy, 0, H - h))
        x = int(np.clip(x + vx, 0, W - w))
        # jitter the velocity a little: hand-held camera, not a dolly
        vy = int(np.clip(vy + rng.integers(-1, 2), -max_step, max_step))
        vx = int(np.clip(vx + rng.integers(-1, 2), -max_step, max_step))
    return np.stack(out).astype(np.float32)


def luminance(rgb: np.ndarray) -> np.ndarray:
    """Rec. 601 luma of ...xC RGB."""
    return rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114


def event_voxels(clip: np.ndarray, bins: int, threshold: float = 0.15, eps: float = 1e-2) -> np.ndarray:
    """Event voxel grid per frame from a TxHxWxC clip: T x bins x H x W, float32.

    Like an event camera: log intensity is interpolated between consecutive
    frames, and each pixel fires signed events whenever it has moved `threshold`
    from its last reference level; bin b holds the events fired in the b-th
    sub-interval. Frame 0 has no predecessor, so it is compared with itself
    (no events): the first voxel of a stream is empty on a real sensor too.
    """
    logs = np.log(eps + luminance(clip))
    T = clip.shape[0]
    out = np.zeros((T, bins) + logs.shape[1:], np.float32)
    ref = logs[0].copy()
    for t in range(1, T):
        for b in range(bins):
            level = logs[t - 1] + (logs[t] - logs[t - 1]) * (b + 1) / bins
            n = np.trunc((level - ref) / threshold)
            out[t, b] = n
            ref += n * threshold
    # counts are small integers; scale to roughly [-1, 1] like a normalised voxel grid
    return np.clip(out / 4.0, -1.0, 1.0)


def pseudo_ir(clean_clip: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
    """Pseudo-IR frames T x 1 x H x W from the clean scene.

    An IR camera sees the scene independent of visible light, with its own
    contrast (warm/red-ish surfaces bright) and little fine colour detail; we
    mimic that with a red-weighted luma, gamma and mild sensor noise.
    """
    ir = (0.6 * clean_clip[..., 0] + 0.3 * clean_clip[..., 1] + 0.1 * clean_clip[..., 2]) ** 0.8
    if rng is not None:
        ir = ir + rng.standard_normal(ir.shape).astype(np.float32) * 0.01
    return np.clip(ir, 0.0, 1.0)[:, None].astype(np.float32)


#: exposure divisors of `linear_low_light` (LOL-like, not SID-extreme: the NAT notes, section 5)
LINEAR_RATIO = (3.0, 20.0)


def linear_low_light(srgb: np.ndarray, rng: np.random.Generator, ratio: tuple[float, float] = LINEAR_RATIO) -> np.ndarray:
    """A clean HxWx3 sRGB photo darkened in linear light, as a camera would record it, not brightened back.

    Inverse tone curve and gamma (Brooks et al. 2019), exposure / U(ratio), ELD
    shot and read noise at the sensor's saturation (`raw.dark_exposure`), a
    white-balance error of up to +-10 % per channel, then the tone curve again.
    """
    from lowlight.calibration.raw import dark_exposure, inverse_tone, tone

    lin = inverse_tone(srgb)
    dark = dark_exposure(lin, float(rng.uniform(*ratio)), rng)
    wb = rng.uniform(0.9, 1.1, size=3).astype(np.float32)
    return tone(dark * wb)
