"""Verify stage: the compiled program against the model as trained, on held-out frames.

Both sides run the same program (every component, the sampler schedule, the
same noise from the bundle's seed). Fidelity = PSNR/SSIM of each image output
(layout BCHW/BTCHW/RGGB) against the reference. Non-image outputs (tokens,
latents) are reported by max abs error and exact agreement. With ground truth
(synthetic pairs from clean photos), also the PSNR drop against it.

The gate (two rules, both must hold):

- the **mean** PSNR over the held-out samples >= --min-fidelity, and
- the **worst sample** >= --min-fidelity - WORST_SAMPLE_MARGIN_DB (3 dB, i.e. at most
  twice the mean-squared error the budget allows). A mean can hide one broken
  frame (a saturated highlight, a scene the calibration never saw); single samples
  also vary more than their mean, so the worst is held to a looser floor rather
  than the same one, which would fail healthy INT8 builds on one hard photo.

Every sample's PSNR/SSIM is in verification.json; `write_error_maps` draws the
worst samples (input, reference, artifact, |error| heatmap) as PNGs.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from lowlight.core.errors import VerificationError
from lowlight.core.metrics import compare_outputs, psnr

Feed = dict[str, np.ndarray]
#: The worst sample may fall this far below --min-fidelity (see the module docstring).
WORST_SAMPLE_MARGIN_DB = 3.0
#: How many of the worst samples get an error map.
ERROR_MAPS = 3


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
    emulation: str | None = None,
    worst: list[tuple[float, int, Feed, dict[str, np.ndarray], dict[str, np.ndarray]]] | None = None,
    worst_margin_db: float = WORST_SAMPLE_MARGIN_DB,
) -> dict[str, Any]:
    """Run the artifact (`run(feed) -> outputs`) on `feeds`, compare with the reference; raise past a budget.

    The gate reads the first image output; every output is reported. `emulation`
    says what ran instead of the deployed runtime (TensorRT targets: onnxruntime on
    the host), and is printed in the report. `worst`, if given, receives the
    ERROR_MAPS worst samples as (psnr, index, feed, output, reference), for error maps.
    """
    primary = image_outputs[0] if image_outputs else None
    rows = []
    per_output: dict[str, list[dict[str, float]]] = {}
    for i, (feed, ref) in enumerate(zip(feeds, reference_outputs)):
        out = run(feed)
        cmp = compare_outputs(out, ref, image_outputs)
        for name, c in cmp.items():
            per_output.setdefault(name, []).append(c)
        rows.append({"index": i, **(cmp[primary] if primary else next(iter(cmp.values())))})
        if worst is not None and primary:
            worst.append((rows[-1]["psnr_db"], i, feed, out, ref))
            worst.sort(key=lambda w: w[0])
            del worst[ERROR_MAPS:]
    report: dict[str, Any] = {
        "frames": len(rows),
        "reference": reference_label,
        "emulation": emulation,
        "outputs": {n: _summary(v) for n, v in per_output.items()},
        "min_fidelity_db": min_fidelity,
        "worst_sample_floor_db": min_fidelity - worst_margin_db,
        "gate": f"mean PSNR >= {min_fidelity:g} dB and every sample >= {min_fidelity - worst_margin_db:g} dB",
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
    if primary:
        worst_row = min(rows, key=lambda r: r["psnr_db"])
        report["worst_sample"] = {"index": worst_row["index"], "psnr_db": worst_row["psnr_db"], "ssim": worst_row["ssim"],
                                  "max_abs": worst_row["max_abs"]}
    failures = []
    if report["fidelity_psnr_db"] < min_fidelity:
        failures.append(f"fidelity {report['fidelity_psnr_db']:.2f} dB to {reference_label} is below --min-fidelity {min_fidelity:g} dB")
    if report["fidelity_psnr_db_min"] < min_fidelity - worst_margin_db:
        failures.append(f"the worst sample (#{report['worst_sample']['index']}) is {report['fidelity_psnr_db_min']:.2f} dB, below "
                        f"--min-fidelity - {worst_margin_db:g} = {min_fidelity - worst_margin_db:g} dB")
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
    lines = [f"# {title}", ""]
    if report.get("emulation"):
        lines += [f"> **Emulated.** What ran here: {report['emulation']}.", ""]
    lines += [
        f"- held-out samples: {report['frames']}",
        f"- fidelity to {report.get('reference', 'FP32 PyTorch')}: **{report['fidelity_psnr_db']:.2f} dB** PSNR mean, "
        f"worst sample **{report['fidelity_psnr_db_min']:.2f} dB**, SSIM {report['fidelity_ssim']:.4f}",
        f"- gate: {report.get('gate') or 'mean PSNR >= %g dB' % report['min_fidelity_db']}",
        f"- max abs error: {report['max_abs_error']:.2e}",
    ]
    if report.get("backend"):
        lines.append(f"- ran on: {report['backend']}")
    gt = report.get("ground_truth")
    if gt:
        lines += [
            f"- ground truth ({gt['pairs']} synthetic pairs): input {gt['input_psnr_db']:.2f} dB, "
            f"FP32 {gt['fp32_psnr_db']:.2f} dB, artifact {gt['artifact_psnr_db']:.2f} dB, "
            f"drop **{gt['drop_db']:.3f} dB** (budget <= {gt['max_drop_db']:g} dB)",
        ]
    if report.get("routing"):
        from lowlight.compile.routing import to_markdown as routing_lines

        lines += routing_lines(report["routing"])
    lines.append(f"- result: {'PASSED' if report['passed'] else 'FAILED'}")
    if report.get("backend_selection"):  # the cpu target: every backend/precision candidate, why this one
        from lowlight.compile.openvino import to_markdown as selection_lines

        lines += selection_lines(report["backend_selection"])
    samples = [r for r in report.get("per_sample", []) if "psnr_db" in r]
    if samples:
        lines += ["", "## Per sample", "", "| sample | PSNR (dB) | SSIM | max abs error |", "|---:|---:|---:|---:|"]
        lines += [f"| {r.get('index', i)} | {r['psnr_db']:.2f} | {r['ssim']:.4f} | {r['max_abs']:.2e} |" for i, r in enumerate(samples)]
    maps = report.get("error_maps") or []
    if maps:
        lines += ["", "## Worst samples", ""]
        lines += [f"![sample {m['index']}: {m['psnr_db']:.2f} dB]({m['file']}) input | reference | artifact | |error| "
                  f"(0 to {m['max_error']:.3g}, colour scale inferno)" for m in maps]
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


def _frame(a: np.ndarray, t: int) -> np.ndarray:
    """One HxWx3 (or HxW) float frame of a BCHW/BTCHW array (batch 0, frame t)."""
    x = a[0]
    if x.ndim == 4:  # TCHW
        x = x[t]
    if x.ndim == 3:
        x = x[:3].transpose(1, 2, 0) if x.shape[0] >= 3 else x[0]
    return np.asarray(x, dtype=np.float32)


def error_map_image(inp: np.ndarray | None, ref: np.ndarray, out: np.ndarray) -> tuple[np.ndarray, float, int]:
    """(BGR uint8 panel: input | reference | artifact | |error| heatmap, the error at full colour, frame shown).

    For clips the frame with the largest error is shown; the heatmap is the
    per-pixel max over channels of |artifact - reference|, scaled so its largest
    value is the top of the inferno scale (the scale is printed beside the image).
    """
    import cv2

    err = np.abs(out.astype(np.float32) - ref.astype(np.float32))
    t = 0
    if err.ndim == 5:
        t = int(np.argmax(err[0].reshape(err.shape[1], -1).max(axis=1)))
    e = _frame(err, t)
    e = e.max(axis=-1) if e.ndim == 3 else e
    top = float(e.max()) or 1.0
    heat = cv2.applyColorMap(np.clip(e / top * 255, 0, 255).astype(np.uint8), cv2.COLORMAP_INFERNO)

    def rgb8(a: np.ndarray | None) -> np.ndarray:
        if a is None or a.ndim < 4:
            return np.zeros_like(heat)
        f = _frame(a, t if a.ndim == 5 else 0)
        f = np.repeat(f[..., None], 3, -1) if f.ndim == 2 else f
        img = (np.clip(f, 0, 1) * 255 + 0.5).astype(np.uint8)[..., ::-1]
        return cv2.resize(img, heat.shape[1::-1], interpolation=cv2.INTER_NEAREST) if img.shape[:2] != heat.shape[:2] else img

    return np.concatenate([rgb8(inp), rgb8(ref), rgb8(out), heat], axis=1), top, t


def write_error_maps(root: Any, worst: list[tuple[float, int, Feed, dict[str, np.ndarray], dict[str, np.ndarray]]],
                     output: str, input_name: str | None) -> list[dict[str, Any]]:
    """Write `verify_worst_<rank>.png` for the worst samples; returns their records (file, index, psnr, error scale)."""
    import cv2
    from pathlib import Path

    records = []
    for rank, (p, idx, feed, out, ref) in enumerate(sorted(worst, key=lambda w: w[0]), 1):
        if output not in out or output not in ref or np.asarray(ref[output]).ndim < 4:
            continue
        inp = feed.get(input_name) if input_name else None
        panel, top, t = error_map_image(inp if inp is not None and inp.shape == ref[output].shape else None, ref[output], out[output])
        scale = max(1, 256 // panel.shape[0])  # tiny test shapes stay visible
        if scale > 1:
            panel = cv2.resize(panel, (panel.shape[1] * scale, panel.shape[0] * scale), interpolation=cv2.INTER_NEAREST)
        name = f"verify_worst_{rank}.png"
        cv2.imwrite(str(Path(root) / name), panel)
        records.append({"file": name, "index": idx, "psnr_db": p, "max_error": top, "frame": t})
    return records
