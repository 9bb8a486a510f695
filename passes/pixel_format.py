"""Camera pixel formats inside the compiled graph: uint8 camera frames in, uint8 frames out.

`wrap_pixel_format(model, fmt, ...)` puts a decode graph (camera bytes -> float
RGB in [0,1], channels first) in front of an image model and an encode graph
(float RGB -> camera bytes) behind it, merged into one graph, so TensorRT does
the conversion on the GPU and the host only copies bytes.

| format | one frame (uint8) | what it is |
|---|---|---|
| `bgr24` | H x W x 3 | blue, green, red bytes per pixel (OpenCV's default) |
| `rgb24` | H x W x 3 | red, green, blue bytes per pixel |
| `nv12`  | (H*3/2) x W | YUV 4:2:0: the Y plane, then interleaved U,V at half width and height |
| `yuyv`  | H x W x 2 | YUV 4:2:2 packed (YUY2): Y0 U Y1 V per pixel pair |

YUV is BT.601 limited range (Y 16..235, C 16..240), chroma upsampled by nearest
neighbour and averaged over its block on output: the same arithmetic as
`lowlight.runtime.pixel_formats` (tested against OpenCV), which the tests compare
this graph with. A batch of frames (`[B, ...]`, or `[B, T, ...]` for clips)
keeps the model's leading dimensions.
"""
from __future__ import annotations

from typing import Any

import numpy as np

FORMATS = ("bgr24", "rgb24", "nv12", "yuyv")

# BT.601 limited range (see lowlight.runtime.pixel_formats: same constants).
_KY = 255.0 / 219.0
_RV, _GU, _GV, _BU = 1.596027, -0.391762, -0.812968, 2.017232
_KR, _KB = 0.299, 0.114
_KG = 1.0 - _KR - _KB


def frame_shape(fmt: str, h: int, w: int) -> tuple[int, ...]:
    """The uint8 array one H x W frame is in `fmt`."""
    return {"bgr24": (h, w, 3), "rgb24": (h, w, 3), "nv12": (h * 3 // 2, w), "yuyv": (h, w, 2)}[fmt]


class _G:
    """A tiny graph builder: numbered tensor names, constants as initializers."""

    def __init__(self, prefix: str) -> None:
        from onnx import helper

        self.h, self.prefix, self.nodes, self.inits, self.n = helper, prefix, [], [], 0

    def name(self) -> str:
        self.n += 1
        return f"{self.prefix}{self.n}"

    def const(self, value: Any, dtype: Any = np.float32) -> str:
        from onnx import numpy_helper

        name = self.name()
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def op(self, op_type: str, inputs: list[str], **attrs: Any) -> str:
        out = self.name()
        self.nodes.append(self.h.make_node(op_type, inputs, [out], name=f"{out}_{op_type}", **attrs))
        return out

    def reshape(self, x: str, shape: tuple[int, ...]) -> str:
        return self.op("Reshape", [x, self.const(list(shape), np.int64)])

    def gather(self, x: str, axis: int, idx: Any) -> str:
        return self.op("Gather", [x, self.const(idx, np.int64)], axis=axis)

    def lin(self, terms: list[tuple[str, float]], bias: float) -> str:
        acc = self.const(bias)
        for t, k in terms:
            acc = self.op("Add", [acc, self.op("Mul", [t, self.const(k)])])
        return acc

    def u8(self, x: str) -> str:
        r = self.op("Clip", [self.op("Round", [x]), self.const(0.0), self.const(255.0)])
        from onnx import TensorProto

        return self.op("Cast", [r], to=TensorProto.UINT8)


def _decode(g: _G, x: str, fmt: str, n: int, h: int, w: int) -> str:
    """uint8 [N, frame...] -> float [N, 3, H, W] in [0, 1]."""
    from onnx import TensorProto

    f = g.op("Cast", [g.reshape(x, (n, *frame_shape(fmt, h, w)))], to=TensorProto.FLOAT)
    if fmt in ("bgr24", "rgb24"):
        if fmt == "bgr24":
            f = g.gather(f, 3, [2, 1, 0])
        return g.op("Transpose", [g.op("Div", [f, g.const(255.0)])], perm=[0, 3, 1, 2])
    if fmt == "nv12":
        y = g.op("Slice", [f, g.const([0], np.int64), g.const([h], np.int64), g.const([1], np.int64)])
        uv = g.reshape(g.op("Slice", [f, g.const([h], np.int64), g.const([h * 3 // 2], np.int64), g.const([1], np.int64)]), (n, h // 2, w // 2, 2))

        def up(c: str) -> str:  # [N, H/2, W/2] -> [N, H, W], nearest
            e = g.op("Expand", [g.op("Unsqueeze", [c, g.const([2, 4], np.int64)]), g.const([n, h // 2, 2, w // 2, 2], np.int64)])
            return g.reshape(e, (n, h, w))

        u, v = up(g.gather(uv, 3, 0)), up(g.gather(uv, 3, 1))
    else:  # yuyv
        y = g.gather(f, 3, 0)
        c = g.reshape(g.gather(f, 3, 1), (n, h, w // 2, 2))

        def up2(ch: str) -> str:  # [N, H, W/2] -> [N, H, W], nearest
            e = g.op("Expand", [g.op("Unsqueeze", [ch, g.const([3], np.int64)]), g.const([n, h, w // 2, 2], np.int64)])
            return g.reshape(e, (n, h, w))

        u, v = up2(g.gather(c, 3, 0)), up2(g.gather(c, 3, 1))
    yy = g.op("Mul", [g.op("Sub", [y, g.const(16.0)]), g.const(_KY)])
    uu = g.op("Sub", [u, g.const(128.0)])
    vv = g.op("Sub", [v, g.const(128.0)])
    r = g.lin([(yy, 1.0), (vv, _RV)], 0.0)
    gr = g.lin([(yy, 1.0), (uu, _GU), (vv, _GV)], 0.0)
    b = g.lin([(yy, 1.0), (uu, _BU)], 0.0)
    rgb = g.op("Concat", [g.op("Unsqueeze", [c_, g.const([1], np.int64)]) for c_ in (r, gr, b)], axis=1)
    return g.op("Clip", [g.op("Div", [rgb, g.const(255.0)]), g.const(0.0), g.const(1.0)])


def _encode(g: _G, x: str, fmt: str, n: int, h: int, w: int) -> str:
    """float [N, 3, H, W] -> uint8 [N, frame...]."""
    rgb = g.op("Clip", [x, g.const(0.0), g.const(1.0)])
    if fmt in ("bgr24", "rgb24"):
        q = g.op("Transpose", [g.u8(g.op("Mul", [rgb, g.const(255.0)]))], perm=[0, 2, 3, 1])
        return g.gather(q, 3, [2, 1, 0]) if fmt == "bgr24" else q
    chans = [g.op("Slice", [rgb, g.const([i], np.int64), g.const([i + 1], np.int64), g.const([1], np.int64)]) for i in range(3)]
    r, gr, b = chans  # each [N, 1, H, W]
    yl = g.lin([(r, _KR), (gr, _KG), (b, _KB)], 0.0)
    y = g.lin([(yl, 219.0)], 16.0)
    u = g.lin([(b, 224.0 / (2 * (1 - _KB))), (yl, -224.0 / (2 * (1 - _KB)))], 128.0)
    v = g.lin([(r, 224.0 / (2 * (1 - _KR))), (yl, -224.0 / (2 * (1 - _KR)))], 128.0)
    yq = g.reshape(g.u8(y), (n, h, w))
    if fmt == "nv12":
        us = g.op("AveragePool", [u], kernel_shape=[2, 2], strides=[2, 2])
        vs = g.op("AveragePool", [v], kernel_shape=[2, 2], strides=[2, 2])
        uv = g.op("Concat", [g.reshape(us, (n, h // 2, w // 2, 1)), g.reshape(vs, (n, h // 2, w // 2, 1))], axis=3)
        return g.op("Concat", [yq, g.reshape(g.u8(uv), (n, h // 2, w))], axis=1)
    us = g.op("AveragePool", [u], kernel_shape=[1, 2], strides=[1, 2])
    vs = g.op("AveragePool", [v], kernel_shape=[1, 2], strides=[1, 2])
    c = g.op("Concat", [g.reshape(us, (n, h, w // 2, 1)), g.reshape(vs, (n, h, w // 2, 1))], axis=3)
    cq = g.reshape(g.u8(c), (n, h, w, 1))
    return g.op("Concat", [g.reshape(yq, (n, h, w, 1)), cq], axis=3)


def wrap_pixel_format(model: Any, fmt: str, image_input: str, image_output: str,
                      frame_input: str = "frame", frame_output: str = "enhanced_frame") -> Any:
    """`model` with `image_input` ([..., 3, H, W] float in [0,1]) fed from uint8 `frame_input` frames in
    `fmt`, and `image_output` (same shape) returned as uint8 `frame_output` frames in `fmt`; one graph."""
    import onnx
    from onnx import TensorProto, helper

    if fmt not in FORMATS:
        raise ValueError(f"unknown pixel format {fmt!r}")
    g = model.graph
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in list(g.input) + list(g.output)}
    s_in, s_out = shapes[image_input], shapes[image_output]
    if len(s_in) < 4 or s_in[-3] != 3 or s_in != s_out:
        raise ValueError(f"--pixel-format needs an image input and output of the same shape [..., 3, H, W]; got {s_in} and {s_out}")
    lead, (h, w) = s_in[:-3], s_in[-2:]
    if fmt in ("nv12", "yuyv") and (w % 2 or (fmt == "nv12" and h % 2)):
        raise ValueError(f"{fmt} needs an even {'height and width' if fmt == 'nv12' else 'width'}; the model takes {h}x{w}")
    n = int(np.prod(lead))
    m = onnx.ModelProto()
    m.CopyFrom(model)
    dec = _G("px_dec_")
    rgb = dec.reshape(_decode(dec, frame_input, fmt, n, h, w), tuple(s_in))
    enc = _G("px_enc_")
    out = enc.reshape(_encode(enc, enc.reshape(image_output, (n, 3, h, w)), fmt, n, h, w), (*lead, *frame_shape(fmt, h, w)))
    # the model's own input is now produced by the decode graph, its output consumed by the encode graph
    for node in m.graph.node:
        for i, t in enumerate(node.input):
            if t == image_input:
                node.input[i] = rgb
    nodes = dec.nodes + list(m.graph.node) + enc.nodes + [helper.make_node("Identity", [out], [frame_output], name="px_out")]
    del m.graph.node[:]
    # some converters append nodes out of order (e.g. an FP16 pass's input Cast): sort so the result checks
    m.graph.initializer.extend(dec.inits + enc.inits)
    m.graph.node.extend(_topological(nodes, {i.name for i in m.graph.initializer} | {frame_input} | {i.name for i in m.graph.input}))
    for o in [o for o in m.graph.output if o.name == image_output]:
        m.graph.output.remove(o)
    for i in [i for i in m.graph.input if i.name == image_input]:
        m.graph.input.remove(i)
    m.graph.input.insert(0, helper.make_tensor_value_info(frame_input, TensorProto.UINT8, [*lead, *frame_shape(fmt, h, w)]))
    m.graph.output.insert(0, helper.make_tensor_value_info(frame_output, TensorProto.UINT8, [*lead, *frame_shape(fmt, h, w)]))
    onnx.checker.check_model(m)
    return m


def _topological(nodes: list[Any], available: set[str]) -> list[Any]:
    """Nodes ordered so each comes after the producers of its inputs (stable otherwise)."""
    done, order, pending = set(available) | {""}, [], list(nodes)
    while pending:
        ready = [n for n in pending if all(i in done for i in n.input)]
        if not ready:  # inputs from outer scopes or a cycle: keep the rest as they were
            order.extend(pending)
            break
        for n in ready:
            order.append(n)
            done.update(n.output)
        pending = [n for n in pending if n not in ready]
    return order

