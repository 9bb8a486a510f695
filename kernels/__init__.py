"""lowlight.kernels: Triton kernels for AMNet's spectral/illumination gates and top-2 MoE.

Public API (torch tensors in and out)::

    spectral_gate(re, im, w_g, b_g, w_s, b_s) -> (re_out, im_out)
    illumination_gate(z, w, b, k)             -> (high_gated, low)
    moe_top2(x, w_router, w1, w3, w2)         -> y
    top2_route(logits)                        -> (indices, weights)
    onnx_translation_table()                  -> {torch op: ONNX translation}
    export_onnx(module, args, **kw)           -> onnx.ModelProto (lowlight nodes + bodies)
    triton_on_cpu()                           -> context: run Triton (interpreter) on CPU

The first three are `torch.ops.lowlight.*` custom ops. CUDA tensors run the
Triton kernels; CPU tensors run the PyTorch references (`lowlight.kernels.reference`)
unless `TRITON_INTERPRET=1` and `triton_on_cpu()` / `LOWLIGHT_TRITON_ON_CPU=1` ask for
the kernels. Kernel modules are named `*_kernel.py` so that importing them
never shadows the public functions. This module imports nothing heavy: attributes load on first use,
and triton is only imported when a kernel is launched.
"""
from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "spectral_gate": "ops",
    "illumination_gate": "ops",
    "moe_top2": "ops",
    "top2_route": "ops",
    "triton_on_cpu": "_triton",
    "onnx_translation_table": "onnx_export",
    "export_onnx": "onnx_export",
    "reference": "reference",
}

__all__ = sorted(_LAZY)


def register_ops() -> None:
    """Register the `torch.ops.lowlight.*` custom ops (needed before loading an ExportedProgram)."""
    importlib.import_module(f"{__name__}.ops")


def __getattr__(name: str) -> Any:
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = importlib.import_module(f"{__name__}.{mod}")
    value = module if name == mod else getattr(module, name)
    globals()[name] = value  # resolve once
    return value
