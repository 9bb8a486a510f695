"""Plain PyTorch references for every kernel in `lowlight.kernels`.

These define the semantics: the Triton kernels, the ONNX decompositions and
the TensorRT plugins are all tested against them. They are also the CPU path
(training, export tracing) and the backward of the custom ops.
Weights are `[out, in]` matrices (a 1x1 convolution weight with the two
trailing unit dims squeezed).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _mix(w: torch.Tensor, b: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per-pixel channel mix `w @ x + b` on `x [B, Cin, H, W]` (a 1x1 conv)."""
    return torch.einsum("oc,bchw->bohw", w, x) + b.view(1, -1, 1, 1)


def spectral_gate_ref(
    re: torch.Tensor,
    im: torch.Tensor,
    w_g: torch.Tensor,
    b_g: torch.Tensor,
    w_s: torch.Tensor,
    b_s: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """FBS spectral gate: `f*sigmoid(w_g f + b_g)*(1 + tanh(w_s f + b_s))`, f = [re; im]."""
    c = re.shape[1]
    f = torch.cat([re, im], dim=1)
    g = torch.sigmoid(_mix(w_g, b_g, f))
    s = torch.tanh(_mix(w_s, b_s, f))
    out = f * g * (1 + s)
    return out[:, :c], out[:, c:]


def illumination_gate_ref(
    z: torch.Tensor, w: torch.Tensor, b: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """IADS gate: `low = avgpool_k(z)`, `high_gated = (z - low) * sigmoid(w low + b)`."""
    low = F.avg_pool2d(z, k, stride=1, padding=k // 2, count_include_pad=False)
    high = (z - low) * torch.sigmoid(_mix(w, b, low))
    return high, low


def top2_route_ref(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-2 of `softmax(logits)` per row, weights renormalised to sum 1.

    Returns `(indices [N, 2] int64, weights [N, 2] float32)`; ties go to the
    lower expert index, as `torch.topk` does.
    """
    probs = torch.softmax(logits.float(), dim=-1)
    w, idx = torch.topk(probs, 2, dim=-1)
    return idx, w / w.sum(dim=-1, keepdim=True)


def _expert(x: torch.Tensor, w1: torch.Tensor, w3: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
    return (F.silu(x @ w1) * (x @ w3)) @ w2


def moe_top2_ref(
    x: torch.Tensor,
    w_router: torch.Tensor,
    w1: torch.Tensor,
    w3: torch.Tensor,
    w2: torch.Tensor,
) -> torch.Tensor:
    """Token-level top-2 MoE with GLU experts, computed densely (every expert on every token).

    Dense is the simplest correct form and differentiable everywhere the
    routing is; it is the reference and the CPU/training path, not a fast path.
    """
    idx, wts = top2_route_ref(x @ w_router)
    n_exp = w1.shape[0]
    # [N, E] routing matrix with the two renormalised weights, zeros elsewhere.
    gate = torch.zeros(x.shape[0], n_exp, dtype=wts.dtype, device=x.device).scatter(1, idx, wts)
    ys = torch.stack([_expert(x, w1[e], w3[e], w2[e]) for e in range(n_exp)], dim=1)  # [N,E,D]
    return (gate.to(x.dtype).unsqueeze(-1) * ys).sum(dim=1)


def moe_top2_loop(
    x: torch.Tensor,
    w_router: torch.Tensor,
    w1: torch.Tensor,
    w3: torch.Tensor,
    w2: torch.Tensor,
) -> torch.Tensor:
    """The usual eager sparse MoE: gather each expert's tokens in a Python loop.

    Same result as `moe_top2_ref`; the baseline the benchmark compares against.
    """
    idx, wts = top2_route_ref(x @ w_router)
    y = torch.zeros_like(x)
    for e in range(w1.shape[0]):
        tok, slot = torch.nonzero(idx == e, as_tuple=True)
        if tok.numel() == 0:
            continue
        out = _expert(x[tok], w1[e], w3[e], w2[e])
        y.index_add_(0, tok, out * wts[tok, slot].to(x.dtype).unsqueeze(-1))
    return y
