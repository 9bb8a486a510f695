"""Fused IADS illumination gate (AMNet, AnyMod-LLVE) as one Triton kernel.

low = avg_pool2d(z, k, stride 1, pad k//2, count_include_pad=False)
high_gated = (z - low) * sigmoid(w @ low + b)

Each 2-D tile of pixels x all channels is pooled from the k*k shifted
neighbour tiles (re-reads hit L1: the halo is small; DRAM sees z about once), mixed across channels with
one `tl.dot`, gated and written once; `low` is written alongside because
AMNet uses it downstream. The divisor of the pool is the count of in-image
taps, computed in closed form per pixel rather than counted.

Argument order is inputs, scalars, outputs (TensorRT's AOT launch order).
"""
from __future__ import annotations

from typing import Any

import torch

import triton
import triton.language as tl

from lowlight.kernels import _triton as kt
from lowlight.kernels._tl import mma
from lowlight.kernels.checks import check_illumination_args


@triton.jit
def illumination_gate_kernel(
    z_ptr, w_ptr, b_ptr,
    B, C, H, W,
    s_b, s_c, s_h, s_w,
    high_ptr, low_ptr,
    K: tl.constexpr, CP: tl.constexpr, BLOCK_P: tl.constexpr,
    DOT_PREC: tl.constexpr, UPCAST: tl.constexpr, TILE_W: tl.constexpr = 16,
):
    R: tl.constexpr = K // 2
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    c = tl.arange(0, CP)
    cm = c < C
    wm = tl.load(w_ptr + c[:, None] * C + c[None, :], mask=cm[:, None] & cm[None, :], other=0.0)
    bias = tl.load(b_ptr + c, mask=cm, other=0.0).to(tl.float32)[:, None]
    HW = H * W
    # 2-D tiles of TILE_H x TILE_W pixels: the k*k neighbourhood of a tile is a
    # small halo around it, so the shifted re-reads hit L1 instead of L2.
    TILE_H: tl.constexpr = BLOCK_P // TILE_W
    tiles_w = tl.cdiv(W, TILE_W)
    tiles_per_img = tl.cdiv(H, TILE_H) * tiles_w
    n_tiles = B * tiles_per_img
    i = tl.arange(0, BLOCK_P)
    for t in range(pid, n_tiles, nprog):
        bi = t // tiles_per_img
        r = t % tiles_per_img
        h = (r // tiles_w) * TILE_H + i // TILE_W
        x = (r % tiles_w) * TILE_W + i % TILE_W
        pm = (h < H) & (x < W)
        p = h * W + x
        base = z_ptr + bi * s_b + c[:, None] * s_c
        acc = tl.zeros((CP, BLOCK_P), dtype=tl.float32)
        for dy in tl.static_range(K):
            hh = h + (dy - R)
            for dx in tl.static_range(K):
                xx = x + (dx - R)
                ok = pm & (hh >= 0) & (hh < H) & (xx >= 0) & (xx < W)
                acc += tl.load(base + (hh * s_h + xx * s_w)[None, :], mask=cm[:, None] & ok[None, :], other=0.0).to(tl.float32)
        # count_include_pad=False: divide by the number of taps inside the image.
        nh = tl.minimum(h + R, H - 1) - tl.maximum(h - R, 0) + 1
        nw = tl.minimum(x + R, W - 1) - tl.maximum(x - R, 0) + 1
        # (clamped to 1 on masked lanes past the image, which would divide by <= 0)
        low = acc / tl.maximum(nh * nw, 1).to(tl.float32)[None, :]
        m = cm[:, None] & pm[None, :]
        zc = tl.load(base + (h * s_h + x * s_w)[None, :], mask=m, other=0.0).to(tl.float32)
        gate = tl.sigmoid(mma(wm, low.to(wm.dtype), DOT_PREC, UPCAST) + bias)
        o_off = bi * C * HW + c[:, None] * HW + p[None, :]
        tl.store(high_ptr + o_off, ((zc - low) * gate).to(high_ptr.dtype.element_ty), mask=m)
        tl.store(low_ptr + o_off, low.to(low_ptr.dtype.element_ty), mask=m)


_CONFIGS = [
    triton.Config({"BLOCK_P": bp, "TILE_W": tw}, num_warps=nw, num_stages=1)
    for bp in (64, 128, 256)
    for tw in (16, 32, 64)
    for nw in (4, 8)
    if tw <= bp
]
_PROGRAMS_PER_SM = 8
_tuned: Any = None


def _autotuned() -> Any:
    global _tuned
    if _tuned is None:
        _tuned = triton.autotune(configs=_CONFIGS, key=["C", "H", "W", "K"])(illumination_gate_kernel)
    return _tuned


def illumination_gate_triton(
    z: torch.Tensor, w: torch.Tensor, b: torch.Tensor, k: int, block_p: int | None = None,
    tile_w: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the fused kernel; returns new contiguous `(high_gated, low)` of z's dtype.

    `block_p` (pixels per tile) and `tile_w` (its width) pin the tile instead
    of autotuning (always pinned under the interpreter).
    """
    check_illumination_args(z, w, b, k)
    kt.check_float("illumination_gate", z, w, b)
    B, C, H, W = z.shape
    w, b = w.contiguous(), b.contiguous()
    high = torch.empty((B, C, H, W), dtype=z.dtype, device=z.device)
    low = torch.empty_like(high)
    if high.numel() == 0:
        return high, low
    max_progs = kt.num_sms(z.device) * _PROGRAMS_PER_SM
    args = (z, w, b, B, C, H, W, *z.stride(), high, low)
    kw = dict(K=k, CP=kt.next_pow2(C), DOT_PREC=kt.dot_precision(z.dtype), UPCAST=kt.upcast_dots(z.dtype))

    def grid(meta: dict[str, Any]) -> tuple[int]:
        th = meta["BLOCK_P"] // meta["TILE_W"]
        return (min(B * triton.cdiv(H, th) * triton.cdiv(W, meta["TILE_W"]), max_progs),)

    if block_p is None and not kt.interpreting():
        _autotuned()[grid](*args, **kw)
    else:
        bp = block_p or 32
        tw = tile_w or min(bp, kt.next_pow2(W, floor=1))
        if bp % tw:
            raise ValueError(f"tile_w={tw} must divide block_p={bp}")
        illumination_gate_kernel[grid](*args, BLOCK_P=bp, TILE_W=tw, **kw)
    return high, low
