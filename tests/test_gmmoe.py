"""GM-MoE: architecture facts, top-2 dispatch (eager and exported), shapes, family API.

The exports are shared per module (torch.cond tracing makes a top-2 export cost
tens of seconds even for `tiny`).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import lowlight.models as models
from lowlight.models.gmmoe import CONFIGS, GMMoE, check_size, input_shapes, make_inputs, top2
from lowlight.core.errors import ShapeError

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

SHAPE = (1, 3, 45, 53)  # not a multiple of the downsampling factor: exercises pad + crop


def tiny(experts: str = "top2", seed: int = 0) -> GMMoE:
    torch.manual_seed(seed)
    m = models.build("gmmoe", config="tiny", experts=experts).eval()
    # Fresh FeatureExperts are the identity (zero beta/gamma): give them something to do.
    with torch.no_grad():
        for b in m.blocks():
            b.experts[2].beta.normal_(0, 0.5)
            b.experts[2].gamma.normal_(0, 0.5)
    return m


def force_gates(model: GMMoE, logits_per_block: list[list[list[float]]]) -> None:
    """Make block i's gate return fixed logits [B,3] (-inf gives an expert exactly zero weight)."""
    for b, table in zip(model.blocks(), logits_per_block):
        fixed = torch.tensor(table, dtype=torch.float32)
        b.gate.logits = lambda pooled, fixed=fixed: fixed[: pooled.shape[0]]


def dropped_by_block(model: GMMoE, x: torch.Tensor) -> list[int]:
    seen: list[int] = []
    hooks = [b.gate.register_forward_hook(lambda _m, _i, w: seen.append(int(top2(w)[0][0]))) for b in model.blocks()]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return seen


def export(model: GMMoE, path: Path, shape=SHAPE) -> onnx.ModelProto:
    x = torch.rand(*shape)
    prog = torch.onnx.export(model, (x,), dynamo=True, input_names=["rgb"], output_names=["enhanced"], verbose=False)
    prog.save(str(path))
    return onnx.load(str(path))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(model, path) for a top-2 and a dense export of the same tiny weights."""
    d = tmp_path_factory.mktemp("gmmoe")
    out = {}
    for mode in ("top2", "dense"):
        m = tiny(mode)
        export(m, d / f"{mode}.onnx")
        out[mode] = (m, d / f"{mode}.onnx")
    return out


# --- architecture ---------------------------------------------------------------------------


def test_paper_config_has_published_parameter_count():
    m = models.build("gmmoe", config="paper", experts="top2")
    n = sum(p.numel() for p in m.parameters())
    assert round(n / 1e6, 2) == 19.99, n
    # width 24, four stages of one block, one middle block, four decoder stages: 9 expert blocks
    assert CONFIGS["paper"].width == 24 and len(m.blocks()) == 9
    assert [len(b.experts) for b in m.blocks()] == [3] * 9


def test_layernorm_exports_as_plain_ops(exported):
    g = onnx.load(str(exported["dense"][1]))
    ops = {n.op_type for n in g.graph.node}
    assert "LayerNormalization" not in ops and "ReduceMean" in ops


def test_output_shape_and_padding():
    m = tiny("dense")
    x = torch.rand(*SHAPE)
    with torch.no_grad():
        y = m(x)
    assert y.shape == x.shape


# --- minimum size -----------------------------------------------------------------------------


def test_too_small_input_says_the_minimum():
    m = tiny()
    cfg = CONFIGS["tiny"]
    with pytest.raises(ShapeError, match=rf"minimum is {cfg.min_side} px"):
        m(torch.rand(1, 3, cfg.min_side - 1, 64))
    # paper depth: 1/16 scale needs 15 px -> 225 px inputs (padded to 240)
    assert CONFIGS["paper"].min_side == 225
    with pytest.raises(ShapeError, match="minimum is 225 px") as err:
        input_shapes("1x3x200x640", config="paper")
    assert "at least 225x225" in err.value.fix
    check_size(CONFIGS["paper"], 225, 225)  # padded to 240: fine
    with torch.no_grad():
        assert m(torch.rand(1, 3, cfg.min_side, cfg.min_side)).shape[-1] == cfg.min_side


def test_batched_top2_shape_is_refused_with_a_fix():
    with pytest.raises(ShapeError, match="batch 1"):
        input_shapes("2x3x480x640", experts="top2")
    assert input_shapes("2x3x480x640", experts="dense") == {"rgb": (2, 3, 480, 640)}


# --- top-2 dispatch, eager ----------------------------------------------------------------------


@pytest.mark.parametrize("batch", [1, 3])
def test_dense_equals_top2_when_gate_gives_an_expert_zero_weight(batch):
    dense, sparse = tiny("dense"), tiny("top2")
    inf = float("inf")
    # Per block and per image a different expert gets exactly zero weight.
    tables = [
        [[0.3, 1.0, -inf], [-inf, 0.5, 2.0], [1.0, -inf, 0.0]],
        [[-inf, 0.2, 0.1], [0.7, -inf, 0.0], [2.0, 1.0, -inf]],
        [[1.5, -inf, 0.5], [0.0, 0.0, -inf], [-inf, 1.0, 1.0]],
    ]
    force_gates(dense, tables)
    force_gates(sparse, tables)
    x = torch.rand(batch, *SHAPE[1:])
    with torch.no_grad():
        a, b = dense(x), sparse(x)
    assert torch.allclose(a, b, atol=1e-6), (a - b).abs().max()


def test_top2_never_calls_the_dropped_expert():
    m = tiny("top2")
    calls = [[0, 0, 0] for _ in m.blocks()]
    for i, b in enumerate(m.blocks()):
        for k, e in enumerate(b.experts):
            e.register_forward_hook(lambda *_, i=i, k=k: calls[i].__setitem__(k, calls[i][k] + 1))
    x = torch.rand(*SHAPE)
    drops = dropped_by_block(m, x)  # one forward
    for i, d in enumerate(drops):
        assert calls[i][d] == 0 and sum(calls[i]) == 2


def test_top2_weighs_the_kept_pair_by_its_margin_over_the_dropped_expert():
    w = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.6, 0.3]])
    drop, kw = top2(w)
    assert drop.tolist() == [2, 0]
    # (0.5 - 0.2, 0.3 - 0.2) / 0.4 and (0.6 - 0.1, 0.3 - 0.1) / 0.7
    assert torch.allclose(kw, torch.tensor([[0.75, 0.25, 0.0], [0.0, 5 / 7, 2 / 7]]), atol=1e-5)
    # a three-way tie mixes the kept pair evenly (no 0 / 0)
    _, kw = top2(torch.full((1, 3), 1 / 3))
    assert torch.isfinite(kw).all() and sorted(kw[0].tolist()) == pytest.approx([0.0, 0.5, 0.5])


def test_top2_reference_is_the_dense_network_unless_trained_top2_under_this_rule():
    from lowlight.models import get_family

    fam, top2_opts = get_family("gmmoe"), {"experts": "top2"}
    assert fam.reference_options(top2_opts, {}) == {"experts": "dense"}
    assert fam.reference_options(top2_opts, {"experts": "dense"}) == {"experts": "dense"}
    # fine-tuned for top-2 with renormalised weights (before the margin rule): not this top-2
    assert fam.reference_options(top2_opts, {"experts": "top2"}) == {"experts": "dense"}
    assert fam.reference_options(top2_opts, {"experts": "top2", "top2_weights": "margin"}) == top2_opts
    assert fam.reference_options({"experts": "dense"}, {"experts": "top2", "top2_weights": "margin"}) == {"experts": "dense"}


def test_top2_block_output_is_continuous_where_the_dropped_expert_flips():
    """The two smallest gate weights cross: the expert that runs changes, the output must not jump
    (an INT8 or sensor-noise perturbation of the gate would otherwise swap a whole expert in)."""
    m = tiny("top2")
    block = m.blocks()[0]
    x = torch.rand(1, block.gate.fc1.in_features, 16, 16)
    outs = []
    for d in (1e-4, -1e-4):  # expert 1 just above, then just below expert 2
        w = torch.tensor([[0.6, 0.2 + d, 0.2 - d]])
        drop, kw = top2(w)
        outs.append((int(drop), block._pair(int(drop), x, kw[0])))
    (d0, a), (d1, b) = outs
    assert d0 != d1  # the routing did flip
    scale = a.abs().max()
    assert (a - b).abs().max() < 1e-3 * scale


# --- export ---------------------------------------------------------------------------------------


def _all_nodes(graph, branch=None):
    """(node, enclosing If node name + branch or None) for every node, subgraphs included."""
    for n in graph.node:
        yield n, branch
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                yield from _all_nodes(a.g, (n.name, a.name))


@pytest.mark.parametrize("mode", ["dense", "top2"])
def test_export_matches_pytorch(exported, mode):
    m, path = exported[mode]
    x = torch.rand(*SHAPE)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (y,) = sess.run(None, {"rgb": x.numpy()})
    with torch.no_grad():
        ref = m(x).numpy()
    assert y.shape == SHAPE
    assert np.abs(y - ref).max() <= 1e-4


def test_top2_graph_has_one_if_per_expert_and_dense_has_none(exported):
    top2_graph = onnx.load(str(exported["top2"][1])).graph
    dense_graph = onnx.load(str(exported["dense"][1])).graph
    n_blocks = len(exported["top2"][0].blocks())
    assert sum(n.op_type == "If" for n in top2_graph.node) == 3 * n_blocks
    assert not any(n.op_type == "If" for n, _ in _all_nodes(dense_graph))
    # the gate's softmax and the routing (ArgMin) are in the main graph
    ops = [n.op_type for n in top2_graph.node]
    assert ops.count("Softmax") == n_blocks and ops.count("ArgMin") == n_blocks


def test_unselected_expert_ops_are_not_executed_in_onnxruntime(exported, tmp_path):
    m, path = exported["top2"]
    model = onnx.load(str(path))
    g = model.graph
    # Subgraph node names can repeat across branches: make every name unique first.
    for i, (n, _) in enumerate(list(_all_nodes(g))):
        n.name = f"n{i}_{n.op_type}"
    path = tmp_path / "renamed.onnx"
    onnx.save(model, str(path))
    ifs = [n.name for n in g.node if n.op_type == "If"]  # in block order, experts 0, 1, 2
    where = {n.name: br for n, br in _all_nodes(g) if br is not None}
    total = sum(1 for _ in _all_nodes(g))

    so = ort.SessionOptions()
    so.enable_profiling = True
    so.profile_file_prefix = str(tmp_path / "prof")
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    x = torch.rand(*SHAPE)
    sess.run(None, {"rgb": x.numpy()})
    events = json.loads(Path(sess.end_profiling()).read_text())
    ran = [e["name"][: -len("_kernel_time")] for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    assert ran and len(ran) < total

    # Which branch of which If ran (by the names of the executed subgraph nodes).
    taken = {where[name] for name in ran if name in where}
    drops = dropped_by_block(m, x)
    for blk, d in enumerate(drops):
        for k in range(3):
            if_name = ifs[3 * blk + k]
            expect = "else_branch" if k == d else "then_branch"
            other = "then_branch" if k == d else "else_branch"
            assert (if_name, other) not in taken, f"block {blk}: expert {k} ran its {other} (dropped: {d})"
            if expect == "then_branch":
                assert (if_name, expect) in taken
    # The dropped experts' convolutions are missing from the run.
    convs_in_graph = sum(n.op_type == "Conv" for n, _ in _all_nodes(g))
    convs_run = sum(e["args"].get("op_name") in ("Conv", "FusedConv") for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"))
    assert convs_run < convs_in_graph


def test_top2_export_of_a_batch_is_refused():
    m = tiny("top2")
    with pytest.raises(Exception, match="batch 1"):
        torch.onnx.export(m, (torch.rand(2, *SHAPE[1:]),), dynamo=True, verbose=False)


# --- family API -----------------------------------------------------------------------------------


def test_family_build_and_inputs():
    fam = models.get_family("gmmoe")
    assert "experts" in [o.name for o in fam.options] and {"tiny", "paper"} <= set(fam.configs)
    assert models.build("gmmoe", config="tiny", experts="dense").experts_mode == "dense"
    frames = [np.random.rand(100, 140, 3).astype(np.float32) for _ in range(3)]
    feeds = make_inputs(frames, "1x3x64x80", config="tiny")
    assert len(feeds) == 3 and feeds[0]["rgb"].shape == (1, 3, 64, 80) and feeds[0]["rgb"].dtype == np.float32
    with pytest.raises(Exception, match="--experts"):
        models.build("gmmoe", config="tiny", experts="top3")


def test_shipped_weights_load_in_both_modes():
    fam = models.get_family("gmmoe")
    path = fam.weights_path(fam.default_config)
    if path is None or not path.exists():
        pytest.skip("reference weights not trained yet")
    assert path.stat().st_size < 25e6
    for mode in ("dense", "top2"):
        m = models.load("gmmoe", experts=mode)
        assert not m.training and m.experts_mode == mode


# --- INT8 inside If branches (compile/quantize_branches.py) ------------------------------------------------


def test_inline_and_refold_if_branches_keep_outputs(exported, tmp_path):
    from lowlight.compile.graph import gate_nodes
    from lowlight.compile.quantize_branches import inline_then_branches, refold_if_branches

    _, path = exported["top2"]
    original = onnx.load(str(path))
    flat = inline_then_branches(original)
    assert not any(n.op_type == "If" for n in flat.graph.node)  # every expert runs: calibration sees them all
    back = refold_if_branches(flat, original)
    onnx.checker.check_model(back)
    assert sum(n.op_type == "If" for n in back.graph.node) == sum(n.op_type == "If" for n in original.graph.node)
    x = {"rgb": np.random.default_rng(3).random(SHAPE, dtype=np.float32)}
    outs = []
    for name, model in (("orig", original), ("flat", flat), ("back", back)):
        onnx.save(model, str(tmp_path / f"{name}.onnx"))
        outs.append(ort.InferenceSession(str(tmp_path / f"{name}.onnx")).run(None, x)[0])
    # dropped experts are multiplied by exactly zero in the flat graph
    assert np.abs(outs[1] - outs[0]).max() <= 1e-6 and np.abs(outs[2] - outs[0]).max() == 0.0
    ops = {n.name: n.op_type for n in original.graph.node}
    assert {ops[g] for g in gate_nodes(original)} >= {"Softmax", "ReduceMean", "Relu"}
