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


# -- what cameras produce: the training mix and the per-recipe evaluation (reference weights) -------------------
#
# The sRGB-space recipe above (`degrade`) scales the displayed image and adds Gaussian noise: a model trained on it
# alone gained +8.7 dB on it but +3.7 dB on linear-light pairs from unseen photos, turned normally lit video white
# (half its pixels >= 0.98), left a dark ring around lights (it never saw a light in a dark frame) and amplified
# the blotchy, compressed noise of real night skies (it only saw i.i.d. noise). The mix below covers those cases.

#: The recipes evaluation reports separately; training mixes them in `RECIPE_MIX` proportions.
RECIPES = ("srgb", "linear", "normal")
#: Shares measured on AMNet base (fine-tuned 1000 steps on 25/50/25): +6.2 dB sRGB, +8.1 dB linear, 19.4 dB
#: identity, so sRGB and normal get more.
RECIPE_MIX = {"srgb": 0.3, "linear": 0.4, "normal": 0.3}
#: Exposure divisors of the training linear recipe, log-uniform: extreme dark (1/60) up to one stop under. Below 2
#: a darkened photo is indistinguishable from a dim, normally exposed one (whose target is itself): with 1.5 the
#: base brightened dim normal photos by 1.2-1.6x (identity 13.6-25.7 dB).
TRAIN_RATIO = (2.0, 60.0)
#: Normal exposures: at most a seventh of a stop under, no white-balance error (the camera's auto exposure and
#: white balance work in normal light); the target is the photo itself.
NORMAL_RATIO = (1.0, 1.1)
#: Share of linear-light samples with lamps in the scene (emitters, `lamps`).
LAMPS_P = 0.5
#: Share of training samples JPEG-compressed after 8-bit quantisation, quality uniform in JPEG_QUALITY.
JPEG_P = 0.5
JPEG_QUALITY = (60, 95)
#: White-balance error per channel of a camera capture (a colour cast the model must remove).
WB_ERROR = 0.12


def lamps(shape: tuple[int, int], rng: np.random.Generator, max_lamps: int = 6) -> np.ndarray:
    """HxWx3 linear light emitted by 1 to `max_lamps` lamps, as the dark exposure records it: a saturated core of
    1.5-8 px and a glow (inverse square, faded out by about six core radii: lens scatter, not a flood light).

    `camera_capture` adds it to the dark exposure and, times the exposure ratio, to the target: a longer exposure
    collects more of the glow too, so the target is one global curve of the input (lamps and their glow blow out,
    as in a long exposure) and the model learns the full gain next to a light. Weights trained without lamps
    dimmed the surroundings of a light (`core.metrics.halo_undershoot` mean 0.058, up to 0.38); with the lamp
    added unscaled to the target (same light in both), they learned that exactly: 0.14 mean.
    """
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    out = np.zeros((h, w, 3), np.float32)
    for _ in range(int(rng.integers(1, max_lamps + 1))):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        r = float(rng.uniform(1.5, 8.0))
        power = float(rng.uniform(1.5, 6.0))
        # warm sodium/tungsten, white LED, or a cool sign
        colour = np.array([(1.0, 0.75, 0.45), (1.0, 1.0, 1.0), (0.6, 0.8, 1.0)][int(rng.integers(3))], np.float32)
        d2 = ((yy - cy) ** 2 + (xx - cx) ** 2) / (r * r)
        glow = power * np.minimum(1.0, float(rng.uniform(0.05, 0.3)) / np.maximum(d2, 1e-6)) * np.exp(-d2 / 36.0)
        out += np.where(d2 <= 1.0, power, glow)[..., None] * colour
    return out


def _jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    import cv2

    u8 = (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    ok, buf = cv2.imencode(".jpg", u8[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RuntimeError("OpenCV could not JPEG-encode a training frame")
    return cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1].astype(np.float32) / 255.0


def camera_capture(
    clean: np.ndarray,
    rng: np.random.Generator,
    recipe: str,
    ratio: tuple[float, float] = TRAIN_RATIO,
    lamps_p: float = LAMPS_P,
    jpeg_p: float = JPEG_P,
) -> tuple[np.ndarray, np.ndarray]:
    """(input, target): what a camera records of the clean sRGB scene `clean` (HxWx3, or a TxHxWx3 clip) under
    `recipe`, and what the enhancer should make of it.

    - ``srgb``: `degrade` (scaled sRGB, Gaussian shot + read noise), the original recipe; target `clean`;
    - ``linear``: inverse tone curve and gamma (Brooks et al. 2019), exposure / log-U(`ratio`), with probability
      `lamps_p` lamps (`lamps`) emitting into the scene, ELD shot and read noise in 14-bit DN
      (`raw.sample_noise`), a white-balance error of +-WB_ERROR per channel, the tone curve back; target: the
      clean scene with the lamps at the normal exposure (their light times the ratio);
    - ``normal``: the same camera at exposure / U(NORMAL_RATIO), no lamps, no white-balance error: a normally
      exposed frame whose target is itself.

    Then 8-bit quantisation and, with probability `jpeg_p`, JPEG at a quality in JPEG_QUALITY. A clip shares
    every parameter (exposure, lamps, noise level, cast, quality) and gets fresh noise per frame.
    """
    if recipe not in RECIPES:
        raise ValueError(f"unknown degradation recipe {recipe!r}; one of {', '.join(RECIPES)}")
    from lowlight.calibration.raw import dark_exposure, inverse_tone, sample_noise, tone

    clip = clean if clean.ndim == 4 else clean[None]
    target = clip
    if recipe == "srgb":
        low = degrade_clip(clip, rng)
    else:
        lo, hi = ratio if recipe == "linear" else NORMAL_RATIO
        divisor = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
        light = lamps(clip.shape[1:3], rng) if recipe == "linear" and rng.random() < lamps_p else None
        k, read_dn = sample_noise(rng)
        wb = rng.uniform(1.0 - WB_ERROR, 1.0 + WB_ERROR, size=3).astype(np.float32)
        if recipe == "normal":
            wb = np.ones(3, np.float32)
        frames, targets = [], []
        for f in clip:
            scene = inverse_tone(f) / np.float32(divisor)
            if light is not None:
                scene = scene + light
                targets.append(tone(inverse_tone(f) + light * np.float32(divisor)))
            frames.append(tone(dark_exposure(np.minimum(scene, 1.0), 1.0, rng, noise=(k, read_dn)) * wb))
        low = np.stack(frames)
        if light is not None:
            target = np.stack(targets)
    low = np.round(np.clip(low, 0.0, 1.0) * 255.0) / 255.0
    if rng.random() < jpeg_p:
        q = int(rng.integers(JPEG_QUALITY[0], JPEG_QUALITY[1] + 1))
        low = np.stack([_jpeg(f, q) for f in low])
    low, target = low.astype(np.float32), np.ascontiguousarray(target, dtype=np.float32)
    return (low, target) if clean.ndim == 4 else (low[0], target[0])


def sample_recipe(rng: np.random.Generator, mix: dict[str, float] | None = None) -> str:
    """A recipe drawn with the `RECIPE_MIX` shares (or `mix`)."""
    mix = mix or RECIPE_MIX
    names = list(mix)
    p = np.array([mix[n] for n in names], np.float64)
    return names[int(rng.choice(len(names), p=p / p.sum()))]


def camera_mix(clean: np.ndarray, rng: np.random.Generator, mix: dict[str, float] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """`camera_capture` under a recipe drawn from the training mix: the one degradation every family trains on."""
    return camera_capture(clean, rng, sample_recipe(rng, mix))


def recipe_pairs(photos: list[np.ndarray], recipe: str, size: int = 256, per_photo: int = 2, seed: int = 1234) -> list[tuple[np.ndarray, np.ndarray]]:
    """Deterministic (input, target) HxWx3 evaluation pairs from centre crops of `photos`, one recipe at a time.

    ``srgb``: `degrade`; ``linear``: `linear_low_light` (exposure / U(LINEAR_RATIO), the physically based recipe
    the first reference weights were never trained on); ``normal``: the photo itself (the identity check: a
    normally exposed frame must come out close to itself). No JPEG: the recipes are compared on the sensor's
    own degradation.
    """
    if recipe not in RECIPES:
        raise ValueError(f"unknown degradation recipe {recipe!r}; one of {', '.join(RECIPES)}")
    rng = np.random.default_rng(seed)
    pairs = []
    for img in photos:
        H, W = img.shape[:2]
        s = min(size, H, W) // 8 * 8
        clean = np.ascontiguousarray(img[(H - s) // 2 : (H - s) // 2 + s, (W - s) // 2 : (W - s) // 2 + s])
        for _ in range(1 if recipe == "normal" else per_photo):
            if recipe == "srgb":
                low = degrade(clean, rng)
            elif recipe == "linear":
                low = np.round(linear_low_light(clean, rng) * 255.0) / 255.0
            else:
                low = clean
            pairs.append((low.astype(np.float32), clean))
    return pairs
