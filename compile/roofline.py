"""Roofline estimate: per-node FLOPs and bytes of the lowered graph -> latency on a target.

t >= max(FLOPs / peak, bytes / DRAM bandwidth) (docs/targets.md). Two memory bounds
are reported: `fused` (only graph inputs, outputs and weights cross DRAM: the
best a fusing compiler can do) and `roundtrip` (every activation is written
and read back once per node: no fusion at all). Peaks are dense tensor-core
figures; FP32 is counted at half the FP16 rate (TF32 tensor cores), and
elementwise work is counted at the same peak, which flatters it: the report
shows its share so nobody mistakes it for free.
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import onnx

    from lowlight.targets import Target

#: Bytes per activation / weight element at each build precision.
ELEMENT_BYTES = {"fp32": 4, "fp16": 2, "int8": 1}
MATRIX_OPS = frozenset({"Conv", "ConvTranspose", "MatMul", "Gemm"})
#: Pure data movement / bookkeeping: no arithmetic.
MOVE_OPS = frozenset({
    "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Slice", "Concat", "Split", "Gather",
    "Identity", "Expand", "Tile", "Pad", "Shape", "Constant", "Cast", "DepthToSpace", "SpaceToDepth",
})
FREE_OPS = frozenset({"Constant", "Shape", "QuantizeLinear", "DequantizeLinear", "Identity"})
#: Metadata-only reshapes: TensorRT moves no data for them.
VIEW_OPS = frozenset({"Reshape", "Squeeze", "Unsqueeze", "Flatten"})
#: Rough FLOPs per output element for transcendental activations.
TRANSCENDENTAL = {"Sigmoid": 4, "Tanh": 4, "Exp": 2, "Erf": 4, "Softmax": 5, "Log": 2, "Sqrt": 2, "Pow": 4}


def static_shapes(model: "onnx.ModelProto") -> dict[str, tuple[int, ...]]:
    """Every tensor of `model` whose shape inference gives a fully static shape, and every initializer."""
    from onnx import shape_inference

    inferred = shape_inference.infer_shapes(model, data_prop=True)
    out: dict[str, tuple[int, ...]] = {}
    g = inferred.graph
    for vi in (*g.value_info, *g.input, *g.output):
        tt = vi.type.tensor_type
        if tt.HasField("shape") and all(d.HasField("dim_value") for d in tt.shape.dim):
            out[vi.name] = tuple(int(d.dim_value) for d in tt.shape.dim)
    for init in g.initializer:
        out[init.name] = tuple(int(d) for d in init.dims)
    return out


def node_flops(node: "onnx.NodeProto", shapes: dict[str, tuple[int, ...]]) -> int:
    """Multiply-adds counted as 2 FLOPs; elementwise ops 1 per output element."""
    from onnx import helper

    out = shapes.get(node.output[0]) if node.output else None
    op = node.op_type
    if op in ("Conv", "ConvTranspose") and len(node.input) > 1 and node.input[1] in shapes and out is not None:
        w = shapes[node.input[1]]
        group = next((int(helper.get_attribute_value(a)) for a in node.attribute if a.name == "group"), 1)
        k = int(np.prod(w[2:])) if len(w) > 2 else 1
        if op == "Conv":  # w: [Cout, Cin/g, k...]; every output element sums Cin/g * k products
            return 2 * int(np.prod(out)) * w[1] * k
        x = shapes.get(node.input[0])  # w: [Cin, Cout/g, k...]; every input element scatters Cout/g * k
        return 2 * int(np.prod(x)) * w[1] * k if x is not None else 0
    if op == "MatMul" and node.input[0] in shapes and out is not None:
        a = shapes[node.input[0]]
        return 2 * int(np.prod(out)) * (a[-1] if a else 1)
    if op == "Gemm" and node.input[0] in shapes and out is not None:
        a = shapes[node.input[0]]
        trans_a = any(x.name == "transA" and x.i for x in node.attribute)
        kdim = a[0] if trans_a else a[-1]
        return 2 * int(np.prod(out)) * kdim
    if op in MOVE_OPS or op in FREE_OPS or out is None:
        return 0
    if op in ("AveragePool", "MaxPool", "GlobalAveragePool", "GlobalMaxPool") or op.startswith("Reduce"):
        x = shapes.get(node.input[0])
        return int(np.prod(x)) if x is not None else 0
    return int(np.prod(out)) * TRANSCENDENTAL.get(op, 1)


def estimate(onnx_path: str | Path, target: "Target", precision: str) -> dict[str, Any]:
    """Count FLOPs/bytes per node and predict latency on `target` at `precision`."""
    import onnx

    model = onnx.load(str(onnx_path))
    shapes = static_shapes(model)
    ebytes = ELEMENT_BYTES.get(precision, 4)
    inits = {i.name for i in model.graph.initializer}
    consts = {n.output[0] for n in model.graph.node if n.op_type == "Constant"}

    def nbytes(name: str) -> int:
        s = shapes.get(name)
        return int(np.prod(s)) * ebytes if s is not None else 0

    weight_bytes = sum(nbytes(i.name) for i in model.graph.initializer if i.data_type in (1, 10, 11, 16))
    io_bytes = sum(nbytes(v.name) for v in (*model.graph.input, *model.graph.output) if v.name not in inits)

    nodes: list[dict[str, Any]] = []
    matrix_flops = other_flops = roundtrip_bytes = 0
    for i, node in enumerate(model.graph.node):
        if node.op_type in FREE_OPS or node.op_type in VIEW_OPS:
            continue
        f = node_flops(node, shapes)
        moved = sum(nbytes(x) for x in node.input if x and x not in inits and x not in consts)
        moved += sum(nbytes(x) for x in node.output if x)
        moved += sum(nbytes(x) for x in node.input if x in inits and node.op_type in MATRIX_OPS)
        if node.op_type in MATRIX_OPS:
            matrix_flops += f
        else:
            other_flops += f
        roundtrip_bytes += moved
        nodes.append({"name": node.name or f"#{i}", "op": node.op_type, "flops": f, "bytes": moved})

    total_flops = matrix_flops + other_flops
    facts = dict(getattr(target, "facts", {}) or {})
    peak_tops = None
    if "fp16_tflops" in facts:
        peak_tops = {"fp16": facts["fp16_tflops"], "int8": facts["int8_tops"], "fp32": facts["fp16_tflops"] / 2.0}[precision]
    bandwidth = facts.get("dram_gbps")

    # Frames per call: AMNet's inputs are [B, T, C, H, W].
    frames = 1
    for v in model.graph.input:
        s = shapes.get(v.name)
        if s is not None and len(s) == 5:
            frames = max(frames, s[0] * s[1])

    result: dict[str, Any] = {
        "target": target.name,
        "precision": precision,
        "frames_per_call": frames,
        "gflops": total_flops / 1e9,
        "matrix_gflops": matrix_flops / 1e9,
        "elementwise_share": (other_flops / total_flops) if total_flops else 0.0,
        "weight_mb": weight_bytes / 1e6,
        "fused_mb": (weight_bytes + io_bytes) / 1e6,
        "roundtrip_mb": (weight_bytes + roundtrip_bytes) / 1e6,
        "peak_tops": peak_tops,
        "dram_gbps": bandwidth,
        "compute_ms": None,
        "fused_memory_ms": None,
        "roundtrip_memory_ms": None,
        "bound_ms": None,
        "roundtrip_ms": None,
        "per_frame_bound_ms": None,
        "per_frame_roundtrip_ms": None,
        "limit": None,
        "top_nodes": [],
        "by_op": {},
    }
    by_op: dict[str, dict[str, float]] = defaultdict(lambda: {"gflops": 0.0, "mb": 0.0, "count": 0})
    for n in nodes:
        agg = by_op[n["op"]]
        agg["gflops"] += n["flops"] / 1e9
        agg["mb"] += n["bytes"] / 1e6
        agg["count"] += 1
    result["by_op"] = dict(sorted(by_op.items(), key=lambda kv: -kv[1]["gflops"]))
    if peak_tops and bandwidth:
        compute_ms = total_flops / (peak_tops * 1e12) * 1e3
        fused_ms = (weight_bytes + io_bytes) / (bandwidth * 1e9) * 1e3
        round_ms = (weight_bytes + roundtrip_bytes) / (bandwidth * 1e9) * 1e3
        result.update(
            compute_ms=compute_ms,
            fused_memory_ms=fused_ms,
            roundtrip_memory_ms=round_ms,
            bound_ms=max(compute_ms, fused_ms),
            roundtrip_ms=max(compute_ms, round_ms),
            per_frame_bound_ms=max(compute_ms, fused_ms) / frames,
            per_frame_roundtrip_ms=max(compute_ms, round_ms) / frames,
            limit="compute" if compute_ms >= fused_ms else "memory",
        )
        for n in nodes:
            n["ms"] = max(n["flops"] / (peak_tops * 1e12), n["bytes"] / (bandwidth * 1e9)) * 1e3
        result["top_nodes"] = sorted(nodes, key=lambda n: -n["ms"])[:10]
    else:
        result["note"] = f"no peak figures for target {target.name!r}: counts only"
        result["top_nodes"] = sorted(nodes, key=lambda n: -n["flops"])[:10]
    return result


def to_markdown(est: dict[str, Any], measured_ms: float | None = None) -> str:
    """The estimate as a Markdown section (measured host latency beside it if given)."""
    def f(x: Any, nd: int = 3) -> str:
        return "n/a" if x is None else f"{x:.{nd}f}"

    lines = [
        f"### Roofline: {est['target']} at {est['precision']}",
        "",
        f"{f(est['gflops'])} GFLOP per call ({f(est['matrix_gflops'])} in Conv/MatMul; "
        f"{100 * est['elementwise_share']:.1f}% elementwise), {est['frames_per_call']} frame(s) per call, "
        f"weights {f(est['weight_mb'], 2)} MB.",
        "",
        "| bound | per call (ms) | per frame (ms) |",
        "|---|---|---|",
        f"| compute ({f(est['peak_tops'], 1)} TFLOPS/TOPS peak) | {f(est['compute_ms'])} | "
        f"{f(None if est['compute_ms'] is None else est['compute_ms'] / est['frames_per_call'])} |",
        f"| memory, fused ({f(est['fused_mb'], 2)} MB at {f(est['dram_gbps'], 1)} GB/s) | {f(est['fused_memory_ms'])} | "
        f"{f(None if est['fused_memory_ms'] is None else est['fused_memory_ms'] / est['frames_per_call'])} |",
        f"| memory, activations round-trip DRAM ({f(est['roundtrip_mb'], 2)} MB) | {f(est['roundtrip_memory_ms'])} | "
        f"{f(None if est['roundtrip_memory_ms'] is None else est['roundtrip_memory_ms'] / est['frames_per_call'])} |",
        f"| **predicted (lower bound / no fusion)** | **{f(est['bound_ms'])} / {f(est['roundtrip_ms'])}** | "
        f"**{f(est['per_frame_bound_ms'])} / {f(est['per_frame_roundtrip_ms'])}** |",
    ]
    if measured_ms is not None:
        lines.append(f"| measured on this host | {measured_ms:.3f} | {measured_ms / est['frames_per_call']:.3f} |")
    if est.get("note"):
        lines += ["", f"_{est['note']}_"]
    lines += ["", "| op | count | GFLOP | MB moved (no fusion) |", "|---|---|---|---|"]
    for op, agg in list(est["by_op"].items())[:12]:
        lines.append(f"| {op} | {int(agg['count'])} | {agg['gflops']:.3f} | {agg['mb']:.2f} |")
    return "\n".join(lines) + "\n"
