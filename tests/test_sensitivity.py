"""Float nodes chosen by measurement (compile.sensitivity) on a small conv graph with one sensitive node."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from lowlight.compile.quantize import ENGINES
from lowlight.compile.sensitivity import fusion_closure, give_back_to_float, measure_float_set, quantized_nodes, shortest_prefix
from lowlight.core.onnx_graph import GraphIndex, ort_session
from qdq_toy import dark_feeds, toy_graph


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[dict[str, np.ndarray]]]:
    d = tmp_path_factory.mktemp("sens")
    toy_graph(d / "float.onnx")
    calib = dark_feeds(8, 0, outlier=40.0)
    ENGINES["ort"](d / "float.onnx", d / "int8.onnx", calib, "ort-u8s8", [])
    return d / "float.onnx", d / "int8.onnx", dark_feeds(4, 1, outlier=40.0)


def _run(model: onnx.ModelProto | Path, feed: dict[str, np.ndarray]) -> np.ndarray:
    src = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort_session(src).run(None, feed)[0]


def test_every_quantized_node_given_back_is_the_float_graph(toy: tuple[Path, Path, list]) -> None:
    fp, qp, feeds = toy
    q = onnx.load(str(qp))
    names = quantized_nodes(q)
    assert {"conv_a", "conv_b", "conv_c"} <= set(names)
    back = give_back_to_float(q, onnx.load(str(fp)), names)
    assert not any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in back.graph.node)
    for f in feeds:
        np.testing.assert_allclose(_run(back, f), _run(fp, f), atol=1e-5)
    assert np.abs(_run(qp, feeds[0]) - _run(fp, feeds[0])).max() > 1e-3  # the INT8 graph itself differs


def test_every_node_given_back_is_the_float_graph_after_nncf_bias_correction(tmp_path: Path) -> None:
    """NNCF rewrites the float bias of the convolutions it quantizes (fast bias correction): giving a node back
    restores the float model's bias too, or an all-float graph keeps an error (AMNet base: 30.3 dB, not inf)."""
    toy_graph(tmp_path / "float.onnx")
    ENGINES["nncf"](tmp_path / "float.onnx", tmp_path / "int8.onnx", dark_feeds(8, 0, outlier=40.0), "ort-u8s8", [])
    q, f = onnx.load(str(tmp_path / "int8.onnx")), onnx.load(str(tmp_path / "float.onnx"))
    qi, fi = GraphIndex(q), GraphIndex(f)
    fnodes = {n.name: n for n in f.graph.node}
    corrected = [n.name for n in q.graph.node if n.op_type == "Conv" and len(n.input) > 2
                 and not np.array_equal(qi.constant(n.input[2]), fi.constant(fnodes[n.name].input[2]))]
    assert corrected  # the premise: NNCF changed float biases
    back = give_back_to_float(q, f, quantized_nodes(q))
    for feed in dark_feeds(4, 1, outlier=40.0):
        np.testing.assert_allclose(_run(back, feed), _run(f, feed), atol=1e-5)


def test_giving_back_nothing_changes_nothing(toy: tuple[Path, Path, list]) -> None:
    fp, qp, feeds = toy
    same = give_back_to_float(onnx.load(str(qp)), onnx.load(str(fp)), [])
    np.testing.assert_array_equal(_run(same, feeds[0]), _run(qp, feeds[0]))


def test_measurement_gives_back_the_sensitive_node_first(toy: tuple[Path, Path, list]) -> None:
    fp, qp, feeds = toy
    q = onnx.load(str(qp))
    # all INT8 on these frames, and the budget between it and the float graph
    err = [float(np.mean((_run(qp, f) - _run(fp, f)) ** 2)) for f in feeds]
    all_db = 10 * np.log10(1 / max(err))
    model, rep = measure_float_set(fp, qp, feeds, all_db + 6, say=lambda _: None)
    assert rep["all_int8_db"]["worst"] == pytest.approx(all_db, abs=0.01)
    given = [g["node"] for g in rep["given_back"]]
    # independently: the node whose quantization alone costs most
    fm, names = onnx.load(str(fp)), quantized_nodes(q)
    alone = {n: max(float(np.mean((_run(give_back_to_float(q, fm, set(names) - {n}), f) - _run(fp, f)) ** 2)) for f in feeds[:2])
             for n in names}
    assert given[0] == max(alone, key=alone.get) == "conv_a"
    assert len(given) < len(quantized_nodes(q))
    assert rep["final_db"]["worst"] >= all_db + 6
    got = [float(np.mean((_run(model, f) - _run(fp, f)) ** 2)) for f in feeds]
    assert 10 * np.log10(1 / max(got)) == pytest.approx(rep["final_db"]["worst"], abs=0.01)
    shares = [g["share_of_int8_error"] for g in rep["given_back"]]
    assert shares == sorted(shares, reverse=True) and 0 < sum(shares) <= 1.0 + 1e-6


@pytest.mark.parametrize("need", [0, 1, 5, 42, 43])
def test_cut_back_finds_the_shortest_prefix_that_meets_the_budget(need: int) -> None:
    calls: list[int] = []

    def meets(k: int) -> bool:
        calls.append(k)
        return k >= need

    assert shortest_prefix(43, meets) == need
    assert 43 not in calls and len(calls) <= 6  # the full set is known to meet it; log2(44) measurements


def test_budget_already_met_gives_back_nothing(toy: tuple[Path, Path, list]) -> None:
    fp, qp, feeds = toy
    model, rep = measure_float_set(fp, qp, feeds, 0.0, say=lambda _: None)
    assert rep["given_back"] == [] and "all_int8_db" in rep


def test_a_float_reader_of_a_quantized_conv_takes_the_conv_along(toy: tuple[Path, Path, list]) -> None:
    """onnxruntime fuses DQ -> Conv -> Q only: an Add reading conv_b's output in float unfuses conv_b."""
    from lowlight.compile.openvino import ort_int8_fusion

    fp, qp, feeds = toy
    q = onnx.load(str(qp))
    assert fusion_closure(q, {"add"}) == {"conv_b"}
    loose = give_back_to_float(q, onnx.load(str(fp)), ["add"])
    kept = give_back_to_float(q, onnx.load(str(fp)), ["add"], keep_fused=True)
    d = Path(qp).parent
    onnx.save(loose, str(d / "loose.onnx"))
    onnx.save(kept, str(d / "kept.onnx"))
    assert "conv_b" in ort_int8_fusion(d / "loose.onnx")["float_kernels"]
    assert ort_int8_fusion(d / "kept.onnx")["fused"]


def test_auto_engine_never_picks_a_candidate_with_no_int8_left(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A candidate whose float set holds every node is a float graph: faster than any INT8 graph on a host where
    INT8 does not pay, and faithful, but not INT8. `--engine auto` must keep the engine that still quantizes."""
    import shutil

    import lowlight.compile.quantize as q

    toy_graph(tmp_path / "float.onnx")
    # stands in for an engine whose search gave all back (here: no Q/DQ at all, so it meets any budget as it is)
    monkeypatch.setitem(q.ENGINES, "nncf", lambda src, dst, *a, **k: shutil.copy(src, dst))
    said: list[str] = []
    rep = q.quantize_int8(tmp_path / "float.onnx", tmp_path / "q.onnx", dark_feeds(8, 0), "ort-u8s8", [], engine="auto",
                          budget_db=20.0, say=said.append)
    assert rep["engines"]["nncf"]["int8_nodes"] == 0 and "no INT8 compute left" in rep["engines"]["nncf"]["rejected"]
    assert rep["engine"] == "ort" and rep["engines"]["ort"]["int8_nodes"] > 0
    assert quantized_nodes(onnx.load(str(tmp_path / "q.onnx")))
    assert any("nncf: no INT8 compute left" in s for s in said)
    json.dumps(rep)  # the pipeline writes it as quantize.json
