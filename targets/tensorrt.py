"""TensorRT targets: what a device's TensorRT version can do, and the passes that follow.

Capability facts (re-checked against NVIDIA's docs/changelogs, see DESIGN.md):
- ONNX `DFT` in the TensorRT parser only from 11.2 (cuFFT-backed); 10.x rejects it.
- Python plugins (`tensorrt.plugin`): JIT from 10.6; AOT plugins parsed from
  ONNX from 10.9 (onnx-tensorrt changelog: "10.9: Added support for Python AOT plugins").
- Strongly typed networks only from 11.0: INT8 arrives as Q/DQ, no calibrator API.
- Implicit INT8 with a calibration cache: 10.x and older.
- DLA: in 10.x on Orin; absent in 11.0-11.3; back in 11.4.1 on AGX Orin only.
- IMoELayer: TensorRT 11 on SM 10.x/11.x only (so never on Orin, sm_87).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lowlight.targets.base import LoweringPass, Target
from lowlight.targets.devices import DEVICES, DeviceSpec

if TYPE_CHECKING:
    import onnx

#: ONNX domain of our custom nodes (SpectralGate, IlluminationGate, MoETop2)
#: and the TensorRT plugin namespace their AOT plugins register under.
CUSTOM_DOMAIN = "lowlight"
PLUGIN_NAMESPACE = "lowlight"


@dataclass(frozen=True, order=True)
class TrtVersion:
    """A TensorRT version. A missing patch ("11.4") means the newest 11.4.x."""

    major: int
    minor: int
    patch: int | None = None

    @classmethod
    def parse(cls, text: str) -> "TrtVersion":
        """Parse "10.3", "11.4.1" or "10.3.0.30" (build numbers ignored)."""
        from lowlight.core.errors import TargetError

        parts = str(text).strip().split(".")
        try:
            nums = [int(p) for p in parts[:3]]
        except ValueError:
            nums = []
        if len(nums) < 2:
            raise TargetError(f"cannot read TensorRT version {text!r}", "write it as MAJOR.MINOR[.PATCH], e.g. 10.3 or 11.4.1")
        return cls(nums[0], nums[1], nums[2] if len(nums) > 2 else None)

    def at_least(self, major: int, minor: int, patch: int = 0) -> bool:
        """True if this version is >= major.minor.patch (missing patch: newest)."""
        own = (self.major, self.minor, 1 << 30 if self.patch is None else self.patch)
        return own >= (major, minor, patch)

    @property
    def code(self) -> int:
        """NV_TENSORRT_VERSION style number: 10.3.0 -> 100300 (calibration cache header)."""
        return self.major * 10000 + self.minor * 100 + (self.patch or 0)

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}" + ("" if self.patch is None else f".{self.patch}")


@dataclass(frozen=True)
class Capabilities:
    """What one TensorRT version can do on one device."""

    onnx_dft: bool
    jit_plugins: bool
    aot_plugins: bool
    strongly_typed_only: bool
    implicit_int8_cache: bool
    dla: bool
    dla_reason: str
    imoe_layer: bool

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def capabilities(device: DeviceSpec, version: TrtVersion) -> Capabilities:
    """Derive the capability set of `version` on `device` (tables in the module doc)."""
    v = version
    agx_orin = device.key.startswith("jetson-orin-agx")
    if device.dla_cores == 0:
        dla, why = False, f"{device.display} has no DLA"
    elif not v.at_least(11, 0):
        dla, why = True, f"{device.dla_cores} DLA cores, TensorRT {v} supports them"
    elif not v.at_least(11, 4, 1):
        dla, why = False, f"TensorRT {v} has no DLA support (absent in 11.0-11.3; back in 11.4.1 on AGX Orin)"
    elif agx_orin:
        dla, why = True, f"{device.dla_cores} DLA cores, DLA is back in TensorRT 11.4.1+ on AGX Orin"
    else:
        dla, why = False, f"TensorRT {v} supports DLA on AGX Orin only, not on {device.display}"
    return Capabilities(
        onnx_dft=v.at_least(11, 2),
        jit_plugins=v.at_least(10, 6),
        aot_plugins=v.at_least(10, 9),
        strongly_typed_only=v.at_least(11, 0),
        implicit_int8_cache=not v.at_least(11, 0),
        dla=dla,
        dla_reason=why,
        imoe_layer=v.at_least(11, 0) and device.compute_capability[0] >= 10,
    )


def _decompose_custom_ops(model: "onnx.ModelProto") -> "onnx.ModelProto":
    """Replace lowlight-domain nodes by standard ONNX ops (no plugins on this TensorRT)."""
    if not _has_custom_nodes(model):
        return model
    from lowlight.compile.lower_custom_ops import decompose_custom_ops  # lazy: written in parallel

    return decompose_custom_ops(model)


def _to_plugin_nodes(model: "onnx.ModelProto") -> "onnx.ModelProto":
    """Turn our custom ops (or their subgraphs) into AOT plugin nodes where a kernel exists."""
    try:
        from lowlight.compile.lower_custom_ops import to_plugin_nodes  # lazy: written in parallel
    except ImportError:
        if _has_custom_nodes(model):
            raise
        return model  # nothing to do, and nothing to do it with
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
    from lowlight.compile.lower_dft import lower_dft

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
        from lowlight.compile.op_support import check_model
        from lowlight.core.errors import TargetError

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
            from lowlight.compile.dla import dla_report

            warnings.extend(dla_report(model))
        return warnings

    def finish_bundle(self, staging_dir: str, context: dict[str, Any]) -> dict[str, Any]:
        """Write the build plan (+ calibration cache for 10.x INT8); build the engine if this host can."""
        from lowlight.compile.build_plan import finish_tensorrt_bundle

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
