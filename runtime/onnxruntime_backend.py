"""onnxruntime backend: runs a bundle's ONNX graph on the CPU (or any ORT provider)."""
from __future__ import annotations

from pathlib import Path

import numpy as np


class OnnxRuntimeBackend:
    """Backend interface: `input_names`, `output_names`, `name`, `run(feeds) -> {name: array}`."""

    name = "onnxruntime"

    def __init__(self, model_path: str | Path, providers: list[str] | None = None, threads: int | None = None, profile_prefix: str | None = None) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if threads:
            opts.intra_op_num_threads = threads
        if profile_prefix:
            opts.enable_profiling = True
            opts.profile_file_prefix = profile_prefix
        self.session = ort.InferenceSession(str(model_path), opts, providers=providers or ["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.name = f"onnxruntime ({self.session.get_providers()[0]})"

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outs = self.session.run(self.output_names, feeds)
        return dict(zip(self.output_names, outs))

    def end_profiling(self) -> str:
        return self.session.end_profiling()
