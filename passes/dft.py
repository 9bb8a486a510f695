"""Lower ONNX `DFT` nodes to MatMul against constant DFT matrices.

Why: TensorRT's ONNX parser has no `DFT` before 11.2 (every Orin on JetPack 6
runs 10.3), and the FBS spectral gate of AMNet is rfft2 -> gate -> irfft2. With
static H/W a DFT along one axis is a matrix product, which TensorRT runs on
tensor cores in FP16/INT8.

Layout trick: the DFT input is [..., N, C] with a trailing complex dim C (1 for
real, 2 for complex). Flattening the last two dims gives an interleaved vector
[x0r, x0i, x1r, ...] of length N*C; one real matrix of shape [N*C, K*Cout]
maps it to the interleaved output, so each DFT becomes Reshape -> MatMul ->
Reshape (plus a Transpose pair when the transformed axis is not the last
signal axis). Scalar Div/Mul that surround a DFT (the exporter's "ortho"
scaling, and the 1/n of inverse DFTs) are folded into the matrix: with
norm="ortho" every entry is bounded by 1/sqrt(n), so intermediate values stay
within FP16 range for inputs in [0, 1].

Semantics follow the ONNX DFT spec (opset 17 and 20) as onnxruntime implements
it, including `onesided=1` with `inverse=1`, which onnxruntime (and the
PyTorch exporter's irfft) treats as a complex-to-real inverse (numpy `irfft`):
real output of length `dft_length`, Hermitian symmetry implied.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import onnx


def dft_matrix(
    n_in: int,
    length: int,
    *,
    inverse: bool,
    onesided: bool,
    complex_in: bool,
    scale: float = 1.0,
    dtype: Any = np.float32,
) -> np.ndarray:
    """Real matrix W so that `flat(x) @ W == flat(DFT(x)) * scale` along one axis.

    `n_in` is the input length along the axis (zero-padded or truncated to
    `length`, the DFT length). Input rows interleave (real, imag) when
    `complex_in`; output columns interleave (real, imag) except for the
    complex-to-real inverse (inverse and onesided), whose output is real.
    Built in float64, cast at the end.
    """
    used = min(n_in, length)
    if inverse and onesided:
        # Complex-to-real: input bins k < length//2+1, real output t < length.
        # x[t] = (1/L) * sum_k w_k * (Re X_k cos(2pi kt/L) - Im X_k sin(2pi kt/L)),
        # w_k = 1 for the DC and Nyquist bins, 2 otherwise (conjugate half).
        bins = min(n_in, length // 2 + 1)
        k = np.arange(bins)[:, None]
        t = np.arange(length)[None, :]
        w = np.full((bins, 1), 2.0)
        w[0] = 1.0
        if length % 2 == 0 and bins > length // 2:
            w[length // 2] = 1.0
        ang = 2.0 * np.pi * k * t / length
        fr = w * np.cos(ang) / length
        fi = w * np.sin(ang) / length
        cin, cout, rows = (2 if complex_in else 1), 1, bins
    else:
        k_out = length // 2 + 1 if (onesided and not inverse) else length
        n = np.arange(used)[:, None]
        k = np.arange(k_out)[None, :]
        sign = 1.0 if inverse else -1.0
        ang = sign * 2.0 * np.pi * n * k / length
        fr, fi = np.cos(ang), np.sin(ang)
        if inverse:
            fr, fi = fr / length, fi / length
        cin, cout, rows = (2 if complex_in else 1), 2, used

    # y = x @ F with complex F = fr + i fi:
    #   yr = xr @ fr - xi @ fi ;  yi = xr @ fi + xi @ fr
    cols = fr.shape[1]
    mat = np.zeros((n_in * cin, cols * cout), dtype=np.float64)
    mat[0 : rows * cin : cin, 0::cout] = fr
    if cout == 2:
        mat[0 : rows * cin : cin, 1::2] = fi
    if cin == 2:
        mat[1 : rows * 2 : 2, 0::cout] = -fi
        if cout == 2:
            mat[1 : rows * 2 : 2, 1::2] = fr
    return (mat * scale).astype(dtype)


def lower_dft(model: "onnx.ModelProto") -> "onnx.ModelProto":
    """Replace every `DFT` node by Reshape/MatMul/Reshape (a no-op without DFTs).

    Needs static shapes along the transformed axis (the compile fixes H/W);
    raises TargetError naming the node otherwise.
    """
    import onnx
    from onnx import helper, numpy_helper

    from lowlight.core.errors import TargetError
    from lowlight.core.onnx_graph import GraphIndex

    if not any(n.op_type == "DFT" for n in model.graph.node):
        return model

    model = onnx.ModelProto.FromString(model.SerializeToString())
    index = GraphIndex(model)
    shapes: dict[str, tuple[list[int | None], int]] = {
        name: (list(dims), index.elem_type(name) or 0) for name, dims in index.shapes.items()
    }

    graph = model.graph
    graph_outputs = {o.name for o in graph.output}
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 20)

    const_value = index.constant

    def consumers(name: str) -> list[onnx.NodeProto]:
        # a live scan, not the index: this pass removes and inserts nodes as it goes
        return [n for n in graph.node if name in n.input]

    def producer(name: str) -> onnx.NodeProto | None:
        return next((n for n in graph.node if name in n.output), None)

    def scalar_of(node: onnx.NodeProto, data: str) -> float | None:
        """The scalar factor of Mul(data, c)/Div(data, c): c or 1/c; None if not one."""
        if node.op_type not in ("Mul", "Div") or len(node.input) != 2:
            return None
        other = [i for i in node.input if i != data]
        if len(other) != 1 or (node.op_type == "Div" and node.input[0] != data):
            return None
        c = const_value(other[0])
        if c is None or c.size != 1 or not np.issubdtype(c.dtype, np.floating):
            return None
        v = float(c.reshape(()))
        if v == 0.0:
            return None
        return v if node.op_type == "Mul" else 1.0 / v

    new_inits: list[onnx.TensorProto] = []
    counter = 0
    carry: dict[str, float] = {}

    for node in list(graph.node):
        if node.op_type != "DFT":
            continue
        counter += 1
        tag = f"{node.name or 'DFT'}_mm{counter}"
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        inverse = bool(attrs.get("inverse", 0))
        onesided = bool(attrs.get("onesided", 0))
        src, dst = node.input[0], node.output[0]
        if src not in shapes or any(d is None for d in shapes[src][0]):
            raise TargetError(
                f"DFT node {node.name!r}: input {src!r} has no static shape, so it cannot become a MatMul",
                "compile with a fixed --shape (static H and W)",
            )
        dims, elem = shapes[src]
        rank = len(dims)
        # axis: attribute in opset 17 (default 1), input #3 in opset 20 (default -2).
        if opset >= 20:
            axis_val = const_value(node.input[2]) if len(node.input) > 2 and node.input[2] else None
            axis = int(axis_val.reshape(())) if axis_val is not None else -2
            if len(node.input) > 2 and node.input[2] and axis_val is None:
                raise TargetError(f"DFT node {node.name!r}: axis is not a constant", "export with a constant axis")
        else:
            axis = int(attrs.get("axis", 1))
        axis = axis + rank if axis < 0 else axis
        len_val = const_value(node.input[1]) if len(node.input) > 1 and node.input[1] else None
        if len(node.input) > 1 and node.input[1] and len_val is None:
            raise TargetError(f"DFT node {node.name!r}: dft_length is not a constant", "compile with a fixed --shape")
        n_in = int(dims[axis])  # type: ignore[arg-type]
        complex_in = dims[-1] == 2
        if inverse and onesided:
            length = int(len_val.reshape(())) if len_val is not None else 2 * (n_in - 1)
        else:
            length = int(len_val.reshape(())) if len_val is not None else n_in
        if onesided and complex_in and not inverse:
            raise TargetError(
                f"DFT node {node.name!r}: onesided forward DFT of a complex input is undefined in ONNX",
                "export rfft from a real input",
            )

        # Fold scalar Div/Mul around the DFT into the matrix.
        scale = 1.0
        while True:
            p = producer(src)
            if p is None or src in graph_outputs or len(consumers(src)) != 1:
                break
            data_in = next((i for i in p.input if const_value(i) is None), None)
            s = scalar_of(p, data_in) if data_in is not None else None
            if s is None or data_in is None:
                break
            scale *= s
            graph.node.remove(p)
            src = data_in
        while True:
            cons = consumers(dst)
            if len(cons) != 1 or dst in graph_outputs:
                break
            s = scalar_of(cons[0], dst)
            if s is None:
                break
            scale *= s
            graph.node.remove(cons[0])
            dst = cons[0].output[0]

        # Carry a factor left by an upstream DFT, and, when this DFT feeds
        # another DFT directly, keep this matrix orthonormal and hand the rest
        # on: then no intermediate spectrum grows past sqrt(n) * max|x|.
        scale *= carry.get(src, 1.0)  # every consumer of src takes the same factor
        ortho = float(np.sqrt(length)) if inverse else 1.0 / float(np.sqrt(length))
        nxt = consumers(dst)
        if nxt and dst not in graph_outputs and all(c.op_type == "DFT" and c.input[0] == dst for c in nxt):
            carry[dst] = scale / ortho
            scale = ortho

        if inverse and onesided:
            k_out, cout = length, 1
        elif onesided:
            k_out, cout = length // 2 + 1, 2
        else:
            k_out, cout = length, 2
        np_dtype = onnx.helper.tensor_dtype_to_np_dtype(elem)
        mat = dft_matrix(n_in, length, inverse=inverse, onesided=onesided,
                         complex_in=complex_in, scale=scale, dtype=np_dtype)
        assert mat.shape[1] == k_out * cout
        w_name = f"{tag}_W"
        new_inits.append(numpy_helper.from_array(mat, w_name))

        nodes: list[onnx.NodeProto] = []
        cur = src
        swap = axis != rank - 2
        perm = list(range(rank))
        if swap:
            perm[axis], perm[rank - 2] = perm[rank - 2], perm[axis]
            nodes.append(helper.make_node("Transpose", [cur], [f"{tag}_t_in"], name=f"{tag}_Transpose_in", perm=perm))
            cur = f"{tag}_t_in"
        flat = f"{tag}_flat_shape"
        new_inits.append(numpy_helper.from_array(np.array([0] * (rank - 2) + [-1], np.int64), flat))
        nodes.append(helper.make_node("Reshape", [cur, flat], [f"{tag}_flat"], name=f"{tag}_Reshape_in"))
        nodes.append(helper.make_node("MatMul", [f"{tag}_flat", w_name], [f"{tag}_prod"], name=f"{tag}_MatMul"))
        unflat = f"{tag}_unflat_shape"
        new_inits.append(numpy_helper.from_array(np.array([0] * (rank - 2) + [k_out, cout], np.int64), unflat))
        out_unflat = f"{tag}_unflat" if swap else dst
        nodes.append(helper.make_node("Reshape", [f"{tag}_prod", unflat], [out_unflat], name=f"{tag}_Reshape_out"))
        if swap:
            nodes.append(helper.make_node("Transpose", [out_unflat], [dst], name=f"{tag}_Transpose_out", perm=perm))

        idx = list(graph.node).index(node)
        graph.node.remove(node)
        for j, n in enumerate(nodes):
            graph.node.insert(idx + j, n)

    graph.initializer.extend(new_inits)
    # Stale shape annotations of removed tensors would confuse later passes.
    live = {o for n in graph.node for o in n.output} | {i.name for i in graph.input}
    keep = [vi for vi in graph.value_info if vi.name in live]
    del graph.value_info[:]
    graph.value_info.extend(keep)
    _drop_unused(model)
    return model


def _drop_unused(model: "onnx.ModelProto") -> None:
    """Remove initializers and Constant nodes nothing reads any more."""
    graph = model.graph
    while True:
        used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
        dead = [n for n in graph.node if n.op_type == "Constant" and n.output[0] not in used]
        for n in dead:
            graph.node.remove(n)
        if not dead:
            break
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    keep = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
