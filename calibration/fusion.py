"""Fusion training pairs from clean photos: exposure pairs (MEF) and visible + infrared pairs (VIF).

Degradation happens in linear light, as a camera sees it: the sRGB photo is
taken back through Brooks et al.'s inverse tone curve and gamma
(`inverse_tone`), scaled by the exposure, given photon shot and read noise of
the ELD Sony A7S2 profile (`calibration.raw.sample_noise`) at the sensor's
saturation, then clipped and toned back (`tone`). The clean photo is the
ground truth (the paper uses SwinFusion / DeFuse outputs as pseudo ground
truth; a clean photo is a better one where it exists).

One function per shipped MMAIF prompt (`models/mmaif.py: PROMPTS`):

- ``mef-exposure``: under = exposure / U(4, 16) with noise; over = exposure x U(2, 4), clipped;
- ``mef-blur``: as mef-exposure, the over-exposed frame blurred (Gaussian sigma U(1, 2.5): shake in the long exposure);
- ``vif-lowlight``: visible = exposure / U(4, 16) with noise; infrared = `degrade.pseudo_ir`, blurred (sigma 1) and noisy;
- ``vif-dark``: as vif-lowlight at exposure / U(16, 64).
"""
from __future__ import annotations

import numpy as np

from lowlight.calibration.raw import dark_exposure, inverse_tone, tone

#: prompt -> (exposure divisor range of the dark frame, task)
_DARK = {"mef-exposure": (4.0, 16.0), "mef-blur": (4.0, 16.0), "vif-lowlight": (4.0, 16.0), "vif-dark": (16.0, 64.0)}


def _blur(x: np.ndarray, sigma: float) -> np.ndarray:
    import cv2

    return cv2.GaussianBlur(x, (0, 0), sigmaX=sigma, borderType=cv2.BORDER_REFLECT).astype(np.float32)


def fusion_pair(prompt: str, srgb: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(first input [3,H,W], second input [3 or 1,H,W], ground truth [3,H,W]) for an MMAIF prompt, float32 in [0, 1].

    `srgb` is a clean HxWx3 photo in [0, 1]; MEF returns (under, over, clean), VIF (visible, infrared, clean).
    """
    from lowlight.calibration.degrade import pseudo_ir

    if prompt not in _DARK:
        raise ValueError(f"no fusion recipe for prompt {prompt!r}; known: {', '.join(_DARK)}")
    if srgb.ndim != 3 or srgb.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 photo, got shape {srgb.shape}")
    clean = np.clip(srgb.astype(np.float32), 0.0, 1.0)
    lin = inverse_tone(clean)
    lo, hi = _DARK[prompt]
    dark = tone(dark_exposure(lin, float(rng.uniform(lo, hi)), rng))
    if prompt.startswith("mef"):
        bright = tone(lin * np.float32(rng.uniform(2.0, 4.0)))
        if prompt == "mef-blur":
            bright = _blur(bright, float(rng.uniform(1.0, 2.5)))
        second = bright.transpose(2, 0, 1)
    else:
        ir = _blur(pseudo_ir(clean[None])[0, 0], 1.0)
        ir = np.clip(ir + rng.standard_normal(ir.shape, dtype=np.float32) * np.float32(0.01), 0.0, 1.0)
        second = ir[None]
    return (np.ascontiguousarray(dark.transpose(2, 0, 1)), np.ascontiguousarray(second, dtype=np.float32),
            np.ascontiguousarray(clean.transpose(2, 0, 1)))


def fusion_batch(prompts: list[str], photos: list[np.ndarray], n: int, crop: int,
                 rng: np.random.Generator) -> dict[str, np.ndarray]:
    """n random crops of random photos, each with a random prompt of `prompts`:
    {"x0": [n,3,c,c], "x1": [n,3,c,c] (infrared repeated), "target": [n,3,c,c], "prompt": [n] int64 (index into `prompts`)}."""
    x0s, x1s, gts, ids = [], [], [], []
    for _ in range(n):
        photo = photos[int(rng.integers(len(photos)))]
        H, W = photo.shape[:2]
        y, x = int(rng.integers(0, H - crop + 1)), int(rng.integers(0, W - crop + 1))
        i = int(rng.integers(len(prompts)))
        a, b, gt = fusion_pair(prompts[i], photo[y : y + crop, x : x + crop], rng)
        x0s.append(a)
        x1s.append(np.repeat(b, 3, axis=0) if b.shape[0] == 1 else b)
        gts.append(gt)
        ids.append(i)
    return {"x0": np.stack(x0s), "x1": np.stack(x1s), "target": np.stack(gts), "prompt": np.asarray(ids, dtype=np.int64)}
