"""Which layers Orin's DLA cannot run (they fall back to the GPU), before building.

Rules (docs/targets.md; TensorRT "DLA Supported Layers and Restrictions"):
FP16/INT8 only, static shapes, no Div/Exp/Sqrt/Pow, MatMul needs a constant
operand, non-batch dims <= 8192; other layer kinds outside the supported list
fall back to the GPU when GPU fallback is on (we always turn it on). The
report is advisory: TensorRT's own `canRunOnDLA` decides at build time.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import onnx

#: ONNX ops whose TensorRT layers DLA implements (conv/deconv/FC, activations,
#: pooling, elementwise sum/sub/prod/max/min/compare, concat, scale/BN, resize,
#: softmax, shuffles, slice, LRN) plus graph plumbing that folds away.
DLA_OPS = frozenset("""
Conv ConvTranspose Gemm MatMul Relu Sigmoid Tanh Clip LeakyRelu PRelu MaxPool
AveragePool GlobalAveragePool GlobalMaxPool Add Sub Mul Max Min Equal Greater
Less Concat BatchNormalization Resize Upsample Softmax Reshape Transpose Flatten
Squeeze Unsqueeze Slice Split LRN Abs Identity Dropout QuantizeLinear
DequantizeLinear Constant
""".split())

#: Called out explicitly because they are common in our models (gates, norms).
NOT_ON_DLA = {"Div": "DLA has no Div", "Exp": "DLA has no Exp", "Sqrt": "DLA has no Sqrt", "Pow": "DLA has no Pow"}
MAX_DIM = 8192


@dataclass(frozen=True)
class Fallback:
    node: str
    op_type: str
    reason: str


def dla_fallbacks(model: "onnx.ModelProto") -> list[Fallback]:
    """Nodes DLA cannot run, with the reason; Constant nodes are never listed."""
    from lowlight.core.onnx_graph import GraphIndex

    graph = model.graph
    consts = {i.name for i in graph.initializer} | {n.output[0] for n in graph.node if n.op_type == "Constant"}
    # Weights reach a MatMul through Q/DQ (INT8) or Cast (FP16): still constants to TensorRT.
    for n in graph.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear", "Cast") and n.input[0] in consts:
            consts.update(n.output)
    dims = {name: list(s) for name, s in GraphIndex(model).shapes.items()}  # advisory: unknown where inference fails

    out: list[Fallback] = []
    for i, node in enumerate(graph.node):
        if node.op_type == "Constant":
            continue
        name = node.name or f"#{i}:{node.op_type}"
        op = node.op_type
        if node.domain not in ("", "ai.onnx"):
            out.append(Fallback(name, op, "plugin layers run on the GPU"))
        elif op in NOT_ON_DLA:
            out.append(Fallback(name, op, NOT_ON_DLA[op]))
        elif op not in DLA_OPS:
            out.append(Fallback(name, op, f"DLA has no {op} layer"))
        elif op == "MatMul" and not any(x in consts for x in node.input[:2]):
            out.append(Fallback(name, op, "MatMul on DLA needs a constant operand"))
        else:
            for t in (*node.input, *node.output):
                shape = dims.get(t)
                if shape is None or t in consts:
                    continue
                if any(d is None for d in shape):
                    out.append(Fallback(name, op, f"tensor {t!r} has a dynamic shape"))
                    break
                if len(shape) >= 3 and any(d > MAX_DIM for d in shape[-3:] if d is not None):
                    out.append(Fallback(name, op, f"tensor {t!r} has a dim > {MAX_DIM}"))
                    break
    return out


#: Precision plumbing the builder folds into reformats; not layers of their own for the split.
PLUMBING = frozenset({"Constant", "Cast", "QuantizeLinear", "DequantizeLinear", "Identity"})


def dla_report(model: "onnx.ModelProto", names_per_group: int = 4) -> list[str]:
    """Human-readable warnings: a summary line, then one line per (op, reason) group of GPU-fallback layers."""
    falls = [f for f in dla_fallbacks(model) if f.op_type not in PLUMBING]
    total = sum(1 for n in model.graph.node if n.op_type not in PLUMBING)
    if not falls:
        return [f"DLA: all {total} layers can run on the DLA"]
    groups: dict[tuple[str, str], list[str]] = {}
    for f in falls:
        groups.setdefault((f.op_type, f.reason), []).append(f.node)
    lines = [f"DLA: {len(falls)} of {total} layers cannot run on the DLA and fall back to the GPU:"]
    for (op, reason), nodes in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        shown = ", ".join(nodes[:names_per_group]) + (f", +{len(nodes) - names_per_group} more" if len(nodes) > names_per_group else "")
        lines.append(f"  {len(nodes)} x {op}: {reason} ({shown})")
    return lines
