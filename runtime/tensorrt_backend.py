"""TensorRT backend for the runtime session: Python over tensorrt, pycuda and numpy.

Same interface as the onnxruntime backend (`input_names`, `output_names`,
`name`, `run(feeds) -> outputs`). The engine is deserialized once; every I/O
tensor gets a device buffer and a pinned host buffer; `run` copies inputs in
asynchronously on one stream, binds tensor addresses (done once: the buffers
never move), enqueues with `execute_async_v3`, copies outputs back and
synchronizes. Optionally the enqueue is captured once into a CUDA graph and
replayed, which removes per-layer launch overhead on Jetsons.

tensorrt and pycuda are imported lazily: this module must import (and
`tensorrt_available` must answer) on machines that have neither. No torch.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from lowlight.core.errors import BundleError, InputError
from lowlight.core.trt_version import TrtVersion


def host_gpu_arch() -> str | None:
    """This machine's GPU 0 as "sm_XY" (via pycuda), or None without a usable GPU."""
    try:
        import pycuda.driver as cuda  # type: ignore[import-not-found]

        cuda.init()
        if cuda.Device.count() == 0:
            return None
        major, minor = cuda.Device(0).compute_capability()
        return f"sm_{major}{minor}"
    except Exception:  # no pycuda, no driver, no device: all mean "no GPU here"
        return None


def host_is_jetson() -> bool:
    """True on a Jetson (L4T): engines for Jetsons can only be built there."""
    if os.path.exists("/etc/nv_tegra_release"):
        return True
    try:
        model = Path("/proc/device-tree/model").read_text(errors="ignore")
    except OSError:
        return False
    return "jetson" in model.lower() or "orin" in model.lower() or "thor" in model.lower()


def host_trt_version() -> str | None:
    """The importable tensorrt's version string, or None."""
    try:
        import tensorrt as trt
    except Exception:
        return None
    # The type stubs alone make `tensorrt` an importable namespace package: not TensorRT.
    version = getattr(trt, "__version__", None)
    return str(version) if version is not None and hasattr(trt, "Builder") else None


def engine_info(manifest: dict[str, Any]) -> dict[str, Any]:
    """The manifest's engine entry ({"file", "trt_version", "arch"}; {} when not built)."""
    entry = manifest.get("engine")
    return entry if isinstance(entry, dict) else {}


def tensorrt_available(manifest: dict[str, Any]) -> tuple[bool, str]:
    """Can this machine run the bundle's engine? (ok, reason naming both sides)."""
    info = engine_info(manifest)
    if not info.get("file"):
        return False, "the bundle has no TensorRT engine yet (run `lowlight-compile build-engine BUNDLE` on the device)"
    want_trt = str(info.get("trt_version") or "?")
    want_arch = str(info.get("arch") or "?")
    have_trt = host_trt_version()
    if have_trt is None:
        return False, f"engine needs TensorRT {want_trt} on {want_arch}, but the tensorrt Python package does not import here"
    try:
        import pycuda.driver  # noqa: F401
    except Exception as exc:
        return False, f"engine needs pycuda for device buffers, which does not import here ({exc.__class__.__name__})"
    have_arch = host_gpu_arch()
    if have_arch is None:
        return False, f"engine was built for {want_arch} with TensorRT {want_trt}; this machine has no usable CUDA GPU"
    have_v, want_v = TrtVersion.try_parse(have_trt), TrtVersion.try_parse(want_trt)
    if have_v is None or want_v is None or not have_v.matches(want_v) or have_arch != want_arch:
        return False, (
            f"engine was built with TensorRT {want_trt} for {want_arch}; this machine has TensorRT {have_trt} "
            f"on {have_arch} (engines are not portable across TensorRT versions or GPU architectures)"
        )
    return True, f"TensorRT {have_trt} on {have_arch}"


class TensorRTBackend:
    """Runs a serialized TensorRT engine with static I/O shapes."""

    name = "tensorrt"

    def __init__(self, engine_path: str | Path, manifest: dict[str, Any] | None = None, *,
                 cuda_graph: bool = False, warmup: int = 2) -> None:
        import pycuda.autoinit  # type: ignore[import-not-found]  # noqa: F401  (creates the CUDA context)
        import pycuda.driver as cuda  # type: ignore[import-not-found]
        import tensorrt as trt

        self._cuda = cuda
        logger = trt.Logger(trt.Logger.WARNING)
        trt.init_libnvinfer_plugins(logger, "")
        self._runtime = trt.Runtime(logger)
        blob = Path(engine_path).read_bytes()
        engine = self._runtime.deserialize_cuda_engine(blob)
        if engine is None:
            raise BundleError(
                f"TensorRT could not deserialize {engine_path}",
                "rebuild it on this device with `lowlight-compile build-engine BUNDLE --force`",
            )
        self._engine = engine
        self._context = engine.create_execution_context()
        self._stream = cuda.Stream()
        self.input_names: list[str] = []
        self.output_names: list[str] = []
        self._host: dict[str, np.ndarray] = {}
        self._device: dict[str, Any] = {}
        for i in range(engine.num_io_tensors):
            tname = engine.get_tensor_name(i)
            dims = engine.get_tensor_shape(tname)
            shape = tuple(int(dims[k]) for k in range(len(dims)))
            if any(d < 0 for d in shape):
                raise BundleError(
                    f"engine tensor {tname!r} has a dynamic shape {shape}",
                    "build the engine with a fixed --shape (min=opt=max profile)",
                )
            dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(tname)))
            host = cuda.pagelocked_empty(shape, dtype)
            dev = cuda.mem_alloc(max(host.nbytes, 1))
            self._host[tname], self._device[tname] = host, dev
            # Addresses never change, so they are bound once (a CUDA graph needs that too).
            self._context.set_tensor_address(tname, int(dev))
            if engine.get_tensor_mode(tname) == trt.TensorIOMode.INPUT:
                self.input_names.append(tname)
            else:
                self.output_names.append(tname)
        self._graph_exec: Any = None
        for _ in range(max(warmup, 1 if cuda_graph else 0)):
            self._enqueue()
        self._stream.synchronize()
        if cuda_graph:
            self._graph_exec = self._capture()

    @classmethod
    def from_bundle(cls, bundle: str | Path, manifest: dict[str, Any], **kwargs: Any) -> "TensorRTBackend":
        """Open the engine a bundle's manifest names (see `tensorrt_available` first)."""
        info = engine_info(manifest)
        if not info.get("file"):
            raise BundleError(f"{bundle} has no TensorRT engine", "run `lowlight-compile build-engine BUNDLE` on the device")
        return cls(Path(bundle) / str(info["file"]), manifest, **kwargs)

    def _enqueue(self) -> None:
        cuda = self._cuda
        for n in self.input_names:
            cuda.memcpy_htod_async(self._device[n], self._host[n], self._stream)
        if self._graph_exec is not None:
            self._graph_exec.launch(self._stream)
        elif not self._context.execute_async_v3(self._stream.handle):
            raise RuntimeError("TensorRT execute_async_v3 failed (see the TensorRT log above)")
        for n in self.output_names:
            cuda.memcpy_dtoh_async(self._host[n], self._device[n], self._stream)

    def _capture(self) -> Any:
        """Capture one enqueue into a CUDA graph; None (plain enqueue) where pycuda cannot."""
        stream = self._stream
        if not hasattr(stream, "begin_capture"):
            return None  # pycuda built without CUDA graph support
        try:
            stream.begin_capture()
            self._context.execute_async_v3(stream.handle)
            graph = stream.end_capture()
            return graph.instance() if hasattr(graph, "instance") else graph.instantiate()
        except Exception:
            return None  # some layers (e.g. data-dependent shapes) cannot be captured

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one inference; feeds must match the engine's input names and shapes."""
        missing = [n for n in self.input_names if n not in feeds]
        extra = [n for n in feeds if n not in self.input_names]
        if missing or extra:
            raise InputError(
                f"inputs do not match the engine: missing {missing}, unexpected {extra}",
                f"pass exactly: {', '.join(self.input_names)}",
            )
        for n in self.input_names:
            arr = np.asarray(feeds[n])
            if arr.shape != self._host[n].shape:
                raise InputError(
                    f"input {n!r} has shape {arr.shape}, the engine was built for {self._host[n].shape}",
                    "resize/crop to the compiled --shape or recompile for this shape",
                )
            np.copyto(self._host[n], arr, casting="same_kind")
        self._enqueue()
        self._stream.synchronize()
        return {n: self._host[n].copy() for n in self.output_names}
