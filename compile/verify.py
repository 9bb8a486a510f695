"""Verify stage: the compiled artifact against its FP32 PyTorch self on held-out frames.

Fidelity = PSNR/SSIM of the artifact's output vs the FP32 PyTorch output. With
ground truth (synthetic pairs from clean photos), also the PSNR drop against
it. Fails the build below --min-fidelity or above --max-drop.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from lowlight.compile.metrics import psnr, ssim
from lowlight.compile.simplify import onnx_runner
from lowlight.core.errors import VerificationError

if TYPE_CHECKING:
    import torch


def torch_outputs(module: "torch.nn.Module", feeds: list[dict[str, np.ndarray]]) -> list[np.ndarray]:
    """FP32 PyTorch outputs for each feed (inputs passed positionally, in feed order)."""
    import torch

    outs = []
    with torch.no_grad():
        for feed in feeds:
            outs.append(module(*(torch.from_numpy(v) for v in feed.values())).numpy())
    return outs


def _planes(x: np.ndarray) -> np.ndarray:
    """[..., H, W] planes of an image batch for SSIM."""
    return x.reshape(-1, *x.shape[-2:])


def fidelity(pred: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    return psnr(pred, ref), ssim(_planes(pred), _planes(ref))


def verify(
    artifact: str | Path,
    reference_outputs: list[np.ndarray],
    feeds: list[dict[str, np.ndarray]],
    min_fidelity: float,
    max_drop: float,
    gt_feeds: list[dict[str, np.ndarray]] | None = None,
    gt_reference_outputs: list[np.ndarray] | None = None,
    ground_truth: list[np.ndarray] | None = None,
    run: Callable[[str | Path, dict[str, np.ndarray]], list[np.ndarray]] | None = None,
    precision: str = "",
) -> dict[str, Any]:
    """Run `artifact` on `feeds`, compare with `reference_outputs`; raise VerificationError past a budget.

    `run(artifact, feed)` defaults to one onnxruntime session for all feeds.
    """
    if run is None:
        session = onnx_runner(artifact)
        run = lambda _path, feed: session(feed)  # noqa: E731
    rows = []
    max_abs = 0.0
    for feed, ref in zip(feeds, reference_outputs):
        out = run(artifact, feed)[0]
        p, s = fidelity(out, ref)
        max_abs = max(max_abs, float(np.max(np.abs(out.astype(np.float64) - ref))))
        rows.append({"psnr_db": p, "ssim": s})
    report: dict[str, Any] = {
        "frames": len(rows),
        "fidelity_psnr_db": float(np.mean([r["psnr_db"] for r in rows])),
        "fidelity_psnr_db_min": float(np.min([r["psnr_db"] for r in rows])),
        "fidelity_ssim": float(np.mean([r["ssim"] for r in rows])),
        "max_abs_error": max_abs,
        "min_fidelity_db": min_fidelity,
        "per_sample": rows,
    }
    if gt_feeds and ground_truth and gt_reference_outputs:
        ref_psnr, art_psnr, in_psnr = [], [], []
        for feed, gt, ref in zip(gt_feeds, ground_truth, gt_reference_outputs):
            out = run(artifact, feed)[0]
            ref_psnr.append(psnr(ref, gt))
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
        failures.append(
            f"fidelity {report['fidelity_psnr_db']:.2f} dB to the FP32 model is below --min-fidelity {min_fidelity:g} dB"
        )
    gt = report.get("ground_truth")
    if gt and gt["drop_db"] > max_drop:
        failures.append(f"PSNR against ground truth drops {gt['drop_db']:.3f} dB, above --max-drop {max_drop:g} dB")
    report["passed"] = not failures
    if failures:
        hint = (
            "try --precision fp16, calibrate on more frames from your camera (--calib), "
            "or relax --min-fidelity/--max-drop if this loss is acceptable"
            if precision == "int8"
            else "this precision should not lose that much: please report it with the model and command"
        )
        err = VerificationError(f"{precision} artifact failed verification: " + "; ".join(failures), hint)
        err.report = report  # type: ignore[attr-defined]
        raise err
    return report


def to_markdown(report: dict[str, Any], title: str = "Verification", data: dict[str, Any] | None = None) -> str:
    """The report as markdown; `data` (a `DataSelection.record()`, else report["data"]) says which frames were used."""
    lines = [
        f"# {title}",
        "",
        f"- held-out samples: {report['frames']}",
        f"- fidelity to FP32 PyTorch: **{report['fidelity_psnr_db']:.2f} dB** PSNR (min {report['fidelity_psnr_db_min']:.2f}), "
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
