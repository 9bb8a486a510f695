"""Top-2 MoE with GLU experts (the DiT of MMAIF, "Multi-task and Multi-degradation All-in-One for Image Fusion") as grouped-GEMM Triton kernels.

Built the way fast MoE kernels are (vLLM's fused_moe, MegaBlocks):
1. route: logits = x @ w_router, then fused softmax/top-2/renormalise;
2. align: the 2N (token, slot) assignments grouped by expert, each expert's run
   padded to BLOCK_M, so every BLOCK_M-row block belongs to one expert
   (route + align are two Triton launches, moe_align_kernel.py; no sort, no
   host sync; `align_by_expert` below is the same layout in torch ops);
3. one grouped GEMM launch for gate+up, SiLU-GLU fused in the epilogue
   (x rows gathered by token id, never copied);
4. one grouped GEMM launch for down, routing weight applied in the epilogue,
   each result row written to its (token, slot) place;
5. combine: sum of each token's two rows (deterministic; no atomics).
Blocks past the last expert's padded run exit at once, so an expert with no
tokens, or all tokens on one expert, costs nothing extra.
"""
from __future__ import annotations

from typing import Any

import torch

import triton
import triton.language as tl

from lowlight.kernels import _triton as kt
from lowlight.kernels._tl import mma
from lowlight.kernels.moe_align_kernel import route_and_align
from lowlight.kernels.checks import check_moe_args


@triton.jit
def moe_glu_kernel(
    x_ptr, w1_ptr, w3_ptr, sorted_ids_ptr, block_expert_ptr,
    D, F, E, n_assign,
    s_xn, s_we, s_wd,
    h_ptr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    DOT_PREC: tl.constexpr, UPCAST: tl.constexpr,
):
    """h[row] = silu(x[tok] @ w1[e]) * (x[tok] @ w3[e]) for the BLOCK_M sorted rows of one block."""
    n_tiles_f = tl.cdiv(F, BLOCK_N)
    pid_m = tl.program_id(0) // n_tiles_f
    pid_n = tl.program_id(0) % n_tiles_f
    e = tl.load(block_expert_ptr + pid_m)
    if e >= E:  # past the last padded run
        return
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    ids = tl.load(sorted_ids_ptr + rm)
    valid = ids < n_assign  # padding rows hold n_assign
    tok = ids // 2  # assignment id = token * 2 + slot
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    nm = rn < F
    rk = tl.arange(0, BLOCK_K)
    a_ptrs = x_ptr + tok[:, None] * s_xn + rk[None, :]
    w_off = e.to(tl.int64) * s_we + rk[:, None] * s_wd + rn[None, :]
    acc1 = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc3 = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, D, BLOCK_K):
        km = (k0 + rk) < D
        a = tl.load(a_ptrs + k0, mask=valid[:, None] & km[None, :], other=0.0)
        wm = km[:, None] & nm[None, :]
        b1 = tl.load(w1_ptr + w_off + k0 * s_wd, mask=wm, other=0.0)
        b3 = tl.load(w3_ptr + w_off + k0 * s_wd, mask=wm, other=0.0)
        acc1 += mma(a, b1, DOT_PREC, UPCAST)
        acc3 += mma(a, b3, DOT_PREC, UPCAST)
    h = acc1 * tl.sigmoid(acc1) * acc3
    tl.store(h_ptr + rm[:, None] * F + rn[None, :], h.to(h_ptr.dtype.element_ty), mask=nm[None, :])


@triton.jit
def moe_down_kernel(
    h_ptr, w2_ptr, sorted_ids_ptr, block_expert_ptr, route_w_ptr,
    F, D, E, n_assign,
    s_we, s_wf,
    y2_ptr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    DOT_PREC: tl.constexpr, UPCAST: tl.constexpr,
):
    """y2[assignment] = route_w[assignment] * (h[row] @ w2[e]) for one block of sorted rows."""
    n_tiles_d = tl.cdiv(D, BLOCK_N)
    pid_m = tl.program_id(0) // n_tiles_d
    pid_n = tl.program_id(0) % n_tiles_d
    e = tl.load(block_expert_ptr + pid_m)
    if e >= E:
        return
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    ids = tl.load(sorted_ids_ptr + rm)
    valid = ids < n_assign
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    nm = rn < D
    rk = tl.arange(0, BLOCK_K)
    a_ptrs = h_ptr + rm[:, None] * F + rk[None, :]
    w_off = e.to(tl.int64) * s_we + rk[:, None] * s_wf + rn[None, :]
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, F, BLOCK_K):
        km = (k0 + rk) < F
        a = tl.load(a_ptrs + k0, mask=km[None, :], other=0.0)
        b = tl.load(w2_ptr + w_off + k0 * s_wf, mask=km[:, None] & nm[None, :], other=0.0)
        acc += mma(a, b, DOT_PREC, UPCAST)
    rw = tl.load(route_w_ptr + ids, mask=valid, other=0.0)
    acc = acc * rw[:, None]
    tl.store(y2_ptr + ids[:, None] * D + rn[None, :], acc.to(y2_ptr.dtype.element_ty),
             mask=valid[:, None] & nm[None, :])


_GEMM_CONFIGS = [
    triton.Config({"BLOCK_N": bn, "BLOCK_K": bk}, num_warps=nw, num_stages=ns)
    for bn, bk, nw, ns in (
        (64, 32, 4, 3), (64, 64, 4, 3), (128, 32, 4, 3), (128, 64, 8, 3),
        (128, 64, 4, 4), (256, 64, 8, 3), (64, 128, 4, 2), (128, 128, 8, 2),
    )
]
_tuned: dict[str, Any] = {}


def _autotuned(name: str) -> Any:
    if name not in _tuned:
        kernel = moe_glu_kernel if name == "glu" else moe_down_kernel
        key = ["D", "F", "BLOCK_M"]
        _tuned[name] = triton.autotune(configs=_GEMM_CONFIGS, key=key)(kernel)
    return _tuned[name]


def pick_block_m(n_tokens: int, n_experts: int) -> int:
    """Rows per block: small when experts get few tokens (less padding), 64 otherwise."""
    per_expert = 2 * n_tokens / max(n_experts, 1)
    if per_expert <= 32:
        return 16
    if per_expert <= 128:
        return 32
    return 64


def align_by_expert(idx: torch.Tensor, n_experts: int, block_m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sort the 2N assignments by expert, padding each expert's run to `block_m` rows (torch reference).

    The kernels use `moe_align_kernel.route_and_align` (same layout; within an
    expert's run the order of assignments may differ).

    Returns `sorted_ids [cap]` (assignment id = token*2+slot, padding = 2N) and
    `block_expert [cap // block_m]` (expert of each block; n_experts past the end).
    `cap` is the worst case 2N + E*(block_m-1) rounded up, so nothing waits on the GPU.
    """
    flat = idx.reshape(-1)
    n_assign = flat.numel()
    counts = torch.bincount(flat, minlength=n_experts)
    padded = (counts + block_m - 1) // block_m * block_m
    pad_end = torch.cumsum(padded, 0)
    order = torch.argsort(flat, stable=True)
    sorted_e = flat[order]
    first = torch.cumsum(counts, 0) - counts  # first sorted position of each expert
    rank = torch.arange(n_assign, device=idx.device) - first[sorted_e]
    dest = pad_end[sorted_e] - padded[sorted_e] + rank
    cap = triton.cdiv(n_assign + n_experts * (block_m - 1), block_m) * block_m
    sorted_ids = torch.full((cap,), n_assign, dtype=torch.int64, device=idx.device)
    sorted_ids[dest] = order
    starts = torch.arange(0, cap, block_m, device=idx.device)
    block_expert = torch.searchsorted(pad_end, starts, right=True)
    return sorted_ids, block_expert


def moe_top2_triton(
    x: torch.Tensor,
    w_router: torch.Tensor,
    w1: torch.Tensor,
    w3: torch.Tensor,
    w2: torch.Tensor,
    config: dict[str, int] | None = None,
) -> torch.Tensor:
    """Top-2 GLU MoE with the grouped-GEMM kernels. `config` pins BLOCK_M/N/K (no autotune)."""
    check_moe_args(x, w_router, w1, w3, w2)
    kt.check_float("moe_top2", x, w_router, w1, w3, w2)
    N, D = x.shape
    E, _, F = w1.shape
    x, w1, w3, w2 = (t.contiguous() for t in (x, w1, w3, w2))
    if N == 0:
        return torch.empty_like(x)
    cfg = dict(config or {})
    bm = cfg.pop("BLOCK_M", None) or pick_block_m(N, E)
    _, route_w, sorted_ids, block_expert = route_and_align(x @ w_router, bm)
    n_blocks = block_expert.numel()
    h = torch.empty((sorted_ids.numel(), F), dtype=x.dtype, device=x.device)
    y2 = torch.empty((N * 2, D), dtype=x.dtype, device=x.device)
    common = dict(BLOCK_M=bm, DOT_PREC=kt.dot_precision(x.dtype), UPCAST=kt.upcast_dots(x.dtype))
    glu_args = (x, w1, w3, sorted_ids, block_expert, D, F, E, 2 * N, x.stride(0), w1.stride(0), w1.stride(1), h)
    down_args = (h, w2, sorted_ids, block_expert, route_w.reshape(-1), F, D, E, 2 * N,
                 w2.stride(0), w2.stride(1), y2)

    def grid(cols: int) -> Any:
        return lambda meta: (n_blocks * triton.cdiv(cols, meta["BLOCK_N"]),)

    if not cfg and not kt.interpreting():
        _autotuned("glu")[grid(F)](*glu_args, **common)
        _autotuned("down")[grid(D)](*down_args, **common)
    else:
        tiles = {"BLOCK_N": cfg.get("BLOCK_N", 32), "BLOCK_K": cfg.get("BLOCK_K", 32)}
        moe_glu_kernel[grid(F)](*glu_args, **common, **tiles)
        moe_down_kernel[grid(D)](*down_args, **common, **tiles)
    return y2.view(N, 2, D).sum(dim=1)
