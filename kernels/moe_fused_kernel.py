"""Top-2 MoE with GLU experts as ONE Triton kernel (the TensorRT plugin `lowlight::MoETop2`).

Computes what `reference.moe_top2_ref` computes: y = sum over each token's two
experts e of g_e * (silu(x @ w1[e]) * (x @ w3[e])) @ w2[e], where (g_1, g_2)
are the top-2 softmax probabilities of x @ w_router renormalised to sum 1.

Why one kernel: a TensorRT AOT Python plugin returns one compiled kernel and
TensorRT launches exactly that, once per enqueue. The grouped-GEMM path of
moe_kernel.py needs four launches (route, align, gate/up GEMM, down GEMM) and
intermediate buffers, so it cannot be a plugin. Here each program owns a tile
of BLOCK_N tokens and does everything for it on chip:

1. router logits x @ w_router for the tile (a dot, chunked over D), rounded
   to x's dtype as torch's matmul rounds them, then the top-2 of the softmax,
   renormalised, via the two-way identity: with r = exp(l_2nd - l_top),
   g_1 = 1 / (1 + r), g_2 = r / (1 + r) (the full softmax is never formed).
   Ties go to the lower expert index (`top2_route_ref`'s documented rule;
   top2_route_kernel does the same; torch.topk itself does not promise an
   order among ties);
2. a loop over the E experts: an expert that no token of the tile picked is
   skipped (a runtime scalar branch); otherwise, per chunk of BLOCK_F hidden
   units, h = silu(x @ w1[e]) * (x @ w3[e]) (chunked over D), scaled per token
   by its routing weight for e (0 if e is not one of its two), and
   acc += h @ w2[e][chunk, :];
3. acc [BLOCK_N, DP] is written once. No scratch memory, no atomics: each
   output row belongs to one program.

Cost vs moe_kernel.py: the grouped GEMMs run each expert only on the tokens
that picked it (2N token-expert products in all). Here a tile runs every
expert that ANY of its tokens picked, on all BLOCK_N tokens (the others get
weight 0), so with E experts and routing spread evenly a tile of 16 tokens
usually runs all E experts: up to E/2 times the useful FLOPs (2x at E = 4).
The down projection also runs on the padded width DP (1024 for D = 576).
Weights are re-read from L2 by every tile. The trade buys a single launch
with no host sync and no intermediates, which is what a TensorRT plugin needs;
the grouped GEMMs stay the CUDA path of the `lowlight::moe_top2` op.

Register and shared-memory budget (D up to 576 -> DP = 1024, E = 4, F = 1536):
- BLOCK_N = 16 tokens (tl.dot's smallest M): the fp32 accumulator
  [BLOCK_N, DP] is 16 K floats, 64 registers a thread at 8 warps;
- the hidden dim is walked in chunks of BLOCK_F (`fused_blocks`: the
  [BLOCK_F, DP] tile of w2, the largest on-chip operand, stays <= 32 KiB,
  which keeps a launch under TensorRT's 48 KiB of shared memory; 16 at
  DP = 1024 in 16-bit; in fp32 the accumulator is split in two column halves
  so that each w2 tile is [16, 512]);
- the D contraction of the router and gate/up dots is chunked by BLOCK_D, so
  their operand tiles stay small; the x chunks are re-read (L1/L2 hits).
At the paper config ptxas reports (sm_87 and sm_90) 32 KiB of shared memory
and about 240 registers a thread, no spills in fp16/bf16 (a few dozen bytes in
fp32, whose 3xTF32 dots need more registers); 4 warps would spill hundreds.

Argument order is inputs, scalars, outputs (TensorRT's AOT launch order);
all tensors are dense row-major (TensorRT's layout; the launcher makes them so).
"""
from __future__ import annotations

from typing import NamedTuple

import torch

import triton
import triton.language as tl

from lowlight.kernels import _triton as kt
from lowlight.kernels._tl import mma
from lowlight.kernels.checks import check_moe_args

#: Tokens per program: tl.dot's minimum M, so the [BLOCK_N, DP] accumulator stays small.
BLOCK_N = 16
#: Warps per program: 8 spreads the accumulator over 256 threads (64 fp32 registers each at DP = 1024).
NUM_WARPS = 8
#: Largest on-chip w2 tile [BLOCK_F, DP] in bytes (TensorRT launches get <= 48 KiB of shared memory).
_W2_TILE_BYTES = 32 * 1024


@triton.jit
def _down_proj(acc, h, w2_e, f0, kf, fm, c0, cd, D, DOT_PREC: tl.constexpr, UPCAST: tl.constexpr):
    """acc + h @ w2_e[f0 + kf, c0 + cd] (rows past F and columns past D masked to 0)."""
    cm = (c0 + cd) < D
    w = tl.load(w2_e + (f0 + kf)[:, None] * D + (c0 + cd)[None, :], mask=fm[:, None] & cm[None, :], other=0.0)
    return acc + mma(h.to(w.dtype), w, DOT_PREC, UPCAST)


@triton.jit
def _store_cols(y_ptr, acc, rows, rm, c0, cd, D):
    """y[rows, c0 + cd] = acc (masked to N rows and D columns)."""
    cm = (c0 + cd) < D
    tl.store(y_ptr + rows.to(tl.int64)[:, None] * D + (c0 + cd)[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=rm[:, None] & cm[None, :])


@triton.jit
def moe_top2_fused_kernel(
    x_ptr, wr_ptr, w1_ptr, w3_ptr, w2_ptr,
    N, D, E, F,
    y_ptr,
    DP: tl.constexpr, DH: tl.constexpr, EP: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_F: tl.constexpr,
    BLOCK_D: tl.constexpr, DOT_PREC: tl.constexpr, UPCAST: tl.constexpr,
):
    """y[tile] = top-2 GLU MoE of x[tile] for one tile of BLOCK_N tokens (module doc).

    DP = next_pow2(D); DH = DP or DP // 2: the accumulator is one [BLOCK_N, DP]
    block, or two [BLOCK_N, DH] halves (so each w2 tile is half as large).
    EP = next_pow2(E) (>= 16 for the router dot).
    """
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    rm = rows < N
    x_rows = x_ptr + rows.to(tl.int64)[:, None] * D
    kd = tl.arange(0, BLOCK_D)
    ce = tl.arange(0, EP)
    em = ce < E

    # Router logits of the tile, chunked over D.
    lg = tl.zeros((BLOCK_N, EP), dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        dm = (d0 + kd) < D
        xa = tl.load(x_rows + (d0 + kd)[None, :], mask=rm[:, None] & dm[None, :], other=0.0)
        wr = tl.load(wr_ptr + (d0 + kd)[:, None] * E + ce[None, :], mask=dm[:, None] & em[None, :], other=0.0)
        lg += mma(xa, wr, DOT_PREC, UPCAST)
    # Round as torch's `x @ w_router` in x's dtype does, so 16-bit routing picks the reference's experts.
    lg = lg.to(x_ptr.dtype.element_ty).to(tl.float32)
    # Padding experts never win; padding rows stay finite (no inf - inf).
    lg = tl.where(em[None, :], lg, float("-inf"))
    i1 = tl.argmax(lg, axis=1, tie_break_left=True)
    m1 = tl.max(lg, axis=1)
    lg2 = tl.where(ce[None, :] == i1[:, None], float("-inf"), lg)
    i2 = tl.argmax(lg2, axis=1, tie_break_left=True)
    m2 = tl.max(lg2, axis=1)
    # Top-2 of the softmax renormalised = a two-way softmax of the two top logits.
    r = tl.exp(m2 - m1)
    g1 = 1.0 / (1.0 + r)
    g2 = r * g1

    kf = tl.arange(0, BLOCK_F)
    cd = tl.arange(0, DH)
    acc = tl.zeros((BLOCK_N, DH), dtype=tl.float32)
    acc_hi = tl.zeros((BLOCK_N, DH), dtype=tl.float32)  # columns [DH, DP); only used when DH < DP
    # Expert base pointers advance by one expert per step (64-bit pointer arithmetic).
    w1_e = w1_ptr
    w3_e = w3_ptr
    w2_e = w2_ptr
    for e in range(E):
        pick1 = (i1 == e) & rm
        pick2 = (i2 == e) & rm
        if tl.sum((pick1 | pick2).to(tl.int32), axis=0) > 0:  # skip experts no token of the tile picked
            gate = tl.where(pick1, g1, 0.0) + tl.where(pick2, g2, 0.0)
            for f0 in range(0, F, BLOCK_F):
                fm = (f0 + kf) < F
                a1 = tl.zeros((BLOCK_N, BLOCK_F), dtype=tl.float32)
                a3 = tl.zeros((BLOCK_N, BLOCK_F), dtype=tl.float32)
                for d0 in range(0, D, BLOCK_D):
                    dm = (d0 + kd) < D
                    xa = tl.load(x_rows + (d0 + kd)[None, :], mask=rm[:, None] & dm[None, :], other=0.0)
                    w_off = (d0 + kd)[:, None] * F + (f0 + kf)[None, :]
                    wm = dm[:, None] & fm[None, :]
                    a1 += mma(xa, tl.load(w1_e + w_off, mask=wm, other=0.0), DOT_PREC, UPCAST)
                    a3 += mma(xa, tl.load(w3_e + w_off, mask=wm, other=0.0), DOT_PREC, UPCAST)
                # Routing weight applied to h (the down projection is linear in it): one accumulator for all experts.
                h = a1 * tl.sigmoid(a1) * a3 * gate[:, None]
                acc = _down_proj(acc, h, w2_e, f0, kf, fm, 0, cd, D, DOT_PREC, UPCAST)
                if DH < DP:
                    acc_hi = _down_proj(acc_hi, h, w2_e, f0, kf, fm, DH, cd, D, DOT_PREC, UPCAST)
        w1_e += D * F
        w3_e += D * F
        w2_e += F * D
    _store_cols(y_ptr, acc, rows, rm, 0, cd, D)
    if DH < DP:
        _store_cols(y_ptr, acc_hi, rows, rm, DH, cd, D)


class FusedBlocks(NamedTuple):
    """The constexpr tile sizes of one build of `moe_top2_fused_kernel`."""

    DP: int
    DH: int
    EP: int
    BLOCK_N: int
    BLOCK_F: int
    BLOCK_D: int


def fused_blocks(D: int, E: int, F: int, elem_bytes: int, block_f: int | None = None) -> FusedBlocks:
    """Tile sizes of the fused kernel for D, E, F and an element size in bytes.

    DP, EP: power-of-two paddings of D and E. BLOCK_F (unless `block_f` pins
    it): the largest power of two in [16, 64], and <= next_pow2(F), whose
    [BLOCK_F, DP] w2 tile fits in 32 KiB. Where even 16 rows do not (DP = 1024
    in fp32), the accumulator is split in two column halves (DH = DP // 2),
    which halves the w2 tile. BLOCK_D = min(DP, 64): the D chunk of the
    router and gate/up dots.
    """
    dp = kt.next_pow2(D)
    if block_f is None:
        block_f = 64
        while block_f > 16 and block_f * dp * elem_bytes > _W2_TILE_BYTES:
            block_f //= 2
        block_f = min(block_f, kt.next_pow2(F))
    dh = dp // 2 if block_f * dp * elem_bytes > _W2_TILE_BYTES and dp >= 32 else dp
    return FusedBlocks(DP=dp, DH=dh, EP=kt.next_pow2(E), BLOCK_N=BLOCK_N, BLOCK_F=block_f, BLOCK_D=min(dp, 64))


def moe_top2_fused(
    x: torch.Tensor,
    w_router: torch.Tensor,
    w1: torch.Tensor,
    w3: torch.Tensor,
    w2: torch.Tensor,
    block_f: int | None = None,
) -> torch.Tensor:
    """Top-2 GLU MoE in one launch of `moe_top2_fused_kernel` (what the TensorRT plugin runs).

    Same arguments and result as `moe_top2_ref`; `block_f` pins the hidden-dim
    chunk (a power of two >= 16) instead of `fused_blocks`' choice.
    """
    check_moe_args(x, w_router, w1, w3, w2)
    kt.check_float("moe_top2", x, w_router, w1, w3, w2)
    N, D = x.shape
    E, _, F = w1.shape
    x, w_router, w1, w3, w2 = (t.contiguous() for t in (x, w_router, w1, w3, w2))
    y = torch.empty_like(x)
    if N == 0:
        return y
    blocks = fused_blocks(D, E, F, x.element_size(), block_f)
    grid = (triton.cdiv(N, blocks.BLOCK_N),)
    moe_top2_fused_kernel[grid](
        x, w_router, w1, w3, w2, N, D, E, F, y, **blocks._asdict(),
        DOT_PREC=kt.dot_precision(x.dtype), UPCAST=kt.upcast_dots(x.dtype), num_warps=NUM_WARPS, num_stages=1)
    return y
