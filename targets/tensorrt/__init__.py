"""TensorRT targets: everything the compiler knows about TensorRT, in one package.

- `capabilities`: what each TensorRT version can do on each device (DFT in the
  parser, plugins, strong typing, calibration cache, DLA, IMoELayer), the
  ONNX domain and plugin namespace of our custom nodes;
- `target`: `TensorRTTarget`, one per device in `targets/devices.py`, and the
  lowering passes it picks from `lowlight.passes`;
- `trt_ops` (data) and `op_support`: which ONNX ops each parser accepts, and
  the compile-time check naming every node a target cannot run;
- `dla`: which layers fall back from Orin's DLA to the GPU;
- `calib_cache`: the TensorRT 10.x INT8 calibration cache;
- `build_plan`: what a TensorRT target writes into the bundle
  (build_plan.json, float ONNX and cache) and builds right away when it can;
- `engine`: the engine build and its verification (TensorRT Python API, the
  only modules that import `tensorrt`, lazily);
- `cmd_build_engine`: `lowlight-compile build-engine BUNDLE`, run on the device.

Dependencies point one way: this package imports `lowlight.core`,
`lowlight.kernels` (plugins), `lowlight.runtime.tensorrt_backend` (host probes,
the engine runner), `lowlight.passes` and `lowlight.targets`' own base
modules; `lowlight.compile` reaches it only through `lowlight.targets.get_target`
and the CLI's module path of `cmd_build_engine`.
"""
from __future__ import annotations

from lowlight.targets.tensorrt.capabilities import CUSTOM_DOMAIN, PLUGIN_NAMESPACE, Capabilities, capabilities
from lowlight.targets.tensorrt.target import TensorRTTarget, tensorrt_targets

#: Picked up by the registry in `lowlight.targets`: every device, `jetson-orin` = AGX Orin 64GB.
TARGETS = tensorrt_targets()

__all__ = [
    "CUSTOM_DOMAIN", "PLUGIN_NAMESPACE", "Capabilities", "TensorRTTarget", "TARGETS",
    "capabilities", "tensorrt_targets",
]
