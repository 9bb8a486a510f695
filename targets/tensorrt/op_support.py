"""Check a graph against what a target's TensorRT ONNX parser accepts.

Fails the compile before any device time is spent: every unsupported node is
named with its op type, why, and what would fix it (another --trt-version,
another target, a precision). Data lives in trt_ops.py.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

import lowlight.targets.tensorrt.trt_ops as trt_ops
from lowlight.targets.tensorrt.capabilities import CUSTOM_DOMAIN, TrtTargetView

if TYPE_CHECKING:
    import onnx


@dataclass(frozen=True)
class Problem:
    """One node TensorRT cannot take, and how to get past it."""

    node: str
    op_type: str
    why: str
    fix: str

    def __str__(self) -> str:
        return f"{self.node} ({self.op_type}): {self.why}; fix: {self.fix}"


def find_problems(model: "onnx.ModelProto", target: TrtTargetView) -> list[Problem]:
    """All nodes of `model` (and of its If/Loop/Scan bodies) that `target`'s TensorRT parser would reject."""
    import onnx
    from onnx import numpy_helper

    from lowlight.core.onnx_graph import constant_node_value

    version = target.version
    vkey = (version.major, version.minor)
    ops = trt_ops.supported_ops(vkey)
    ranks = _ranks(model)
    problems: list[Problem] = []
    # (graph, name prefix, constants visible from outer scopes): If/Loop/Scan bodies are parsed too.
    todo: list[tuple[onnx.GraphProto, str, dict[str, np.ndarray]]] = [(model.graph, "", {})]
    while todo:
        graph, prefix, outer = todo.pop(0)
        consts = dict(outer)
        consts.update({i.name: numpy_helper.to_array(i) for i in graph.initializer})
        for n in graph.node:
            if n.op_type == "Constant":  # value, value_ints, value_float...: all constant weights to TensorRT
                consts[n.output[0]] = constant_node_value(n)
        for i, node in enumerate(graph.node):
            for a in node.attribute:
                sub = [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)
                for j, g in enumerate(sub):
                    label = f"{node.name or node.op_type}/{a.name}" + (f"[{j}]" if len(sub) > 1 else "")
                    todo.append((g, f"{prefix}{label}/", consts))
        problems += _graph_problems(graph, prefix, consts, ranks, target, ops, vkey)
    return problems


def _graph_problems(
    graph: "onnx.GraphProto", prefix: str, consts: dict[str, np.ndarray], ranks: dict[str, int],
    target: TrtTargetView, ops: frozenset[str], vkey: tuple[int, int],
) -> list[Problem]:
    from onnx import helper

    version, caps = target.version, target.caps
    problems: list[Problem] = []
    for i, node in enumerate(graph.node):
        name = prefix + (node.name or f"#{i}:{node.op_type}")

        def bad(why: str, fix: str) -> None:
            problems.append(Problem(name, node.op_type, why, fix))

        if node.domain == CUSTOM_DOMAIN:
            if not caps.aot_plugins:
                bad(f"custom op needs an AOT Python plugin (TensorRT >= 10.9), this is {version}",
                    "let the decompose-custom-ops pass run, or use --trt-version 10.9+")
            continue
        if node.domain not in ("", "ai.onnx"):
            bad(f"domain {node.domain!r} has no TensorRT importer", "export without vendor ops, or target cpu")
            continue
        op = node.op_type
        if op not in ops:
            since = trt_ops.first_version_with(op)
            if op == "DFT":
                fix = "the dft-to-matmul lowering (needs static H/W: fix --shape), or --trt-version 11.2+ where the parser has DFT"
            elif since is not None:
                fix = f"--trt-version {since[0]}.{since[1]}+ (if the device stack ships it), or --target cpu"
            else:
                fix = "no TensorRT parser has it: rewrite the model op, or --target cpu"
            bad(f"TensorRT {version}'s ONNX parser has no {op}", fix)
            continue
        # Inputs that must be constants (everywhere, or before some version).
        for idx in trt_ops.CONSTANT_INPUTS.get(op, ()):
            if idx < len(node.input) and node.input[idx] and node.input[idx] not in consts:
                bad(f"input {idx} ({node.input[idx]!r}) must be a constant for TensorRT", "fold it with onnxsim (fixed --shape)")
        for (rop, idx), since in trt_ops.TENSOR_INPUT_FROM.items():
            if rop == op and vkey < since and idx < len(node.input) and node.input[idx] and node.input[idx] not in consts:
                bad(f"input {idx} must be a constant before TensorRT {since[0]}.{since[1]}",
                    f"fold it with onnxsim (fixed --shape), or --trt-version {since[0]}.{since[1]}+")
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if op in trt_ops.SPATIAL_2D_3D:
            r = ranks.get(node.input[0])
            if r is not None and r not in (4, 5):
                bad(f"only 2D or 3D {op} is supported, input rank is {r}", "reshape to a 2D op in the model, or --target cpu")
        if op == "Resize":
            mode = _s(attrs.get("mode", b"nearest"))
            coord = _s(attrs.get("coordinate_transformation_mode", b"half_pixel"))
            if mode not in trt_ops.RESIZE_MODES:
                bad(f"Resize mode {mode!r} is not supported", "use nearest or (bi)linear upsampling in the model")
            if coord not in trt_ops.RESIZE_COORD_MODES:
                bad(f"Resize coordinate mode {coord!r} is not supported", "use half_pixel or align_corners in the model")
        if op in ("QuantizeLinear", "DequantizeLinear") and len(node.input) > 2 and node.input[2]:
            zp = consts.get(node.input[2])
            if zp is None or np.any(zp != 0):
                bad("zero-point must be a constant 0 (symmetric INT8)", "quantize with the trt-s8s8 Q/DQ flavour")
            elif zp.dtype != np.int8:
                bad(f"Q/DQ type {zp.dtype} is not INT8", "quantize with the trt-s8s8 Q/DQ flavour")
    return problems


def check_model(model: "onnx.ModelProto", target: TrtTargetView) -> None:
    """Raise TargetError listing every node `target` cannot run; silent when all pass."""
    from lowlight.core.errors import TargetError

    problems = find_problems(model, target)
    if not problems:
        return
    shown = "\n  ".join(str(p) for p in problems[:20])
    more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
    raise TargetError(
        f"{len(problems)} node(s) cannot run on {target.name} (TensorRT {target.version}):\n  {shown}{more}",
        "see the fix after each node; `lowlight-compile targets` lists what each target's TensorRT can do",
    )


def _s(v: object) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _ranks(model: "onnx.ModelProto") -> dict[str, int]:
    """Tensor name -> rank, from the one shape inference of `core.onnx_graph` (missing where unknown)."""
    from lowlight.core.onnx_graph import GraphIndex

    return {name: len(dims) for name, dims in GraphIndex(model).shapes.items()}
