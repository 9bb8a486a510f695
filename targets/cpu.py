"""The CPU target: onnxruntime on the host (the default that runs everywhere), or OpenVINO where installed."""
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

    Two backends (`backends`): onnxruntime (the default install) and OpenVINO (the
    `[openvino]` extra; also BF16 on processors with it). `--backend auto` builds both
    where it can and keeps the fastest that meets the fidelity budget
    (`lowlight.compile.openvino`); the same lowered graph feeds both.
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
    precisions=("fp32", "fp16", "int8", "bf16"),
    backends=("onnxruntime", "openvino"),
    facts={"backend": "onnxruntime CPUExecutionProvider; OpenVINO CPU with the [openvino] extra (--backend auto picks the faster)",
           "bf16": "OpenVINO, on processors with AVX512-BF16 or AMX (detected at compile time)"},
)

#: Picked up by the registry in `lowlight.targets`.
TARGETS = [CPU]
