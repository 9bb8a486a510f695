"""Top-2 routing: softmax over experts, keep the two largest, renormalise.

The renormalised pair is a two-way softmax of the two top logits, so the
kernel never forms the full softmax: w_top = 1 / (1 + exp(l_2nd - l_top)).
Ties go to the lower expert index (tl.argmax is left-biased), as torch.topk.
"""
from __future__ import annotations

import torch

import triton
import triton.language as tl

from lowlight.kernels import _triton as kt
from lowlight.kernels.checks import check_route_logits


@triton.jit
def route_rows(logits_ptr, N, E, s_n, s_e, idx_ptr, w_ptr, rows, cols, EP: tl.constexpr):
    """Top-2 of `rows` (indices + renormalised weights stored); returns (i1, i2, row mask).

    Shared by this kernel and the MoE's route-and-count kernel.
    """
    rm = rows < N
    lg = tl.load(logits_ptr + rows[:, None] * s_n + cols[None, :] * s_e,
                 mask=rm[:, None] & (cols[None, :] < E), other=0.0).to(tl.float32)
    # Padding experts never win; padding rows stay finite (no inf - inf).
    lg = tl.where(cols[None, :] < E, lg, float("-inf"))
    i1 = tl.argmax(lg, axis=1, tie_break_left=True)
    m1 = tl.max(lg, axis=1)
    lg2 = tl.where(cols[None, :] == i1[:, None], float("-inf"), lg)
    i2 = tl.argmax(lg2, axis=1, tie_break_left=True)
    m2 = tl.max(lg2, axis=1)
    w1 = 1.0 / (1.0 + tl.exp(m2 - m1))
    tl.store(idx_ptr + rows * 2, i1.to(tl.int64), mask=rm)
    tl.store(idx_ptr + rows * 2 + 1, i2.to(tl.int64), mask=rm)
    tl.store(w_ptr + rows * 2, w1, mask=rm)
    tl.store(w_ptr + rows * 2 + 1, 1.0 - w1, mask=rm)
    return i1, i2, rm


@triton.jit
def top2_route_kernel(
    logits_ptr, N, E, s_n, s_e,
    idx_ptr, w_ptr,
    EP: tl.constexpr, BLOCK_N: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.arange(0, EP)
    route_rows(logits_ptr, N, E, s_n, s_e, idx_ptr, w_ptr, rows, cols, EP)


def top2_route_triton(logits: torch.Tensor, block_n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """`(indices [N, 2] int64, weights [N, 2] float32)` for `logits [N, E]`."""
    check_route_logits(logits)
    kt.check_float("top2_route", logits)
    N, E = logits.shape
    idx = torch.empty((N, 2), dtype=torch.int64, device=logits.device)
    wts = torch.empty((N, 2), dtype=torch.float32, device=logits.device)
    if N:
        top2_route_kernel[(triton.cdiv(N, block_n),)](
            logits, N, E, *logits.stride(), idx, wts, EP=kt.next_pow2(E, floor=2), BLOCK_N=block_n)
    return idx, wts
