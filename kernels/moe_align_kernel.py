"""Routing and expert alignment for the MoE in two Triton launches (vLLM's moe_align_block_size, in Triton).

1. `moe_route_count_kernel`, one program per BLOCK_N tokens: top-2 of the
   router logits (as top2_route_kernel), each assignment's rank among the
   block's assignments to the same expert (a cumsum over one-hot rows), and
   the block's per-expert counts.
2. `moe_align_kernel`, same grid: every program reads the small counts table,
   derives each expert's padded run (multiple of BLOCK_M) and its own offset
   inside it, and scatters its assignment ids there; program 0 writes the
   padding sentinels of each run's last block; all programs write the expert
   of each BLOCK_M-row block (E past the end, so the GEMMs skip those blocks).
No sort, no host sync, two launches instead of the dozen small torch ops of
`moe_kernel.align_by_expert` (kept as the readable reference of the layout).
"""
from __future__ import annotations

import torch

import triton
import triton.language as tl

from lowlight.kernels import _triton as kt
from lowlight.kernels.top2_route_kernel import route_rows


@triton.jit
def moe_route_count_kernel(
    logits_ptr, N, E, s_n, s_e,
    idx_ptr, w_ptr, rank_ptr, counts_ptr,
    EP: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.arange(0, EP)
    i1, i2, rm = route_rows(logits_ptr, N, E, s_n, s_e, idx_ptr, w_ptr, rows, cols, EP)
    # Rank of each assignment among this block's assignments to its expert:
    # all slot-0 assignments first, then slot 1 (any fixed order will do).
    oh1 = ((cols[None, :] == i1[:, None]) & rm[:, None]).to(tl.int32)
    oh2 = ((cols[None, :] == i2[:, None]) & rm[:, None]).to(tl.int32)
    tot1 = tl.sum(oh1, axis=0)
    r1 = tl.sum(tl.cumsum(oh1, axis=0) * oh1, axis=1) - 1
    r2 = tl.sum((tl.cumsum(oh2, axis=0) + tot1[None, :]) * oh2, axis=1) - 1
    tl.store(rank_ptr + rows * 2, r1, mask=rm)
    tl.store(rank_ptr + rows * 2 + 1, r2, mask=rm)
    tl.store(counts_ptr + pid * EP + cols, tot1 + tl.sum(oh2, axis=0))


@triton.jit
def moe_align_kernel(
    idx_ptr, rank_ptr, counts_ptr, N, E, n_count_rows, n_blocks_cap,
    sorted_ids_ptr, block_expert_ptr,
    EP: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, ROWS_P: tl.constexpr,
):
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    cols = tl.arange(0, EP)
    r = tl.arange(0, ROWS_P)
    table = tl.load(counts_ptr + r[:, None] * EP + cols[None, :], mask=(r < n_count_rows)[:, None], other=0)
    total = tl.sum(table, axis=0)  # [EP] assignments per expert
    before = tl.sum(tl.where((r < pid)[:, None], table, 0), axis=0)  # in earlier token blocks
    padded = (total + BLOCK_M - 1) // BLOCK_M * BLOCK_M
    pad_end = tl.cumsum(padded, axis=0)
    pad_start = pad_end - padded
    # Scatter this block's assignment ids to their sorted places.
    rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    rm = rows < N
    base = pad_start + before
    for slot in tl.static_range(2):
        a = rows * 2 + slot
        e = tl.load(idx_ptr + a, mask=rm, other=0).to(tl.int32)
        rk = tl.load(rank_ptr + a, mask=rm, other=0)
        dest = tl.sum(tl.where(cols[None, :] == e[:, None], base[None, :], 0), axis=1) + rk
        tl.store(sorted_ids_ptr + dest, a.to(tl.int64), mask=rm)
    if pid == 0:
        # Padding rows of each expert's last block point past the assignments (sentinel 2N).
        j = tl.arange(0, BLOCK_M)
        pos = (pad_start + total)[:, None] + j[None, :]
        pm = (j[None, :] < (padded - total)[:, None]) & (cols < E)[:, None]
        tl.store(sorted_ids_ptr + pos, tl.full((EP, BLOCK_M), 0, tl.int64) + 2 * N, mask=pm)
    # Expert of each BLOCK_M-row block: how many runs end at or before its first row.
    for j0 in range(pid * BLOCK_N, n_blocks_cap, nprog * BLOCK_N):
        blk = j0 + tl.arange(0, BLOCK_N)
        ends = tl.where(cols < E, pad_end, 2147483647)
        eb = tl.sum((ends[None, :] <= (blk * BLOCK_M)[:, None]).to(tl.int32), axis=1)
        tl.store(block_expert_ptr + blk, tl.minimum(eb, E).to(tl.int64), mask=blk < n_blocks_cap)


def route_and_align(logits: torch.Tensor, block_m: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-2 routing + expert alignment of `logits [N, E]` in two launches.

    Returns `(idx [N, 2] int64, weights [N, 2] fp32, sorted_ids [cap] int64,
    block_expert [cap // block_m] int64)` with the layout of
    `moe_kernel.align_by_expert` (assignment id = token * 2 + slot; padding
    rows = 2N; rows past the last run are never read: their blocks say E).
    """
    N, E = logits.shape
    dev = logits.device
    block_n = 64
    while triton.cdiv(N, block_n) > 1024:  # keep the counts table small enough for one load
        block_n *= 2
    n_rows = triton.cdiv(N, block_n)
    ep = kt.next_pow2(E, floor=2)
    cap = triton.cdiv(2 * N + E * (block_m - 1), block_m) * block_m
    idx = torch.empty((N, 2), dtype=torch.int64, device=dev)
    wts = torch.empty((N, 2), dtype=torch.float32, device=dev)
    rank = torch.empty((N, 2), dtype=torch.int32, device=dev)
    counts = torch.empty((n_rows, ep), dtype=torch.int32, device=dev)
    sorted_ids = torch.empty((cap,), dtype=torch.int64, device=dev)
    block_expert = torch.empty((cap // block_m,), dtype=torch.int64, device=dev)
    moe_route_count_kernel[(n_rows,)](logits, N, E, *logits.stride(), idx, wts, rank, counts, EP=ep, BLOCK_N=block_n)
    moe_align_kernel[(n_rows,)](idx, rank, counts, N, E, n_rows, cap // block_m, sorted_ids, block_expert,
                                EP=ep, BLOCK_N=block_n, BLOCK_M=block_m, ROWS_P=kt.next_pow2(n_rows, floor=2))
    return idx, wts, sorted_ids, block_expert
