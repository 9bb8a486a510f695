"""Synthetic low-light Bayer raw from clean sRGB photos (training data for DarkDiff).

Two published recipes, composed:

1. **Unprocessing** (Brooks et al. 2019, "Unprocessing Images for Learned Raw
   Denoising", CVPR; public code google-research `unprocessing/unprocess.py`):
   sRGB -> inverse smoothstep tone curve ``0.5 - sin(asin(1 - 2x) / 3)`` ->
   inverse gamma ``max(x, 1e-8) ** 2.2`` -> inverse colour correction with
   ``RGB2CAM`` -> inverse white balance / brightening with the
   highlight-preserving "safe" inversion -> clip -> RGGB mosaic. The result is
   a clean linear raw at normal exposure, in 4 packed planes.
2. **Low light** (Wei et al. 2020/2021, ELD, "A Physics-based Noise Formation
   Model for Extreme Low-light Raw Denoising"; public code Vandermode/ELD
   `noise.py`, `NoiseModelBase` / `_sample_params`): darken by a ratio, add
   Poisson shot noise and Gaussian read noise in 14-bit DN, quantise.

The ground truth is the forward ISP of the *clean* raw at packed resolution
(white balance, clip, green binning, ``inverse(RGB2CAM)``, clip, gamma 1/2.2,
smoothstep), so its tone matches the source photo and ``isp(unprocess(x))``
reproduces ``x`` (up to highlight handling and the Bayer sampling).

Conventions (the model's input contract):

* planes are ``PLANES = ("R", "Gr", "Gb", "B")`` = Bayer pixels ``[0::2, 0::2]``,
  ``[0::2, 1::2]``, ``[1::2, 0::2]``, ``[1::2, 1::2]`` (Brooks' ``mosaic``; ELD's
  ``pack_raw_bayer`` uses R, G, B, G instead -- the bundle records the order);
* ``raw`` is black-subtracted and divided by ``white - black`` (``SATURATION``),
  in [0, 1], and stays dark: the exposure ratio and white balance are *not*
  applied in the data. They travel as the separate input ``gain``
  (``RawMeta.gain()``), which the model multiplies in and then clamps
  (see ``lrgb``), so quantised graphs never see x300 values.

Everything is numpy, float32, vectorised and seeded by the caller's
``np.random.Generator``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PLANES = ("R", "Gr", "Gb", "B")

# --- the one emulated camera -------------------------------------------------
#: XYZ -> camera matrices of the four cameras in Brooks et al.'s ``random_ccm()``.
_XYZ2CAMS = np.array(
    [
        [[1.0234, -0.2969, -0.2266], [-0.5625, 1.6328, -0.0469], [-0.0703, 0.2188, 0.6406]],
        [[0.4913, -0.0541, -0.0202], [-0.6130, 1.3513, 0.2906], [-0.1564, 0.2151, 0.7183]],
        [[0.8380, -0.2630, -0.0639], [-0.2887, 1.0725, 0.2496], [-0.0627, 0.1427, 0.5438]],
        [[0.6596, -0.2079, -0.0562], [-0.4782, 1.3016, 0.1933], [-0.0970, 0.1581, 0.5181]],
    ],
    dtype=np.float64,
)
#: linear sRGB (D65) -> XYZ.
_RGB2XYZ = np.array(
    [[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750], [0.0193339, 0.1191920, 0.9503041]],
    dtype=np.float64,
)


def _emulated_rgb2cam() -> np.ndarray:
    """Mean of Brooks' four xyz2cam matrices, composed with rgb2xyz, rows normalised to sum 1."""
    m = _XYZ2CAMS.mean(axis=0) @ _RGB2XYZ
    return m / m.sum(axis=1, keepdims=True)


#: linear sRGB -> camera RGB of the single emulated camera, shape [3, 3], rows sum to 1.
#:
#: It is the equal-weight convex combination of the four xyz2cam matrices in
#: Brooks et al.'s ``random_ccm()`` (the centre of their random CCM
#: distribution), times the sRGB -> XYZ matrix, with each row normalised to
#: sum 1 (so white stays white and white balance alone fixes the grey axis):
#:
#:     [[0.646005, 0.271431, 0.082563],
#:      [0.082558, 0.755754, 0.161688],
#:      [0.014544, 0.225019, 0.760436]]      condition number 2.09
#:
#: cam2rgb = inverse(RGB2CAM) has diagonal (1.62, 1.48, 1.40), typical of real
#: Bayer sensors. Why one matrix: the CCM is applied only in the target, so a
#: random CCM per sample would make the raw -> sRGB mapping ambiguous (one
#: camera, like SID's Sony A7S2 data set).
RGB2CAM: np.ndarray = _emulated_rgb2cam().astype(np.float32)
#: camera RGB -> linear sRGB, the inverse of RGB2CAM (used by the forward ISP).
CAM2RGB: np.ndarray = np.linalg.inv(_emulated_rgb2cam()).astype(np.float32)

# --- the ELD noise model (Sony A7S2) -----------------------------------------
#: white level - black level of the emulated 14-bit sensor (ELD: 16383 - 800).
SATURATION = 16383.0 - 800.0
#: system gain K (DN per electron) is log-uniform in this range (ELD `_sample_params`).
K_RANGE = (0.1, 30.0)
#: Gaussian read noise, log(sigma_DN) = slope * log(K) + bias + N(0, sigma), ELD's
#: SonyA7S2 calibration, ``camera_params/release/SonyA7S2_params.npy`` ->
#: ``Profile-1`` -> ``g_scale`` (values as dumped to JSON in the public repository
#: DanielNobbe/rawnoise, ``eld-params/SonyA7S2_params.json``).
READ_SLOPE = 0.5407496082896145
READ_BIAS = 1.218237123334061
READ_SIGMA = 0.26751211630129734

#: safe gain inversion: gains fade to 1 for grey levels above this (Brooks).
_INFLECTION = 0.9


@dataclass
class RawMeta:
    """Per-sample capture metadata: brightening, white balance and exposure ratio."""

    rgb_gain: float
    red_gain: float
    blue_gain: float
    ratio: float

    def gain(self) -> np.ndarray:
        """float32 [4] = ratio * rgb_gain * (red, 1, 1, blue): the graph's ``gain`` input."""
        wb = np.array([self.red_gain, 1.0, 1.0, self.blue_gain], dtype=np.float64)
        return (self.ratio * self.rgb_gain * wb).astype(np.float32)

    def wb(self) -> np.ndarray:
        """float32 [4] = rgb_gain * (red, 1, 1, blue): white balance and brightening only."""
        wb = np.array([self.red_gain, 1.0, 1.0, self.blue_gain], dtype=np.float64)
        return (self.rgb_gain * wb).astype(np.float32)


def random_meta(rng: np.random.Generator, ratio: tuple[float, float] = (100, 300)) -> RawMeta:
    """Brooks' ``random_gains()`` plus an ELD exposure ratio ~ U(ratio).

    rgb_gain = 1 / N(0.8, 0.1) (denominator clipped to [0.4, 1.2] so a 4-sigma draw
    cannot blow up or flip the sign), red ~ U(1.9, 2.4), blue ~ U(1.5, 1.9).
    """
    lo, hi = ratio
    if not 0 < lo <= hi:
        raise ValueError(f"ratio range {ratio} must satisfy 0 < low <= high")
    rgb_gain = 1.0 / float(np.clip(rng.normal(0.8, 0.1), 0.4, 1.2))
    red = float(rng.uniform(1.9, 2.4))
    blue = float(rng.uniform(1.5, 1.9))
    return RawMeta(rgb_gain=rgb_gain, red_gain=red, blue_gain=blue, ratio=float(rng.uniform(lo, hi)))


def _even(srgb: np.ndarray) -> np.ndarray:
    """Check an HxWx3 image and crop it to even height and width (whole Bayer quads)."""
    if srgb.ndim != 3 or srgb.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 sRGB image, got shape {srgb.shape}")
    h, w = srgb.shape[0] // 2 * 2, srgb.shape[1] // 2 * 2
    if h == 0 or w == 0:
        raise ValueError(f"image {srgb.shape[0]}x{srgb.shape[1]} is smaller than one 2x2 Bayer quad")
    return srgb[:h, :w]


def unprocess(srgb: np.ndarray, meta: RawMeta) -> np.ndarray:
    """Clean linear raw planes [4, H/2, W/2] float32 from an HxWx3 sRGB image in [0, 1].

    Brooks' ``unprocess`` with the fixed ``RGB2CAM`` and ``meta``'s gains; odd
    H or W lose their last row/column. Only the pixels the mosaic keeps are
    colour-converted (each plane needs one row of the CCM), so the cost is the
    per-channel tone curve plus a quarter of the matrix work.
    """
    x = np.clip(_even(srgb).astype(np.float32, copy=False), 0.0, 1.0)
    # inverse smoothstep, then inverse gamma (Brooks' clamp keeps the power finite at 0)
    lin = 0.5 - np.sin(np.arcsin(1.0 - 2.0 * x) / 3.0)
    lin = np.maximum(lin, 1e-8, out=lin) ** np.float32(2.2)
    gains = np.array([1.0 / meta.red_gain, 1.0, 1.0 / meta.blue_gain], dtype=np.float32) / np.float32(meta.rgb_gain)
    out = np.empty((4, x.shape[0] // 2, x.shape[1] // 2), dtype=np.float32)
    # (plane, row offset, column offset, camera channel)
    for p, (dy, dx, c) in enumerate(((0, 0, 0), (0, 1, 1), (1, 0, 1), (1, 1, 2))):
        px = lin[dy::2, dx::2]  # [h, w, 3] linear sRGB at this Bayer site
        cam = px @ RGB2CAM[c]  # the one camera channel this site records
        # safe gain inversion: near white the gain fades to 1 so highlights stay saturated
        gray = px @ (RGB2CAM.mean(axis=0))  # mean over camera channels of this pixel
        mask = (np.maximum(gray - _INFLECTION, 0.0) / (1.0 - _INFLECTION)) ** 2
        g = gains[c]
        safe = np.maximum(mask + (1.0 - mask) * g, g)
        np.clip(cam * safe, 0.0, 1.0, out=out[p])
    return out


def sample_noise(rng: np.random.Generator) -> tuple[float, float]:
    """ELD noise parameters: (K, read sigma in DN), Sony A7S2 profile.

    K log-uniform in K_RANGE; log sigma = READ_SLOPE log K + READ_BIAS + N(0, READ_SIGMA).
    """
    log_k = float(rng.uniform(np.log(K_RANGE[0]), np.log(K_RANGE[1])))
    log_sigma = READ_SLOPE * log_k + READ_BIAS + READ_SIGMA * float(rng.standard_normal())
    return float(np.exp(log_k)), float(np.exp(log_sigma))


def low_light(
    raw4: np.ndarray,
    meta: RawMeta,
    rng: np.random.Generator,
    k: float | None = None,
    read_sigma: float | None = None,
) -> np.ndarray:
    """Noisy dark ``raw`` [4, h, w] float32 in [0, 1] from a clean raw (ELD model, gain NOT applied).

    y = raw * SATURATION / ratio (DN); z = Poisson(y / K) * K + N(0, read_sigma^2);
    rounded to integer DN, clipped to [0, SATURATION], divided by SATURATION.
    ``k`` / ``read_sigma`` override the random draw (``sample_noise``), for tests
    and fixed-ISO evaluation. ``raw * meta.gain()`` brightens it back.
    """
    if k is None or read_sigma is None:
        k_draw, s_draw = sample_noise(rng)
        k = k_draw if k is None else k
        read_sigma = s_draw if read_sigma is None else read_sigma
    if k <= 0 or read_sigma < 0:
        raise ValueError(f"system gain K={k} must be > 0 and read sigma {read_sigma} >= 0")
    y = raw4.astype(np.float64) * (SATURATION / meta.ratio)
    z = rng.poisson(y / k).astype(np.float32) * np.float32(k)
    z += rng.standard_normal(z.shape, dtype=np.float32) * np.float32(read_sigma)
    np.rint(z, out=z)  # the ADC outputs integer DN
    np.clip(z, 0.0, SATURATION, out=z)
    return z * np.float32(1.0 / SATURATION)


def _bin(raw4: np.ndarray) -> np.ndarray:
    """(R, (Gr+Gb)/2, B) along the plane axis (-3) of [..., 4, h, w]."""
    r, gr, gb, b = (raw4[..., i, :, :] for i in range(4))
    return np.stack([r, (gr + gb) * np.float32(0.5), b], axis=-3)


def lrgb_to_srgb(lrgb3: np.ndarray) -> np.ndarray:
    """Finish a white-balanced camera-RGB image [..., 3, h, w]: cam2rgb, clip, gamma 1/2.2, smoothstep."""
    rgb = np.einsum("ij,...jhw->...ihw", CAM2RGB, lrgb3.astype(np.float32, copy=False))
    rgb = np.clip(rgb, 0.0, 1.0) ** np.float32(1.0 / 2.2)
    # smoothstep 3x^2 - 2x^3: the tone curve Brooks inverts, so the target matches the photo
    return (rgb * rgb * (3.0 - 2.0 * rgb)).astype(np.float32)


def isp(raw4: np.ndarray, meta: RawMeta) -> np.ndarray:
    """Forward ISP at packed resolution -> sRGB [3, h, w] float32 in [0, 1].

    ``raw4`` is a linear raw [4, h, w] at normal exposure: the clean output of
    ``unprocess``, or a dark raw already multiplied by ``meta.ratio``. Steps:
    white balance rgb_gain * (red, 1, 1, blue), clip, bin greens, inverse(RGB2CAM),
    clip, gamma 1/2.2, smoothstep.
    """
    if raw4.ndim != 3 or raw4.shape[0] != 4:
        raise ValueError(f"expected raw planes [4, h, w], got shape {raw4.shape}")
    balanced = np.clip(raw4 * meta.wb()[:, None, None], 0.0, 1.0)
    return lrgb_to_srgb(_bin(balanced))


def lrgb(raw: np.ndarray, gain: np.ndarray) -> np.ndarray:
    """Host reference of the model's preprocessing: clamp(raw * gain, 0, 1) -> (R, (Gr+Gb)/2, B).

    ``raw`` [4, h, w] with ``gain`` [4], or batched [B, 4, h, w] with [B, 4]; float32 [..., 3, h, w].
    """
    if raw.ndim not in (3, 4) or raw.shape[-3] != 4:
        raise ValueError(f"expected raw [4, h, w] or [B, 4, h, w], got shape {raw.shape}")
    g = np.asarray(gain, dtype=np.float32)
    if g.shape[-1] != 4:
        raise ValueError(f"expected gain [4] or [B, 4], got shape {g.shape}")
    x = np.clip(raw.astype(np.float32, copy=False) * g[..., :, None, None], 0.0, 1.0)
    return _bin(x).astype(np.float32)


def raw_pair(
    srgb: np.ndarray,
    rng: np.random.Generator,
    crop: int | None = None,
    ratio: tuple[float, float] = (100, 300),
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One training sample from an HxWx3 photo: (raw [4,h,w], gain [4], target sRGB [3,h,w]).

    ``crop`` is the Bayer-pixel crop side (even; h = w = crop/2) at a random
    position; None uses the whole photo (cropped to even size). Fresh metadata
    and noise per call.
    """
    meta = random_meta(rng, ratio)
    if crop is not None:
        if crop <= 0 or crop % 2:
            raise ValueError(f"crop {crop} must be a positive even number of Bayer pixels")
        H, W = srgb.shape[:2]
        if H < crop or W < crop:
            raise ValueError(f"photo {H}x{W} is smaller than the crop {crop}x{crop}")
        y = int(rng.integers(0, H - crop + 1))
        x = int(rng.integers(0, W - crop + 1))
        srgb = srgb[y : y + crop, x : x + crop]
    clean = unprocess(srgb, meta)
    raw = low_light(clean, meta, rng)
    return raw, meta.gain(), isp(clean, meta)


def raw_batch(
    photos: list[np.ndarray],
    n: int,
    crop: int,
    rng: np.random.Generator,
    ratio: tuple[float, float] = (100, 300),
) -> dict[str, np.ndarray]:
    """n random crops from random photos: {"raw": [n,4,c/2,c/2], "gain": [n,4], "target": [n,3,c/2,c/2]} float32."""
    if not photos:
        raise ValueError("raw_batch needs at least one photo")
    if n < 1:
        raise ValueError(f"batch size {n} must be >= 1")
    pairs = [raw_pair(photos[int(rng.integers(len(photos)))], rng, crop, ratio) for _ in range(n)]
    return {
        "raw": np.stack([p[0] for p in pairs]),
        "gain": np.stack([p[1] for p in pairs]),
        "target": np.stack([p[2] for p in pairs]),
    }


# -- linear light in sRGB terms (the fusion pairs and the linear low-light recipe) ------------------------


def inverse_tone(srgb: np.ndarray) -> np.ndarray:
    """sRGB in [0, 1] -> linear light: inverse smoothstep, then gamma 2.2 (Brooks et al. 2019)."""
    x = np.clip(srgb.astype(np.float32), 0.0, 1.0)
    lin = 0.5 - np.sin(np.arcsin(1.0 - 2.0 * x) / 3.0)
    return (np.maximum(lin, 1e-8) ** np.float32(2.2)).astype(np.float32)


def tone(lin: np.ndarray) -> np.ndarray:
    """Linear light -> sRGB: clip, gamma 1/2.2, smoothstep (the inverse of `inverse_tone`)."""
    x = np.clip(lin, 0.0, 1.0) ** np.float32(1.0 / 2.2)
    return (x * x * (3.0 - 2.0 * x)).astype(np.float32)


def dark_exposure(lin: np.ndarray, divisor: float, rng: np.random.Generator,
                  noise: tuple[float, float] | None = None) -> np.ndarray:
    """Linear light darkened by `divisor` with ELD shot and read noise, quantised to DN; linear, in [0, 1].

    `noise`: (K, read sigma in DN) to reuse, e.g. one sensor setting for every frame of a clip; default: drawn
    with `sample_noise`."""
    k, read = sample_noise(rng) if noise is None else noise
    y = lin.astype(np.float64) * (SATURATION / divisor)
    z = rng.poisson(y / k).astype(np.float32) * np.float32(k)
    z += rng.standard_normal(z.shape, dtype=np.float32) * np.float32(read)
    return np.clip(np.rint(z), 0.0, SATURATION).astype(np.float32) / np.float32(SATURATION)
