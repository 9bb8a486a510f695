"""The kernels as `torch.library` custom ops (namespace `lowlight`) and their public wrappers.

Each op is one node under `torch.export` (a fake impl gives shapes without
running anything), runs the Triton kernel on CUDA (and on CPU under the
interpreter when asked, see `_triton.triton_on_cpu`), and otherwise the
PyTorch reference. Backward recomputes through the reference: AMNet trains on
CPU through these ops, and the reference's autograd is the ground truth.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

from lowlight.kernels import _triton as kt
from lowlight.kernels import reference as ref

Tensor = torch.Tensor


def _backward_via(fn: Callable[..., Any], n_tensor_inputs: int) -> tuple[Callable[..., Any], Callable[..., Any]]:
    """(setup_context, backward) that differentiate `fn` (a reference) by recomputation."""

    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        ctx.save_for_backward(*inputs[:n_tensor_inputs])
        ctx.extra = inputs[n_tensor_inputs:]

    def backward(ctx: Any, *grads: Tensor | None) -> tuple[Tensor | None, ...]:
        saved = ctx.saved_tensors
        needs = ctx.needs_input_grad[:n_tensor_inputs]
        with torch.enable_grad():
            ins = [t.detach().requires_grad_(bool(n)) for t, n in zip(saved, needs)]
            outs = fn(*ins, *ctx.extra)
            outs = outs if isinstance(outs, tuple) else (outs,)
            pairs = [(o, g) for o, g in zip(outs, grads) if g is not None]
            want = [t for t in ins if t.requires_grad]
            got: Sequence[Tensor | None] = (
                torch.autograd.grad([o for o, _ in pairs], want, [g for _, g in pairs], allow_unused=True)
                if want and pairs else [None] * len(want)
            )
        it = iter(got)
        res = [next(it) if t.requires_grad else None for t in ins]
        return (*res, *([None] * len(ctx.extra)))

    return setup_context, backward


# ---------------------------------------------------------------- spectral gate
@torch.library.custom_op("lowlight::spectral_gate", mutates_args=())
def _spectral_gate_op(re: Tensor, im: Tensor, w_g: Tensor, b_g: Tensor, w_s: Tensor,
                      b_s: Tensor) -> tuple[Tensor, Tensor]:
    if kt.use_triton(re):
        from lowlight.kernels.spectral_gate_kernel import spectral_gate_triton
        return spectral_gate_triton(re, im, w_g, b_g, w_s, b_s)
    from lowlight.kernels.checks import check_spectral_args
    check_spectral_args(re, im, w_g, b_g, w_s, b_s)
    o_re, o_im = ref.spectral_gate_ref(re, im, w_g, b_g, w_s, b_s)
    # custom ops may not return views (of one buffer); contiguous, as the fake kernel says (inductor
    # checks the real strides against it: a channels-last input made torch.compile of AMNet base fail)
    return o_re.contiguous().clone(), o_im.contiguous().clone()


@_spectral_gate_op.register_fake
def _(re: Tensor, im: Tensor, w_g: Tensor, b_g: Tensor, w_s: Tensor, b_s: Tensor) -> tuple[Tensor, Tensor]:
    return re.new_empty(re.shape), re.new_empty(re.shape)


_setup, _backward = _backward_via(ref.spectral_gate_ref, 6)
_spectral_gate_op.register_autograd(_backward, setup_context=_setup)


# ------------------------------------------------------------ illumination gate
@torch.library.custom_op("lowlight::illumination_gate", mutates_args=())
def _illumination_gate_op(z: Tensor, w: Tensor, b: Tensor, k: int) -> tuple[Tensor, Tensor]:
    from lowlight.kernels.checks import check_illumination_args
    check_illumination_args(z, w, b, k)
    if kt.use_triton(z):
        from lowlight.kernels.illumination_gate_kernel import illumination_gate_triton
        return illumination_gate_triton(z, w, b, k)
    high, low = ref.illumination_gate_ref(z, w, b, k)
    return high.contiguous(), low.contiguous()  # the fake kernel's layout (see spectral_gate)


@_illumination_gate_op.register_fake
def _(z: Tensor, w: Tensor, b: Tensor, k: int) -> tuple[Tensor, Tensor]:
    return z.new_empty(z.shape), z.new_empty(z.shape)


_setup, _backward = _backward_via(ref.illumination_gate_ref, 3)
_illumination_gate_op.register_autograd(_backward, setup_context=_setup)


# ---------------------------------------------------------------------- MoE
@torch.library.custom_op("lowlight::moe_top2", mutates_args=())
def _moe_top2_op(x: Tensor, w_router: Tensor, w1: Tensor, w3: Tensor, w2: Tensor) -> Tensor:
    from lowlight.kernels.checks import check_moe_args
    check_moe_args(x, w_router, w1, w3, w2)
    if kt.use_triton(x):
        from lowlight.kernels.moe_kernel import moe_top2_triton
        return moe_top2_triton(x, w_router, w1, w3, w2)
    return ref.moe_top2_ref(x, w_router, w1, w3, w2).contiguous()


@_moe_top2_op.register_fake
def _(x: Tensor, w_router: Tensor, w1: Tensor, w3: Tensor, w2: Tensor) -> Tensor:
    return x.new_empty(x.shape)


_setup, _backward = _backward_via(ref.moe_top2_ref, 5)
_moe_top2_op.register_autograd(_backward, setup_context=_setup)


# ------------------------------------------------------------- public API
def spectral_gate(re: Tensor, im: Tensor, w_g: Tensor, b_g: Tensor, w_s: Tensor,
                  b_s: Tensor) -> tuple[Tensor, Tensor]:
    """FBS spectral gate on a spectrum split in real/imaginary parts `[B, C, H, Wf]`.

    f = cat([re, im], 1); out = f * sigmoid(w_g f + b_g) * (1 + tanh(w_s f + b_s)),
    1x1 channel mixes with `w_* [2C, 2C]`, `b_* [2C]`; returns `(out[:, :C], out[:, C:])`.
    One `lowlight::spectral_gate` op (one node in torch.export / ONNX).
    """
    return torch.ops.lowlight.spectral_gate(re, im, w_g, b_g, w_s, b_s)


def illumination_gate(z: Tensor, w: Tensor, b: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """IADS gate: `low = avg_pool2d(z, k, 1, k//2, count_include_pad=False)`,
    `high_gated = (z - low) * sigmoid(w low + b)` (`w [C, C]`); returns `(high_gated, low)`."""
    return torch.ops.lowlight.illumination_gate(z, w, b, int(k))


def moe_top2(x: Tensor, w_router: Tensor, w1: Tensor, w3: Tensor, w2: Tensor) -> Tensor:
    """Token-level top-2 MoE with GLU experts: `x [N, D]`, `w_router [D, E]`,
    `w1, w3 [E, D, F]`, `w2 [E, F, D]` -> `[N, D]` (each token's two experts,
    weighted by their renormalised softmax probabilities)."""
    return torch.ops.lowlight.moe_top2(x, w_router, w1, w3, w2)


def top2_route(logits: Tensor) -> tuple[Tensor, Tensor]:
    """Top-2 of `softmax(logits [N, E])`: `(indices [N, 2] int64, weights [N, 2] float32)`,
    weights renormalised to sum 1. Plain function (exports through the reference ops)."""
    if kt.use_triton(logits) and not torch.compiler.is_compiling():
        from lowlight.kernels.top2_route_kernel import top2_route_triton
        return top2_route_triton(logits)
    from lowlight.kernels.checks import check_route_logits
    check_route_logits(logits)
    return ref.top2_route_ref(logits)
