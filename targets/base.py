"""The `Target` seam: everything the compiler decides per deployment device.

Stages never branch on a target's name; they ask the Target object which
lowering passes to run, which precision and Q/DQ flavour to use, which backend
verifies the artifact, and what the final build step is. Adding a device means
adding a Target, not touching the stages: one module in `targets/` that lists
it in `TARGETS` (see `lowlight.targets`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from lowlight.passes import LoweringPass

if TYPE_CHECKING:  # heavy imports only for type checkers
    import onnx

Precision = Literal["fp32", "fp16", "int8", "bf16"]
PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "int8")
#: Every precision some target builds (the CLI's choices); bf16: the cpu target on a processor with BF16.
ALL_PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "int8", "bf16")

#: How INT8 Q/DQ is written. "ort-u8s8": asymmetric uint8 activations with
#: int8 weights, what onnxruntime's x86 kernels run fastest. "trt-s8s8":
#: symmetric int8 everywhere, zero-point 0, per-channel weights on axis 0,
#: the only form TensorRT accepts.
QDQFlavour = Literal["ort-u8s8", "trt-s8s8"]


@dataclass(frozen=True)
class Target:
    """A deployment device and the decisions that follow from it."""

    name: str
    summary: str
    #: Backend that runs the compiled artifact on the device.
    runtime: Literal["onnxruntime", "tensorrt"]
    default_precision: Precision
    qdq_flavour: QDQFlavour
    precisions: tuple[str, ...] = PRECISIONS
    #: Backends `--backend` may force (besides auto); empty: the target's runtime only, no choice.
    backends: tuple[str, ...] = ()
    #: Free-form facts shown by `lowlight-compile targets` (arch, peaks...).
    facts: dict[str, Any] = field(default_factory=dict)

    def lowering_passes(self) -> list[tuple[str, LoweringPass]]:
        """Named ONNX -> ONNX passes to run after simplify, in order (from `lowlight.passes`)."""
        return []

    def check_graph(self, model: "onnx.ModelProto", options: dict[str, Any]) -> list[str]:
        """Raise TargetError naming nodes the target cannot run; return warnings.

        `options` carries {"dla": bool, "precision": str}.
        """
        return []

    def resolve_precision(self, precision: str | None) -> Precision:
        """The precision to build: the user's choice, checked, or the default."""
        from lowlight.core.errors import TargetError

        if precision is None:
            return self.default_precision
        if precision == "bf16" and precision not in self.precisions:
            raise TargetError(
                f"target {self.name!r} cannot build bf16: BF16 bundles are built for the cpu target only "
                "(OpenVINO on a processor with AVX512-BF16 or AMX)",
                f"use --target cpu --precision bf16, or one of {', '.join(self.precisions)} on {self.name}",
            )
        if precision not in self.precisions:
            raise TargetError(
                f"target {self.name!r} cannot build precision {precision!r}",
                f"use one of: {', '.join(self.precisions)}",
            )
        return precision  # type: ignore[return-value]

    def resolve_backend(self, backend: str | None) -> str:
        """The `--backend` choice, checked: 'auto' everywhere, a named backend only where the target offers a choice."""
        from lowlight.core.errors import TargetError

        if backend in (None, "auto"):
            return "auto"
        if backend not in self.backends:
            raise TargetError(
                f"--backend {backend} is not available for target {self.name!r}, which runs {self.runtime}"
                + (f" (choices here: {', '.join(self.backends)})" if self.backends else ""),
                "drop --backend (the target decides), or use --target cpu to pick between onnxruntime and openvino",
            )
        return backend

    def finish_bundle(self, staging_dir: str, context: dict[str, Any]) -> dict[str, Any]:
        """Last step inside the bundle being written (engine build or build plan).

        Returns manifest entries to merge. The CPU target has nothing to add:
        the ONNX graph is what onnxruntime runs.
        """
        return {}
