"""What the user asked for: one dataclass shared by the CLI, the pipeline and the tests."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class CompileOptions:
    """Options of one `lowlight-compile` run (see `lowlight-compile --help`)."""

    checkpoint: str | None = None  # None: the shipped reference weights
    model: str | None = None  # None: the default family (lowlight.models.family.default_family)
    config: str | None = None  # None: the family's default config
    target: str = "cpu"
    precision: str | None = None  # None: the target's default
    calib: str | None = None  # DIR|VIDEO; None: the shipped sample frames
    verify_data: str | None = None  # held-out frames; None: ../shared/data/lowlight_real
    ground_truth: str | None = None  # clean photos: verify also on synthetic pairs made from them
    shape: str | None = None  # None: the family's default
    out: str | None = None  # bundle directory; None: bundles/<model>-<config>-<target>-<precision>
    family_options: dict[str, str] = field(default_factory=dict)  # modalities=..., experts=...
    min_fidelity: float = 35.0  # dB, artifact vs FP32 PyTorch
    max_drop: float = 0.3  # dB, PSNR loss against ground truth
    int8_engine: str = "auto"  # auto|nncf|ort|modelopt: which post-training quantizer
    fp16_engine: str = "auto"  # auto|autocast|ort: FP16 conversion (auto: AutoCast for TensorRT where installed)
    calib_frames: int = 16
    verify_frames: int = 8
    force: bool = False
    cache_dir: str | None = None
    trt_version: str | None = None
    dla: bool = False
    profile_runs: int = 20
    quiet: bool = False
    pixel_format: str | None = None  # bgr24|rgb24|nv12|yuyv: camera bytes converted inside the graph
    # auto|onnxruntime|openvino (cpu target): auto builds every backend it can and keeps the fastest that verifies.
    # None: $LOWLIGHT_BACKEND where the target offers that backend (a fleet or CI pinned to one runtime), else auto.
    backend: str | None = None

    def cache_path(self) -> Path:
        import os

        return Path(self.cache_dir or os.environ.get("LOWLIGHT_CACHE", Path.home() / ".cache" / "lowlight-compile"))
