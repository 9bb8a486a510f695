"""Triton device helpers shared by the kernels (imports triton: load lazily)."""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def mma(a, b, PREC: tl.constexpr, UPCAST: tl.constexpr):
    """tl.dot with fp32 accumulation.

    UPCAST=True feeds the dot fp32 copies: Triton 3.9's CPU interpreter gets
    bf16 dots wrong (numpy has no bf16), so the launchers set it there only.
    """
    if UPCAST:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    return tl.dot(a, b, input_precision=PREC, out_dtype=tl.float32)
