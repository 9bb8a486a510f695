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
