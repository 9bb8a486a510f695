"""Float nodes chosen by measurement: the smallest set of INT8 nodes to give back to float.

A family's `KeepFloat` policy is a floor (GM-MoE's gates, NAT's decisions):
those nodes are never quantized. Everything else the engine quantized is a
candidate, and which candidates return to float is measured on the calibration
frames, per engine, from the engine's own Q/DQ graph (no re-calibration: giving
a node back to float only rewires its inputs around its DequantizeLinear, so the
other nodes keep their scales):

1. Sensitivity, each node quantized alone: every other candidate reads float,
   and the mean squared error of the outputs against the float graph is that
   node's share of the INT8 error. Quantization errors of separate layers are
   close to independent, so their MSEs add up (the additive-noise model
   behind mixed-precision searches such as HAWQ and NNCF's accuracy control);
   the sum predicts the all-INT8 error before any graph is run whole.
2. Greedy: give back the node of largest share until the predicted PSNR meets
   the budget, then check the real graph on the same frames, giving back the
   next node until the measured worst frame meets it (the additive model can
   be optimistic where errors correlate).
3. Report: each node left float, what quantizing it alone cost in dB, and what
   keeping it float costs in ms on this host (the graph with the node quantized
   as well, timed interleaved against the chosen graph).

Measured on AMNet tiny (cpu, ORT U8S8, README "INT8: which nodes stay float"): the
hand rule kept 59 nodes float (spectral path, boundary convs) for 47.7 / 44.0 dB
mean / worst against FP32 PyTorch on real photos; the measurement keeps 3 for
47.5 / 43.9 dB. The frames matter: measured on the night calibration samples
alone, all-INT8 looked fine (41.6 dB) and the brightest real photo fell to 33 dB,
hence the exposure bracket (`calibration.frames.exposure_bracket`).
"""
from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

import onnx
from onnx import numpy_helper

from lowlight.core.onnx_graph import GraphIndex, ort_session

__all__ = ["quantized_nodes", "give_back_to_float", "fusion_closure", "measure_float_set", "shortest_prefix", "prune_dead", "MARGIN_DB", "VERSION"]

#: dB the worst calibration frame must clear above --min-fidelity: the measurement sees
#: calibration frames and the float graph, verification sees held-out frames and PyTorch
MARGIN_DB = 3.0
#: dB a cut-back set must clear above the budget: cut to exactly the budget on calibration frames, AMNet
#: tiny's worst real photo fell to 34.6 dB (below --min-fidelity 35)
PRUNE_MARGIN_DB = 2.0
#: part of the INT8 cache key: a change to the search must not reuse older artifacts
VERSION = 9

_QDQ = ("QuantizeLinear", "DequantizeLinear")


def quantized_nodes(qdq: onnx.ModelProto) -> list[str]:
    """Names of the compute nodes that read at least one DequantizeLinear output (in graph order)."""
    index = GraphIndex(qdq)
    return [n.name for n in qdq.graph.node if n.op_type not in _QDQ and n.name and _quantized(index, n)]


def give_back_to_float(qdq: onnx.ModelProto, float_model: onnx.ModelProto, names: set[str] | list[str],
                       keep_fused: bool = False) -> onnx.ModelProto:
    """A copy of `qdq` in which the nodes `names` compute in float.

    Each input of such a node that reads a DequantizeLinear is rewired: an activation to the
    tensor its QuantizeLinear reads, a quantized constant (weight, bias) to the float model's
    value for the same node input (or, where the float model has no node of that name, the
    dequantized value). A float constant the engine rewrote (NNCF's bias correction) returns to the
    float model's value as well. Q/DQ nodes nobody reads any more are removed.

    `keep_fused`: a quantized conv/matmul whose output fed only a QuantizeLinear, and now also
    feeds a float node, can no longer be fused into an integer kernel (onnxruntime's
    QLinearConv needs DQ -> Conv -> Q): it returns to float as well (`fusion_closure`).
    """
    names = set(names)
    if keep_fused:
        names |= fusion_closure(qdq, names)
    model = copy.deepcopy(qdq)
    index = GraphIndex(model)
    fidx = GraphIndex(float_model)
    float_nodes = {n.name: n for n in float_model.graph.node if n.name}
    taken = set(index.initializers) | set(index.producer)
    for node in model.graph.node:
        if node.name not in names:
            continue
        twin = float_nodes.get(node.name)
        for i, inp in enumerate(node.input):
            original = fidx.constant(twin.input[i]) if twin is not None and i < len(twin.input) and twin.input[i] else None
            dq = index.producer.get(inp) if inp else None
            if dq is None or dq.op_type != "DequantizeLinear":
                # NNCF's bias correction rewrites a quantized conv's float bias to offset its INT8 error; in float
                # the offset is an error of its own (AMNet base: every node given back still 30.3 dB, not inf)
                current = index.constant(inp) if inp and original is not None else None
                if current is None or (current.shape == original.shape and np.array_equal(current, original)):
                    continue
                value = original
            else:
                q = index.producer.get(dq.input[0])
                if q is not None and q.op_type == "QuantizeLinear":
                    node.input[i] = q.input[0]
                    continue
                value = original if original is not None else _dequantized(index, dq)
                if value is None:
                    continue  # not a constant we can rebuild: the node keeps this input quantized
            name = f"{inp}_float"
            while name in taken:
                name += "_"
            taken.add(name)
            model.graph.initializer.append(numpy_helper.from_array(np.asarray(value), name))
            node.input[i] = name
        _unquantize_graph_outputs(model, index, node)
    return prune_dead(model)


def _unquantize_graph_outputs(model: onnx.ModelProto, index: GraphIndex, node: Any) -> None:
    """A given-back node whose output reaches a graph output only through Q -> DQ writes that output itself."""
    outputs = {o.name for o in model.graph.output}
    for k, o in enumerate(node.output):
        cons = index.consumers.get(o, [])
        if len(cons) != 1 or cons[0].op_type != "QuantizeLinear":
            continue
        dqs = index.consumers.get(cons[0].output[0], [])
        if len(dqs) == 1 and dqs[0].op_type == "DequantizeLinear" and dqs[0].output[0] in outputs:
            node.output[k] = dqs[0].output[0]
            model.graph.node.remove(dqs[0])
            model.graph.node.remove(cons[0])


def fusion_closure(qdq: onnx.ModelProto, names: set[str]) -> set[str]:
    """The quantized producers that giving back `names` would leave unfusable (see `give_back_to_float`)."""
    index = GraphIndex(qdq)
    fusable = ("Conv", "MatMul", "Gemm")
    names, added = set(names), set()
    while True:
        new = set()
        for n in qdq.graph.node:
            if n.name in names or n.op_type not in fusable or n.name not in _quantized(index, n):
                continue
            cons = [c for o in n.output for c in index.consumers.get(o, [])]
            if not cons or any(c.op_type != "QuantizeLinear" for c in cons):
                continue  # not fused today (e.g. writes a graph output): nothing to lose
            # each Q's DQ readers: a given-back reader reads the float tensor instead
            readers = [r for q in cons for o in q.output for d in index.consumers.get(o, []) for dd in d.output
                       for r in index.consumers.get(dd, [])]
            if any(r.name in names for r in readers):
                new.add(n.name)
        if not new:
            return added
        names |= new
        added |= new


def _quantized(index: GraphIndex, n: Any) -> set[str]:
    """{n.name} if n reads a DequantizeLinear output, else the empty set."""
    dq = any(index.producer.get(i) is not None and index.producer[i].op_type == "DequantizeLinear" for i in n.input if i)
    return {n.name} if dq else set()


def _dequantized(index: GraphIndex, dq: Any) -> np.ndarray | None:
    """scale * (q - zero_point) of a DequantizeLinear on constants, with its axis (float32)."""
    q = index.constant(dq.input[0])
    scale = index.constant(dq.input[1]) if len(dq.input) > 1 else None
    if q is None or scale is None:
        return None
    zp = index.constant(dq.input[2]) if len(dq.input) > 2 and dq.input[2] else None
    axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
    shape = [1] * q.ndim
    if scale.ndim == 1 and scale.size > 1:
        shape[axis % q.ndim] = scale.size
    s = scale.reshape(shape) if scale.size > 1 else scale
    z = (zp.reshape(shape) if zp is not None and zp.size > 1 else zp) if zp is not None else 0
    return ((q.astype(np.float32) - np.asarray(z, dtype=np.float32)) * s).astype(np.float32)


def prune_dead(model: onnx.ModelProto) -> onnx.ModelProto:
    """Remove, in place, the Q/DQ nodes whose outputs nobody reads (not graph outputs) and the constants
    only they read. Other dead nodes stay: a graph with If branches inlined keeps the branch conditions
    nobody reads until `quantize_branches` refolds it."""
    outputs = {o.name for o in model.graph.output}

    def reads() -> set[str]:
        used = {i for n in model.graph.node for i in n.input if i} | outputs
        for n in model.graph.node:  # If/Loop bodies read outer-scope tensors by name
            for a in n.attribute:
                for g in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                    used |= {i for sn in g.node for i in sn.input if i}
        return used

    freed: set[str] = set()
    while True:
        used = reads()
        dead = [n for n in model.graph.node if n.op_type in _QDQ and not any(o in used for o in n.output if o)]
        if not dead:
            break
        for n in dead:
            freed |= set(n.input)
            model.graph.node.remove(n)
    used = reads()
    keep = [t for t in model.graph.initializer if t.name in used or t.name not in freed]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
    return model


def _runner(model: onnx.ModelProto) -> Callable[[dict[str, np.ndarray]], list[np.ndarray]]:
    sess = ort_session(model.SerializeToString())
    return lambda feed: sess.run(None, feed)


def _errors(model: onnx.ModelProto, feeds: list[dict[str, np.ndarray]], want: list[list[np.ndarray]]) -> list[float]:
    """Per feed: mean squared error of every output against the float graph's, over all outputs' elements."""
    run = _runner(model)
    out = []
    for f, w in zip(feeds, want):
        got = run(f)
        sq = sum(float(np.sum((g.astype(np.float64) - r.astype(np.float64)) ** 2)) for g, r in zip(got, w)
                 if np.issubdtype(r.dtype, np.floating))
        n = sum(r.size for r in w if np.issubdtype(r.dtype, np.floating))
        out.append(sq / max(1, n))
    return out


def _db(mse: float, peak: float = 1.0) -> float:
    return float("inf") if mse <= 0 else 10 * np.log10(peak * peak / mse)


def _time(models: dict[str, onnx.ModelProto], feed: dict[str, np.ndarray], rounds: int = 5) -> dict[str, float]:
    """Median ms per run of each model (one session each), timed interleaved as the backend choice is."""
    from lowlight.compile.openvino import time_interleaved

    runs = {k: _runner(m) for k, m in models.items()}
    times = time_interleaved({k: (lambda r=r: r(feed)) for k, r in runs.items()}, rounds=rounds, warmup=1)
    return {k: float(np.median(v)) for k, v in times.items()}


def shortest_prefix(n: int, meets: Callable[[int], bool]) -> int:
    """The smallest k in 0..n with meets(k), by bisection, assuming meets is monotone and meets(n) holds
    (a longer prefix of the ranked set gives back more nodes and loses no accuracy); meets(n) is not called."""
    lo, hi = -1, n
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if meets(mid):
            hi = mid
        else:
            lo = mid
    return hi


def measure_float_set(
    float_path: str | Path,
    qdq_path: str | Path,
    feeds: list[dict[str, np.ndarray]],
    budget_db: float,
    *,
    floor: list[str] | None = None,
    time_nodes: int = 6,
    rank_frames: int = 2,
    keep_fused: bool = True,
    skip: tuple[str, ...] = (),
    say: Callable[[str], Any] = print,
) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """Give back to float the fewest quantized nodes of `qdq_path` that bring its worst frame to `budget_db`.

    `feeds`: the frames the error is measured on (the calibration frames; the float graph
    at `float_path` is the reference, outputs assumed in [0, 1]); nodes are ranked on the
    `rank_frames` worst of them. `floor`: nodes the family
    keeps float, reported but not candidates (the engine already left them float).
    `time_nodes`: how many of the given-back nodes get their ms cost timed. `keep_fused`: see
    `give_back_to_float` (onnxruntime's U8S8 kernels; TensorRT fuses Q/DQ by its own rules).
    `skip`: name prefixes never given back (`quantize_branches`' inlined If-branch nodes, whose
    Q/DQ must stay where the refold puts them back).
    Returns the relaxed Q/DQ model and a report.
    """
    float_model = onnx.load(str(float_path))
    qdq = onnx.load(str(qdq_path))
    ref = _runner(float_model)
    want = [ref(f) for f in feeds]
    del ref
    candidates = [n for n in quantized_nodes(qdq) if not n.startswith(skip)] if skip else quantized_nodes(qdq)
    report: dict[str, Any] = {"skipped": list(skip), "how": "each quantized node alone vs the float graph on the worst frames (MSE, additive "
                                      "model), greedy, cut back to the shortest measured prefix that meets the budget "
                                      "(bisection), then one more at a time until the measured worst of all frames meets it",
                              "budget_db": budget_db, "frames": len(feeds), "candidates": len(candidates),
                              "floor": len(floor or [])}
    t0 = time.perf_counter()
    all_err = _errors(qdq, feeds, want)
    report["all_int8_db"] = {"mean": _db(float(np.mean(all_err))), "worst": _db(max(all_err))}
    if _db(max(all_err)) >= budget_db:
        report.update(given_back=[], final_db=report["all_int8_db"], seconds=round(time.perf_counter() - t0, 1))
        say(f"    float nodes by measurement: all {len(candidates)} quantized nodes meet {budget_db:g} dB "
            f"(worst of {len(feeds)} frames {_db(max(all_err)):.1f} dB)")
        return qdq, report
    # the ranking needs only the frames that fail: the worst few carry the decision and cost a
    # fraction of the whole set per candidate
    worst = sorted(range(len(feeds)), key=lambda i: -all_err[i])[:rank_frames]
    wf, ww = [feeds[i] for i in worst], [want[i] for i in worst]
    say(f"    float nodes by measurement: all-INT8 worst frame {_db(max(all_err)):.1f} dB < {budget_db:g} dB; "
        f"measuring {len(candidates)} quantized nodes alone on the {len(worst)} worst frames")
    share: dict[str, float] = {}
    step = max(1, len(candidates) // 5)  # minutes on AMNet base: a progress line every fifth
    for i, name in enumerate(candidates, 1):
        alone = give_back_to_float(qdq, float_model, set(candidates) - {name})
        share[name] = float(np.mean(_errors(alone, wf, ww)))
        if i % step == 0 and i < len(candidates):
            say(f"      {i}/{len(candidates)} nodes measured ({time.perf_counter() - t0:.0f} s)")
    order = sorted(candidates, key=lambda n: -share[n])
    # calibrate the additive model to the all-INT8 error on the same frames: on AMNet base the shares
    # summed to more than the whole (errors partly cancel), and the unscaled sum gave back 39 of 84
    # nodes for a worst frame 4.9 dB past the budget
    whole = float(np.mean([all_err[i] for i in worst]))
    scale = whole / max(sum(share.values()), 1e-30)
    share = {n: v * scale for n, v in share.items()}
    total = whole
    report["additive_scale"] = round(scale, 4)

    def allowed(names: list[str]) -> bool:  # the fusion closure must not reach a node we may not give back
        return not skip or not any(c.startswith(skip) for c in fusion_closure(qdq, set(names)))

    order = [n for n in order if allowed([n])] if keep_fused else order
    given: list[str] = []
    for name in order:  # predicted: drop shares until the sum meets the budget (mean frame)
        if _db(total) >= budget_db:
            break
        if keep_fused and not allowed(given + [name]):
            continue
        given.append(name)
        total -= share[name]
    model = give_back_to_float(qdq, float_model, given, keep_fused)
    err = _errors(model, feeds, want)
    rest = [n for n in order if n not in given and (not keep_fused or allowed(given + [n]))]
    while _db(max(err)) < budget_db and rest:
        # the additive model was optimistic: one more node at a time, measured on the frames still
        # failing (a whole-set pass per node costs minutes on AMNet base), then confirmed on all
        failing = sorted(range(len(feeds)), key=lambda i: -err[i])[:rank_frames]
        ff, fw = [feeds[i] for i in failing], [want[i] for i in failing]
        sub = [err[i] for i in failing]
        while _db(max(sub)) < budget_db and rest:
            given.append(rest.pop(0))
            model = give_back_to_float(qdq, float_model, given, keep_fused)
            sub = _errors(model, ff, fw)
        err = _errors(model, feeds, want)
    if _db(max(err)) >= budget_db and len(given) > 1:
        # the prediction and the one-at-a-time steps overshoot: keep the shortest prefix of the ranked set
        # that meets the budget, found by bisection on all frames (AMNet tiny's retrained weights: one residual
        # Add held 99 % of the error, yet the search gave back 43 of 80 nodes and landed 10 dB past the budget)
        # The last node added is the one that made the worst frame pass, so it stays with every prefix.
        last = given[-1:]
        tried: dict[int, tuple[onnx.ModelProto, list[float]]] = {len(given) - 1: (model, err)}

        def meets(k: int) -> bool:
            m_k = give_back_to_float(qdq, float_model, given[:k] + last, keep_fused)
            tried[k] = (m_k, _errors(m_k, feeds, want))
            return _db(max(tried[k][1])) >= budget_db + PRUNE_MARGIN_DB

        keep = shortest_prefix(len(given) - 1, meets)
        report["pruned_from"] = len(given)
        given = given[:keep] + last
        model, err = tried[keep]
    closure = sorted(fusion_closure(qdq, set(given))) if keep_fused else []
    timed = given[:time_nodes]
    ms: dict[str, float] = {}
    if timed:
        variants = {"chosen": model, **{n: give_back_to_float(qdq, float_model, [g for g in given if g != n], keep_fused)
                                        for n in timed}}
        t = _time(variants, feeds[0])
        ms = {n: round(t["chosen"] - t[n], 2) for n in timed}
        report["chosen_ms"] = round(t["chosen"], 2)
    report["given_back"] = [{"node": n, "alone_db": round(_db(share[n] / scale), 2), "share_of_int8_error": round(share[n] / sum(share.values()), 4),
                             **({"float_cost_ms": ms[n]} if n in ms else {})} for n in given]
    report["given_back_for_fusion"] = closure
    report["final_db"] = {"mean": _db(float(np.mean(err))), "worst": _db(max(err))}
    report["seconds"] = round(time.perf_counter() - t0, 1)
    say(f"    float nodes by measurement: {len(given)} of {len(candidates)} given back to float"
        f"{f' (+{len(closure)} convs that would lose their INT8 fusion)' if closure else ''}, worst frame "
        f"{_db(max(err)):.1f} dB (all-INT8 {_db(max(all_err)):.1f}); {report['seconds']:.0f} s")
    return model, report
