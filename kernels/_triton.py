"""Small helpers shared by the Triton kernel modules.

Nothing here imports triton at module level: `lowlight.kernels` must import
on machines without it (the vehicle runtime, plain CPU training).
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator

import torch

from lowlight.core.errors import InputError

_CPU_TRITON_ENV = "LOWLIGHT_TRITON_ON_CPU"
_force_cpu_triton: bool | None = None


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (`TRITON_INTERPRET=1`), read now."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "yes", "on")


def triton_installed() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


@contextmanager
def triton_on_cpu(enabled: bool = True) -> Iterator[None]:
    """Run the Triton kernels (in the interpreter) for CPU tensors inside this block.

    Needs `TRITON_INTERPRET=1` set before triton is first imported. Outside this
    block (and without `LOWLIGHT_TRITON_ON_CPU=1`) CPU tensors take the PyTorch
    reference, which is much faster than the interpreter.
    """
    global _force_cpu_triton
    prev = _force_cpu_triton
    _force_cpu_triton = enabled
    try:
        yield
    finally:
        _force_cpu_triton = prev


def use_triton(t: torch.Tensor) -> bool:
    """Whether a kernel call on tensors like `t` should launch Triton (else the reference)."""
    if not triton_installed():
        return False
    if t.is_cuda:
        return True
    if t.device.type != "cpu" or not interpreting():
        return False
    if _force_cpu_triton is not None:
        return _force_cpu_triton
    return os.environ.get(_CPU_TRITON_ENV, "0") == "1"


def next_pow2(n: int, floor: int = 16) -> int:
    """Smallest power of two >= n and >= floor (tl.arange needs powers of two, tl.dot >= 16)."""
    p = floor
    while p < n:
        p *= 2
    return p


SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def check_float(name: str, *ts: torch.Tensor) -> torch.dtype:
    """All tensors share one supported float dtype and one device; return the dtype."""
    dt, dev = ts[0].dtype, ts[0].device
    if dt not in SUPPORTED_DTYPES:
        raise InputError(
            f"{name}: dtype {dt} is not supported by the Triton kernel",
            "pass float32, float16 or bfloat16 tensors",
        )
    for t in ts[1:]:
        if t.dtype != dt or t.device != dev:
            raise InputError(
                f"{name}: mixed dtypes/devices ({t.dtype} on {t.device} vs {dt} on {dev})",
                "cast weights and activations to one dtype on one device",
            )
    return dt


def dot_precision(dtype: torch.dtype) -> str:
    """fp32 dots use 3xTF32 (about fp32 accurate at tensor-core speed); 16-bit types are native."""
    return "tf32x3" if dtype == torch.float32 else "ieee"


def upcast_dots(dtype: torch.dtype) -> bool:
    """Dots in fp32 under the interpreter for bf16 (its bf16 dot is wrong; see _tl.mma)."""
    return dtype == torch.bfloat16 and interpreting()


def num_sms(device: torch.device) -> int:
    """Streaming multiprocessor count (persistent grids); a small constant on CPU."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4
