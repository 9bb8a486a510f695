"""How the reference weights hold up: each darkening recipe separately, and the artefacts on real low-light photos.

`lowlight-compile zoo eval FAMILY --config C` runs this on the shipped (or given) weights; the trainers run it
after training and store the result in the weights' JSON under ``"recipes"`` and ``"real"``.

- Per recipe (`calibration.degrade.recipe_pairs`: ``srgb``, ``linear``, ``normal``), on two photo sets: the
  project's held-out photos of ``shared/data/clean`` (never trained on) and ``shared/data/eval/clean`` (CBSD68,
  another data set: photos no recipe ever saw). Darkening recipes report PSNR/SSIM of input and output against
  the clean photo and the gain; ``normal`` reports PSNR of the output against its own (clean) input and the
  share of output pixels >= 0.98 (blow-out).
- On the real low-light photos of ``shared/data/lowlight_real`` (no ground truth): `core.metrics.lattice_ratio`
  (mid-frequency energy added in flat dark regions, per unit gain; <= 1 is the input's own level) and
  `core.metrics.halo_undershoot` (dark rings next to lights beyond the output's own tone curve; about 0 for the input).

Aims (reference-weights issue): +8 dB on every darkening recipe, >= 25 dB on ``normal``, lattice <= 1 and no
halo above the input's own level.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

#: An enhancer under evaluation: HxWx3 float32 in [0, 1] -> HxWx3 in [0, 1].
Enhance = Callable[[np.ndarray], np.ndarray]

#: Real photos are scored at most this size on the long side (the CPU cost of base on 69 photos).
REAL_MAX_SIDE = 640
#: Blow-out: a pixel channel at or above this counts as white.
SATURATED = 0.98


def photo_sets(crop: int = 256) -> dict[str, list[np.ndarray]]:
    """{"heldout": the project's held-out clean photos, "unseen": shared/data/eval/clean} as HxWx3 float32."""
    from lowlight.calibration.data import shared_data_dir
    from lowlight.calibration.frames import load_frames
    from lowlight.models.train_loop import split_photos

    sets = {"heldout": [f for p in split_photos()[1] for f in load_frames(p)]}
    unseen = shared_data_dir() / "eval" / "clean"  # type: ignore[operator]
    if unseen.is_dir():  # evaluated on, never trained or calibrated on
        sets["unseen"] = [f for p in sorted(unseen.glob("*.png")) for f in load_frames(p)]
    return {k: [p for p in v if min(p.shape[:2]) >= crop] for k, v in sets.items()}


def recipe_scores(enhance: Enhance, photos: list[np.ndarray], size: int = 256) -> dict[str, dict[str, float]]:
    """Per recipe, mean PSNR/SSIM of input and output against the target (see the module docstring)."""
    from lowlight.calibration.degrade import RECIPES, recipe_pairs
    from lowlight.core.metrics import psnr, ssim

    out: dict[str, dict[str, float]] = {}
    for recipe in RECIPES:
        rows = []
        for low, clean in recipe_pairs(photos, recipe, size=size):
            pred = np.clip(enhance(low), 0.0, 1.0)
            chw = lambda a: a.transpose(2, 0, 1)  # noqa: E731
            rows.append((psnr(low, clean), psnr(pred, clean), ssim(chw(pred), chw(clean)), float((pred >= SATURATED).mean())))
        a = np.array(rows, np.float64)
        if recipe == "normal":
            out[recipe] = {"psnr_out_vs_in": round(float(a[:, 1].mean()), 3), "worst_db": round(float(a[:, 1].min()), 3),
                           "ssim_out_vs_in": round(float(a[:, 2].mean()), 4), "saturated": round(float(a[:, 3].mean()), 4),
                           "pairs": len(rows)}
        else:
            out[recipe] = {"psnr_in": round(float(a[:, 0].mean()), 3), "psnr_out": round(float(a[:, 1].mean()), 3),
                           "gain_db": round(float(a[:, 1].mean() - a[:, 0].mean()), 3), "ssim_out": round(float(a[:, 2].mean()), 4),
                           "pairs": len(rows)}
    return out


def real_photos(max_side: int = REAL_MAX_SIDE, multiple: int = 8) -> list[tuple[str, np.ndarray]]:
    """(name, HxWx3) real low-light photos of shared/data/lowlight_real, downscaled to `max_side`, cropped to `multiple`."""
    import cv2

    from lowlight.calibration.data import shared_data_dir

    out = []
    for p in sorted((shared_data_dir() / "lowlight_real").glob("*.jpg")):  # type: ignore[operator]
        img = cv2.imread(str(p), cv2.IMREAD_COLOR)[..., ::-1].astype(np.float32) / 255.0
        s = max_side / max(img.shape[:2])
        if s < 1:
            img = cv2.resize(img, (round(img.shape[1] * s), round(img.shape[0] * s)), interpolation=cv2.INTER_AREA)
        h, w = img.shape[0] // multiple * multiple, img.shape[1] // multiple * multiple
        out.append((p.name, np.ascontiguousarray(img[:h, :w])))
    return out


def real_artifacts(enhance: Enhance, photos: list[tuple[str, np.ndarray]] | None = None) -> dict[str, Any]:
    """Lattice and halo on real low-light photos: median, worst, and the worst photos by name."""
    from lowlight.core.metrics import halo_undershoot, lattice_ratio

    photos = real_photos() if photos is None else photos
    lat, halo = {}, {}
    for name, img in photos:
        pred = np.clip(enhance(img), 0.0, 1.0)
        lat[name], halo[name] = lattice_ratio(img, pred), halo_undershoot(img, pred)

    def summary(d: dict[str, float]) -> dict[str, Any]:
        v = {k: x for k, x in d.items() if np.isfinite(x)}
        worst = sorted(v, key=v.get, reverse=True)[:3]  # type: ignore[arg-type]
        return {"median": round(float(np.median(list(v.values()))), 4), "max": round(float(max(v.values())), 4),
                "mean": round(float(np.mean(list(v.values()))), 4), "photos": len(v), "worst": {k: round(v[k], 4) for k in worst}}

    return {"lattice": summary(lat), "halo": summary(halo)}


def evaluate(enhance: Enhance, say: Callable[[str], Any] = print) -> dict[str, Any]:
    """Every recipe on both photo sets, and the real-photo artefacts; prints one line per result."""
    res: dict[str, Any] = {"recipes": {}}
    for set_name, photos in photo_sets().items():
        scores = recipe_scores(enhance, photos)
        res["recipes"][set_name] = scores
        for recipe, s in scores.items():
            if recipe == "normal":
                say(f"  {set_name:7s} {recipe:6s}  output vs input {s['psnr_out_vs_in']:.2f} dB (worst {s['worst_db']:.2f}), "
                    f"{100 * s['saturated']:.1f}% pixels >= {SATURATED}")
            else:
                say(f"  {set_name:7s} {recipe:6s}  input {s['psnr_in']:.2f} dB -> {s['psnr_out']:.2f} dB ({s['gain_db']:+.2f}), SSIM {s['ssim_out']:.3f}")
    res["real"] = real_artifacts(enhance)
    for k, s in res["real"].items():
        say(f"  real    {k:7s}  median {s['median']:.3f}, worst {s['max']:.3f} ({', '.join(s['worst'])}) on {s['photos']} photos")
    return res


def aims_met(res: dict[str, Any], gain_db: float = 8.0, identity_db: float = 25.0, lattice: float = 1.0,
             halo: float = 0.05) -> dict[str, bool]:
    """The reference-weights aims on the held-out photos, one flag each.

    Halo: the input scores about 0; 0.05 (rings 5% darker than the frame's own tone curve, mean over
    the real photos) is the tolerance for local contrast that is not a ring.
    """
    held = res["recipes"]["heldout"]
    return {
        **{f"gain_{r}": held[r]["gain_db"] >= gain_db for r in held if r != "normal"},
        "identity": held["normal"]["psnr_out_vs_in"] >= identity_db,
        "lattice": res["real"]["lattice"]["median"] <= lattice,
        "halo": res["real"]["halo"]["mean"] <= halo,
    }
