"""`lowlight-compile profile BUNDLE`: latency statistics, a per-operator profile that adds up, per-layer tables.

How the numbers are taken, and why:

- **Headline latency**: the whole program (every component, every step, the host
  glue between them) through the runtime `Session`, after `warmup` untimed runs;
  at least `runs` timed runs and at least `duration_s` seconds (trtexec's
  `--iterations` / `--duration`). min/max/mean/median/std/p50/p90/p95/p99 are
  all computed, but a percentile pX is *shown* only when the runs can support it:
  at least 100/(100-X) runs, i.e. at least one run lies past it (p90: 10, p95: 20,
  p99: 100). `percentiles_supported` lists them.
- **Operator profile**: a second set of sessions with onnxruntime profiling on,
  warmed up with the same `warmup` (the cold first runs were what made the old
  per-operator table add up to 3x the headline), then `profiled_runs` runs. Per-op
  times are divided by that run count, so they are per program run.
- **Reconciliation**: `reconcile` says how the kernel sum relates to the headline:
  kernels + (onnxruntime's own time between kernels, from its `model_run`
  events) + (program glue: noise, copies, Python) = the profiled run, and the
  profiled run vs the headline median gives the profiler's own overhead.
- **Per layer**: every node, not the top 10, in `profile_layers.json` (trtexec's
  `--exportProfile` shape: `[{"count": N}, {"name", "timeMs", "averageMs",
  "medianMs", "percentage"}, ...]`, plus the op type and the PyTorch module path
  from export) and `profile_layers.csv`.

For TensorRT targets the host numbers are onnxruntime on this CPU, not the
device: profile.md keeps them apart from the roofline prediction for the device
and from what `build-engine` measured on the device (if it has run).
"""
from __future__ import annotations

import csv
import io
import json
import os
import re
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from lowlight.core.bundle import as_program_manifest, bundle_path, read_manifest
from lowlight.runtime.session import Session
from lowlight.runtime.session import load as load_session

#: Percentiles reported, and the fewest runs that support each (one run at least past it).
PERCENTILES = (50, 90, 95, 99)
MIN_RUNS = {q: int(np.ceil(100 / (100 - q))) for q in PERCENTILES}
#: trtexec's names for the same statistics (its "Latency: min = ..., percentile(90%) = ..." line).
TRTEXEC_NAMES = {"min": "min", "max": "max", "mean": "mean", "median": "median",
                 "p90": "percentile(90%)", "p95": "percentile(95%)", "p99": "percentile(99%)"}
#: Upper bound on timed runs when `duration_s` asks for more (a slow model must still finish).
MAX_RUNS = 1000
LAYERS_JSON = "profile_layers.json"
LAYERS_CSV = "profile_layers.csv"


def _feeds(root: Path, manifest: dict[str, Any]) -> dict[str, np.ndarray]:
    ref = root / manifest.get("reference", "")
    if manifest.get("reference") and ref.is_file():
        data = np.load(ref)
        return {i["name"]: data[f"input:{i['name']}"][0] for i in manifest["inputs"]}
    rng = np.random.default_rng(0)
    return {i["name"]: rng.random(i["shape"], dtype=np.float32) for i in manifest["inputs"]}


def frames_per_run(tensor: dict[str, Any]) -> int:
    """Frames one run enhances, from the first input's declared layout (BTCHW: B*T; else the batch)."""
    shape = tensor["shape"]
    layout = tensor.get("layout") or ("BTCHW" if len(shape) == 5 else "BCHW")
    return int(shape[0] * shape[1]) if layout == "BTCHW" else int(shape[0])


def latency_stats(ms: np.ndarray | list[float]) -> dict[str, float]:
    """min/max/mean/median/std and p50/p90/p95/p99 (numpy's linear interpolation) of `ms`."""
    a = np.asarray(ms, dtype=np.float64)
    out = {"min": float(a.min()), "max": float(a.max()), "mean": float(a.mean()), "median": float(np.median(a)),
           "std": float(a.std(ddof=1)) if a.size > 1 else 0.0}
    out.update({f"p{q}": float(np.percentile(a, q)) for q in PERCENTILES})
    return out


def supported_percentiles(runs: int) -> list[str]:
    """The percentiles `runs` timed runs can support (see MIN_RUNS)."""
    return [f"p{q}" for q in PERCENTILES if runs >= MIN_RUNS[q]]


def trtexec_summary(stats: dict[str, float], runs: int, frames: int, wall_s: float) -> dict[str, Any]:
    """The statistics under trtexec's field names; unsupported percentiles are null, not made up."""
    ok = set(supported_percentiles(runs))
    lat = {TRTEXEC_NAMES[k]: (stats[k] if (not k.startswith("p") or k in ok) else None) for k in TRTEXEC_NAMES}
    return {"Latency": lat, "Throughput": runs / wall_s if wall_s > 0 else None, "Total Host Walltime": wall_s,
            "iterations": runs, "frames per iteration": frames}


def _event_node(name: str) -> str:
    """onnxruntime's kernel event name -> the node name it reports (event suffix removed)."""
    return name[: -len("_kernel_time")]


def resolve_node(kernel: str, index: dict[str, Any]) -> str:
    """The graph node an onnxruntime kernel came from ('' for nodes ORT inserted itself, e.g. layout reorders).

    ORT's rewrites rename: NCHWc conversion names a node after its output tensor plus `_nchwc`,
    fusions append `/FusionName`, other rewrites `_token_<n>`. Undo those, then look the
    name up among the graph's node names and its output tensors.
    """
    names, outputs = index.get("names", set()), index.get("outputs", {})
    base = re.sub(r"(_token_\d+)+$", "", kernel.split("/", 1)[0])
    for cand in (kernel, base, re.sub(r"_nchwc$", "", base)):
        if cand in names:
            return cand
        if cand in outputs:
            return str(outputs[cand])
        if f"node_{cand}" in names:
            return f"node_{cand}"
    return ""


def operator_events(profile_files: list[tuple[str, str]]) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """(one row per kernel event, session time per component) from onnxruntime profiles [(component, file)]."""
    rows: list[dict[str, Any]] = []
    session_us: dict[str, float] = defaultdict(float)
    for comp, f in profile_files:
        for e in json.loads(Path(f).read_text()):
            if e.get("cat") == "Session" and e.get("name") == "model_run":
                session_us[comp] += float(e["dur"])
            if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time"):
                continue
            rows.append({"component": comp, "node": _event_node(e["name"]), "op_type": e.get("args", {}).get("op_name", "?"),
                         "us": float(e["dur"])})
    return rows, dict(session_us)


def top_operators(profile_files: str | list[str], top: int = 10) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(by op type, by node) from onnxruntime profiles: total microseconds over every profiled run."""
    files = [profile_files] if isinstance(profile_files, str) else list(profile_files)
    rows, _ = operator_events([("", f) for f in files])
    by_type, by_node = _aggregate(rows)
    total = sum(v for v in by_type.values()) or 1.0
    types = [{"op_type": k, "us": v, "share": v / total} for k, v in sorted(by_type.items(), key=lambda kv: -kv[1])[:top]]
    nodes = [{"node": k, "op_type": v["op_type"], "us": v["us"], "share": v["us"] / total}
             for k, v in sorted(by_node.items(), key=lambda kv: -kv[1]["us"])[:top]]
    return types, nodes


def _aggregate(rows: list[dict[str, Any]]) -> tuple[dict[str, float], dict[str, dict[str, Any]]]:
    by_type: dict[str, float] = defaultdict(float)
    by_node: dict[str, dict[str, Any]] = {}
    for r in rows:
        by_type[r["op_type"]] += r["us"]
        key = f"{r['component']}/{r['node']}" if r["component"] else r["node"]
        n = by_node.setdefault(key, {"component": r["component"], "node": r["node"], "op_type": r["op_type"], "us": 0.0, "calls": []})
        n["us"] += r["us"]
        n["calls"].append(r["us"])
    return dict(by_type), by_node


def layer_table(rows: list[dict[str, Any]], runs: int, index: dict[str, dict[str, Any]], scale: float = 1.0) -> list[dict[str, Any]]:
    """Every kernel, slowest first: per-run time, per-call average/median, share of the kernel sum, graph node, PyTorch module.

    `headlineMs` is `timeMs * scale`, with scale = headline median / profiled run: the
    node's share of the headline (the profiler slows every kernel, so raw times add up past it).
    """
    _, by_node = _aggregate(rows)
    total = sum(n["us"] for n in by_node.values()) or 1.0
    table = []
    for n in sorted(by_node.values(), key=lambda n: -n["us"]):
        idx = index.get(n["component"], {})
        node = resolve_node(n["node"], idx)
        mod = idx.get("modules", {}).get(node, {})
        table.append({
            "name": n["node"], "component": n["component"], "opType": n["op_type"],
            "onnxNode": node or "(inserted by onnxruntime)",
            "headlineMs": n["us"] / 1e3 / runs * scale,
            "timeMs": n["us"] / 1e3 / runs,  # per program run, like trtexec's per-inference layer time
            "averageMs": n["us"] / 1e3 / len(n["calls"]), "medianMs": float(np.median(n["calls"])) / 1e3,
            "percentage": 100.0 * n["us"] / total, "callsPerRun": len(n["calls"]) / runs,
            "module": mod.get("module", ""), "moduleClass": mod.get("class", ""),
        })
    return table


def _component_index(root: Path, manifest: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per component: its node names, output tensor -> node, and node -> PyTorch module path (ONNX metadata since export)."""
    try:
        import onnx

        from lowlight.compile.export import node_modules
    except ImportError:  # a runtime-only install: the table still lists kernels, without module paths
        return {}
    out = {}
    for name, comp in as_program_manifest(manifest)["components"].items():
        m = onnx.load(str(bundle_path(root, manifest, comp["file"])), load_external_data=False)
        out[name] = {"names": {n.name for n in m.graph.node}, "outputs": {o: n.name for n in m.graph.node for o in n.output},
                     "modules": _fill_modules(m, node_modules(m))}
    return out


def _fill_modules(model: Any, mapping: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
    """Nodes our passes created (custom-op bodies, DFT as MatMul) have no export record: give them the module
    of the nearest recorded node upstream, marked as inferred in `class`."""
    producer = {o: n for n in model.graph.node for o in n.output}
    out = dict(mapping)
    for node in model.graph.node:
        if node.name in out:
            continue
        seen, frontier = set(), list(node.input)
        while frontier:
            t = frontier.pop(0)
            p = producer.get(t)
            if p is None or p.name in seen:
                continue
            seen.add(p.name)
            if p.name in mapping:
                out[node.name] = {"module": mapping[p.name]["module"], "class": f"(inferred from upstream node {p.name})"}
                break
            frontier.extend(p.input)
    return out


def _timed_runs(sess: Session, feeds: dict[str, np.ndarray], runs: int, duration_s: float) -> tuple[list[float], float]:
    """Per-run seconds: at least `runs` runs and `duration_s` seconds (at most MAX_RUNS); and the wall time."""
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < runs or (time.perf_counter() - start < duration_s and len(times) < MAX_RUNS):
        t0 = time.perf_counter()
        sess.run(**feeds)
        times.append(time.perf_counter() - t0)
    return times, time.perf_counter() - start


def profile_bundle(bundle: str | Path, runs: int = 20, warmup: int = 3, threads: int | None = None, save: bool = True,
                   duration_s: float = 0.0, profiled_runs: int | None = None) -> dict[str, Any]:
    """Measure the bundle's program on this host; with `save`, write the profile reports into it.

    Writes profile.json, profile.md, profile_layers.json/.csv and (when the compiler
    is installed) report.html. A bundle that cannot be written (read-only copy,
    another user's) is refused before measuring, with the fix; `save=False` only measures.
    """
    from lowlight.core.bundle import write_manifest
    from lowlight.core.errors import OutputError
    from lowlight.core.fsio import check_writable

    if runs < 1 or warmup < 0:
        raise ValueError("profile_bundle needs runs >= 1 and warmup >= 0")
    root = Path(bundle)
    manifest = read_manifest(root)
    if save:
        try:
            check_writable(root / "profile.json", "bundle")
            for name in ("profile.json", "profile.md", LAYERS_JSON, LAYERS_CSV, "report.html", "manifest.json"):
                f = root / name
                if f.exists() and not os.access(f, os.W_OK):
                    raise OutputError(f"{f} is read-only", "")
        except OutputError as exc:
            raise OutputError(
                f"cannot write the profile into {root}: {exc.what}",
                f"pass --no-save to only print the measurement, or copy the bundle somewhere writable (cp -r {root} /tmp/)",
            ) from None
    feeds = _feeds(root, manifest)
    load_before = _loadavg()
    # The whole program (every component, every step) is what a frame costs, on the backend the bundle was built for.
    openvino = manifest.get("backend") == "openvino"
    sess = load_session(root, backend="openvino" if openvino else "onnxruntime", verbose=False, threads=threads)
    for _ in range(warmup):
        sess.run(**feeds)
    times, wall = _timed_runs(sess, feeds, runs, duration_s)
    n = len(times)
    ms = np.array(times) * 1e3
    stats = latency_stats(ms)
    frames = frames_per_run(manifest["inputs"][0])
    k = profiled_runs if profiled_runs is not None else max(3, min(n, 10))
    if openvino:
        rows, session_us, profiled_ms = _openvino_op_profile(root, manifest, sess, feeds, warmup, k, threads)
    else:
        rows, session_us, profiled_ms = _onnxruntime_op_profile(root, manifest, sess, feeds, warmup, k, threads)
    by_type, _ = _aggregate(rows)
    kernel_total = sum(by_type.values()) or 1.0
    scale = stats["median"] / profiled_ms if profiled_ms > 0 else 1.0
    layers = layer_table(rows, k, {} if openvino else _component_index(root, manifest), scale)
    kernels_ms = kernel_total / 1e3 / k
    ort_ms = sum(session_us.values()) / 1e3 / k
    reconcile = {
        "profiled_runs": k,
        "kernels_ms_per_run": kernels_ms,
        "onnxruntime_session_ms_per_run": ort_ms,
        "profiled_run_ms": profiled_ms,
        "headline_median_ms": stats["median"],
        "between_kernels_ms": max(ort_ms - kernels_ms, 0.0),
        "program_glue_ms": max(profiled_ms - ort_ms, 0.0),
        "profiler_overhead_ms": profiled_ms - stats["median"],
        "kernels_share_of_headline": kernels_ms / stats["median"] if stats["median"] > 0 else None,
        "scale_to_headline": scale,
        "kernels_scaled_ms": kernels_ms * scale,
    }
    backend = sess.backend
    report: dict[str, Any] = {
        "host": _host(),
        "environment": _environment(threads, load_before, backend),
        "backend": backend.name,
        "target": manifest.get("target"),
        "runtime": manifest.get("runtime"),
        "precision": manifest.get("precision"),
        "input_shape": manifest["inputs"][0]["shape"],
        "frames_per_run": frames,
        "runs": n,
        "warmup": warmup,
        "duration_s": duration_s,
        "latency_ms": stats,
        "percentiles_supported": supported_percentiles(n),
        "trtexec": trtexec_summary(stats, n, frames, wall),
        "times_ms": [float(t) for t in ms],
        "fps": frames / (stats["median"] / 1e3),
        "fps_mean": frames / (stats["mean"] / 1e3),
        "reconcile": reconcile,
        "top_op_types": [{"op_type": t, "us": v / k, "ms_per_run": v / 1e3 / k, "headline_ms": v / 1e3 / k * scale, "share": v / kernel_total}
                         for t, v in sorted(by_type.items(), key=lambda kv: -kv[1])],
        "top_nodes": [{"node": r["name"], "onnx_node": r["onnxNode"], "component": r["component"], "op_type": r["opType"],
                       "module": r["module"], "us": r["timeMs"] * 1e3, "ms_per_run": r["timeMs"], "headline_ms": r["headlineMs"],
                       "share": r["percentage"] / 100} for r in layers[:10]],
        "layers": LAYERS_JSON,
    }
    report["roofline"] = _roofline(root, manifest)
    report["device"] = manifest.get("engine_profile")  # what build-engine measured on the device, if it ran
    report["environment"]["load_average_after"] = _loadavg()
    if not save:
        report["layer_table"] = layers
        return report
    (root / "profile.json").write_text(json.dumps(report, indent=2) + "\n")
    (root / LAYERS_JSON).write_text(json.dumps(trtexec_layers(layers, k), indent=1) + "\n")
    (root / LAYERS_CSV).write_text(layers_csv(layers))
    (root / "profile.md").write_text(to_markdown(report))
    summary = {"latency_ms": stats, "fps": report["fps"], "host": report["host"], "runs": n,
               "threads": report["environment"]["threads"], "date": report["environment"]["date"]}
    write_manifest(root, manifest | {"profile": summary})
    _write_html(root)
    return report


def _onnxruntime_op_profile(root: Path, manifest: dict[str, Any], sess: Session, feeds: dict[str, np.ndarray], warmup: int, k: int,
                            threads: int | None) -> tuple[list[dict[str, Any]], dict[str, float], float]:
    """(kernel rows of `k` profiled program runs after `warmup`, onnxruntime session us per component, ms per profiled run)."""
    from lowlight.runtime.onnxruntime_backend import OnnxRuntimeBackend

    with tempfile.TemporaryDirectory() as tmp:
        profiled = {
            name: OnnxRuntimeBackend(bundle_path(root, manifest, comp["file"]), threads=threads, profile_prefix=os.path.join(tmp, name))
            for name, comp in as_program_manifest(manifest)["components"].items()
        }
        profiled_sess = Session(root, manifest, profiled, constants=sess.constants)
        # Warm-up runs are profiled too (onnxruntime cannot pause its profiler): `_after_warmup` drops their events.
        for _ in range(warmup):
            profiled_sess.run(**feeds)
        t0 = time.perf_counter()
        for _ in range(k):
            profiled_sess.run(**feeds)
        profiled_ms = (time.perf_counter() - t0) * 1e3 / k
        files = [(name, b.end_profiling()) for name, b in profiled.items()]
        rows, session_us = _after_warmup(files, warmup, k)
    return rows, session_us, profiled_ms


def _openvino_op_profile(root: Path, manifest: dict[str, Any], sess: Session, feeds: dict[str, np.ndarray], warmup: int, k: int,
                         threads: int | None) -> tuple[list[dict[str, Any]], dict[str, float], float]:
    """The same from OpenVINO's per-node counters (PERF_COUNT): its executed nodes (fused, so fewer than the ONNX
    graph's) with their real time; the session time per component is the wall time of its infer calls."""
    from lowlight.runtime.openvino_backend import OpenVINOBackend

    hint = str((manifest.get("openvino") or {}).get("inference_precision_hint", "f32"))
    profiled = {name: OpenVINOBackend(bundle_path(root, manifest, comp["file"]), precision_hint=hint, threads=threads, profile=True)
                for name, comp in as_program_manifest(manifest)["components"].items()}
    session_us: dict[str, float] = defaultdict(float)
    timed = {"on": False}

    class Timed:
        def __init__(self, name: str, backend: Any) -> None:
            self.name, self.backend = name, backend
            self.input_names, self.output_names = backend.input_names, backend.output_names

        def run(self, f: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            t0 = time.perf_counter()
            out = self.backend.run(f)
            if timed["on"]:
                session_us[self.name] += (time.perf_counter() - t0) * 1e6
            return out

    profiled_sess = Session(root, manifest, {n: Timed(n, b) for n, b in profiled.items()}, constants=sess.constants)
    for _ in range(warmup):
        profiled_sess.run(**feeds)
    for b in profiled.values():
        b.profile_rows.clear()
    timed["on"] = True
    t0 = time.perf_counter()
    for _ in range(k):
        profiled_sess.run(**feeds)
    profiled_ms = (time.perf_counter() - t0) * 1e3 / k
    rows = [{"component": name, "node": r["node"], "op_type": r["op_type"], "us": r["us"]} for name, b in profiled.items() for r in b.profile_rows]
    return rows, dict(session_us), profiled_ms


def _after_warmup(files: list[tuple[str, str]], warmup: int, k: int) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Kernel events of the last `k` of `warmup + k` program runs only (warm-up excluded).

    Each component's `model_run` events mark its calls in order; a program run may call
    a component several times (a loop), so the split is by call count: calls * k / (warmup + k).
    """
    rows: list[dict[str, Any]] = []
    session_us: dict[str, float] = defaultdict(float)
    for comp, f in files:
        events = json.loads(Path(f).read_text())
        runs = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
        keep_from = runs[len(runs) - len(runs) * k // (warmup + k)]["ts"] if runs else 0
        for e in runs:
            if e["ts"] >= keep_from:
                session_us[comp] += float(e["dur"])
        for e in events:
            if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time") and e["ts"] >= keep_from:
                rows.append({"component": comp, "node": _event_node(e["name"]), "op_type": e.get("args", {}).get("op_name", "?"), "us": float(e["dur"])})
    return rows, dict(session_us)


def trtexec_layers(layers: list[dict[str, Any]], runs: int) -> list[dict[str, Any]]:
    """The per-layer table in trtexec's `--exportProfile` JSON shape (with our extra fields per layer)."""
    return [{"count": runs}, *layers]


def layers_csv(layers: list[dict[str, Any]]) -> str:
    """The per-layer table as CSV (one row per node, slowest first)."""
    cols = ["name", "component", "opType", "onnxNode", "module", "moduleClass", "timeMs", "headlineMs", "averageMs", "medianMs",
            "percentage", "callsPerRun"]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in layers:
        w.writerow({c: (f"{r[c]:.6g}" if isinstance(r[c], float) else r[c]) for c in cols})
    return buf.getvalue()


def _write_html(root: Path) -> None:
    """Refresh report.html (it shows the profile); skipped on a runtime-only install."""
    try:
        from lowlight.compile.report_html import write_report
    except ImportError:
        return
    write_report(root)


def _roofline(root: Path, manifest: dict[str, Any]) -> dict[str, Any] | None:
    """Predicted per-frame latency on the bundle's target (lowlight.compile.roofline), if it has peak figures."""
    try:
        from lowlight.compile.roofline import estimate
        from lowlight.targets import get_target
    except ImportError:
        return None
    if "model" not in manifest:
        return None  # several components: the roofline reads one graph (per-program estimates are not made yet)
    target = get_target(manifest["target"], manifest.get("trt_version"))
    return estimate(str(root / manifest["model"]), target, manifest.get("precision", "fp32"))


def _cpu_model() -> str:
    import platform

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return cpu


def _host() -> str:
    return f"{_cpu_model()}, {os.cpu_count()} cores"


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def _environment(threads: int | None, load: list[float] | None, backend: Any) -> dict[str, Any]:
    """What the numbers depend on: threads, CPU, load, backend and versions, date."""
    import platform

    import onnxruntime as ort

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 0
    from lowlight.core.about import version

    ours = version()
    return {
        "cpu": _cpu_model(), "logical_cores": os.cpu_count(), "usable_cores": usable,
        "threads": threads if threads else f"onnxruntime default (intra-op pool sized to the cores, {usable} usable)",
        "load_average": load, "backend": getattr(backend, "name", str(backend)),
        "providers": list(getattr(getattr(backend, "session", None), "get_providers", lambda: [])()),
        "versions": {"onnxruntime": ort.__version__, "numpy": np.__version__, "python": platform.python_version(),
                     "lowlight-compile": ours, **_openvino_version(backend)},
        "os": platform.platform(), "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _openvino_version(backend: Any) -> dict[str, str]:
    """{"openvino": version} when the profiled backend is OpenVINO (already imported then), else {}."""
    if not str(getattr(backend, "name", "")).startswith("openvino"):
        return {}
    import openvino

    return {"openvino": str(openvino.__version__)}


def _pct_row(lat: dict[str, float], supported: list[str], runs: int) -> str:
    cells = []
    for q in PERCENTILES[1:]:
        key = f"p{q}"
        cells.append(f"{key} {lat[key]:.2f} ms" if key in supported else f"{key} n/a (needs >= {MIN_RUNS[q]} runs, have {runs})")
    return ", ".join(cells)


def to_markdown(r: dict[str, Any]) -> str:
    """profile.md: host measurement, how the operator table reconciles, and (TensorRT) the device apart."""
    lat, env = r["latency_ms"], r.get("environment", {})
    trt = r.get("runtime") == "tensorrt"
    host_title = "## Host measurement (this CPU, onnxruntime" + (": NOT the target device)" if trt else ")")
    lines = ["# Profile", ""]
    if trt:
        lines += [f"Target `{r.get('target')}` runs TensorRT on its GPU. The host section below is onnxruntime on this "
                  "machine's CPU (a check that the graph runs, not the device's speed); the device sections are the "
                  "roofline prediction and what `build-engine` measured on the device.", ""]
    lines += [
        host_title, "",
        f"- host: {r['host']}; load average {env.get('load_average')} before, {env.get('load_average_after')} after",
        f"- threads: {env.get('threads')}; backend {r['backend']} {env.get('providers', '')}; versions {env.get('versions')}; {env.get('date')}",
        f"- input {r['input_shape']} ({r['frames_per_run']} frames per run), precision {r['precision']}",
        f"- latency over {r['runs']} runs after {r['warmup']} warm-up: median **{lat['median']:.2f} ms**, "
        f"min {lat['min']:.2f}, max {lat['max']:.2f}, mean {lat['mean']:.2f}, std {lat['std']:.2f} ms",
        f"- percentiles: {_pct_row(lat, r.get('percentiles_supported', []), r['runs'])} "
        "(a percentile pX is shown only with at least 100/(100-X) runs)",
        f"- throughput: **{r['fps']:.1f} frames/s** at the median",
    ]
    rec = r.get("reconcile")
    if rec:
        lines += [
            "", "### How the operator tables add up", "",
            f"Operators were profiled over {rec['profiled_runs']} runs after the same {r['warmup']} warm-up runs, in separate "
            "sessions with onnxruntime profiling on. Per run:", "",
            "| part | ms/run |", "|---|---:|",
            f"| operator kernels (sum of the tables below) | {rec['kernels_ms_per_run']:.2f} |",
            f"| onnxruntime between kernels (its `model_run` minus kernels) | {rec['between_kernels_ms']:.2f} |",
            f"| program glue (noise, copies, Python between components) | {rec['program_glue_ms']:.2f} |",
            f"| = profiled run | {rec['profiled_run_ms']:.2f} |",
            f"| headline median (no profiler) | {rec['headline_median_ms']:.2f} |",
            "",
            f"The profiler itself costs {rec['profiled_run_ms'] - rec['headline_median_ms']:+.2f} ms per run (it times every "
            f"kernel), so the tables give each row twice: as profiled, and scaled by headline / profiled run = "
            f"{rec['scale_to_headline']:.3f}. Scaled, the three parts add up to the headline median exactly; kernels are "
            f"{rec['kernels_scaled_ms']:.2f} ms of its {rec['headline_median_ms']:.2f} ms.",
        ]
    lines += ["", "### Operator types", "", "| op | ms/run profiled | ms of headline | share of kernels |", "|---|---:|---:|---:|"]
    lines += [f"| {o['op_type']} | {o['ms_per_run']:.3f} | {o.get('headline_ms', o['ms_per_run']):.3f} | {o['share']:.1%} |"
              for o in r["top_op_types"][:15]]
    lines += ["", f"### Top nodes (every node: `{LAYERS_CSV}`, `{LAYERS_JSON}`)", "",
              "| kernel | ONNX node | op | PyTorch module | ms/run profiled | ms of headline | share |", "|---|---|---|---|---:|---:|---:|"]
    lines += [f"| {o['node']} | {o.get('onnx_node', '')} | {o['op_type']} | {o.get('module') or '-'} | {o['ms_per_run']:.3f} | "
              f"{o.get('headline_ms', o['ms_per_run']):.3f} | {o['share']:.1%} |" for o in r["top_nodes"]]
    if r.get("roofline"):
        try:
            from lowlight.compile.roofline import to_markdown as roof_md

            title = "## Device prediction (roofline, not measured)" if trt else "## Roofline"
            lines += ["", title, "", roof_md(r["roofline"], measured_ms=None if trt else lat["median"])]
        except ImportError:
            pass
    if trt:
        lines += ["", "## Device measurement", ""]
        dev = r.get("device")
        if dev:
            lines += _device_markdown(dev)
        else:
            lines.append("Not measured yet: run `lowlight-compile build-engine BUNDLE` on the device; it records the engine's "
                         "latency (GPU compute apart from copies, with and without CUDA graphs) and its per-layer profile.")
    return "\n".join(lines) + "\n"


def _device_markdown(dev: dict[str, Any]) -> list[str]:
    lines = [f"- device: {dev.get('device', '?')}, TensorRT {dev.get('trt_version', '?')}, {dev.get('iterations', '?')} iterations"]
    for mode in ("without_cuda_graph", "with_cuda_graph"):
        m = dev.get(mode)
        if not m:
            continue
        parts = [f"{k} median {v['median']:.3f} ms" for k, v in m.items() if isinstance(v, dict) and "median" in v]
        lines.append(f"- {mode.replace('_', ' ')}: " + ", ".join(parts))
    if dev.get("layers"):
        lines.append(f"- per-layer profile: `{dev['layers']}` (trtexec --exportProfile shape)")
    return lines


def refresh_after_engine(bundle: str | Path) -> None:
    """After `build-engine`: profile.md (its device section) and report.html include what was measured on the device.

    Called by the CLI layer (`lowlight.compile.cli`), so the TensorRT package never imports the compiler's reports.
    """
    from lowlight.compile.report_html import write_report
    from lowlight.core.bundle import read_manifest, write_manifest

    root = Path(bundle)
    manifest = read_manifest(root, check_hashes=False)
    prof_json = root / "profile.json"
    if prof_json.is_file():
        report = json.loads(prof_json.read_text())
        report["device"] = manifest.get("engine_profile")
        report["runtime"] = manifest.get("runtime")
        (root / "profile.md").write_text(to_markdown(report))
    write_report(root)
    write_manifest(root, {k: v for k, v in manifest.items() if k != "report_warnings"})
