"""`TensorRTTarget`: a GPU or Jetson and the TensorRT version it runs.

The target picks its lowering passes from `lowlight.passes` by what
its TensorRT can parse (capabilities.py), checks the graph (op_support.py,
dla.py) and finishes the bundle (build_plan.py). One target per device in
`targets/devices.py`; `--trt-version` rebinds a target to another TensorRT.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lowlight.passes import LoweringPass
from lowlight.core.trt_version import TrtVersion
from lowlight.targets.base import Target
from lowlight.targets.devices import DEVICES, DeviceSpec
from lowlight.targets.tensorrt.capabilities import CUSTOM_DOMAIN, PLUGIN_NAMESPACE, Capabilities, capabilities

if TYPE_CHECKING:
    import onnx


def _decompose_custom_ops(model: "onnx.ModelProto") -> "onnx.ModelProto":
    """Replace lowlight-domain nodes by standard ONNX ops (no plugins on this TensorRT)."""
    if not _has_custom_nodes(model):
        return model
    from lowlight.passes.custom_ops import decompose_custom_ops

    return decompose_custom_ops(model)


def _to_plugin_nodes(model: "onnx.ModelProto") -> "onnx.ModelProto":
    """Turn our custom ops (or their subgraphs) into AOT plugin nodes where a kernel exists."""
    if not _has_custom_nodes(model):
        return model
    from lowlight.passes.custom_ops import to_plugin_nodes

    out = to_plugin_nodes(model, PLUGIN_NAMESPACE)
    if not _has_custom_nodes(out):
        return out
    # Keep each op's body as a model-local function next to the plugin node:
    # onnxruntime (the verify stage) runs the body, while TensorRT >= 10.7
    # prefers a registered plugin over a local function of the same name.
    try:
        from lowlight.kernels.onnx_export import attach_functions
    except ImportError:
        return out
    return attach_functions(out)


def _lower_dft(model: "onnx.ModelProto") -> "onnx.ModelProto":
    from lowlight.passes.dft import lower_dft

    return lower_dft(model)


def _has_custom_nodes(model: "onnx.ModelProto") -> bool:
    return any(n.domain == CUSTOM_DOMAIN for n in model.graph.node)


@dataclass(frozen=True)
class TensorRTTarget(Target):
    """A GPU or Jetson that runs a TensorRT engine built from the lowered ONNX."""

    device: DeviceSpec | None = None
    trt_version: str = ""

    # -- derived facts -------------------------------------------------------
    @property
    def spec(self) -> DeviceSpec:
        assert self.device is not None, "TensorRTTarget needs a device"
        return self.device

    @property
    def version(self) -> TrtVersion:
        return TrtVersion.parse(self.trt_version or self.spec.default_trt)

    @property
    def caps(self) -> Capabilities:
        return capabilities(self.spec, self.version)

    def with_trt_version(self, trt_version: str) -> "TensorRTTarget":
        """The same device on another TensorRT (e.g. JetPack 7's 11.4 on an Orin)."""
        TrtVersion.parse(trt_version)  # fail early on a malformed version
        return _build(self.name, self.spec, trt_version)

    # -- Target seam ----------------------------------------------------------
    def lowering_passes(self) -> list[tuple[str, LoweringPass]]:
        """Custom ops -> plugins (AOT, >= 10.9) or decomposition; DFT -> MatMul before 11.2."""
        caps = self.caps
        passes: list[tuple[str, LoweringPass]] = []
        if caps.aot_plugins:
            passes.append(("plugin-nodes", _to_plugin_nodes))
        else:
            passes.append(("decompose-custom-ops", _decompose_custom_ops))
        if not caps.onnx_dft:
            passes.append(("dft-to-matmul", _lower_dft))
        return passes

    def check_graph(self, model: "onnx.ModelProto", options: dict[str, Any]) -> list[str]:
        """Fail on ops this TensorRT cannot parse; with --dla, list layers that fall back to the GPU."""
        from lowlight.core.errors import TargetError
        from lowlight.targets.tensorrt.op_support import check_model

        check_model(model, self)
        warnings: list[str] = []
        if options.get("dla"):
            caps = self.caps
            if not caps.dla:
                fix = (
                    "drop --dla" if self.spec.dla_cores == 0
                    else "drop --dla, or use --trt-version 10.3 (JetPack 6.2) or 11.4.1+ (JetPack 7.2.2+, AGX Orin)"
                )
                raise TargetError(f"--dla on {self.name}: {caps.dla_reason}", fix)
            precision = options.get("precision", self.default_precision)
            if precision not in ("fp16", "int8"):
                raise TargetError(f"DLA runs FP16 or INT8 only, not {precision}", "use --precision fp16 or int8 with --dla")
            from lowlight.targets.tensorrt.dla import dla_report

            warnings.extend(dla_report(model))
        return warnings

    def finish_bundle(self, staging_dir: str, context: dict[str, Any]) -> dict[str, Any]:
        """Write the build plan (+ calibration cache for 10.x INT8); build the engine if this host can."""
        from lowlight.targets.tensorrt.build_plan import finish_tensorrt_bundle

        return finish_tensorrt_bundle(self, staging_dir, context)


def _facts(device: DeviceSpec, version: TrtVersion) -> dict[str, Any]:
    caps = capabilities(device, version)
    return {
        "device": device.display,
        "arch": device.arch,
        "sms": device.sms,
        "fp16_tflops": device.fp16_tflops,
        "int8_tops": device.int8_tops,
        "dram_gbps": device.dram_gbps,
        "memory_gb": device.memory_gb,
        "dla_cores": device.dla_cores,
        "stack": _stack(device, version),
        "trt_version": str(version),
        "default_trt_version": device.default_trt,
        "approximate_peaks": device.approximate,
        **caps.as_dict(),
    }


def _stack(device: DeviceSpec, version: TrtVersion) -> str:
    """The software stack that ships `version` on `device` (JetPack for Jetsons)."""
    if str(version) == device.default_trt:
        return device.stack
    if device.key.startswith("jetson-orin") and version.at_least(11, 4):
        return "JetPack 7.2.2+"
    return f"{device.stack.split(' + ')[0]} + TensorRT {version}" if not device.jetson else f"JetPack with TensorRT {version}"


def _build(name: str, device: DeviceSpec, trt_version: str | None = None) -> TensorRTTarget:
    version = TrtVersion.parse(trt_version or device.default_trt)
    return TensorRTTarget(
        name=name,
        summary=f"{device.display} ({device.arch}), TensorRT {version}",
        runtime="tensorrt",
        default_precision="fp16",
        qdq_flavour="trt-s8s8",
        device=device,
        trt_version=str(version),
        facts=_facts(device, version),
    )


def tensorrt_targets() -> list[tuple[TensorRTTarget, tuple[str, ...]]]:
    """Every TensorRT target with its aliases (`jetson-orin` is the AGX Orin 64GB)."""
    out: list[tuple[TensorRTTarget, tuple[str, ...]]] = []
    for key, device in DEVICES.items():
        aliases: tuple[str, ...] = ()
        name = key
        if key == "jetson-orin-agx-64":
            name, aliases = "jetson-orin", ("jetson-orin-agx-64",)
        out.append((_build(name, device), aliases))
    return out
