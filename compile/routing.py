"""Routing agreement: do the reduced-precision graphs send each token to the same experts as FP32?

A top-k mixture (MMAIF's MoE-GLU, through `lowlight::moe_top2`) makes a discrete
choice per token; a flipped choice changes a token's whole feed-forward, which an
image PSNR can average away. Every graph the host runs has the MoE decomposed
(`passes.custom_ops`), so each routing decision is a `TopK` node; here its index
output is exposed as an extra graph output (a probe copy of the graph, never
the bundle's: ONNX for onnxruntime, IR for OpenVINO), the program is run on the
FP32 graphs and on the artifact graphs over the same feeds, and the two expert
sets per token are compared. Probe outputs are named by the TopK's position in
topological order, so decisions pair up across the two runtimes' graphs; the
MoE layers are sequential (each TopK depends on the one before), so every
topological order lists them the same way.

The comparison is end to end: a sampler's later steps see each run's own latent,
so a drift in z that moves a token's choice counts, as it would on the device.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

#: The aim the MMAIF issue sets for FP16 (and reports for INT8): share of tokens whose two experts match FP32.
ROUTING_AIM = 0.99
_PREFIX = "lowlight_routing__"


def topk_nodes(model: Any) -> list[str]:
    """Names of the TopK nodes of an ONNX model (the routing decisions of a decomposed MoE)."""
    return [n.name or n.output[1] for n in model.graph.node if n.op_type == "TopK" and len(n.output) > 1]


def _probe_name(i: int, name: str) -> str:
    return f"{_PREFIX}{i:05d}_{name}"


def probe_model(path: Path, out: Path) -> list[str]:
    """Write a copy of the graph at `path` with every TopK's indices as an extra output; returns the TopK node names."""
    import onnx

    model = onnx.load(str(path))
    names = []
    for node in list(model.graph.node):  # ONNX stores nodes in topological order
        if node.op_type == "TopK" and len(node.output) > 1:
            name = node.name or node.output[1]
            probe = _probe_name(len(names), name)
            model.graph.node.append(onnx.helper.make_node("Identity", [node.output[1]], [probe], name=probe))
            model.graph.output.append(onnx.helper.make_tensor_value_info(probe, onnx.TensorProto.INT64, None))
            names.append(name)
    onnx.save(model, str(out))
    return names


def probe_openvino_model(path: Path, out: Path) -> list[str]:
    """The same probe for an OpenVINO IR (`path` .xml): every TopK's indices as an extra output, written to `out`."""
    from lowlight.runtime.openvino_backend import import_openvino

    ov = import_openvino()
    model = ov.Core().read_model(str(path))
    names = []
    for op in model.get_ordered_ops():
        if op.get_type_name() == "TopK" and op.get_output_size() > 1:
            port = op.output(1)
            port.get_tensor().set_names({_probe_name(len(names), op.get_friendly_name())})
            model.add_outputs([port])
            names.append(op.get_friendly_name())
    ov.save_model(model, str(out), compress_to_fp16=False)
    return names


def has_routing(paths: Mapping[str, Path]) -> bool:
    """True if any of the graphs holds a TopK (cheap: reads the graphs without their weights)."""
    import onnx

    return any(topk_nodes(onnx.load(str(p), load_external_data=False)) for p in paths.values())


def _recording_call(paths: Mapping[str, Path], folder: Path, log: list[tuple[str, str, np.ndarray]],
                    openvino_hint: str | None = None) -> Callable[[str, dict[str, np.ndarray]], dict[str, np.ndarray]]:
    sessions: dict[str, Any] = {}

    def call(name: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if name not in sessions:
            if openvino_hint is not None:
                from lowlight.runtime.openvino_backend import OpenVINOBackend

                probe = folder / f"{name}.xml"
                probe_openvino_model(paths[name], probe)
                sessions[name] = OpenVINOBackend(probe, precision_hint=openvino_hint)
            else:
                from lowlight.runtime.onnxruntime_backend import OnnxRuntimeBackend

                probe = folder / f"{name}.onnx"
                probe_model(paths[name], probe)
                sessions[name] = OnnxRuntimeBackend(probe)
        out = dict(sessions[name].run(feeds))
        for k in sorted(out):
            if k.startswith(_PREFIX):
                log.append((name, k[len(_PREFIX):], out.pop(k)))
        return out

    return call


def routing_agreement(
    program: Mapping[str, Any], reference: Mapping[str, Path], artifact: Mapping[str, Path], feeds: list[dict[str, np.ndarray]],
    outputs: list[str], constants: Mapping[str, np.ndarray] | None = None, artifact_openvino_hint: str | None = None,
) -> dict[str, Any]:
    """Share of routed tokens whose expert set (top-2, order ignored) matches between the two sets of graphs.

    `reference` and `artifact` map component names to ONNX files (the FP32 lowered graphs and
    the bundle's), or for an OpenVINO bundle (`artifact_openvino_hint`: the precision hint it
    runs at) the artifact's IR files. Decisions are matched by call order and the TopK's
    position in each graph. Returns tokens compared, agreement, the worst single decision
    (layer and step), and whether the aim is met.
    """
    from lowlight.core.program import run_program

    ref_log: list[tuple[str, str, np.ndarray]] = []
    art_log: list[tuple[str, str, np.ndarray]] = []
    with tempfile.TemporaryDirectory(prefix="lowlight-routing-") as tmp:
        ref_dir, art_dir = Path(tmp) / "ref", Path(tmp) / "art"
        ref_dir.mkdir()
        art_dir.mkdir()
        ref_call = _recording_call(reference, ref_dir, ref_log)
        art_call = _recording_call(artifact, art_dir, art_log, artifact_openvino_hint)
        for feed in feeds:
            run_program(program, ref_call, feed, outputs, constants)
            run_program(program, art_call, feed, outputs, constants)
    if not ref_log:
        return {"decisions": 0, "tokens": 0}
    if len(ref_log) != len(art_log):
        return {"decisions": len(ref_log), "tokens": 0, "error": f"the artifact made {len(art_log)} routing decisions, FP32 {len(ref_log)}"}
    agree = total = 0
    worst = (1.0, "")
    for i, ((comp, name, a), (_, _, b)) in enumerate(zip(ref_log, art_log)):
        sa, sb = np.sort(a.reshape(-1, a.shape[-1]), axis=-1), np.sort(b.reshape(-1, b.shape[-1]), axis=-1)
        same = np.all(sa == sb, axis=-1)
        agree += int(same.sum())
        total += same.size
        share = float(same.mean()) if same.size else 1.0
        if share < worst[0]:
            worst = (share, f"{comp}/{name} (decision {i})")
    share = agree / max(1, total)
    return {"decisions": len(ref_log), "tokens": total, "agreement": round(share, 6), "worst_decision": round(worst[0], 6),
            "worst_where": worst[1], "aim": ROUTING_AIM, "meets_aim": share >= ROUTING_AIM}


def to_markdown(report: Mapping[str, Any]) -> list[str]:
    """Lines for verification.md."""
    if not report.get("tokens"):
        return [f"- routing agreement: not measured ({report.get('error', 'no routing decisions')})"]
    return [f"- routing agreement with FP32: **{100 * report['agreement']:.2f} %** of {report['tokens']} token decisions "
            f"({report['decisions']} TopK calls; worst single call {100 * report['worst_decision']:.2f} %"
            + (f" at {report['worst_where']}" if report["worst_decision"] < 1 else "")
            + f"; aim >= {100 * report['aim']:.0f} %: {'met' if report['meets_aim'] else 'NOT met'})"]
