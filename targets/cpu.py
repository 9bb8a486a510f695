"""The CPU target: onnxruntime on the host, the default that runs everywhere."""
from __future__ import annotations

from dataclasses import dataclass

from lowlight.passes import LoweringPass
from lowlight.targets.base import Target


@dataclass(frozen=True)
class CPUTarget(Target):
    """onnxruntime on the host CPU: custom-op nodes become standard ONNX ops, DFT becomes MatMul.

    onnxruntime's CPU DFT kernel is slow next to its GEMMs: on AMNet base at
    1x8x3x256x256 the DFT nodes took 27% of the FP32 run, and the MatMul form
    ran the whole graph 1.5x faster (0.85 s vs 1.26 s, 2-core EPYC, 2026-11-23)
    with outputs equal to 4e-7. The spectra are small (1/4 resolution), so the
    O(n^2) matrices cost little.
    """

    def lowering_passes(self) -> list[tuple[str, LoweringPass]]:
        from lowlight.passes.custom_ops import decompose_custom_ops
        from lowlight.passes.dft import lower_dft

        return [("decompose-custom-ops", decompose_custom_ops), ("dft-to-matmul", lower_dft)]


CPU = CPUTarget(
    name="cpu",
    summary="x86/ARM CPU with onnxruntime (the default; runs everywhere)",
    runtime="onnxruntime",
    default_precision="fp32",
    qdq_flavour="ort-u8s8",
    facts={"backend": "onnxruntime CPUExecutionProvider"},
)

#: Picked up by the registry in `lowlight.targets`.
TARGETS = [CPU]
