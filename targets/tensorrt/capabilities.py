"""What a device's TensorRT version can do (data and rules, no TensorRT import).

Capability facts (re-checked against NVIDIA's docs/changelogs, see docs/targets.md):
- ONNX `DFT` in the TensorRT parser only from 11.2 (cuFFT-backed); 10.x rejects it.
- Python plugins (`tensorrt.plugin`): JIT from 10.6; AOT plugins parsed from
  ONNX from 10.9 (onnx-tensorrt changelog: "10.9: Added support for Python AOT plugins").
- Strongly typed networks only from 11.0: INT8 arrives as Q/DQ, no calibrator API.
- Implicit INT8 with a calibration cache: 10.x and older.
- DLA: in 10.x on Orin; absent in 11.0-11.3; back in 11.4.1 on AGX Orin only.
- IMoELayer: TensorRT 11 on SM 10.x/11.x only (so never on Orin, sm_87).

`TrtTargetView` is what the op check, the build plan and the engine builder
read off a target; they take it instead of `TensorRTTarget`, so none of them
depends on the module that calls them.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Protocol

from lowlight.core.onnx_graph import CUSTOM_DOMAIN
from lowlight.core.trt_version import TrtVersion
from lowlight.targets.devices import DeviceSpec

#: The TensorRT plugin namespace our AOT plugins register under: the name of the
#: ONNX domain of our custom nodes (SpectralGate, IlluminationGate, MoETop2).
PLUGIN_NAMESPACE = CUSTOM_DOMAIN


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
    """Derive the capability set of `version` on `device` (rules in the module doc)."""
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


class TrtTargetView(Protocol):
    """The facts of a TensorRT target that checking and building need (`TensorRTTarget` has them)."""

    @property
    def name(self) -> str: ...

    @property
    def spec(self) -> DeviceSpec: ...

    @property
    def version(self) -> TrtVersion: ...

    @property
    def caps(self) -> Capabilities: ...
