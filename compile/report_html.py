"""A bundle's human-facing reports: `report.html` (self-contained, offline), `MODEL_CARD.md`, ONNX metadata.

report.html has no script, no font, no stylesheet or image from anywhere else:
images are PNGs inlined as base64 data URIs, charts are inline SVG, CSS is in the
page. It opens from a USB stick on an air-gapped machine. It is rebuilt from
the bundle's own files (manifest.json, verification.json, profile.json, the
verify_worst_*.png error maps), so `lowlight-compile profile` refreshes it.

Each section's heading carries a colour bar of its own (SECTION_COLOURS): the
browser test finds every section in a screenshot by that colour.
"""
from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path
from typing import Any

REPORT = "report.html"
MODEL_CARD = "MODEL_CARD.md"
#: section id -> (title, the colour of its heading bar: unique, so a screenshot shows which sections rendered)
SECTION_COLOURS = {
    "summary": ("Summary", "#1f77b4"),
    "stages": ("Stages", "#2ca02c"),
    "fidelity": ("Fidelity per sample", "#d62728"),
    "samples": ("Worst samples: input, reference, artifact, error", "#9467bd"),
    "latency": ("Latency on this host", "#8c564b"),
    "operators": ("Operators", "#e377c2"),
    "roofline": ("Roofline", "#17becf"),
    "card": ("Model card", "#bcbd22"),
}
META_PREFIX = "lowlight."


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _esc(x: Any) -> str:
    return html.escape(str(x))


def _f(x: Any, nd: int = 2) -> str:
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.{nd}f}"


def _table(head: list[str], rows: list[list[Any]]) -> str:
    th = "".join(f"<th>{_esc(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{_esc(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{th}</tr>{body}</table>"


def _bars_svg(items: list[tuple[str, float]], unit: str, colour: str, width: int = 720, lines: list[tuple[float, str]] | None = None,
              lo: float | None = None) -> str:
    """Horizontal bars (label, value); optional vertical reference lines (value, label); `lo` is the axis start."""
    if not items:
        return "<p>no data</p>"
    vals = [v for _, v in items if math.isfinite(v)] + [v for v, _ in (lines or [])]
    hi = max(vals) if vals else 1.0
    lo = min(0.0, min(vals)) if lo is None else lo
    span = (hi - lo) or 1.0
    row, left, plot = 22, 220, width - 300
    h = row * len(items) + 30
    out = [f'<svg width="{width}" height="{h}" role="img">']
    for i, (label, v) in enumerate(items):
        y = 10 + i * row
        w = plot * (min(v, hi) - lo) / span if math.isfinite(v) else plot
        out.append(f'<text x="{left - 6}" y="{y + 14}" text-anchor="end" font-size="12">{_esc(label[:34])}</text>')
        out.append(f'<rect x="{left}" y="{y}" width="{max(w, 1):.1f}" height="{row - 6}" fill="{colour}"/>')
        out.append(f'<text x="{left + max(w, 1) + 4:.1f}" y="{y + 14}" font-size="12">{_f(v)} {unit}</text>')
    for v, label in lines or []:
        x = left + plot * (v - lo) / span
        out.append(f'<line x1="{x:.1f}" y1="4" x2="{x:.1f}" y2="{h - 16}" stroke="#000" stroke-dasharray="4 3"/>')
        out.append(f'<text x="{x:.1f}" y="{h - 4}" font-size="11" text-anchor="middle">{_esc(label)}</text>')
    out.append("</svg>")
    return "".join(out)


def _histogram_svg(times: list[float], stats: dict[str, float], width: int = 720, height: int = 220) -> str:
    if not times:
        return "<p>no timed runs</p>"
    lo, hi = min(times), max(times)
    bins = max(5, min(40, int(math.sqrt(len(times))) * 2))
    step = (hi - lo) / bins or 1.0
    counts = [0] * bins
    for t in times:
        counts[min(int((t - lo) / step), bins - 1)] += 1
    top = max(counts)
    left, plot_w, plot_h = 50, width - 70, height - 50
    out = [f'<svg width="{width}" height="{height}" role="img">']
    bw = plot_w / bins
    for i, c in enumerate(counts):
        bh = plot_h * c / top
        out.append(f'<rect x="{left + i * bw:.1f}" y="{10 + plot_h - bh:.1f}" width="{bw - 1:.1f}" height="{bh:.1f}" fill="#8c564b"/>')
    for key in ("median", "p90", "p99"):
        v = stats.get(key)
        if v is None:
            continue
        x = left + plot_w * (v - lo) / ((hi - lo) or 1.0)
        out.append(f'<line x1="{x:.1f}" y1="10" x2="{x:.1f}" y2="{10 + plot_h}" stroke="#000" stroke-dasharray="4 3"/>')
        out.append(f'<text x="{x:.1f}" y="{height - 24}" font-size="11" text-anchor="middle">{key}</text>')
    out.append(f'<text x="{left}" y="{height - 6}" font-size="12">{_f(lo)} ms</text>')
    out.append(f'<text x="{left + plot_w}" y="{height - 6}" font-size="12" text-anchor="end">{_f(hi)} ms ({len(times)} runs)</text>')
    out.append("</svg>")
    return "".join(out)


def _roofline_svg(est: dict[str, Any], width: int = 560, height: int = 300) -> str:
    """Log-log roofline of the target: attainable TFLOPS vs FLOP/byte, with the model's point (fused-memory intensity)."""
    peak, bw = est.get("peak_tops"), est.get("dram_gbps")
    gflops, mb = est.get("gflops"), est.get("fused_mb")
    if not peak or not bw or not gflops or not mb:
        return "<p>This target has no peak figures (docs/targets.md): no roofline to draw.</p>"
    ai = gflops * 1e9 / (mb * 1e6)
    ridge = peak * 1e12 / (bw * 1e9)
    x_lo, x_hi = math.log10(min(ai, ridge) / 10), math.log10(max(ai, ridge) * 10)
    y_hi = math.log10(peak * 2)
    y_lo = math.log10(bw * 1e9 * 10 ** x_lo / 1e12)

    def px(ai_: float, tf: float) -> tuple[float, float]:
        x = 50 + (width - 70) * (math.log10(ai_) - x_lo) / (x_hi - x_lo)
        y = 10 + (height - 50) * (1 - (math.log10(tf) - y_lo) / (y_hi - y_lo))
        return x, y

    a0, a1 = 10 ** x_lo, 10 ** x_hi
    p0, pr, p1 = px(a0, bw * 1e9 * a0 / 1e12), px(ridge, peak), px(a1, peak)
    attain = min(peak, bw * 1e9 * ai / 1e12)
    pt = px(ai, attain)
    return (f'<svg width="{width}" height="{height}" role="img">'
            f'<polyline points="{p0[0]:.1f},{p0[1]:.1f} {pr[0]:.1f},{pr[1]:.1f} {p1[0]:.1f},{p1[1]:.1f}" fill="none" stroke="#17becf" stroke-width="3"/>'
            f'<circle cx="{pt[0]:.1f}" cy="{pt[1]:.1f}" r="6" fill="#d62728"/>'
            f'<text x="{pt[0] + 8:.1f}" y="{pt[1] + 4:.1f}" font-size="12">model: {ai:.1f} FLOP/B, {attain:.2f} TFLOPS attainable</text>'
            f'<text x="50" y="{height - 20}" font-size="12">arithmetic intensity (FLOP/byte, log)</text>'
            f'<text x="{width - 20}" y="20" font-size="12" text-anchor="end">peak {peak} TFLOPS, {bw} GB/s</text></svg>')


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{_esc(path.name)}" src="data:image/png;base64,{data}">'


def _section(sid: str, body: str) -> str:
    title, colour = SECTION_COLOURS[sid]
    return f'<section id="{sid}"><h2 style="border-left:40px solid {colour}">{_esc(title)}</h2>{body}</section>'


def render(root: str | Path) -> str:
    """The HTML report of the bundle at `root` (read from its files; nothing fetched)."""
    root = Path(root)
    m = _read_json(root / "manifest.json") or {}
    v = _read_json(root / "verification.json") or m.get("verification") or {}
    p = _read_json(root / "profile.json") or {}
    trt = m.get("runtime") == "tensorrt"
    parts = []
    # -- summary
    rows = [["target", m.get("target")], ["runtime", m.get("runtime")], ["precision", m.get("precision")],
            ["model", f"{m.get('family', '')} {m.get('config', '')}"], ["created", m.get("created")],
            ["verification", ("PASSED" if v.get("passed") else "FAILED") + f": mean {_f(v.get('fidelity_psnr_db'))} dB, "
             f"worst {_f(v.get('fidelity_psnr_db_min'))} dB vs {v.get('reference', '')}; gate {v.get('gate', '')}"],
            ["latency (host)", f"median {_f(p.get('latency_ms', {}).get('median'))} ms, {_f(p.get('fps'), 1)} frames/s"
             + (" (onnxruntime on this CPU, not the device)" if trt else "")],
            ["engine", (m.get("engine_status") or "") if trt else "n/a (onnxruntime target)"]]
    summary = _table(["", ""], rows)
    if v.get("emulation"):
        summary = f'<p class="warn"><b>Verification emulated:</b> {_esc(v["emulation"])}</p>' + summary
    parts.append(_section("summary", summary))
    # -- stages
    secs = dict(m.get("stages", {}).get("seconds", {}))
    parts.append(_section("stages", _bars_svg([(k, float(s)) for k, s in secs.items()], "s", "#2ca02c")
                          + _table(["stage", "seconds"], [[k, _f(s, 3)] for k, s in secs.items()])))
    # -- fidelity
    samples = [r for r in v.get("per_sample", []) if "psnr_db" in r]
    floor, budget = v.get("worst_sample_floor_db"), v.get("min_fidelity_db")
    lines = [(x, lab) for x, lab in ((budget, "mean budget"), (floor, "worst-sample floor")) if x is not None]
    fid = _bars_svg([(f"sample {r.get('index', i)}", min(float(r["psnr_db"]), 200.0)) for i, r in enumerate(samples)], "dB", "#d62728",
                    lines=lines, lo=0.0)
    fid += _table(["sample", "PSNR dB", "SSIM", "max abs error"],
                  [[r.get("index", i), _f(r["psnr_db"]), _f(r["ssim"], 4), f"{r['max_abs']:.2e}"] for i, r in enumerate(samples)])
    gt = v.get("ground_truth")
    if gt:
        fid += (f"<p>Ground truth ({gt['pairs']} synthetic pairs): input {_f(gt['input_psnr_db'])} dB, FP32 {_f(gt['fp32_psnr_db'])} dB, "
                f"artifact {_f(gt['artifact_psnr_db'])} dB, drop {_f(gt['drop_db'], 3)} dB (budget {gt['max_drop_db']} dB)</p>")
    data = m.get("data") or {}
    ver = data.get("verification") or {}
    if ver:
        fid += (f"<p>Verification data: {ver.get('count')} of {ver.get('available')} from <code>{_esc(ver.get('source'))}</code>, "
                f"selection sha256 <code>{_esc(str(ver.get('sha256', ''))[:16])}</code>.</p>")
    parts.append(_section("fidelity", fid))
    # -- worst samples (before/after + error heatmaps)
    maps = v.get("error_maps") or []
    imgs = "".join(f"<figure>{_img(root / e['file'])}<figcaption>sample {e['index']}: {_f(e['psnr_db'])} dB; input | reference | "
                   f"artifact | |error| 0 to {e['max_error']:.3g} (inferno)</figcaption></figure>"
                   for e in maps if (root / e["file"]).is_file())
    parts.append(_section("samples", imgs or "<p>no image outputs to draw</p>"))
    # -- latency
    lat = p.get("latency_ms", {})
    sup = set(p.get("percentiles_supported", []))
    shown = {k: lat.get(k) for k in ("median", "p90", "p99") if k == "median" or k in sup}
    lat_body = _histogram_svg(p.get("times_ms", []), shown) if p else "<p>not profiled</p>"
    if p:
        env = p.get("environment", {})
        lat_body += _table(["statistic", "ms"], [[k, _f(lat.get(k), 3)] for k in ("min", "max", "mean", "median", "std")]
                           + [[k, _f(lat.get(k), 3) if k in sup else f"n/a (too few runs: {p.get('runs')})"] for k in ("p90", "p95", "p99")])
        lat_body += (f"<p>{_esc(p.get('host'))}; threads {_esc(env.get('threads'))}; load average {_esc(env.get('load_average'))}; "
                     f"{_esc(env.get('versions'))}; {_esc(env.get('date'))}</p>")
        if trt:
            lat_body = "<p class=\"warn\">Host CPU (onnxruntime), not the target device.</p>" + lat_body
    parts.append(_section("latency", lat_body))
    # -- operators
    ops = p.get("top_op_types", [])[:15]
    op_body = _bars_svg([(o["op_type"], float(o.get("headline_ms", o.get("ms_per_run", 0.0)))) for o in ops], "ms", "#e377c2")
    rec = p.get("reconcile")
    if rec:
        op_body += (f"<p>Bars are each op type's share of the headline median ({_f(rec['headline_median_ms'])} ms): profiled times "
                    f"x {rec['scale_to_headline']:.3f}. Kernels {_f(rec['kernels_scaled_ms'])} ms; the rest is onnxruntime between "
                    "kernels and program glue (profile.md).</p>")
    op_body += _table(["kernel", "ONNX node", "op", "PyTorch module", "ms of headline"],
                      [[n["node"], n.get("onnx_node", ""), n["op_type"], n.get("module") or "-", _f(n.get("headline_ms"), 3)]
                       for n in p.get("top_nodes", [])])
    parts.append(_section("operators", op_body))
    # -- roofline
    est = p.get("roofline")
    roof = (_roofline_svg(est) + f"<p>Predicted per frame: {_f(est.get('per_frame_bound_ms'), 3)} ms (bound) / "
            f"{_f(est.get('per_frame_roundtrip_ms'), 3)} ms (no fusion) on {_esc(est.get('target'))}; a prediction, not a measurement.</p>"
            ) if est else "<p>No roofline for this bundle (several components, or no compiler installed).</p>"
    dev = m.get("engine_profile")
    if dev:
        roof += f"<p>Measured on the device by build-engine: {_esc(json.dumps(dev.get('with_cuda_graph') or dev.get('without_cuda_graph')))}</p>"
    parts.append(_section("roofline", roof))
    # -- model card
    card = root / MODEL_CARD
    parts.append(_section("card", f"<pre>{_esc(card.read_text())}</pre>" if card.is_file() else "<p>no model card</p>"))
    style = ("body{font-family:sans-serif;margin:24px;max-width:1100px}h2{padding-left:10px}table{border-collapse:collapse;margin:8px 0}"
             "td,th{border:1px solid #ccc;padding:2px 8px;font-size:13px;text-align:left}img{max-width:100%;image-rendering:pixelated}"
             ".warn{background:#fff3cd;padding:6px}pre{white-space:pre-wrap;font-size:12px}")
    title = f"{m.get('name', root.name)}: {m.get('target')} {m.get('precision')}"
    return (f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{_esc(title)}</title><style>{style}</style></head>"
            f"<body><h1>{_esc(title)}</h1>{''.join(parts)}</body></html>\n")


def write_report(root: str | Path) -> Path:
    """Write report.html into the bundle (a report: hashed apart, may be annotated)."""
    path = Path(root) / REPORT
    path.write_text(render(root), encoding="utf-8")
    return path


# -- model card and ONNX metadata ---------------------------------------------------------

def _tensor_line(t: dict[str, Any]) -> str:
    rng = t.get("range")
    return (f"`{t['name']}` {t.get('dtype', 'float32')} {'x'.join(map(str, t.get('shape', [])))}, layout {t.get('layout', '?')}"
            + (f", values in [{rng[0]:g}, {rng[1]:g}]" if rng else ""))


def _architecture(m: dict[str, Any]) -> str:
    fam = m.get("family")
    if not fam:
        return "a user-supplied ONNX graph"
    try:
        from lowlight.models import get_family

        f = get_family(str(fam))
        return f"{getattr(f, 'summary', '') or (f.__doc__ or '').strip().splitlines()[0]} (family `{fam}`, config `{m.get('config')}`)"
    except Exception:  # a user's family that no longer imports: the card still names it
        return f"family `{fam}`, config `{m.get('config')}`"


def _training(m: dict[str, Any]) -> str:
    ck = m.get("checkpoint") or {}
    path = ck.get("path")
    if not path:
        return "not recorded (ONNX input or random weights)"
    info = _read_json(Path(path).with_suffix(".json"))
    line = f"checkpoint `{Path(path).name}` (sha256 `{str(ck.get('sha256', ''))[:16]}`)" + (" - the shipped reference weights" if ck.get("reference_weights") else "")
    if isinstance(info, dict):
        keys = {k: info[k] for k in ("steps", "crop", "frames", "parameters", "psnr_rgb", "ssim_rgb", "gain_rgb_db") if k in info}
        line += f"; training record: {json.dumps(keys)}; held-out photos: {', '.join(info.get('held_out', []))}"
    return line


def card_facts(m: dict[str, Any], verification: dict[str, Any]) -> dict[str, str]:
    """The facts of the card as strings: MODEL_CARD.md shows them, each ONNX graph carries them in metadata_props."""
    ver = m.get("data", {}).get("verification") or {}
    engine = (f"TensorRT {m.get('tensorrt', {}).get('trt_version') or m.get('trt_version')} on "
              f"{m.get('tensorrt', {}).get('arch', '?')}; engine: {m.get('engine_status', 'not built')}"
              if m.get("runtime") == "tensorrt" else
              f"OpenVINO >= 2025.1 on a CPU (IR files; precision hint {m.get('openvino', {}).get('inference_precision_hint', 'f32')}, "
              "bf16 needs AVX512-BF16 or AMX, else it runs f32); no engine"
              if m.get("runtime") == "openvino" else "onnxruntime >= 1.18 (any CPU); no engine")
    return {
        "name": str(m.get("name", "")),
        "architecture": _architecture(m),
        "family": str(m.get("family", "")), "config": str(m.get("config", "")),
        "options": json.dumps(m.get("family_options", {})),
        "inputs": json.dumps([{k: t.get(k) for k in ("name", "shape", "dtype", "layout", "range")} for t in m.get("inputs", [])]),
        "outputs": json.dumps([{k: t.get(k) for k in ("name", "shape", "dtype", "layout", "range")} for t in m.get("outputs", [])]),
        "training": _training(m),
        "target": str(m.get("target", "")), "runtime": str(m.get("runtime", "")), "precision": str(m.get("precision", "")),
        "fidelity": (f"mean {_f(verification.get('fidelity_psnr_db'))} dB, worst sample {_f(verification.get('fidelity_psnr_db_min'))} dB, "
                     f"SSIM {_f(verification.get('fidelity_ssim'), 4)} vs {verification.get('reference', '')} on {verification.get('frames')} "
                     f"held-out samples ({ver.get('source', '?')}); gate {verification.get('gate', '')}; "
                     f"{'PASSED' if verification.get('passed') else 'FAILED'}"
                     + (f"; emulated: {verification['emulation']}" if verification.get("emulation") else "")),
        "engine_compatibility": engine,
        "float_nodes": _float_nodes(m),
        "created": str(m.get("created", "")),
        "tools": json.dumps(m.get("tools", {})),
    }


def _float_nodes(m: dict[str, Any]) -> str:
    """Per INT8 component: how many nodes stayed float, the family's floor and what the measurement gave back."""
    parts = []
    for name, comp in (m.get("components") or {}).items():
        q = (comp.get("stages") or {}).get("quantize") or {}
        fm = q.get("float_nodes") or (q.get("engines", {}).get(q.get("engine"), {}).get("float_nodes") if q.get("engines") else None)
        if not fm:
            continue
        given = len(fm.get("given_back", [])) + len(fm.get("given_back_for_fusion", []))
        parts.append(f"{name}: {fm.get('floor', 0)} float by the family's policy + {given} of {fm.get('candidates', '?')} quantized nodes "
                     f"given back by measured sensitivity (budget {_f(fm.get('budget_db'))} dB on the worst of {fm.get('frames')} "
                     f"calibration frames; all-INT8 {_f((fm.get('all_int8_db') or {}).get('worst'))} dB, "
                     f"kept {_f((fm.get('final_db') or {}).get('worst'))} dB)")
    return "; ".join(parts) or "n/a (no INT8 component)"


def model_card(m: dict[str, Any], verification: dict[str, Any]) -> str:
    """MODEL_CARD.md for the bundle described by manifest `m`."""
    facts = card_facts(m, verification)
    lines = [
        f"# Model card: {facts['name']}", "",
        "## Architecture", "", facts["architecture"] + (f"; options {facts['options']}" if facts["options"] != "{}" else ""), "",
        "## Inputs and outputs", "",
        *[f"- input {_tensor_line(t)}" for t in m.get("inputs", [])],
        *[f"- output {_tensor_line(t)}" for t in m.get("outputs", [])], "",
        "## Training data", "", facts["training"], "",
        "## Fidelity", "", facts["fidelity"], "",
        "## Target and precision", "", f"{facts['target']} ({facts['runtime']}), {facts['precision']}", "",
        *(["INT8 float nodes: " + facts["float_nodes"], ""] if not facts["float_nodes"].startswith("n/a") else []),
        "## Engine compatibility", "", facts["engine_compatibility"], "",
        "## Provenance", "", f"created {facts['created']}; tools {facts['tools']}", "",
        "The same facts are in each ONNX graph's `metadata_props` (keys `lowlight.*`).",
    ]
    return "\n".join(lines) + "\n"


def stamp_onnx(path: str | Path, facts: dict[str, str]) -> None:
    """Write `facts` into the ONNX file's metadata_props as `lowlight.<key>` (replacing earlier ones; others kept)."""
    import onnx

    from lowlight.compile.export import save_onnx

    model = onnx.load(str(path))
    keep = [(p.key, p.value) for p in model.metadata_props if not (p.key.startswith(META_PREFIX) and p.key[len(META_PREFIX):] in facts)]
    del model.metadata_props[:]
    for k, val in keep + [(META_PREFIX + k, v) for k, v in facts.items()]:
        entry = model.metadata_props.add()
        entry.key, entry.value = k, val
    model.doc_string = f"{facts.get('architecture', '')}; {facts.get('target', '')} {facts.get('precision', '')}; see MODEL_CARD.md"
    save_onnx(model, path)
