"""OpenVINO backend: runs a bundle's OpenVINO IR (model.xml + model.bin) on the host CPU.

Same interface as `OnnxRuntimeBackend` (`name`, `input_names`, `output_names`,
`shapes`, `dtypes`, `run(feeds) -> {name: array}`). `openvino` is an optional
extra (`pip install lowlight-compile[openvino]`): it is imported only when an
OpenVINO bundle is opened, so the default runtime stays numpy + onnxruntime.

The bundle pins OpenVINO's `INFERENCE_PRECISION_HINT`: on a CPU with
AVX512-BF16 or AMX, OpenVINO's default is bf16, so an "FP32" model would
silently run in BF16 (62 dB to FP32 on AMNet base instead of ~140 dB). An FP32
bundle therefore compiles with hint f32, a BF16 bundle with bf16, and the hint
OpenVINO actually took is read back from the compiled model (`precision_hint`).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from lowlight.core.errors import BundleError, InputError

#: The precision hints a bundle may pin (OpenVINO's names).
PRECISION_HINTS = ("f32", "bf16")
INSTALL_FIX = "pip install 'lowlight-compile[openvino]' (OpenVINO 2025.1 or newer), or load a bundle compiled with --backend onnxruntime"


def import_openvino() -> Any:
    """The `openvino` module, or InputError saying how to install it (the runtime's default install lacks it)."""
    try:
        import openvino
    except ImportError as exc:
        raise InputError(f"this bundle runs on OpenVINO, which is not installed here ({exc})", INSTALL_FIX) from None
    return openvino


def cpu_capabilities(core: Any = None) -> list[str]:
    """OpenVINO's OPTIMIZATION_CAPABILITIES of this CPU (e.g. ['BF16', 'FP32', 'INT8', ...]); [] if it cannot say."""
    try:
        ov = import_openvino()
        return [str(c) for c in (core or ov.Core()).get_property("CPU", "OPTIMIZATION_CAPABILITIES")]
    except Exception:  # noqa: BLE001 - a probe: no OpenVINO, no CPU plugin
        return []


class OpenVINOBackend:
    """One compiled OpenVINO model on the CPU with one infer request (what a camera loop calls)."""

    name = "openvino"

    def __init__(self, model_path: str | Path, precision_hint: str = "f32", threads: int | None = None,
                 profile: bool = False) -> None:
        """Read the IR at `model_path` and compile it for the CPU with the pinned `precision_hint`.

        `threads` None: $LOWLIGHT_THREADS if set, else OpenVINO's default (all cores), as onnxruntime does.
        `profile` turns on OpenVINO's per-node counters (`profile_rows`).
        """
        if precision_hint not in PRECISION_HINTS:
            raise BundleError(f"OpenVINO precision hint {precision_hint!r} is not one of {', '.join(PRECISION_HINTS)}",
                              "the manifest was edited or written by a newer lowlight-compile: recompile the bundle")
        ov = import_openvino()
        core = ov.Core()
        self.warnings: list[str] = []
        if precision_hint == "bf16" and "BF16" not in cpu_capabilities(core):
            # FP32 is strictly more accurate than the BF16 the bundle was verified at: run, but say so.
            self.warnings.append("this bundle was compiled for BF16, which this CPU lacks (no AVX512-BF16/AMX); "
                                 "running in FP32 (more accurate, slower than on the compile host)")
            precision_hint = "f32"
        threads = threads or int(os.environ.get("LOWLIGHT_THREADS") or 0) or None
        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": precision_hint, "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        if profile:
            config["PERF_COUNT"] = True
        try:
            model = core.read_model(str(model_path))
            self.compiled = core.compile_model(model, "CPU", config)
        except MemoryError:
            raise
        except Exception as exc:  # OpenVINO raises RuntimeError with pages of detail
            lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
            raise BundleError(
                f"OpenVINO cannot load {model_path}: {lines[0][:300] if lines else type(exc).__name__}",
                "the model files are damaged or from a newer OpenVINO: recompile the bundle, or copy it again from where it was "
                "built (and compare the openvino version with the manifest's 'tools')",
            ) from exc
        self.request = self.compiled.create_infer_request()
        self.input_names = [p.get_any_name() for p in self.compiled.inputs]
        self.output_names = [p.get_any_name() for p in self.compiled.outputs]
        self.shapes: dict[str, list[int | str | None]] = {}
        self.dtypes: dict[str, str] = {}
        for port in [*self.compiled.inputs, *self.compiled.outputs]:
            name = port.get_any_name()
            self.shapes[name] = [d.get_length() if d.is_static else None for d in port.get_partial_shape()]
            self.dtypes[name] = np.dtype(port.get_element_type().to_dtype()).name
        self.precision_hint = hint_name(self.compiled.get_property("INFERENCE_PRECISION_HINT"))
        self.profile_rows: list[dict[str, Any]] = []
        self._profile = profile
        self.name = f"openvino (CPU, {self.precision_hint})"

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Outputs by name; copied, since the infer request reuses its output buffers on the next call."""
        res = self.request.infer(feeds)
        outs = {name: np.array(res[port], copy=True) for name, port in zip(self.output_names, self.compiled.outputs)}
        if self._profile:
            for p in self.request.profiling_info:
                if str(p.status).endswith("EXECUTED"):
                    self.profile_rows.append({"node": p.node_name, "op_type": p.node_type, "exec_type": p.exec_type,
                                              "us": p.real_time.total_seconds() * 1e6})
        return outs


def hint_name(value: Any) -> str:
    """OpenVINO's element type of a precision hint as the manifest writes it ('f32', 'bf16')."""
    text = str(value).lower()
    for short, long in (("bf16", "bfloat16"), ("f32", "float32"), ("f16", "float16")):
        if short in text or long in text:
            return short
    return text
