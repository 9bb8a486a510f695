"""INT8 inside ONNX `If` branches: a generic quantizer capability (top-2 mixture-of-experts graphs).

Neither NNCF nor onnxruntime's static quantizer looks inside `If` subgraphs:
on the top-2 graph they would leave every expert in float. But our If nodes
have a property we can use: each then-branch computes `acc + w_k * expert_k(x)`
(or `w_0 * expert_0(x)`), and when expert k is dropped its weight w_k is
exactly 0, so the then-branch gives the same value as the else-branch. So:

1. `inline_then_branches`: replace every If by its then-branch's nodes (tagged
   by name). The result has no If, runs every expert, and computes the same
   outputs as the top-2 graph (dropped experts are multiplied by zero).
2. Quantize that flat graph with the pipeline's INT8 engines (Q/DQ inserted
   around the experts' convs, calibrated on real expert activations).
3. `refold_if_branches`: put each tagged node, and the Q/DQ nodes that only
   feed it, back into a then-branch; rebuild the If with its original
   condition and else-branch. The dropped expert is skipped again.

Which nodes stay float (e.g. the gates deciding the route) is the family's
`KeepFloat` policy, resolved by `compile.graph.keep_float_nodes` before this runs.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import onnx
from onnx import helper

from lowlight.compile.export import save_onnx

TAG = "if_then::"


def _graph_attr(node: onnx.NodeProto, name: str) -> onnx.GraphProto:
    for a in node.attribute:
        if a.name == name:
            return a.g
    raise KeyError(f"{node.name} has no {name}")


def inline_then_branches(model: onnx.ModelProto) -> onnx.ModelProto:
    """Replace each top-level If by its then-branch (nodes renamed `TAG<if>::<node>`)."""
    m = copy.deepcopy(model)
    g = m.graph
    nodes: list[onnx.NodeProto] = []
    for n in g.node:
        if n.op_type != "If":
            nodes.append(n)
            continue
        then = _graph_attr(n, "then_branch")
        if len(then.output) != 1 or len(n.output) != 1:
            raise ValueError(f"If {n.name}: expected one output")
        prefix = f"{TAG}{n.name}::"
        produced = {o for bn in then.node for o in bn.output} | {i.name for i in then.initializer}
        rename = {t: prefix + t for t in produced}
        rename[then.output[0].name] = n.output[0]  # the branch result becomes the If's output
        for init in then.initializer:
            moved = copy.deepcopy(init)
            moved.name = rename[init.name]
            g.initializer.append(moved)
        for bn in then.node:
            new = copy.deepcopy(bn)
            new.name = prefix + (bn.name or bn.op_type)
            new.ClearField("input")
            new.input.extend(rename.get(t, t) for t in bn.input)
            new.ClearField("output")
            new.output.extend(rename.get(t, t) for t in bn.output)
            nodes.append(new)
        for vi in then.value_info:
            v = copy.deepcopy(vi)
            v.name = rename.get(vi.name, vi.name)
            g.value_info.append(v)
    g.ClearField("node")
    g.node.extend(nodes)
    return m


def refold_if_branches(quantized: onnx.ModelProto, original: onnx.ModelProto) -> onnx.ModelProto:
    """Rebuild the If nodes of `original` around the (quantized) tagged nodes of `quantized`."""
    q = copy.deepcopy(quantized)
    g = q.graph
    ifs = {n.name: n for n in original.graph.node if n.op_type == "If"}
    main_names = {n.name for n in original.graph.node}
    graph_outputs = {o.name for o in g.output}

    owner: dict[int, str] = {}  # node index -> If name
    for i, n in enumerate(g.node):
        if n.name.startswith(TAG):
            owner[i] = n.name[len(TAG):].split("::", 1)[0]
    consumers: dict[str, list[int]] = {}
    for i, n in enumerate(g.node):
        for t in n.input:
            consumers.setdefault(t, []).append(i)
    # Nodes the quantizer inserted (Q/DQ...) go with the branch that alone consumes them.
    changed = True
    while changed:
        changed = False
        for i, n in enumerate(g.node):
            if i in owner or n.name in main_names:
                continue
            cons = [c for t in n.output for c in consumers.get(t, [])]
            owners = {owner.get(c) for c in cons}
            if cons and len(owners) == 1 and None not in owners and not set(n.output) & graph_outputs:
                owner[i] = owners.pop()  # type: ignore[assignment]
                changed = True

    produced_in: dict[str, str] = {o: owner[i] for i, n in enumerate(g.node) if i in owner for o in n.output}
    branch_nodes: dict[str, list[onnx.NodeProto]] = {name: [] for name in ifs}
    main: list[onnx.NodeProto] = []
    for i, n in enumerate(g.node):
        (branch_nodes[owner[i]] if i in owner else main).append(n)
    for n in main:
        for t in n.input:
            if t in produced_in and t not in {ifs[produced_in[t]].output[0]}:
                raise ValueError(f"node {n.name} in the main graph reads {t}, internal to If {produced_in[t]}")

    rebuilt: list[onnx.NodeProto] = []
    for name, orig in ifs.items():
        out = orig.output[0]
        inner = out + "__then"
        body = []
        for n in branch_nodes[name]:
            n = copy.deepcopy(n)
            for field in (n.input, n.output):
                for k, t in enumerate(field):
                    if t == out:
                        field[k] = inner
            body.append(n)
        then_out = copy.deepcopy(_graph_attr(orig, "then_branch").output[0])
        then_out.name = inner
        then = helper.make_graph(body, f"{name}_then", [], [then_out])
        new_if = helper.make_node("If", [orig.input[0]], [out], name=name)
        new_if.attribute.extend([helper.make_attribute("then_branch", then),
                                 copy.deepcopy(next(a for a in orig.attribute if a.name == "else_branch"))])
        new_if.metadata_props.extend(orig.metadata_props)
        rebuilt.append(new_if)
    # Branch-internal value_info no longer names main-graph tensors.
    keep_vi = [v for v in g.value_info if v.name not in produced_in or v.name in {ifs[n].output[0] for n in ifs}]
    g.ClearField("value_info")
    g.value_info.extend(keep_vi)
    g.ClearField("node")
    g.node.extend(_toposort(main + rebuilt, {i.name for i in g.input} | {i.name for i in g.initializer}))
    return q


def _outer_inputs(node: onnx.NodeProto) -> set[str]:
    """Every name `node` reads, its subgraphs' outer-scope references included."""
    names = {t for t in node.input if t}
    for a in node.attribute:
        if a.type == onnx.AttributeProto.GRAPH:
            inner = {o for n in a.g.node for o in n.output} | {i.name for i in a.g.initializer}
            for n in a.g.node:
                names |= {t for t in _outer_inputs(n) if t not in inner}
    return names


def _toposort(nodes: list[onnx.NodeProto], available: set[str]) -> list[onnx.NodeProto]:
    ready = set(available)
    pending = list(nodes)
    out: list[onnx.NodeProto] = []
    needs = [_outer_inputs(n) for n in pending]
    while pending:
        progressed = False
        rest, rest_needs = [], []
        for n, need in zip(pending, needs):
            if need <= ready:
                out.append(n)
                ready |= set(n.output)
                progressed = True
            else:
                rest.append(n)
                rest_needs.append(need)
        if not progressed:
            missing = sorted(rest_needs[0] - ready)[:5]
            raise ValueError(f"cannot order node {rest[0].name}: inputs {missing} are never produced")
        pending, needs = rest, rest_needs
    return out


def quantize_int8_with_ifs(src: str | Path, dst: str | Path, feeds: list, flavour: str, keep_float: list[str],
                           base: Any = None, **kw: Any) -> dict[str, Any]:
    """`lowlight.compile.quantize.quantize_int8` (or `base`), made to reach into If branches.

    Same signature and report; adds `"if_branches": n`. Needs each If's then-branch
    to equal its else-branch whenever the branch is not taken (true of top-2
    dispatch, where a dropped expert's weight is exactly 0).
    """
    if base is None:
        from lowlight.compile.quantize import quantize_int8 as base
    quantize_int8 = base

    src, dst = Path(src), Path(dst)
    original = onnx.load(str(src))
    n_if = sum(n.op_type == "If" for n in original.graph.node)
    if not n_if:
        rep = quantize_int8(src, dst, feeds, flavour, list(keep_float), **kw)
    else:
        flat_src = dst.with_name(dst.stem + ".flat_float.onnx")
        flat_dst = dst.with_name(dst.stem + ".flat_int8.onnx")
        save_onnx(inline_then_branches(original), flat_src)
        try:
            # the measured float set leaves the branches' nodes quantized: giving one back moves
            # Q/DQ nodes across the branch boundary the refold relies on
            rep = quantize_int8(flat_src, flat_dst, feeds, flavour, list(keep_float), **kw, measure_skip=(TAG,))
            save_onnx(refold_if_branches(onnx.load(str(flat_dst)), original), dst)
        finally:
            flat_src.unlink(missing_ok=True)
            flat_dst.unlink(missing_ok=True)
    rep["if_branches"] = n_if
    return rep
