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

Precision = Literal["fp32", "fp16", "int8"]
PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "int8")

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
        if precision not in self.precisions:
            raise TargetError(
                f"target {self.name!r} cannot build precision {precision!r}",
                f"use one of: {', '.join(self.precisions)}",
            )
        return precision  # type: ignore[return-value]

    def finish_bundle(self, staging_dir: str, context: dict[str, Any]) -> dict[str, Any]:
        """Last step inside the bundle being written (engine build or build plan).

        Returns manifest entries to merge. The CPU target has nothing to add:
        the ONNX graph is what onnxruntime runs.
        """
        return {}
