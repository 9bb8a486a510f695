"""onnxruntime backend: runs a bundle's ONNX graph on the CPU (or any ORT provider)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from lowlight.core.errors import BundleError

#: ONNX tensor types as ORT names them -> numpy dtype names (as manifests write them).
_ORT_TYPES = {
    "tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64", "tensor(bfloat16)": "bfloat16",
    "tensor(int8)": "int8", "tensor(uint8)": "uint8", "tensor(int16)": "int16", "tensor(uint16)": "uint16",
    "tensor(int32)": "int32", "tensor(uint32)": "uint32", "tensor(int64)": "int64", "tensor(uint64)": "uint64",
    "tensor(bool)": "bool",
}


class OnnxRuntimeBackend:
    """Backend interface: `input_names`, `output_names`, `name`, `run(feeds) -> {name: array}`.

    Also `shapes` and `dtypes` by tensor name (dims the model leaves dynamic are None or a
    symbol), so a loader can check the model against what its manifest declares.
    """

    name = "onnxruntime"

    def __init__(self, model_path: str | Path, providers: list[str] | None = None, threads: int | None = None, profile_prefix: str | None = None) -> None:
        from lowlight.core.onnx_graph import ort_session

        try:
            self.session = ort_session(model_path, threads=threads, profile_prefix=profile_prefix, providers=providers)
        except MemoryError:
            raise
        except Exception as exc:  # ORT raises its own Exception subclasses (InvalidProtobuf, Fail, NoSuchFile...)
            lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
            first = lines[0][:300] if lines else type(exc).__name__
            raise BundleError(
                f"onnxruntime cannot load {model_path}: {first}",
                "the model file is damaged or not an ONNX model this onnxruntime reads: recompile the bundle, "
                "or copy it again from where it was built (and check the onnxruntime version against the manifest's 'tools')",
            ) from exc
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        io = [*self.session.get_inputs(), *self.session.get_outputs()]
        self.shapes: dict[str, list[int | str | None]] = {t.name: list(t.shape) for t in io}
        self.dtypes: dict[str, str] = {t.name: _ORT_TYPES.get(t.type, t.type) for t in io}
        self.name = f"onnxruntime ({self.session.get_providers()[0]})"

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outs = self.session.run(self.output_names, feeds)
        return dict(zip(self.output_names, outs))

    def end_profiling(self) -> str:
        return self.session.end_profiling()
