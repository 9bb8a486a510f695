"""Simplify stage: onnxsim (onnxslim as fallback), each result checked against the input graph."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from lowlight.compile.export import save_onnx
from lowlight.core.onnx_graph import name_nodes, ort_session


def random_feeds(model_path: str | Path, seed: int = 0) -> dict[str, np.ndarray]:
    """Random float inputs in [0,1] matching the graph's (static) input shapes."""
    sess = ort_session(model_path)
    rng = np.random.default_rng(seed)
    return {i.name: rng.random([d if isinstance(d, int) else 1 for d in i.shape], dtype=np.float32) for i in sess.get_inputs()}


def onnx_runner(model_path: str | Path):  # type: ignore[no-untyped-def]
    """One onnxruntime CPU session for `model_path`: `runner(feeds) -> list of outputs`."""
    sess = ort_session(model_path)
    return lambda feeds: sess.run(None, feeds)


def run_onnx(model_path: str | Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Outputs of `model_path` on one feed (a fresh session: use onnx_runner for many feeds)."""
    return onnx_runner(model_path)(feeds)


def max_abs_diff(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    return max(float(np.max(np.abs(x.astype(np.float64) - y.astype(np.float64)))) for x, y in zip(a, b))


def simplify(src: str | Path, dst: str | Path, tolerance: float = 1e-4, trials: int = 2) -> dict[str, object]:
    """Write a simplified copy of `src` to `dst`; returns {"tool", "nodes_before", "nodes_after", "max_abs_diff"}.

    Tries onnxsim, then onnxslim; a result is accepted only if its outputs match
    the unsimplified graph within `tolerance` on `trials` random inputs. If no
    tool gives an accepted result, the graph is kept as exported.
    """
    import onnx

    model = onnx.load(str(src))
    feeds = [random_feeds(src, seed) for seed in range(trials)]
    reference = [run_onnx(src, f) for f in feeds]
    report: dict[str, object] = {"nodes_before": len(model.graph.node), "attempts": []}

    def _onnxsim(m: onnx.ModelProto) -> onnx.ModelProto:
        import onnxsim

        out, ok = onnxsim.simplify(m, check_n=0)
        if not ok:
            raise RuntimeError("onnxsim reported failure")
        return out

    def _onnxslim(m: onnx.ModelProto) -> onnx.ModelProto:
        import onnxslim

        return onnxslim.slim(m)

    for tool, fn in (("onnxsim", _onnxsim), ("onnxslim", _onnxslim)):
        try:
            candidate = name_nodes(fn(onnx.load(str(src))))
            save_onnx(candidate, dst)
            diff = max(max_abs_diff(r, run_onnx(dst, f)) for r, f in zip(reference, feeds))
        except Exception as exc:  # a simplifier crash is not our user's problem: try the next
            report["attempts"].append({"tool": tool, "error": f"{type(exc).__name__}: {str(exc)[:200]}"})  # type: ignore[union-attr]
            continue
        report["attempts"].append({"tool": tool, "max_abs_diff": diff})  # type: ignore[union-attr]
        if diff <= tolerance:
            report.update(tool=tool, nodes_after=len(candidate.graph.node), max_abs_diff=diff)
            return report
    save_onnx(model, dst)
    report.update(tool="none (kept as exported)", nodes_after=len(model.graph.node), max_abs_diff=0.0)
    return report
