"""`lowlight.runtime.load(bundle)`: a callable session over the bundle's compiled model.

Checks every input (names, shapes, dtype, value range, NaN/Inf) before it
reaches the backend, so a bad camera frame fails with a message instead of a
garbage output. Picks TensorRT when the bundle has an engine for this GPU and
TensorRT imports, else onnxruntime, and says which it chose.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

from lowlight.core.bundle import read_manifest
from lowlight.core.errors import InputError


class Session:
    """`sess(rgb=clip)` -> numpy output; one keyword argument per named model input."""

    def __init__(self, bundle: Path, manifest: dict[str, Any], backend: Any) -> None:
        self.bundle, self.manifest, self.backend = bundle, manifest, backend
        self.inputs: dict[str, list[int]] = {i["name"]: i["shape"] for i in manifest["inputs"]}
        self.output_name: str = manifest["outputs"][0]["name"]

    @property
    def backend_name(self) -> str:
        return str(self.backend.name)

    def check(self, feeds: dict[str, Any]) -> dict[str, np.ndarray]:
        """Validated float32 feeds; raises InputError naming the problem."""
        missing = [n for n in self.inputs if n not in feeds]
        extra = [n for n in feeds if n not in self.inputs]
        if missing or extra:
            raise InputError(
                f"this bundle takes inputs {list(self.inputs)}; missing {missing}, unexpected {extra}",
                "the modality set is fixed at compile time (--modalities): pass exactly these names",
            )
        out = {}
        for name, shape in self.inputs.items():
            x = np.asarray(feeds[name])
            if list(x.shape) != list(shape):
                raise InputError(
                    f"input {name!r} has shape {list(x.shape)}, the bundle was compiled for {shape}",
                    "resize/crop frames to the compiled shape, or recompile with --shape",
                )
            if x.dtype != np.float32:
                if not np.issubdtype(x.dtype, np.floating):
                    raise InputError(
                        f"input {name!r} has dtype {x.dtype}; expected float32 values in [0,1]",
                        "convert frames with frame.astype(np.float32) / 255",
                    )
                x = x.astype(np.float32)
            if not np.isfinite(x).all():
                bad = int((~np.isfinite(x)).sum())
                raise InputError(
                    f"input {name!r} contains {bad} NaN/Inf value(s)",
                    "check the camera/decoder output; replace or drop the frame before enhancing it",
                )
            out[name] = np.ascontiguousarray(x)
        return out

    def __call__(self, **feeds: Any) -> np.ndarray:
        checked = self.check(feeds)
        return self.backend.run(checked)[self.output_name]


def load(bundle: str | Path, backend: str = "auto", verbose: bool = True, threads: int | None = None) -> Session:
    """Load a bundle (hashes checked) and pick a backend: 'auto', 'tensorrt' or 'onnxruntime'."""
    root = Path(bundle)
    manifest = read_manifest(root)
    chosen: Any = None
    reason = ""
    if backend in ("auto", "tensorrt") and manifest.get("engine"):
        try:
            from lowlight.runtime.tensorrt_backend import TensorRTBackend, tensorrt_available

            ok, reason = tensorrt_available(manifest)
            if ok:
                chosen = TensorRTBackend(root / manifest["engine"]["file"], manifest)
        except ImportError as exc:
            reason = f"TensorRT backend unavailable ({exc})"
        if chosen is None and backend == "tensorrt":
            raise InputError(f"cannot run {root} with TensorRT: {reason}", "use backend='onnxruntime'")
    elif backend == "tensorrt":
        raise InputError(f"bundle {root} has no TensorRT engine", "build one on the device: lowlight-compile build-engine BUNDLE")
    if chosen is None:
        from lowlight.runtime.onnxruntime_backend import OnnxRuntimeBackend

        chosen = OnnxRuntimeBackend(root / manifest["model"], threads=threads)
        if not reason:
            reason = "no TensorRT engine in the bundle" if not manifest.get("engine") else reason
    if verbose:
        print(f"lowlight.runtime: {root.name}: using {chosen.name}" + (f" ({reason})" if reason and "onnxruntime" in chosen.name else ""), file=sys.stderr)
    return Session(root, manifest, chosen)
