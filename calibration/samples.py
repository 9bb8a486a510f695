"""Make the sample frames shipped in calibration/samples/ (`python -m lowlight.calibration.samples`).

Kodak photos (unrestricted licence) from ../shared/data/clean, halved to
384x256 and darkened with the training noise model at a fixed seed:
synthetic night frames for `make demo` and the default INT8 calibration set.
Illumination is spread log-uniformly over 4-80%, wider than the training
distribution, because a calibration set must cover the brightest frames the
camera will deliver (real low-light footage is often only partly dark): an
all-dark set makes INT8 clip brighter frames.
"""
from __future__ import annotations

import numpy as np

from lowlight.calibration.data import SAMPLES_DIR, shared_data_dir
from lowlight.calibration.degrade import degrade
from lowlight.calibration.frames import fit_frame, load_frames
from lowlight.runtime.io import write_image

KODAK = [f"kodim{i:02d}.png" for i in (1, 2, 3, 5, 6, 7, 8, 9, 12, 13, 14, 15, 16, 19, 20, 21, 22, 23)]


def make_samples() -> None:
    rng = np.random.default_rng(2026)
    SAMPLES_DIR.mkdir(exist_ok=True)
    clean = shared_data_dir() / "clean"
    for name in KODAK:
        img = load_frames(clean / name)[0]
        if img.shape[0] > img.shape[1]:  # portrait Kodak shots: keep every sample landscape
            img = np.ascontiguousarray(img.transpose(1, 0, 2))
        small = fit_frame(img, 256, 384)
        scale = float(np.exp(rng.uniform(np.log(0.04), np.log(0.8))))
        write_image(SAMPLES_DIR / f"night_{name}", degrade(small, rng, scale=scale))


if __name__ == "__main__":
    make_samples()
