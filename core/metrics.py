"""Image-quality metrics in numpy (no PyTorch: the device-side verify uses them too)."""
from __future__ import annotations

import numpy as np


def psnr(a: np.ndarray, b: np.ndarray, peak: float = 1.0) -> float:
    """PSNR in dB between two arrays in [0, peak]; +inf only if they are identical."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(peak * peak / mse)


def _gauss(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    x = np.arange(size) - size // 2
    g = np.exp(-(x**2) / (2 * sigma * sigma))
    return g / g.sum()


def _blur(x: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Separable 'valid' Gaussian filter over the last two axes."""
    from numpy.lib.stride_tricks import sliding_window_view

    x = (sliding_window_view(x, len(g), axis=-1) * g).sum(-1)
    return (sliding_window_view(x, len(g), axis=-2) * g).sum(-1)


def ssim(a: np.ndarray, b: np.ndarray, peak: float = 1.0) -> float:
    """Mean SSIM (Wang et al. 2004, 11x11 Gaussian, sigma 1.5) over [..., H, W] planes."""
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    if a.shape[-1] < 11 or a.shape[-2] < 11:
        raise ValueError(f"SSIM needs planes of at least 11x11, got {a.shape[-2:]}")
    g = _gauss()
    c1, c2 = (0.01 * peak) ** 2, (0.03 * peak) ** 2
    mu_a, mu_b = _blur(a, g), _blur(b, g)
    var_a = _blur(a * a, g) - mu_a**2
    var_b = _blur(b * b, g) - mu_b**2
    cov = _blur(a * b, g) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return float(s.mean())


def compare_outputs(out: dict[str, np.ndarray], ref: dict[str, np.ndarray], image_outputs: list[str]) -> dict[str, dict[str, float]]:
    """Per output: PSNR/SSIM (image outputs) and max abs error; for integer outputs the agreement fraction.

    The one comparison used on the host (compile-time verify) and on the device
    (the TensorRT engine against the bundled reference outputs).
    """
    result: dict[str, dict[str, float]] = {}
    for name, r in ref.items():
        if name not in out:
            continue
        o = np.asarray(out[name])
        r = np.asarray(r)
        row: dict[str, float] = {"max_abs": float(np.max(np.abs(o.astype(np.float64) - r.astype(np.float64)))) if o.size else 0.0}
        if np.issubdtype(r.dtype, np.integer):
            row["agreement"] = float(np.mean(o == r))
            if name in image_outputs:  # camera bytes (--pixel-format): PSNR on the 0..255 scale
                row["psnr_db"] = psnr(o.astype(np.float32), r.astype(np.float32), peak=255.0)
        elif name in image_outputs:
            row["psnr_db"] = psnr(o, r)
            row["ssim"] = ssim(o.reshape(-1, *o.shape[-2:]), r.reshape(-1, *r.shape[-2:]))
        result[name] = row
    return result


# -- artefacts that a comparison with FP32 cannot see (issue: reference weights on real cameras) -------------

def luma(rgb: np.ndarray) -> np.ndarray:
    """Rec. 601 luma of an HxWx3 image."""
    return (rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114).astype(np.float32)


def _smooth(y: np.ndarray, sigma: float) -> np.ndarray:
    import cv2

    return cv2.GaussianBlur(y, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)


#: Band of the lattice measure: Gaussian sigmas 2 and 8 px pass structure of roughly 12-50 px period (the
#: blotches seen in night skies were about 30 px).
LATTICE_BAND = (2.0, 8.0)
#: Dark: the input's local mean luma (sigma 8) below this.
DARK_LUMA = 0.15


def lattice_ratio(inp: np.ndarray, out: np.ndarray, flat_share: float = 0.5) -> float:
    """Mid-frequency energy the enhancer adds in flat dark regions, relative to the input's own, per unit gain.

    On the input's dark pixels (local mean luma < DARK_LUMA), the `flat_share` with the least relative input
    structure are the flat regions. There, the band-passed output luma's RMS is divided by the band-passed
    input's RMS times the local gain (the ratio of the two local means). A pointwise tone curve that is
    concave (every brightening curve we ship) scores <= 1, a denoiser < 1; a blotchy lattice the model
    invents or amplifies beyond its gain scores > 1. NaN if under 1% of the frame is dark.
    """
    yi, yo = luma(inp), luma(out)
    lo, hi = LATTICE_BAND
    bi = _smooth(yi, lo) - _smooth(yi, hi)
    bo = _smooth(yo, lo) - _smooth(yo, hi)
    mi = np.maximum(_smooth(yi, hi), 1.0 / 255)
    mo = _smooth(yo, hi)
    dark = mi < DARK_LUMA
    if dark.mean() < 0.01:
        return float("nan")
    rel = _smooth(bi * bi, hi)[dark] / mi[dark] ** 2
    flat = np.zeros_like(dark)
    flat[dark] = rel <= np.quantile(rel, flat_share)
    gain = mo / mi
    num = float(np.mean(bo[flat] ** 2))
    den = float(np.mean((gain[flat] * bi[flat]) ** 2))
    return float(np.sqrt(num / max(den, 1e-12)))


#: Bright: input luma above this (lights, lit windows); the ring is 2-20 px from it.
BRIGHT_LUMA = 0.6
HALO_RING = (2, 20)


def tone_residual(inp: np.ndarray, out: np.ndarray, bins: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """(fitted, residual) luma maps: the image's global tone curve (median output luma per input-luma bin, made
    monotone) applied to the input, and what the output does beyond it."""
    yi, yo = luma(inp), luma(out)
    edges = np.quantile(yi, np.linspace(0, 1, bins + 1))
    idx = np.clip(np.searchsorted(edges, yi, side="right") - 1, 0, bins - 1)
    med = np.array([np.median(yo[idx == k]) if np.any(idx == k) else np.nan for k in range(bins)])
    med = np.maximum.accumulate(np.nan_to_num(med, nan=0.0))
    centres = np.array([np.median(yi[idx == k]) if np.any(idx == k) else edges[k] for k in range(bins)])
    fitted = np.interp(yi, centres, med).astype(np.float32)
    return fitted, yo - fitted


def halo_undershoot(inp: np.ndarray, out: np.ndarray) -> float:
    """How much darker the output is next to the input's bright objects than its own global tone curve says.

    The output's tone curve is fitted over the whole frame (`tone_residual`); on pixels 2-20 px from bright
    objects (input luma > BRIGHT_LUMA) that are not bright themselves, returns max(0, -mean residual) /
    mean fitted luma there: 0.1 means a ring 10% darker than the same input level elsewhere. The input itself
    scores about 0 (the fitted curve is piecewise linear between bin medians); local contrast that follows the scene averages out around many objects, a dark
    ring does not. NaN without bright objects (or when most of the frame is bright).
    """
    import cv2

    bright = luma(inp) > BRIGHT_LUMA
    if bright.mean() < 1e-4 or bright.mean() > 0.5:
        return float("nan")
    dist = cv2.distanceTransform((~bright).astype(np.uint8), cv2.DIST_L2, 5)
    lo, hi = HALO_RING
    ring = (dist >= lo) & (dist <= hi)
    if ring.sum() < 100:
        return float("nan")
    fitted, resid = tone_residual(inp, out)
    return max(0.0, -float(resid[ring].mean())) / max(float(fitted[ring].mean()), 1e-6)
