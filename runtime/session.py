"""`lowlight.runtime.load(bundle)`: a callable session over the bundle's compiled model.

Checks every input (names, shapes, dtype, value range, NaN/Inf) before it
reaches the backend, so a bad camera frame fails with a message instead of a
garbage output. Picks TensorRT when the bundle has an engine for this GPU and
TensorRT imports, else onnxruntime, and says which it chose. A bundle compiled
for OpenVINO (`manifest["backend"] == "openvino"`: OpenVINO IR files, verified on
OpenVINO) runs on OpenVINO, with the same API.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

from lowlight.core.bundle import bundle_path, read_manifest
from lowlight.core.errors import BundleError, InputError, LowlightError
from lowlight.core.program import noise_inputs

BACKENDS = ("auto", "tensorrt", "onnxruntime", "openvino")

#: Slack around an input's declared range, as a fraction of its span. Resizing, colour
#: conversion and denoising overshoot a [0,1] frame by a few percent and still enhance
#: fine; the mistakes worth refusing are far outside (0..255 frames: 255x the span,
#: [-1,1] normalisation: a whole span below), so 5% passes the first and stops the second.
RANGE_TOLERANCE = 0.05


def _first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message (backend errors run to pages)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return (lines[0][:300] if lines else "") or type(exc).__name__


class Session:
    """`sess(rgb=clip)` -> numpy output; one keyword argument per named model input.

    `warnings` lists what is off but harmless (e.g. a report edited after compilation).
    """

    def __init__(self, bundle: Path, manifest: dict[str, Any], backends: Any, warnings: list[str] | None = None,
                 constants: dict[str, np.ndarray] | None = None) -> None:
        from lowlight.core.bundle import as_program_manifest

        pm = as_program_manifest(manifest)
        # One backend per component; a bare backend is the one-component case.
        self.backends: dict[str, Any] = backends if isinstance(backends, dict) else {next(iter(pm["components"])): backends}
        self.bundle, self.manifest = bundle, manifest
        self.program: dict[str, Any] = pm["program"]
        # optional inputs: e.g. a sampler's starting latent `noise`, drawn from the seed when absent
        self._noise_inputs = noise_inputs(self.program)
        self.constants: dict[str, np.ndarray] = constants or {}
        self.output_names: list[str] = [o["name"] for o in manifest["outputs"]]
        self.dtypes: dict[str, str] = {i["name"]: str(i.get("dtype", "float32")) for i in manifest["inputs"]}
        self.inputs: dict[str, list[int]] = {i["name"]: i["shape"] for i in manifest["inputs"]}
        self.ranges: dict[str, tuple[float, float]] = {
            i["name"]: (float(i["range"][0]), float(i["range"][1])) if i.get("range") is not None else (0.0, 1.0)
            for i in manifest["inputs"]
        }
        self.output_name: str = manifest["outputs"][0]["name"]
        self.warnings: list[str] = list(manifest.get("report_warnings", []) if warnings is None else warnings)

    @property
    def backend(self) -> Any:
        """The first component's backend (the only one for single-graph bundles)."""
        return next(iter(self.backends.values()))

    @property
    def backend_name(self) -> str:
        names = sorted({str(b.name) for b in self.backends.values()})
        return ", ".join(names)

    @property
    def layouts(self) -> dict[str, str]:
        """Declared layout of every program input and output (e.g. BTCHW, BCHW, RGGB, latent)."""
        return {t["name"]: str(t.get("layout", "")) for t in list(self.manifest["inputs"]) + list(self.manifest["outputs"])}

    def check(self, feeds: dict[str, Any]) -> dict[str, np.ndarray]:
        """Validated float32 feeds; raises InputError naming the problem and its fix."""
        optional = self._noise_inputs
        missing = [n for n in self.inputs if n not in feeds]
        extra = [n for n in feeds if n not in self.inputs and n not in optional]
        if missing or extra:
            raise InputError(
                f"this bundle takes inputs {list(self.inputs)}; missing {missing}, unexpected {extra}",
                "the modality set is fixed at compile time (--modalities): pass exactly these names",
            )
        checked = {name: self._check_one(name, feeds[name]) for name in self.inputs}
        for name, shape in optional.items():
            if name in feeds:
                x = np.asarray(feeds[name])
                if list(x.shape) != shape or not np.issubdtype(x.dtype, np.floating) or not np.isfinite(x).all():
                    raise InputError(f"input {name!r} must be finite float32 of shape {shape}, got {x.dtype} {list(x.shape)}",
                                     f"omit {name} to draw it from the bundle's seed, or pass standard normal noise of that shape")
                checked[name] = x.astype(np.float32)
        return checked

    def _check_one(self, name: str, value: Any) -> np.ndarray:
        shape = self.inputs[name]
        lo, hi = self.ranges[name]
        declared = f"[{lo:g},{hi:g}]"
        x = self._as_array(name, value)
        if list(x.shape) != list(shape):
            raise InputError(
                f"input {name!r} has shape {list(x.shape)}, the bundle was compiled for {shape}",
                "resize/crop frames to the compiled shape, or recompile with --shape",
            )
        if self.dtypes.get(name) == "uint8":  # camera bytes (--pixel-format): every value is valid
            if x.dtype != np.uint8:
                raise InputError(f"input {name!r} has dtype {x.dtype}; this bundle takes the camera's uint8 bytes",
                                 "pass the frame buffer as uint8 (as the camera or cv2 delivers it)")
            return np.ascontiguousarray(x)
        if not np.issubdtype(x.dtype, np.floating):
            raise InputError(
                f"input {name!r} has dtype {x.dtype}; expected float32 values in {declared}",
                "convert frames with frame.astype(np.float32) / 255",
            )
        # min/max propagate NaN and Inf, so one pass each finds them and the range.
        with np.errstate(invalid="ignore"):
            found_lo, found_hi = float(x.min()), float(x.max())
        if not (np.isfinite(found_lo) and np.isfinite(found_hi)):
            bad = int((~np.isfinite(x)).sum())
            raise InputError(
                f"input {name!r} contains {bad} NaN/Inf value(s)",
                "check the camera/decoder output; replace or drop the frame before enhancing it",
            )
        # Plus float32 rounding, so a frame exactly at a declared bound (e.g. 0.3) passes.
        tol = RANGE_TOLERANCE * (hi - lo) + 1e-6 * max(abs(lo), abs(hi), 1.0)
        if found_lo < lo - tol or found_hi > hi + tol:
            unit = (lo, hi) == (0.0, 1.0)
            if unit and 1.5 < found_hi <= 255.5 and found_lo >= -tol:
                fix = "it looks like 0..255: divide by 255 (frame.astype(np.float32) / 255)"
            elif unit and -1 - tol <= found_lo <= -0.5 and found_hi <= 1 + tol:  # dark frames sit near -1
                fix = "it looks like -1..1: map it to 0..1 with (frame + 1) / 2"
            else:
                fix = f"scale frames into {declared}, the range the model was compiled and calibrated for"
            raise InputError(
                f"input {name!r} has values from {found_lo:g} to {found_hi:g}, outside its declared range {declared}",
                fix,
            )
        return np.ascontiguousarray(x, dtype=np.float32)

    @staticmethod
    def _as_array(name: str, value: Any) -> np.ndarray:
        """`value` as an ndarray: arrays as they are, lists only when they form a numeric array."""
        if isinstance(value, (np.ndarray, np.generic)):
            return np.asarray(value)
        if isinstance(value, (list, tuple)):
            try:
                x = np.asarray(value)
            except (ValueError, TypeError) as exc:  # ragged nesting
                raise InputError(
                    f"input {name!r} is a {type(value).__name__} that does not form an array ({_first_line(exc)})",
                    "pass a numpy float32 array of the compiled shape",
                ) from None
            if x.dtype.kind not in "biuf":
                raise InputError(
                    f"input {name!r} is a {type(value).__name__} of non-numeric values (dtype {x.dtype})",
                    "pass a numpy float32 array of the compiled shape",
                )
            return x
        raise InputError(
            f"input {name!r} expected a numpy array, got {type(value).__name__}",
            "pass a numpy float32 array of the compiled shape, e.g. np.asarray(frames, np.float32) / 255",
        )

    def __call__(self, **feeds: Any) -> np.ndarray:
        """Check the feeds, run the bundle's program, return the first output (see `run` for all)."""
        return self.run(**feeds)[self.output_name]

    def run(self, seed: int | None = None, **feeds: Any) -> dict[str, np.ndarray]:
        """Check the feeds, run the program over the components, return every output by name.

        `seed` overrides the bundle's seed for the program's noise inputs (None: the bundle's).
        """
        from lowlight.core.program import run_program

        checked = self.check(feeds)
        return run_program(self.program, self._call, checked, self.output_names, self.constants, seed)

    def stream(self, pixel_format: str = "bgr24", **kw: Any) -> Any:
        """A causal frame-by-frame enhancer: `out = stream(frame)`, `stream.reset()` at a scene cut.

        Frames are uint8 in `pixel_format` (bgr24, rgb24, nv12, yuyv; or "rgb_f32" for float RGB
        in [0,1]) of any size; outputs have the same format and size. Keywords: `exposure`
        ((low, high) mean-luma thresholds, None: always enhance), `overlap` (tile overlap in
        pixels), `cache` (False: recompute per-frame components for every window, to compare),
        `on_bad` ("skip" or "raise"). See `lowlight.runtime.stream`.
        """
        compiled = self.manifest.get("pixel_format", {}).get("format") if isinstance(self.manifest.get("pixel_format"), dict) else None
        if compiled is not None:
            from lowlight.runtime.stream import CompiledFormatStream

            return CompiledFormatStream(self, pixel_format, compiled)
        from lowlight.runtime.stream import FrameStream

        return FrameStream(self, pixel_format, **kw)

    def _call(self, component: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        backend = self.backends[component]
        try:
            return dict(backend.run(feeds))
        except (LowlightError, MemoryError):
            raise
        except Exception as exc:
            # The inputs were checked against the manifest and the model loaded: a failure
            # here means the model itself is broken (e.g. a damaged file hashed again).
            raise BundleError(
                f"{backend.name} failed running component {component!r} of {self.bundle}: {_first_line(exc)}",
                "recompile the bundle; if a fresh bundle fails the same way, report this message",
            ) from exc


def _check_io(root: Path, manifest: dict[str, Any], backend: Any) -> None:
    """Refuse a manifest whose inputs/outputs disagree with the model the backend loaded.

    The manifest is what `Session.check` validates feeds against; if it names or shapes
    tensors differently from the model, checked inputs would still fail in the backend.
    """
    fix = "the manifest does not describe this model: recompile the bundle, or copy it again from where it was built"
    shapes = getattr(backend, "shapes", {})
    dtypes = getattr(backend, "dtypes", {})
    for key, names in (("inputs", list(backend.input_names)), ("outputs", list(backend.output_names))):
        declared = [t["name"] for t in manifest[key]]
        if sorted(declared) != sorted(names):
            raise BundleError(f"{root}: the manifest lists {key} {declared}, the model has {names}", fix)
        for t in manifest[key]:
            have = shapes.get(t["name"])
            # Dynamic model dims (None/str) take any size, so they cannot disagree.
            if have is not None and (len(have) != len(t["shape"]) or any(isinstance(h, int) and h != d for h, d in zip(have, t["shape"]))):
                raise BundleError(f"{root}: the manifest gives {t['name']!r} shape {t['shape']}, the model {have}", fix)
            want = t.get("dtype", "float32")
            if key == "inputs" and want not in ("float32", "uint8"):
                raise BundleError(f"{root}: input {t['name']!r} is declared {want!r}; this runtime feeds float32 frames or uint8 camera bytes", fix)
            if t["name"] in dtypes and dtypes[t["name"]] != want:
                raise BundleError(f"{root}: the manifest gives {t['name']!r} dtype {want!r}, the model {dtypes[t['name']]!r}", fix)


def load(bundle: str | Path, backend: str = "auto", verbose: bool = True, threads: int | None = None) -> Session:
    """Load a bundle (hashes checked) and pick a backend: 'auto', 'tensorrt', 'onnxruntime' or 'openvino'.

    'auto' runs a bundle on the backend it was compiled and verified for (OpenVINO bundles on
    OpenVINO; others on their TensorRT engine where it runs here, else onnxruntime).

    Every problem with the bundle is a BundleError, with the backend problem a user can
    fix (no TensorRT here, bad arguments) an InputError. With verbose, the chosen backend
    and any warnings (`Session.warnings`) go to stderr, once.
    """
    if backend not in BACKENDS:
        raise InputError(f"unknown backend {backend!r}", f"use one of {', '.join(BACKENDS)}")
    if threads is not None and (type(threads) is not int or threads < 0):
        raise InputError(f"threads must be a non-negative integer, got {threads!r}", "pass threads=None (all cores) or a count such as 4")
    root = Path(bundle)
    manifest = read_manifest(root)
    if manifest.get("backend") == "openvino" or backend == "openvino":
        return _load_openvino(root, manifest, backend, verbose, threads)
    chosen: Any = None
    reason = ""
    if backend in ("auto", "tensorrt") and manifest.get("engine"):
        try:
            from lowlight.runtime.tensorrt_backend import TensorRTBackend, tensorrt_available

            ok, reason = tensorrt_available(manifest)
        except ImportError as exc:
            ok, reason = False, f"TensorRT backend unavailable ({exc})"
        if ok:
            engine = bundle_path(root, manifest, manifest["engine"]["file"])
            try:
                chosen = TensorRTBackend(engine, manifest)
            except MemoryError:
                raise
            except Exception as exc:  # a bad engine, a CUDA error: onnxruntime still runs the model
                if backend == "tensorrt":
                    if isinstance(exc, LowlightError):
                        raise
                    raise BundleError(
                        f"TensorRT could not open {engine}: {_first_line(exc)}",
                        "rebuild the engine on this device (lowlight-compile build-engine BUNDLE --force), or load with backend='onnxruntime'",
                    ) from exc
                reason = f"TensorRT could not open {engine.name}: {exc.what if isinstance(exc, LowlightError) else _first_line(exc)}"
        if chosen is None and backend == "tensorrt":
            raise InputError(f"cannot run {root} with TensorRT: {reason}", "use backend='onnxruntime'")
    elif backend == "tensorrt":
        raise InputError(f"bundle {root} has no TensorRT engine", "build one on the device: lowlight-compile build-engine BUNDLE")
    from lowlight.core.bundle import as_program_manifest
    from lowlight.runtime.onnxruntime_backend import OnnxRuntimeBackend

    pm = as_program_manifest(manifest)
    backends: dict[str, Any] = {}
    for name, comp in pm["components"].items():
        if chosen is not None and len(pm["components"]) == 1:
            backends[name] = chosen  # the engine is the one component
        else:
            backends[name] = OnnxRuntimeBackend(bundle_path(root, manifest, comp["file"]), threads=threads)
        _check_io(root, comp, backends[name])
    if chosen is None:
        chosen = next(iter(backends.values()))
        if not reason:
            reason = "no TensorRT engine in the bundle" if not manifest.get("engine") else reason
    sess = Session(root, manifest, backends, constants=_constants(root, manifest))
    if verbose:
        print(f"lowlight.runtime: {root.name}: using {chosen.name}" + (f" ({reason})" if reason and "onnxruntime" in chosen.name else ""), file=sys.stderr)
        for w in sess.warnings:
            print(f"lowlight.runtime: {root.name}: warning: {w}", file=sys.stderr)
    return sess


def _constants(root: Path, manifest: dict[str, Any]) -> dict[str, np.ndarray]:
    """The program's constants (timesteps, embeddings) from `constants.npz`, if the bundle has them."""
    if not manifest.get("constants"):
        return {}
    try:
        with np.load(bundle_path(root, manifest, manifest["constants"]), allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except (OSError, ValueError) as exc:
        raise BundleError(f"{root}: cannot read the program constants ({_first_line(exc)})", "recompile the bundle") from exc


def _load_openvino(root: Path, manifest: dict[str, Any], backend: str, verbose: bool, threads: int | None) -> Session:
    """A session over an OpenVINO bundle; refuses to cross backends (each bundle is verified on its own)."""
    from lowlight.core.bundle import as_program_manifest

    if manifest.get("backend") != "openvino":  # backend == "openvino" on an onnxruntime/TensorRT bundle
        raise InputError(
            f"bundle {root} was compiled and verified for {manifest.get('runtime', 'onnxruntime')}, not OpenVINO",
            "load it with backend='auto', or compile an OpenVINO bundle: lowlight-compile ... --target cpu --backend openvino",
        )
    if backend not in ("auto", "openvino"):
        raise InputError(
            f"bundle {root} holds OpenVINO IR files (compiled and verified for OpenVINO); {backend} cannot run them",
            "load it with backend='auto' or 'openvino', or compile for that backend: lowlight-compile ... --backend onnxruntime",
        )
    from lowlight.runtime.openvino_backend import OpenVINOBackend

    hint = str((manifest.get("openvino") or {}).get("inference_precision_hint", "f32"))
    pm = as_program_manifest(manifest)
    backends: dict[str, Any] = {}
    warnings: list[str] = []
    for name, comp in pm["components"].items():
        backends[name] = OpenVINOBackend(bundle_path(root, manifest, comp["file"]), precision_hint=hint, threads=threads)
        warnings += [w for w in backends[name].warnings if w not in warnings]
        _check_io(root, comp, backends[name])
    sess = Session(root, manifest, backends, warnings=list(manifest.get("report_warnings", [])) + warnings,
                   constants=_constants(root, manifest))
    if verbose:
        print(f"lowlight.runtime: {root.name}: using {sess.backend_name} (the bundle was compiled and verified for OpenVINO)", file=sys.stderr)
        for w in sess.warnings:
            print(f"lowlight.runtime: {root.name}: warning: {w}", file=sys.stderr)
    return sess
