"""Verify stage: the compiled program against the model as trained, on held-out frames.

Both sides run the same program (every component, the sampler schedule, the
same noise from the bundle's seed). Fidelity = PSNR/SSIM of each image output
(layout BCHW/BTCHW/RGGB) against the reference; the build fails when the mean
falls below --min-fidelity (the worst sample is reported beside it). Non-image outputs (tokens,
latents) are reported by max abs error and exact agreement. With ground truth
(synthetic pairs from clean photos), also the PSNR drop against it.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from lowlight.core.errors import VerificationError
from lowlight.core.metrics import compare_outputs, psnr

Feed = dict[str, np.ndarray]


def verify(
    run: Callable[[Feed], dict[str, np.ndarray]],
    reference_outputs: list[dict[str, np.ndarray]],
    feeds: list[Feed],
    min_fidelity: float,
    max_drop: float,
    image_outputs: list[str],
    gt_feeds: list[Feed] | None = None,
    gt_reference_outputs: list[dict[str, np.ndarray]] | None = None,
    ground_truth: list[np.ndarray] | None = None,
    precision: str = "",
    reference_label: str = "FP32 PyTorch",
) -> dict[str, Any]:
    """Run the artifact (`run(feed) -> outputs`) on `feeds`, compare with the reference; raise past a budget.

    The gate reads the first image output; every output is reported.
    """
    primary = image_outputs[0] if image_outputs else None
    rows = []
    per_output: dict[str, list[dict[str, float]]] = {}
    for feed, ref in zip(feeds, reference_outputs):
        out = run(feed)
        cmp = compare_outputs(out, ref, image_outputs)
        for name, c in cmp.items():
            per_output.setdefault(name, []).append(c)
        rows.append(cmp[primary] if primary else next(iter(cmp.values())))
    report: dict[str, Any] = {
        "frames": len(rows),
        "reference": reference_label,
        "outputs": {n: _summary(v) for n, v in per_output.items()},
        "min_fidelity_db": min_fidelity,
        "per_sample": rows,
    }
    if primary:
        report.update(
            fidelity_psnr_db=float(np.mean([r["psnr_db"] for r in rows])),
            fidelity_psnr_db_min=float(np.min([r["psnr_db"] for r in rows])),
            fidelity_ssim=float(np.mean([r["ssim"] for r in rows])),
            max_abs_error=float(max(r["max_abs"] for r in rows)),
        )
    else:
        report.update(fidelity_psnr_db=float("inf"), fidelity_psnr_db_min=float("inf"), fidelity_ssim=1.0,
                      max_abs_error=float(max(r["max_abs"] for r in rows)))
    if gt_feeds and ground_truth and gt_reference_outputs and primary:
        ref_psnr, art_psnr, in_psnr = [], [], []
        for feed, gt, ref in zip(gt_feeds, ground_truth, gt_reference_outputs):
            out = run(feed)[primary]
            ref_psnr.append(psnr(ref[primary], gt))
            art_psnr.append(psnr(out, gt))
            in_psnr.append(psnr(next(iter(feed.values())), gt))
        report["ground_truth"] = {
            "pairs": len(ref_psnr),
            "input_psnr_db": float(np.mean(in_psnr)),
            "fp32_psnr_db": float(np.mean(ref_psnr)),
            "artifact_psnr_db": float(np.mean(art_psnr)),
            "drop_db": float(np.mean(ref_psnr) - np.mean(art_psnr)),
            "max_drop_db": max_drop,
        }
    failures = []
    if report["fidelity_psnr_db"] < min_fidelity:
        failures.append(f"fidelity {report['fidelity_psnr_db']:.2f} dB to {reference_label} is below --min-fidelity {min_fidelity:g} dB")
    gt = report.get("ground_truth")
    if gt and gt["drop_db"] > max_drop:
        failures.append(f"PSNR against ground truth drops {gt['drop_db']:.3f} dB, above --max-drop {max_drop:g} dB")
    report["passed"] = not failures
    if failures:
        hint = (
            "try --precision fp16, calibrate on more frames from your camera (--calib), "
            "or relax --min-fidelity/--max-drop if this loss is acceptable"
            if precision == "int8"
            else "if the reference differs from the compiled options (see the reference named above), compile those options; "
            "otherwise this precision should not lose that much: please report it with the model and command"
        )
        err = VerificationError(f"{precision} artifact failed verification: " + "; ".join(failures), hint)
        err.report = report  # type: ignore[attr-defined]
        raise err
    return report


def _summary(rows: list[dict[str, float]]) -> dict[str, float]:
    keys = rows[0].keys()
    out: dict[str, float] = {}
    for k in keys:
        vals = [r[k] for r in rows]
        out[f"{k}_mean"] = float(np.mean(vals))
        out[f"{k}_worst"] = float(np.max(vals) if k in ("max_abs",) else np.min(vals))
    return out


def to_markdown(report: dict[str, Any], title: str = "Verification", data: dict[str, Any] | None = None) -> str:
    """The report as markdown; `data` (a `DataSelection.record()`, else report["data"]) says which frames were used."""
    lines = [
        f"# {title}",
        "",
        f"- held-out samples: {report['frames']}",
        f"- fidelity to {report.get('reference', 'FP32 PyTorch')}: **{report['fidelity_psnr_db']:.2f} dB** PSNR (worst sample {report['fidelity_psnr_db_min']:.2f}), "
        f"SSIM {report['fidelity_ssim']:.4f}; budget >= {report['min_fidelity_db']:g} dB",
        f"- max abs error: {report['max_abs_error']:.2e}",
    ]
    gt = report.get("ground_truth")
    if gt:
        lines += [
            f"- ground truth ({gt['pairs']} synthetic pairs): input {gt['input_psnr_db']:.2f} dB, "
            f"FP32 {gt['fp32_psnr_db']:.2f} dB, artifact {gt['artifact_psnr_db']:.2f} dB, "
            f"drop **{gt['drop_db']:.3f} dB** (budget <= {gt['max_drop_db']:g} dB)",
        ]
    lines.append(f"- result: {'PASSED' if report['passed'] else 'FAILED'}")
    data = data if data is not None else report.get("data")
    if data:
        lines += ["", "## Data", ""] + _data_markdown(data)
    return "\n".join(lines) + "\n"


def _data_markdown(data: dict[str, Any]) -> list[str]:
    """One entry per set: source, how many of how many, the selection's sha256, which frames, and any warnings."""
    lines: list[str] = []
    for role in ("calibration", "verification", "ground_truth"):
        rec = data.get(role)
        label = role.replace("_", " ")
        if not rec:
            lines.append(f"- {label}: not used")
            continue
        which = [it.get("file", f"#{it['index']}") for it in rec["items"]]
        lines += [
            f"- {label}: {rec['count']} of {rec['available']} {'frames' if rec['kind'] == 'video' else 'files'} "
            f"({rec['requested']} asked for) from `{rec['source']}` ({rec['kind']}), selection sha256 `{rec['sha256'][:16]}`",
            f"  - {'frames' if rec['kind'] == 'video' else 'files'}: {', '.join(which)}",
        ]
        if rec.get("source_sha256"):
            lines.append(f"  - video sha256 `{rec['source_sha256'][:16]}`")
    split = next((data[r]["split"] for r in ("calibration", "verification") if data.get(r) and data[r].get("split")), None)
    if split:
        lines.append(f"- {split}")
    warnings = [w for r in ("calibration", "verification", "ground_truth") if data.get(r) for w in data[r]["warnings"]]
    lines += [f"- warning: {w}" for w in warnings]
    return lines
