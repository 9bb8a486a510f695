"""`lowlight-compile compare BUNDLE_A BUNDLE_B`: latency and fidelity side by side (Markdown, or JSON with --json).

Reads only what each bundle recorded (manifest.json, verification.json,
profile.json); nothing is re-measured, so compare bundles profiled on the same
host (the host, threads and load of each profile are printed beside them).
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

SUMMARY = "compare two bundles' latency and fidelity side by side (Markdown or JSON)"

#: (label, where in the gathered facts, lower is better?)
ROWS: list[tuple[str, str, bool | None]] = [
    ("target", "target", None), ("precision", "precision", None), ("input shape", "input_shape", None),
    ("fidelity mean (dB)", "fidelity_psnr_db", False), ("fidelity worst sample (dB)", "fidelity_psnr_db_min", False),
    ("SSIM mean", "fidelity_ssim", False), ("max abs error", "max_abs_error", True),
    ("ground-truth drop (dB)", "gt_drop_db", True), ("verification", "passed", None),
    ("latency median (ms)", "median", True), ("latency min (ms)", "min", True), ("latency p90 (ms)", "p90", True),
    ("latency p99 (ms)", "p99", True), ("latency std (ms)", "std", True), ("frames/s", "fps", False),
    ("profile runs", "runs", None), ("model size (MB)", "model_mb", True), ("host", "host", None), ("threads", "threads", None),
    ("load average", "load_average", None),
]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of `compare`."""
    p.add_argument("bundle_a", help="first bundle (the baseline, e.g. FP32)")
    p.add_argument("bundle_b", help="second bundle (e.g. INT8, or after a change)")
    p.add_argument("--json", action="store_true", help="print JSON instead of Markdown")
    p.add_argument("--out", default=None, help="also write the comparison to this file (.md or .json); refuses to replace a file it did not write")


def _load(path: str) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    from lowlight.core.errors import BundleError

    root = Path(path)
    if not (root / "manifest.json").is_file():
        raise BundleError(f"{root} is not a bundle (no manifest.json)", "pass directories written by `lowlight-compile --out`")
    m = json.loads((root / "manifest.json").read_text())

    def opt(name: str) -> dict[str, Any]:
        f = root / name
        try:
            return dict(json.loads(f.read_text())) if f.is_file() else {}
        except ValueError:
            return {}  # an annotated report that no longer parses: compare what is left

    return m, opt("verification.json") or dict(m.get("verification", {})), opt("profile.json")


def facts(path: str) -> dict[str, Any]:
    """What one bundle recorded, flattened to the rows of the comparison."""
    m, v, p = _load(path)
    root = Path(path)
    lat = p.get("latency_ms") or m.get("profile", {}).get("latency_ms", {})
    supported = set(p.get("percentiles_supported", ["p50", "p90", "p99"] if lat else []))
    files = m.get("files", {})
    size = sum((root / f).stat().st_size for f in files if (root / f).is_file() and (f.endswith(".onnx") or f.endswith(".data")))
    env = p.get("environment", {})
    return {
        "bundle": str(root), "target": m.get("target"), "precision": m.get("precision"),
        "input_shape": "x".join(map(str, m.get("inputs", [{}])[0].get("shape", []))),
        "fidelity_psnr_db": v.get("fidelity_psnr_db"), "fidelity_psnr_db_min": v.get("fidelity_psnr_db_min"),
        "fidelity_ssim": v.get("fidelity_ssim"), "max_abs_error": v.get("max_abs_error"),
        "gt_drop_db": (v.get("ground_truth") or {}).get("drop_db"), "passed": v.get("passed"),
        "reference": v.get("reference"), "emulation": v.get("emulation"),
        **{k: lat.get(k) for k in ("median", "min", "std")},
        **{k: (lat.get(k) if k in supported else None) for k in ("p90", "p99")},
        "fps": p.get("fps") or m.get("profile", {}).get("fps"), "runs": p.get("runs"),
        "model_mb": size / 1e6, "host": p.get("host") or m.get("profile", {}).get("host"),
        "threads": env.get("threads"), "load_average": env.get("load_average"),
    }


def _num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def compare(a: str, b: str) -> dict[str, Any]:
    """{"a": facts, "b": facts, "rows": [{label, a, b, delta, ratio, better}]}: B relative to A."""
    fa, fb = facts(a), facts(b)
    rows = []
    for label, key, lower in ROWS:
        va, vb = fa.get(key), fb.get(key)
        row: dict[str, Any] = {"label": label, "key": key, "a": va, "b": vb}
        if _num(va) and _num(vb) and lower is not None:
            row["delta"] = vb - va
            row["ratio"] = vb / va if va else None
            row["better"] = "same" if vb == va else ("b" if (vb < va) == lower else "a")
        rows.append(row)
    notes = []
    if fa.get("host") != fb.get("host") or fa.get("threads") != fb.get("threads"):
        notes.append("the two profiles were taken on different hosts or thread counts: latency is not comparable")
    return {"a": fa, "b": fb, "rows": rows, "notes": notes}


def _cell(x: Any) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, bool):
        return "PASSED" if x else "FAILED"
    if isinstance(x, float):
        return f"{x:.4g}" if abs(x) < 1e-2 or abs(x) >= 1e4 else f"{x:.2f}"
    return str(x)


def to_markdown(c: dict[str, Any]) -> str:
    """The comparison as a Markdown table (B vs A: difference and ratio)."""
    lines = ["# Compare", "", f"- A: `{c['a']['bundle']}`", f"- B: `{c['b']['bundle']}`", "",
             "| | A | B | B - A | B / A |", "|---|---:|---:|---:|---:|"]
    for r in c["rows"]:
        mark = " (better)" if r.get("better") == "b" else ""
        lines.append(f"| {r['label']} | {_cell(r['a'])} | {_cell(r['b'])}{mark} | {_cell(r.get('delta'))} | "
                     f"{_cell(r.get('ratio'))} |")
    lines += [""] + [f"- note: {n}" for n in c["notes"]]
    return "\n".join(lines).rstrip() + "\n"


def run(a: argparse.Namespace) -> int:
    """Print (and with --out write) the comparison."""
    c = compare(a.bundle_a, a.bundle_b)
    text = json.dumps(c, indent=2) + "\n" if a.json or (a.out and str(a.out).endswith(".json")) else to_markdown(c)
    print(text, end="")
    if a.out:
        from lowlight.core.errors import OutputError

        out = Path(a.out)
        if out.exists() and not (out.is_file() and out.read_text(errors="ignore").lstrip().startswith(("# Compare", '{\n  "a"'))):
            raise OutputError(f"{out} exists and is not a comparison this command wrote", "pass another --out path, or remove it yourself")
        out.write_text(text)
    return 0
