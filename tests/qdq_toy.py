"""A small conv graph with one sensitive node, shared by the Q/DQ tests (sensitivity, Model Optimizer)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def toy_graph(path: Path) -> None:
    """x -> conv_a -> relu -> conv_b -> add(relu) -> conv_c -> y, with a skip through the Add; conv_a ignores
    input channel 3, so a hot pixel there coarsens x's INT8 scale (conv_a's input) and nothing else."""
    rng = np.random.default_rng(0)

    def conv(name: str, cin: int, cout: int, src: str, dst: str) -> tuple[onnx.NodeProto, list[onnx.TensorProto]]:
        wv = (rng.standard_normal((cout, cin, 3, 3)) * 0.2).astype(np.float32)
        if name == "conv_a":
            wv[:, 3] = 0  # channel 3 carries the hot pixel: it stretches x's scale and goes no further
        w = numpy_helper.from_array(wv, f"{name}.w")
        b = numpy_helper.from_array((rng.standard_normal(cout) * 0.05).astype(np.float32), f"{name}.b")
        return helper.make_node("Conv", [src, w.name, b.name], [dst], name=name, pads=[1, 1, 1, 1]), [w, b]

    a, ia = conv("conv_a", 4, 8, "x", "a")
    b, ib = conv("conv_b", 8, 8, "r", "bo")
    c, ic = conv("conv_c", 8, 3, "s", "y")
    nodes = [a, helper.make_node("Relu", ["a"], ["r"], name="relu"), b, helper.make_node("Add", ["bo", "r"], ["s"], name="add"), c]
    g = helper.make_graph(nodes, "toy", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 16, 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 16, 16])], ia + ib + ic)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(path))


def dark_feeds(n: int, seed: int, outlier: float = 0.0) -> list[dict[str, np.ndarray]]:
    """Pixels in [0, 0.05] (a dark frame); `outlier`: one hot pixel of that value in channel 3, which
    stretches x's scale so the dark pixels quantize to a few levels."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        x = (rng.random((1, 4, 16, 16)) * 0.05).astype(np.float32)
        if outlier:
            x[0, 3, 0, 0] = outlier
        out.append({"x": x})
    return out
