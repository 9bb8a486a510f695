"""Hardware facts per deployable device (peaks for the roofline, memory, DLA).

Numbers are dense (no 2:4 sparsity) peaks from NVIDIA's spec sheets as
collected in docs/targets.md ("Peak figures (dense) for roofline estimates").
Jetson Thor is not in that table: its figures come from NVIDIA's T5000 module
spec (1035 FP8 TFLOPS with sparsity, 273 GB/s LPDDR5X, 128 GB, no DLA, 20 SMs
as reported by the CUDA driver); dense FP16/INT8 are derived from it (FP8
sparse / 2 for dense; FP16 at half the FP8 rate) and marked approximate.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DeviceSpec:
    """One GPU (or Jetson module) and the software stack it ships with."""

    key: str
    display: str
    #: CUDA compute capability as TensorRT/nvcc name it ("sm_87").
    arch: str
    sms: int
    fp16_tflops: float
    int8_tops: float
    dram_gbps: float
    memory_gb: float
    dla_cores: int
    jetson: bool
    #: TensorRT version of the default software stack (JetPack for Jetsons).
    default_trt: str
    stack: str
    #: True where a figure above is derived rather than read off a spec sheet.
    approximate: bool = False

    @property
    def compute_capability(self) -> tuple[int, int]:
        """(major, minor) from the arch name: sm_87 -> (8, 7), sm_110 -> (11, 0)."""
        digits = self.arch.removeprefix("sm_")
        return int(digits[:-1]), int(digits[-1])


DEVICES: dict[str, DeviceSpec] = {
    d.key: d
    for d in (
        # Jetson Orin family: sm_87. JetPack 6.2 ships TensorRT 10.3;
        # JetPack 7.2.2+ ships TensorRT 11.4.x (use --trt-version 11.4).
        DeviceSpec("jetson-orin-agx-64", "Jetson AGX Orin 64GB", "sm_87", 16, 42.5, 85.0, 204.8, 64, 2, True, "10.3", "JetPack 6.2"),
        DeviceSpec("jetson-orin-agx-32", "Jetson AGX Orin 32GB", "sm_87", 14, 27.0, 54.0, 204.8, 32, 2, True, "10.3", "JetPack 6.2"),
        DeviceSpec("jetson-orin-nx-16", "Jetson Orin NX 16GB", "sm_87", 8, 19.0, 38.0, 102.4, 16, 2, True, "10.3", "JetPack 6.2", approximate=True),
        DeviceSpec("jetson-orin-nano-8", "Jetson Orin Nano 8GB", "sm_87", 8, 10.2, 20.0, 68.0, 8, 0, True, "10.3", "JetPack 6.2", approximate=True),
        # Jetson AGX Thor (Blackwell, sm_110): JetPack 7.0 ships TensorRT 10.13.
        DeviceSpec("jetson-thor", "Jetson AGX Thor (T5000)", "sm_110", 20, 258.0, 517.0, 273.0, 128, 0, True, "10.13", "JetPack 7.0", approximate=True),
        # Desktop / datacenter GPUs: default to the newest TensorRT 10.x we
        # type-check against (tensorrt-stubs 10.13); --trt-version overrides.
        DeviceSpec("rtx-3090", "GeForce RTX 3090", "sm_86", 82, 71.0, 284.0, 936.0, 24, 0, False, "10.13", "CUDA 12 + TensorRT"),
        DeviceSpec("rtx-4090", "GeForce RTX 4090", "sm_89", 128, 165.0, 661.0, 1008.0, 24, 0, False, "10.13", "CUDA 12 + TensorRT"),
        DeviceSpec("a100", "A100 80GB", "sm_80", 108, 312.0, 624.0, 2039.0, 80, 0, False, "10.13", "CUDA 12 + TensorRT"),
        DeviceSpec("h100", "H100 SXM", "sm_90", 132, 989.0, 1979.0, 3350.0, 80, 0, False, "10.13", "CUDA 12 + TensorRT"),
    )
}
