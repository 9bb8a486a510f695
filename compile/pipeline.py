"""The compile pipeline: checkpoint -> export -> simplify -> lower -> quantize -> verify -> bundle -> profile.

Each stage is an artifact-to-artifact step. Export, simplify, lower and
quantize are cached by content hash (input, options, tool versions) in the
cache directory; `force=True` redoes them. What the target decides (lowering,
precision, Q/DQ flavour, final build step) comes from its `Target` object.
"""
from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lowlight.compile.cache import StageCache, file_sha256, tool_versions
from lowlight.compile.options import CompileOptions
from lowlight.compile.progress import Progress
from lowlight.core.errors import CalibrationError, LowlightError, ShapeError

STAGES = ["load", "export", "simplify", "lower", "quantize", "verify", "bundle", "profile"]


@dataclass
class CompileResult:
    bundle: Path
    manifest: dict[str, Any]
    verification: dict[str, Any]
    profile: dict[str, Any] | None
    notes: list[str] = field(default_factory=list)


def _frames_hash(frames: list[np.ndarray]) -> str:
    import hashlib

    h = hashlib.sha256()
    for f in frames:
        h.update(np.ascontiguousarray(f).tobytes()[:: 97])  # sparse sample: fast, still content-sensitive
        h.update(str(f.shape).encode())
    return h.hexdigest()


#: ONNX Runtime and TensorRT index a tensor with 32-bit element counts.
MAX_TENSOR_ELEMENTS = 2**31 - 1


def check_volume(input_shapes: dict[str, tuple[int, ...]]) -> None:
    """Refuse input shapes no backend can allocate, before any work (not a numpy MemoryError later)."""
    for name, dims in input_shapes.items():
        n = 1
        for d in dims:
            n *= int(d)
        if n > MAX_TENSOR_ELEMENTS:
            raise ShapeError(
                f"input {name!r} of shape {'x'.join(map(str, dims))} has {n:,} elements, more than the 2^31-1 "
                "a single ONNX Runtime or TensorRT tensor can hold",
                "use a smaller --shape: for large frames compile a tile size and let the runtime tile",
            )


def default_verify_source() -> Path:
    """Real low-light photos (DICM) from the shared data; else the shipped samples.

    The samples are also the default --calib: `select_data` then splits them so
    the held-out frames are never calibrated on.
    """
    from lowlight.calibration.data import SAMPLES_DIR, shared_data_dir

    shared = shared_data_dir(required=False)
    if shared is not None and (shared / "lowlight_real").is_dir():
        return shared / "lowlight_real"
    return SAMPLES_DIR


def compile_bundle(opts: CompileOptions) -> CompileResult:
    """Run the whole pipeline; returns where the bundle is and what was measured.

    Raises a LowlightError subclass (with a fix) on bad input or a failed
    verification; nothing is left at `opts.out` unless the bundle is complete.
    """
    from lowlight.core.bundle import MANIFEST
    from lowlight.core.fsio import OutputLock, claim_dir, remove_stale
    from lowlight.models import get_family
    from lowlight.targets import get_target

    t_start = time.perf_counter()
    fam = get_family(opts.model)
    config = opts.config or fam.default_config
    if config not in fam.configs:
        raise LowlightError(f"model {opts.model!r} has no config {config!r}", f"use --config with one of: {', '.join(fam.configs)}")
    fopts = fam.resolve_options(dict(opts.family_options))
    target = get_target(opts.target, opts.trt_version)
    precision = target.resolve_precision(opts.precision)
    if opts.shape is not None and not str(opts.shape).strip():
        raise ShapeError("--shape is empty", f"omit --shape for the default ({fam.default_shape(config, **fopts)}), or give one like 1x8x3x256x256")
    shape = opts.shape if opts.shape is not None else fam.default_shape(config, **fopts)
    input_shapes = {t.name: t.shape for t in fam.inputs(shape, config, **fopts)}  # ShapeError before any work
    check_volume(input_shapes)
    out = Path(opts.out or Path("bundles") / f"{opts.model}-{config}-{target.name}-{precision}")
    claim_dir(out, MANIFEST, "a bundle (it has no manifest.json)", "--out",
              inputs=[opts.checkpoint, opts.calib, opts.verify_data, opts.ground_truth])
    with OutputLock(out, "--out"):
        for p in remove_stale(out):
            if not opts.quiet:
                print(f"removed the leftover of an interrupted run: {p}", file=sys.stderr)
        return _build(opts, fam, config, fopts, target, precision, shape, input_shapes, out, t_start)


def _build(opts: CompileOptions, fam: Any, config: str, fopts: dict[str, str], target: Any, precision: str,
           shape: str, input_shapes: dict[str, tuple[int, ...]], out: Path, t_start: float) -> CompileResult:
    """The stages, run while holding the lock on `out`."""
    import onnx

    from lowlight.calibration.data import SAMPLES_DIR
    from lowlight.compile.export import export_onnx
    from lowlight.compile.graph import all_tensor_names, boundary_convs, float_nodes, op_counts, spectral_tensors
    from lowlight.compile.quantize import quantize_int8, to_fp16
    from lowlight.compile.simplify import simplify
    from lowlight.compile.verify import to_markdown, torch_outputs, verify
    from lowlight.core.bundle import read_manifest, write_manifest
    from lowlight.core.fsio import commit_dir, staged_dir

    cache = StageCache(opts.cache_path(), force=opts.force)
    progress = Progress(STAGES, opts.quiet)
    notes: list[str] = []
    reports: dict[str, Any] = {}

    # Read the data first: a bad --calib should fail in a second, not after export.
    calib_src = Path(opts.calib) if opts.calib else SAMPLES_DIR
    verify_src = Path(opts.verify_data) if opts.verify_data else default_verify_source()
    # Calibration and verification never share a frame: one source is split, identical files elsewhere left out.
    from lowlight.calibration.frames import select_data

    data = select_data(calib_src if precision == "int8" else None, opts.calib_frames, verify_src, opts.verify_frames,
                       opts.ground_truth, batch=next(iter(input_shapes.values()))[0], say=progress.say)
    calib_frames = data.calibration.frames if data.calibration else []
    verify_frames = data.verification.frames
    gt_frames = data.ground_truth.frames if data.ground_truth else []

    # -- load -------------------------------------------------------------------------
    with progress.stage("load", f"{opts.model} {config} ({opts.checkpoint or 'reference weights'})"):
        from lowlight.models import load as load_model

        ckpt = Path(opts.checkpoint) if opts.checkpoint else fam.weights_path(config)
        model = load_model(opts.model, config, checkpoint=opts.checkpoint, **fopts)
        module = fam.export_module(model, **fopts)
        ckpt_hash = file_sha256(ckpt) if ckpt else "none"
    example = {name: np.random.default_rng(0).random(s, dtype=np.float32) for name, s in input_shapes.items()}

    # -- export -----------------------------------------------------------------------
    # the model's source is part of the key: editing the model must not reuse a stale export
    export_opts = {"model": opts.model, "config": config, "family_options": fopts, "shape": shape, "code": _code_hash(model)}
    with progress.stage("export", f"torch.onnx (dynamo) at {shape}") as note:
        exported, hit = cache.run(
            "export", ckpt_hash, export_opts, lambda d: export_onnx(module, example, fam.output_names[0], d / "model.onnx"), "model.onnx"
        )
        note["note"] = "cached" if hit else ""

    # -- simplify ---------------------------------------------------------------------
    def _simplify(d: Path) -> None:
        rep = simplify(exported, d / "model.onnx")
        (d / "simplify.json").write_text(json.dumps(rep, indent=1))

    with progress.stage("simplify", "onnxsim, onnxslim fallback; checked on random inputs") as note:
        simplified, hit = cache.run("simplify", file_sha256(exported), {}, _simplify, "model.onnx")
        reports["simplify"] = json.loads((simplified.parent / "simplify.json").read_text())
        note["note"] = ("cached, " if hit else "") + f"{reports['simplify']['tool']}, {reports['simplify']['nodes_before']} -> {reports['simplify']['nodes_after']} nodes"

    # -- lower ------------------------------------------------------------------------
    passes = target.lowering_passes()
    simplified_model = onnx.load(str(simplified))
    spectral = spectral_tensors(simplified_model)
    before = all_tensor_names(simplified_model)

    def _lower(d: Path) -> None:
        m = onnx.load(str(simplified))
        for _, fn in passes:
            m = fn(m)
        onnx.save(m, str(d / "raw.onnx"))
        if passes:  # fold what the rewrites exposed (e.g. Unsqueeze of a weight), checked like simplify
            rep = simplify(d / "raw.onnx", d / "model.onnx")
            (d / "simplify.json").write_text(json.dumps(rep, indent=1))
        else:
            (d / "raw.onnx").rename(d / "model.onnx")

    with progress.stage("lower", ", ".join(n for n, _ in passes) or "nothing to do for this target") as note:
        lowered, hit = cache.run(
            "lower", file_sha256(simplified), {"target": target.name, "trt": getattr(target, "trt_version", None), "passes": [n for n, _ in passes]}, _lower, "model.onnx"
        )
        note["note"] = "cached" if hit else ""
    lowered_model = onnx.load(str(lowered))
    keep_float = float_nodes(lowered_model, spectral, before if passes else set())
    keep_float += [n for n in boundary_convs(lowered_model) if n not in keep_float]

    # -- quantize ---------------------------------------------------------------------
    with progress.stage("quantize", f"{precision} ({target.qdq_flavour} Q/DQ)" if precision == "int8" else precision) as note:
        if precision == "fp32":
            final = lowered
            reports["quantize"] = {"precision": "fp32"}
        elif precision == "fp16":
            final, hit = cache.run("fp16", file_sha256(lowered), {"keep": keep_float}, lambda d: to_fp16(lowered, d / "model.onnx", keep_float), "model.onnx")
            reports["quantize"] = {"precision": "fp16", "kept_float_nodes": len(keep_float)}
            note["note"] = "cached" if hit else ""
        else:
            calib_feeds = fam.make_inputs(calib_frames, shape, config, **fopts)
            if not calib_feeds:
                raise CalibrationError(
                    f"{calib_src} gave {len(calib_frames)} frame(s), too few to make one calibration batch of shape {shape}",
                    "add frames to the calibration folder (16 or more is better), or lower the batch size in --shape",
                )

            quantizer = quantize_int8
            if fam.quantize_branches:
                from lowlight.models.gmmoe_qdq import quantize_int8_with_ifs as quantizer

            def _int8(d: Path) -> None:
                rep = quantizer(
                    lowered, d / "model.onnx", calib_feeds, target.qdq_flavour, keep_float,
                    engine=opts.int8_engine, min_fidelity=opts.min_fidelity, say=progress.say,
                )
                (d / "quantize.json").write_text(json.dumps(rep, indent=1))

            final, hit = cache.run(
                "int8", file_sha256(lowered),
                {"flavour": target.qdq_flavour, "calib": _frames_hash(calib_frames), "engine": opts.int8_engine, "keep": keep_float, "shape": shape},
                _int8, "model.onnx",
            )
            reports["quantize"] = json.loads((final.parent / "quantize.json").read_text())
            note["note"] = ("cached, " if hit else "") + f"engine {reports['quantize']['engine']}, {len(calib_feeds)} calibration samples from {calib_src}"
    final_model = onnx.load(str(final))
    warnings = target.check_graph(final_model, {"dla": opts.dla, "precision": precision})
    for w in warnings:
        progress.say(f"    note: {w}")

    # -- verify -----------------------------------------------------------------------
    with progress.stage("verify", f"vs FP32 PyTorch on {len(verify_frames)} held-out frames from {verify_src}") as note:
        feeds = fam.make_inputs(verify_frames, shape, config, seed=1, **fopts)
        if not feeds:
            raise CalibrationError(f"{verify_src} gave too few frames for one verification batch", "pass --verify-data with more frames")
        reference = torch_outputs(module, feeds)
        gt_feeds = gt = gt_ref = None
        if gt_frames:
            gt_feeds, gt = _ground_truth_pairs(fam, gt_frames, shape, config, fopts)
            gt_ref = torch_outputs(module, gt_feeds)
        verification = verify(
            final, reference, feeds, opts.min_fidelity, opts.max_drop, gt_feeds, gt_ref, gt, precision=precision
        )
        note["note"] = f"{verification['fidelity_psnr_db']:.2f} dB fidelity" + (
            f", {verification['ground_truth']['drop_db']:.3f} dB drop vs ground truth" if "ground_truth" in verification else ""
        )

    # -- bundle, profile: both run in the partial folder; only a finished bundle is renamed into place
    with staged_dir(out) as st:
        with progress.stage("bundle", str(out)):
            shutil.copyfile(final, st / "model.onnx")
            n_ref = min(2, len(feeds))
            np.savez_compressed(
                st / "reference.npz",
                **{f"input:{k}": np.stack([f[k] for f in feeds[:n_ref]]) for k in feeds[0]},
                **{f"output:{fam.output_names[0]}": np.stack(reference[:n_ref])},
            )
            (st / "verification.json").write_text(json.dumps(verification, indent=2) + "\n")
            (st / "verification.md").write_text(to_markdown(verification, f"Verification: {opts.model} {config}, {target.name}, {precision}", data=data.record()))
            context = {
                "model_path": str(st / "model.onnx"),
                "float_model_path": str(lowered),
                "precision": precision,
                "input_shapes": {k: list(v) for k, v in input_shapes.items()},
                "output_names": [fam.output_names[0]],
                "reference_path": str(st / "reference.npz"),
                "cache_dir": str(cache.root),
                "dla": opts.dla,
                "verify": {"min_fidelity": opts.min_fidelity},
            }
            extra = target.finish_bundle(str(st), context)
            manifest = {
                "name": out.name,
                "model": "model.onnx",
                "family": opts.model,
                "config": config,
                "family_options": fopts,
                "checkpoint": {"path": str(ckpt) if ckpt else None, "sha256": ckpt_hash, "reference_weights": opts.checkpoint is None},
                "target": target.name,
                "runtime": target.runtime,
                "precision": precision,
                "qdq_flavour": target.qdq_flavour if precision == "int8" else None,
                "inputs": [{"name": k, "shape": list(v), "dtype": "float32", "range": [0.0, 1.0]} for k, v in input_shapes.items()],
                "outputs": [{"name": fam.output_names[0], "shape": list(reference[0].shape), "dtype": "float32", "range": [0.0, 1.0]}],
                "layout": "clip" if len(next(iter(input_shapes.values()))) == 5 else "image",
                "reference": "reference.npz",
                "ops": op_counts(final_model),
                "stages": {"seconds": progress.timings, **reports},
                "verification": {k: v for k, v in verification.items() if k != "per_sample"},
                "data": data.record(),
                "warnings": warnings,
                "tools": tool_versions(),
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
            manifest.update(extra)
            manifest = write_manifest(st, manifest)

        profile = None
        with progress.stage("profile", f"{opts.profile_runs} runs on this host") as note:
            from lowlight.compile.profile import profile_bundle

            profile = profile_bundle(st, runs=opts.profile_runs)
            note["note"] = f"p50 {profile['latency_ms']['p50']:.1f} ms, {profile['fps']:.1f} frames/s"
        manifest = read_manifest(st)
        commit_dir(st, out)
    manifest.pop("report_warnings", None)
    notes += list(manifest.get("notes", []))
    progress.say(f"done in {time.perf_counter() - t_start:.1f} s")
    return CompileResult(out, manifest, verification, profile, notes)


def _code_hash(model: Any) -> str:
    """sha256 of the source files that define `model` and the export translations."""
    import hashlib
    import inspect

    import lowlight.compile.export as export_mod

    files = {inspect.getsourcefile(type(m)) for m in model.modules()} | {inspect.getsourcefile(export_mod)}
    try:
        import lowlight.kernels.onnx_export as kx

        files.add(inspect.getsourcefile(kx))
    except ImportError:
        pass
    h = hashlib.sha256()
    for f in sorted(p for p in files if p):
        h.update(Path(f).read_bytes())
    return h.hexdigest()[:16]


def _ground_truth_pairs(fam: Any, clean_frames: list[np.ndarray], shape: str, config: str, fopts: dict[str, str]) -> tuple[list[dict[str, np.ndarray]], list[np.ndarray]]:
    """Synthetic (low-light input, clean target) pairs from clean photos, with the training degradation."""
    from lowlight.calibration.degrade import degrade_clip

    rng = np.random.default_rng(7)
    clean = fam.make_inputs(clean_frames, shape, config, seed=2, **fopts)
    feeds, gts = [], []
    for feed in clean:
        rgb = feed["rgb"]
        flat = rgb.reshape(-1, *rgb.shape[-3:]).transpose(0, 2, 3, 1)  # frames x H x W x 3
        low = degrade_clip(flat, rng).transpose(0, 3, 1, 2).reshape(rgb.shape)
        feeds.append({**feed, "rgb": low.astype(np.float32)})
        gts.append(rgb)
    return feeds, gts
