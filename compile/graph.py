"""Graph analyses the stages share (spectral path, boundary convs, gates, keep-float); built on `core.onnx_graph`."""
from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING

import onnx

from lowlight.core.onnx_graph import GraphIndex, name_nodes, op_counts

__all__ = ["name_nodes", "op_counts", "spectral_tensors", "float_nodes", "all_tensor_names", "fill_dft_lengths",
           "boundary_convs", "gate_nodes", "keep_float_nodes"]

if TYPE_CHECKING:
    from lowlight.models.family import KeepFloat


def _is_inverse_dft(node: onnx.NodeProto) -> bool:
    return any(a.name == "inverse" and a.i == 1 for a in node.attribute)


def spectral_tensors(model: onnx.ModelProto) -> set[str]:
    """Tensors on a path from a forward DFT to an inverse DFT (the FBS spectral path).

    Quantizing them would put frequency coefficients through INT8: they keep
    float. Computed before lowering, by tensor name, so it survives DFT -> MatMul.
    """
    producers = {o: n for n in model.graph.node for o in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for n in model.graph.node:
        for i in n.input:
            consumers[i].append(n)
    dfts = [n for n in model.graph.node if n.op_type == "DFT"]
    # forward reachability from forward-DFT outputs
    fwd: set[str] = set()
    stack = [o for n in dfts if not _is_inverse_dft(n) for o in n.output]
    while stack:
        t = stack.pop()
        if t in fwd:
            continue
        fwd.add(t)
        for c in consumers.get(t, []):
            if c.op_type == "DFT" and _is_inverse_dft(c):
                continue
            stack.extend(c.output)
    # backward reachability from inverse-DFT inputs
    bwd: set[str] = set()
    stack = [n.input[0] for n in dfts if _is_inverse_dft(n)]
    while stack:
        t = stack.pop()
        if t in bwd:
            continue
        bwd.add(t)
        p = producers.get(t)
        if p is not None and not (p.op_type == "DFT" and not _is_inverse_dft(p)):
            stack.extend(p.input)
    region = fwd & bwd
    # the inverse DFTs' own outputs are spatial again, but keep the DFT nodes themselves float
    region |= {o for n in dfts for o in n.output}
    return region


def float_nodes(model: onnx.ModelProto, spectral: set[str], before_lowering: set[str]) -> list[str]:
    """Names of nodes that must stay float under INT8.

    A node stays float if it produces a spectral tensor, or if lowering created it
    (its outputs did not exist before lowering: DFT matrices, decomposed custom ops).
    """
    keep = []
    for n in model.graph.node:
        outs = set(n.output)
        if n.op_type in ("DFT",) or outs & spectral or (before_lowering and not outs & before_lowering):
            keep.append(n.name)
    return keep


def all_tensor_names(model: onnx.ModelProto) -> set[str]:
    return {o for n in model.graph.node for o in n.output}


def fill_dft_lengths(model: onnx.ModelProto) -> onnx.ModelProto:
    """Give every DFT an explicit dft_length input where the exporter left it empty.

    An empty optional input ('') means "the input's length along the axis"; with
    static shapes we can write that number down, and tools that walk the graph
    by edges (NNCF's graph builder) choke on empty edge names.
    """
    import numpy as np
    from onnx import numpy_helper

    targets = [n for n in model.graph.node if n.op_type == "DFT" and len(n.input) >= 2 and n.input[1] == ""]
    if not targets:
        return model
    index = GraphIndex(model)
    for i, node in enumerate(targets):
        shape = index.shapes.get(node.input[0])
        axis_value = index.constant(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        axis = int(axis_value) if axis_value is not None else -2
        if not shape or shape[axis] is None:
            continue  # dynamic: leave it to the runtime
        name = f"{node.name}_dft_length"
        model.graph.initializer.append(numpy_helper.from_array(np.array(shape[axis], dtype=np.int64), name))
        node.input[1] = name
    return model


def boundary_convs(model: onnx.ModelProto) -> list[str]:
    """The first Conv(s) after each graph input and the last Conv(s) before each output.

    These see raw pixels and produce the output residual: INT8 error there goes
    straight into the image, so they stay float (standard first/last-layer rule).
    """
    consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for n in model.graph.node:
        for i in n.input:
            consumers[i].append(n)
    producers = {o: n for n in model.graph.node for o in n.output}
    found: list[str] = []

    def walk(start: list[str], step) -> None:  # type: ignore[no-untyped-def]
        seen: set[str] = set()
        stack = list(start)
        while stack:
            t = stack.pop()
            if t in seen:
                continue
            seen.add(t)
            for n in step(t):
                if n.op_type == "Conv":
                    if n.name not in found:
                        found.append(n.name)
                else:
                    stack.extend(n.output if step is forward else n.input)

    def forward(t: str) -> list[onnx.NodeProto]:
        return consumers.get(t, [])

    def backward(t: str) -> list[onnx.NodeProto]:
        return [producers[t]] if t in producers else []

    walk([i.name for i in model.graph.input], forward)
    walk([o.name for o in model.graph.output], backward)
    return found


def gate_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the gates' nodes: from each Softmax back to its global-average pool, and the Softmax."""
    producer = {o: n for n in model.graph.node for o in n.output}
    keep: list[str] = []
    for sm in (n for n in model.graph.node if n.op_type == "Softmax"):
        stack, seen = [sm], set()
        while stack:
            n = stack.pop()
            if n.name in seen:
                continue
            seen.add(n.name)
            keep.append(n.name)
            if n.op_type in ("ReduceMean", "GlobalAveragePool"):
                continue  # the pool reads the block input: stop there
            stack.extend(producer[t] for t in n.input if t in producer)
    return keep


def keep_float_nodes(lowered: onnx.ModelProto, policy: "KeepFloat", before_lowering: onnx.ModelProto | None) -> list[str]:
    """Resolve a family's `KeepFloat` policy to node names of the lowered graph.

    `before_lowering` is the simplified graph before the target's passes (None if
    no pass ran): the spectral path is found there by tensor name, so it survives
    DFT -> MatMul, and nodes whose outputs did not exist there were made by lowering.
    """
    import re

    spectral = spectral_tensors(before_lowering if before_lowering is not None else lowered) if policy.spectral_path else set()
    before = all_tensor_names(before_lowering) if (before_lowering is not None and policy.lowered_nodes) else set()
    keep = float_nodes(lowered, spectral, before) if (spectral or before) else [n.name for n in lowered.graph.node if n.op_type == "DFT"]
    extra: list[str] = []
    if policy.boundary_convs:
        extra += boundary_convs(lowered)
    if policy.gates:
        extra += gate_nodes(lowered)
    if policy.op_types or policy.name_patterns:
        pats = [re.compile(p) for p in policy.name_patterns]
        extra += [n.name for n in lowered.graph.node if n.op_type in policy.op_types or any(p.search(n.name) for p in pats)]
    if policy.module_patterns:
        from lowlight.core.onnx_graph import node_modules

        mods = node_modules(lowered) or (node_modules(before_lowering) if before_lowering is not None else {})
        mpats = [re.compile(p) for p in policy.module_patterns]
        extra += [n.name for n in lowered.graph.node if any(p.search(mods.get(n.name, {}).get("module", "")) for p in mpats)]
    for name in extra:
        if name not in keep:
            keep.append(name)
    return keep
