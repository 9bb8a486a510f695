"""Bodies of the lowlight ONNX ops: onnxscript functions of standard ONNX ops (opset 18).

onnxscript DSL: each function is compiled to an ONNX FunctionProto, not run as
Python; see onnx_export.py for why each body has its form.
"""
# mypy: ignore-errors
# (the onnxscript DSL is type-checked by onnxscript's own converter, not by mypy)
# No `from __future__ import annotations`: onnxscript reads these annotations.
from typing import Sequence, Tuple, TypeVar, Union

import onnxscript
from onnxscript import BFLOAT16, FLOAT, FLOAT16
from onnxscript import opset18 as op
from onnxscript.values import Opset

from lowlight.core.onnx_graph import CUSTOM_DOMAIN as DOMAIN

DOMAIN_VERSION = 1
lowlight = Opset(DOMAIN, DOMAIN_VERSION)
T = TypeVar("T", bound=Union[FLOAT, FLOAT16, BFLOAT16])


@onnxscript.script(lowlight, default_opset=op)
def SpectralGate(re: T, im: T, w_g: T, b_g: T, w_s: T, b_s: T) -> Tuple[T, T]:
    axes = op.Constant(value_ints=[2, 3])
    f = op.Concat(re, im, axis=1)
    g = op.Sigmoid(op.Conv(f, op.Unsqueeze(w_g, axes), b_g))
    s = op.Tanh(op.Conv(f, op.Unsqueeze(w_s, axes), b_s))
    fg = op.Mul(f, g)
    out = op.Add(fg, op.Mul(fg, s))
    re_out, im_out = op.Split(out, axis=1, num_outputs=2)
    return re_out, im_out


@onnxscript.script(lowlight, default_opset=op)
def IlluminationGate(z: T, w: T, b: T, kernel_shape: Sequence[int]) -> Tuple[T, T]:
    axes = op.Constant(value_ints=[2, 3])
    low = op.AveragePool(z, auto_pad="SAME_UPPER", count_include_pad=0, kernel_shape=kernel_shape)
    gate = op.Sigmoid(op.Conv(low, op.Unsqueeze(w, axes), b))
    high = op.Mul(op.Sub(z, low), gate)
    return high, low


@onnxscript.script(lowlight, default_opset=op)
def MoETop2(x: T, w_router: T, w1: T, w3: T, w2: T) -> T:
    probs = op.Softmax(op.MatMul(x, w_router), axis=-1)  # [N, E]
    k2 = op.Constant(value_ints=[2])
    vals, idx = op.TopK(probs, k2, axis=-1)
    last = op.Constant(value_ints=[-1])
    wts = op.Div(vals, op.ReduceSum(vals, last, keepdims=1))
    zeros = op.Sub(probs, probs)
    gate = op.ScatterElements(zeros, idx, wts, axis=1)  # [N, E], two non-zeros per row
    xe = op.Unsqueeze(x, op.Constant(value_ints=[0]))  # [1, N, D] broadcasts over experts
    h1 = op.MatMul(xe, w1)  # [E, N, F]
    h = op.Mul(op.Mul(h1, op.Sigmoid(h1)), op.MatMul(xe, w3))
    ye = op.MatMul(h, w2)  # [E, N, D]
    ge = op.Unsqueeze(op.Transpose(gate, perm=[1, 0]), op.Constant(value_ints=[2]))  # [E, N, 1]
    return op.ReduceSum(op.Mul(ye, ge), op.Constant(value_ints=[0]), keepdims=0)


