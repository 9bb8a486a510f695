"""Fused FBS spectral gate (AMNet, AnyMod-LLVE) as one Triton kernel.

out = f * sigmoid(w_g f + b_g) * (1 + tanh(w_s f + b_s)),  f = [re; im] per pixel.

One pass: each program walks pixel tiles (grid-stride) reading each tile of
re/im once and writing each output once. With HOIST (the CUDA default) it
loads the four [C, C] blocks of both weight matrices once and keeps them on
chip for all its tiles; without (TensorRT AOT, where a launch gets <= 48 KiB
of shared memory) it re-reads each block from L2 where it is used. The
autotuner picks HOIST along with the tile width and warps. The channel mixes are `tl.dot`s on [C, C] x [C, P] tiles; the
concatenation is never materialised (w @ [re; im] = w[:, :C] re + w[:, C:] im).
1 + tanh(s) is computed as 2 sigmoid(2 s) (an identity; Triton has no tanh).

Argument order is inputs, scalars, outputs: the order TensorRT's AOT plugin
launcher passes them (see trt_plugins.py).
"""
from __future__ import annotations

from typing import Any

import torch

import triton
import triton.language as tl

from lowlight.kernels import _triton as kt
from lowlight.kernels._tl import mma
from lowlight.kernels.checks import check_spectral_args


@triton.jit
def _load_block(ptr, n: tl.constexpr, row0, col0, CP: tl.constexpr, C):
    """Block w[row0:row0+C, col0:col0+C] of a row-major matrix with n columns, zero-padded to [CP, CP]."""
    r = tl.arange(0, CP)
    m = (r[:, None] < C) & (r[None, :] < C)
    return tl.load(ptr + (row0 + r[:, None]) * n + col0 + r[None, :], mask=m, other=0.0)


@triton.jit
def _load_weights(wg_ptr, bg_ptr, ws_ptr, bs_ptr, C, CP: tl.constexpr):
    """The four [C, C] blocks of w_g and w_s ([re|im] rows x [re|im] columns) and the bias halves."""
    c = tl.arange(0, CP)
    cm = c < C
    two_c = 2 * C
    return (
        _load_block(wg_ptr, two_c, 0, 0, CP, C), _load_block(wg_ptr, two_c, 0, C, CP, C),
        _load_block(wg_ptr, two_c, C, 0, CP, C), _load_block(wg_ptr, two_c, C, C, CP, C),
        _load_block(ws_ptr, two_c, 0, 0, CP, C), _load_block(ws_ptr, two_c, 0, C, CP, C),
        _load_block(ws_ptr, two_c, C, 0, CP, C), _load_block(ws_ptr, two_c, C, C, CP, C),
        tl.load(bg_ptr + c, mask=cm, other=0.0).to(tl.float32)[:, None],
        tl.load(bg_ptr + C + c, mask=cm, other=0.0).to(tl.float32)[:, None],
        tl.load(bs_ptr + c, mask=cm, other=0.0).to(tl.float32)[:, None],
        tl.load(bs_ptr + C + c, mask=cm, other=0.0).to(tl.float32)[:, None],
    )


@triton.jit
def _gate_half(xr, xi, wg_ptr, bg_ptr, ws_ptr, bs_ptr, row0, C, CP: tl.constexpr,
               DOT_PREC: tl.constexpr, UPCAST: tl.constexpr):
    """sigmoid(G) * (1 + tanh(S)) for output rows [row0, row0 + C), loading each weight block at its use."""
    c = tl.arange(0, CP)
    cm = c < C
    two_c = 2 * C
    g = mma(_load_block(wg_ptr, two_c, row0, 0, CP, C), xr, DOT_PREC, UPCAST)
    g += mma(_load_block(wg_ptr, two_c, row0, C, CP, C), xi, DOT_PREC, UPCAST)
    g += tl.load(bg_ptr + row0 + c, mask=cm, other=0.0).to(tl.float32)[:, None]
    s = mma(_load_block(ws_ptr, two_c, row0, 0, CP, C), xr, DOT_PREC, UPCAST)
    s += mma(_load_block(ws_ptr, two_c, row0, C, CP, C), xi, DOT_PREC, UPCAST)
    s += tl.load(bs_ptr + row0 + c, mask=cm, other=0.0).to(tl.float32)[:, None]
    return tl.sigmoid(g) * (2.0 * tl.sigmoid(2.0 * s))


@triton.jit
def spectral_gate_kernel(
    re_ptr, im_ptr, wg_ptr, bg_ptr, ws_ptr, bs_ptr,
    B, C, HW, Wf,
    s_rb, s_rc, s_rh, s_rw, s_ib, s_ic, s_ih, s_iw,
    ore_ptr, oim_ptr,
    CP: tl.constexpr, BLOCK_P: tl.constexpr, DOT_PREC: tl.constexpr, UPCAST: tl.constexpr,
    HOIST: tl.constexpr = True,
):
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    c = tl.arange(0, CP)
    cm = c < C
    if HOIST:
        # Weights loaded once per program and kept on chip for all its tiles.
        wg_rr, wg_ri, wg_ir, wg_ii, ws_rr, ws_ri, ws_ir, ws_ii, bg_r, bg_i, bs_r, bs_i = _load_weights(
            wg_ptr, bg_ptr, ws_ptr, bs_ptr, C, CP)
    tiles_per_img = tl.cdiv(HW, BLOCK_P)
    n_tiles = B * tiles_per_img
    for t in range(pid, n_tiles, nprog):
        b = t // tiles_per_img
        p = (t % tiles_per_img) * BLOCK_P + tl.arange(0, BLOCK_P)
        pm = p < HW
        h = p // Wf
        w = p % Wf
        m = cm[:, None] & pm[None, :]
        xr = tl.load(re_ptr + b * s_rb + c[:, None] * s_rc + (h * s_rh + w * s_rw)[None, :], mask=m, other=0.0)
        xi = tl.load(im_ptr + b * s_ib + c[:, None] * s_ic + (h * s_ih + w * s_iw)[None, :], mask=m, other=0.0)
        o_off = b * C * HW + c[:, None] * HW + p[None, :]
        if HOIST:
            # Real half: rows [0, C) of both mixes; then the imaginary half, rows [C, 2C).
            g = mma(wg_rr, xr, DOT_PREC, UPCAST) + mma(wg_ri, xi, DOT_PREC, UPCAST) + bg_r
            s = mma(ws_rr, xr, DOT_PREC, UPCAST) + mma(ws_ri, xi, DOT_PREC, UPCAST) + bs_r
            out_r = xr.to(tl.float32) * tl.sigmoid(g) * (2.0 * tl.sigmoid(2.0 * s))
            g = mma(wg_ir, xr, DOT_PREC, UPCAST) + mma(wg_ii, xi, DOT_PREC, UPCAST) + bg_i
            s = mma(ws_ir, xr, DOT_PREC, UPCAST) + mma(ws_ii, xi, DOT_PREC, UPCAST) + bs_i
            out_i = xi.to(tl.float32) * tl.sigmoid(g) * (2.0 * tl.sigmoid(2.0 * s))
        else:
            # Weight blocks re-read per tile (L2 hits) right where they are used:
            # small shared memory (TensorRT AOT launches get <= 48 KiB).
            out_r = xr.to(tl.float32) * _gate_half(xr, xi, wg_ptr, bg_ptr, ws_ptr, bs_ptr, 0, C, CP, DOT_PREC, UPCAST)
            out_i = xi.to(tl.float32) * _gate_half(xr, xi, wg_ptr, bg_ptr, ws_ptr, bs_ptr, C, C, CP, DOT_PREC, UPCAST)
        tl.store(ore_ptr + o_off, out_r.to(ore_ptr.dtype.element_ty), mask=m)
        tl.store(oim_ptr + o_off, out_i.to(oim_ptr.dtype.element_ty), mask=m)


_CONFIGS = [
    triton.Config({"BLOCK_P": bp, "HOIST": hoist}, num_warps=nw, num_stages=1)
    for bp in (32, 64, 128)
    for nw in (4, 8)
    for hoist in (True, False)
]
# Programs per SM in the persistent grid: enough to hide latency, few enough to
# amortise the weight loads.
_PROGRAMS_PER_SM = 8
_tuned: Any = None


def _autotuned() -> Any:
    global _tuned
    if _tuned is None:
        _tuned = triton.autotune(configs=_CONFIGS, key=["C", "HW"])(spectral_gate_kernel)
    return _tuned


def spectral_gate_triton(
    re: torch.Tensor,
    im: torch.Tensor,
    w_g: torch.Tensor,
    b_g: torch.Tensor,
    w_s: torch.Tensor,
    b_s: torch.Tensor,
    block_p: int | None = None,
    hoist: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the fused kernel. re/im may be strided views (e.g. `.real`/`.imag` of rfft2).

    Outputs are new contiguous tensors of re's dtype. `block_p` pins the tile
    width instead of autotuning (always pinned under the interpreter); `hoist`
    (pinned runs only) keeps weights on chip across tiles, else re-reads them.
    """
    check_spectral_args(re, im, w_g, b_g, w_s, b_s)
    kt.check_float("spectral_gate", re, im, w_g, b_g, w_s, b_s)
    B, C, H, Wf = re.shape
    w_g, b_g, w_s, b_s = (t.contiguous() for t in (w_g, b_g, w_s, b_s))
    ore = torch.empty((B, C, H, Wf), dtype=re.dtype, device=re.device)
    oim = torch.empty_like(ore)
    if ore.numel() == 0:
        return ore, oim
    HW = H * Wf
    max_progs = kt.num_sms(re.device) * _PROGRAMS_PER_SM
    args = (re, im, w_g, b_g, w_s, b_s, B, C, HW, Wf, *re.stride(), *im.stride(), ore, oim)
    cp = kt.next_pow2(C)
    prec = kt.dot_precision(re.dtype)
    up = kt.upcast_dots(re.dtype)

    def grid(meta: dict[str, Any]) -> tuple[int]:
        return (min(B * triton.cdiv(HW, meta["BLOCK_P"]), max_progs),)

    if block_p is None and not kt.interpreting():
        _autotuned()[grid](*args, CP=cp, DOT_PREC=prec, UPCAST=up)
    else:
        spectral_gate_kernel[grid](*args, CP=cp, BLOCK_P=block_p or 32, DOT_PREC=prec, UPCAST=up, HOIST=hoist)
    return ore, oim
