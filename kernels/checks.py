"""Argument checks shared by the Triton launchers, the custom ops and the references.

No triton import here: the reference path must work without it.
"""
from __future__ import annotations

import torch

from lowlight.core.errors import InputError, ShapeError


def check_spectral_args(re: torch.Tensor, im: torch.Tensor, w_g: torch.Tensor, b_g: torch.Tensor,
                        w_s: torch.Tensor, b_s: torch.Tensor) -> None:
    """Shape checks shared by every backend."""
    if re.dim() != 4 or re.shape != im.shape:
        raise ShapeError(
            f"spectral_gate: re {tuple(re.shape)} and im {tuple(im.shape)} must both be [B, C, H, Wf]",
            "pass the .real and .imag of one rfft2 spectrum",
        )
    c2 = 2 * re.shape[1]
    for name, t, shape in (("w_g", w_g, (c2, c2)), ("w_s", w_s, (c2, c2)), ("b_g", b_g, (c2,)), ("b_s", b_s, (c2,))):
        if tuple(t.shape) != shape:
            raise ShapeError(
                f"spectral_gate: {name} has shape {tuple(t.shape)}, expected {shape} for C={c2 // 2}",
                "use [2C, 2C] weights (a 1x1 conv weight squeezed) and [2C] biases",
            )


def check_illumination_args(z: torch.Tensor, w: torch.Tensor, b: torch.Tensor, k: int) -> None:
    """Shape/argument checks shared by every backend."""
    if z.dim() != 4:
        raise ShapeError(f"illumination_gate: z has shape {tuple(z.shape)}, expected [B, C, H, W]",
                         "pass a 4-D feature map")
    C = z.shape[1]
    if tuple(w.shape) != (C, C) or tuple(b.shape) != (C,):
        raise ShapeError(
            f"illumination_gate: w {tuple(w.shape)} / b {tuple(b.shape)} do not match C={C}",
            "use a [C, C] weight (1x1 conv weight squeezed) and a [C] bias",
        )
    if not isinstance(k, int) or k < 1 or k % 2 == 0:
        raise InputError(f"illumination_gate: pooling size k={k!r} must be an odd int >= 1",
                         "use k = 1, 3, 5, 7, ...")


def check_moe_args(x: torch.Tensor, w_router: torch.Tensor, w1: torch.Tensor, w3: torch.Tensor,
                   w2: torch.Tensor) -> None:
    """Shape checks shared by every backend."""
    if x.dim() != 2:
        raise ShapeError(f"moe_top2: x has shape {tuple(x.shape)}, expected [N, D]",
                         "flatten batch and sequence dims into tokens first")
    D = x.shape[1]
    if w1.dim() != 3:
        raise ShapeError(f"moe_top2: w1 has shape {tuple(w1.shape)}, expected [E, D, F]",
                         "stack the experts' gate weights as [E, D, F]")
    E, _, F = w1.shape
    want = {"w_router": (D, E), "w1": (E, D, F), "w3": (E, D, F), "w2": (E, F, D)}
    for name, t in (("w_router", w_router), ("w1", w1), ("w3", w3), ("w2", w2)):
        if tuple(t.shape) != want[name]:
            raise ShapeError(f"moe_top2: {name} has shape {tuple(t.shape)}, expected {want[name]}",
                             "w_router [D, E]; w1, w3 [E, D, F]; w2 [E, F, D]")
    if E < 2:
        raise ShapeError(f"moe_top2: {E} expert(s); top-2 routing needs at least 2",
                         "use a dense GLU for a single expert")


def check_route_logits(logits: torch.Tensor) -> None:
    """logits must be [N, E] with E >= 2."""
    if logits.dim() != 2 or logits.shape[1] < 2:
        raise ShapeError(
            f"top2_route: logits have shape {tuple(logits.shape)}, expected [N, E] with E >= 2",
            "route over at least two experts (one expert needs no router)",
        )
