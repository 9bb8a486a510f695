"""The compile pipeline: checkpoint -> export -> simplify -> lower -> quantize -> verify -> bundle -> profile.

Each stage is an artifact-to-artifact step. Export, simplify, lower and
quantize are cached by content hash (input, options, tool versions) in the
cache directory; `force=True` redoes them. What the target decides (lowering,
precision, Q/DQ flavour, final build step) comes from its `Target` object.
"""
from __future__ import annotations

import dataclasses
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
from lowlight.core.errors import CalibrationError, LowlightError, ShapeError, TargetError

STAGES = ["load", "export", "simplify", "lower", "quantize", "verify", "bundle", "profile"]


@dataclass
class CompileResult:
    bundle: Path
    manifest: dict[str, Any]
    verification: dict[str, Any]
    profile: dict[str, Any] | None
    notes: list[str] = field(default_factory=list)


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

    The model comes from a family (`opts.model`), a user's model file
    (`path/to/file.py:Name`), or an ONNX file given as the checkpoint. Raises a
    LowlightError subclass (with a fix) on bad input or a failed verification;
    nothing is left at `opts.out` unless the bundle is complete.
    """
    from lowlight.core.bundle import MANIFEST
    from lowlight.core.fsio import OutputLock, claim_dir, remove_stale
    from lowlight.targets import get_target

    t_start = time.perf_counter()
    target = get_target(opts.target, opts.trt_version)
    precision = target.resolve_precision(opts.precision)
    choice = _backend_choice(target, precision, opts)  # refuses a bad --backend/bf16 before any work
    if opts.shape is not None and not str(opts.shape).strip():
        raise ShapeError("--shape is empty", "omit --shape for the model's default, or give one like 1x8x3x256x256")
    onnx_in = opts.checkpoint is not None and str(opts.checkpoint).lower().endswith(".onnx")
    if onnx_in:
        src = Path(str(opts.checkpoint))
        if not src.is_file():
            raise LowlightError(f"ONNX model {src} does not exist", "check the path")
        from lowlight.compile.plan import onnx_plan

        make_plan = lambda: onnx_plan(src, opts.shape)  # noqa: E731
        label, config = src.stem, "onnx"
        fam = None
    else:
        from lowlight.models import get_family

        from lowlight.models import resolve_config
        from lowlight.models.family import default_family

        if opts.model is None:
            opts = dataclasses.replace(opts, model=default_family())
        fam = get_family(str(opts.model))
        fopts = fam.resolve_options(dict(opts.family_options))
        # With a checkpoint, --config defaults to auto: the layout is read from the checkpoint.
        wanted = opts.config if opts.config is not None else ("auto" if opts.checkpoint else None)
        config, _ = resolve_config(opts.model, wanted, opts.checkpoint, **fopts)  # notes come again at load
        shape = opts.shape if opts.shape is not None else fam.default_shape(config, **fopts)
        check_volume({t.name: t.shape for t in fam.inputs(shape, config, **fopts)})  # ShapeError before any work
        label = fam.name.replace(":", "-").replace(".py", "")

        def make_plan() -> Any:
            from lowlight.compile.plan import family_plan

            return family_plan(fam, config, fopts, shape, opts.checkpoint)

    out = Path(opts.out or Path("bundles") / f"{label}-{config}-{target.name}-{precision}")
    claim_dir(out, MANIFEST, "a bundle (it has no manifest.json)", "--out",
              inputs=[opts.checkpoint, opts.calib, opts.verify_data, opts.ground_truth])
    with OutputLock(out, "--out"):
        for p in remove_stale(out):
            if not opts.quiet:
                print(f"removed the leftover of an interrupted run: {p}", file=sys.stderr)
        return _build(opts, make_plan, target, precision, out, t_start, fam, choice)


def _backend_choice(target: Any, precision: str, opts: CompileOptions) -> dict[str, Any]:
    """Which (backend, precision) candidates to build, from --backend, --precision and what is installed.

    Targets without a backend choice (TensorRT) build their runtime only. On the cpu target see
    `lowlight.compile.openvino.candidates_for`; bf16 also needs the host's BF16 (refused here, before any work).
    """
    asked = opts.backend
    if asked is None:  # not given: $LOWLIGHT_BACKEND where this target offers it (it pins cpu builds, not TensorRT ones)
        import os

        env = os.environ.get("LOWLIGHT_BACKEND", "")
        asked = env if env in target.backends else "auto"
    backend = target.resolve_backend(asked)
    if not target.backends:
        return {"mode": "fixed", "candidates": [(target.runtime, precision)], "left_out": [], "bf16": None}
    from lowlight.compile import openvino as ovc

    missing = ovc.openvino_missing()
    want, left_out = ovc.candidates_for(precision, backend, missing, opts.pixel_format)
    bf16 = ovc.bf16_support()
    if precision == "bf16":
        ovc.require_bf16(bf16)
    mode = "forced" if backend != "auto" else ("auto" if len(want) > 1 else "only")
    return {"mode": mode, "candidates": want, "left_out": left_out, "bf16": bf16}


def _build(opts: CompileOptions, make_plan: Any, target: Any, precision: str, out: Path, t_start: float,
           fam: Any = None, choice: dict[str, Any] | None = None) -> CompileResult:
    """The stages, run while holding the lock on `out` (`fam`: the family compiled, None for an ONNX file;
    `choice`: the backend candidates from `_backend_choice`)."""
    from lowlight.calibration.data import SAMPLES_DIR
    from lowlight.calibration.frames import select_data
    from lowlight.compile.verify import to_markdown, verify
    from lowlight.core.bundle import read_manifest, write_manifest
    from lowlight.core.fsio import commit_dir, staged_dir
    from lowlight.core.program import run_program

    distills = bool(fam is not None and fam.distill_option)

    cache = StageCache(opts.cache_path(), force=opts.force)
    stages = list(STAGES)
    if distills:  # a diffusion family: the distill stage runs between load and export
        stages.insert(stages.index("load") + 1, "distill")
    progress = Progress(stages, opts.quiet)
    reports: dict[str, Any] = {}

    # -- load -------------------------------------------------------------------------
    what = opts.checkpoint if opts.checkpoint else "reference weights"
    with progress.stage("load", f"{opts.model if not str(what).endswith('.onnx') else 'ONNX'} ({what})"):
        plan = make_plan()
    if target.runtime == "tensorrt" and len(plan.components) > 1:  # before any work, not at the bundle stage
        one = [o.flag + " yes" for o in getattr(fam, "options", ()) if o.name == "unroll"]
        raise TargetError(
            f"{plan.name} compiles to {len(plan.components)} components ({', '.join(c.name for c in plan.components)}); "
            f"TensorRT build plans are made for one graph per bundle so far",
            (f"add {one[0]} (the program unrolled into one graph)" if one else "use the family's one-graph form") + ", or --target cpu",
        )
    if distills:
        with progress.stage("distill") as note:
            if plan.prepare is None:  # the teacher itself, or a student found beside it
                note["note"] = "; ".join(plan.notes[-1:]) or "nothing to distill"
            else:
                plan = plan.prepare[1](progress.say, cache.root, opts.force)
                note["note"] = "cached" if plan.record.get("distill", {}).get("cached") else "distilled"
    for n in plan.notes:
        progress.say(f"    note: {n}")
    batch = plan.inputs[0].shape[0]

    # Read the data before any export: a bad --calib should fail in a second.
    # Calibration and verification never share a frame: one source is split, identical files elsewhere left out.
    calib_src = Path(opts.calib) if opts.calib else SAMPLES_DIR
    verify_src = Path(opts.verify_data) if opts.verify_data else default_verify_source()
    # FP16 for TensorRT by Model Optimizer's AutoCast runs the graph on the calibration frames to find overflow
    autocast = _wants_autocast(opts, target, precision)
    data = select_data(calib_src if precision == "int8" or autocast else None, opts.calib_frames, verify_src, opts.verify_frames,
                       opts.ground_truth, batch=batch, say=progress.say)
    calib_frames = data.calibration.frames if data.calibration else []
    verify_frames = data.verification.frames
    gt_frames = data.ground_truth.frames if data.ground_truth else []

    calib_by_comp: dict[str, list[dict[str, np.ndarray]]] = {}
    measure_by_comp: dict[str, list[dict[str, np.ndarray]]] = {}
    if precision == "int8" or autocast:
        calib_feeds = plan.make_inputs(calib_frames, 0)
        if not calib_feeds:
            raise CalibrationError(
                f"{calib_src} gave {len(calib_frames)} frame(s), too few to make one calibration batch",
                "add frames to the calibration folder (16 or more is better), or lower the batch size in --shape",
            )
        single = len(plan.components) == 1 and [t.name for t in plan.components[0].inputs] == [t.name for t in plan.inputs]
        calib_by_comp = {plan.components[0].name: calib_feeds} if single else _record(plan, calib_feeds, progress)
    if precision == "int8":
        # which nodes return to float is measured on the calibration frames and on them brighter
        # (calibration.frames.exposure_bracket): the ranges stay those of the calibration frames
        from lowlight.calibration.frames import BRACKET_FRAMES, exposure_bracket, spread

        bracket = plan.make_inputs(exposure_bracket([calib_frames[i] for i in spread(0, len(calib_frames), BRACKET_FRAMES)]), 0)
        measure_by_comp = {plan.components[0].name: bracket} if single else _record(plan, bracket, progress)
        measure_by_comp = {k: v + measure_by_comp.get(k, []) for k, v in calib_by_comp.items()}

    # -- per component: export, simplify, lower, quantize ------------------------------
    finals: dict[str, Path] = {}
    floats: dict[str, Path] = {}
    comp_reports: dict[str, dict[str, Any]] = {}
    warnings: list[str] = []
    choice = choice or {"mode": "fixed", "candidates": [(target.runtime, precision)], "left_out": [], "bf16": None}
    # The onnxruntime artifact is built at the asked precision only if onnxruntime is a candidate;
    # OpenVINO starts from the lowered FP32 graph (the fp32 "quantize" step is a no-op).
    ort_wanted = any(b != "openvino" for b, _ in choice["candidates"])
    keep_by_comp: dict[str, list[str]] = {}
    for comp in plan.components:
        cp = comp.precision or (precision if ort_wanted else "fp32")
        final, lowered, rep = _compile_component(plan, comp, cp, target, cache, progress, opts, calib_by_comp.get(comp.name, []),
                                                 measure_by_comp.get(comp.name))
        keep_by_comp[comp.name] = rep.pop("_keep_float", [])
        finals[comp.name], floats[comp.name], comp_reports[comp.name] = final, lowered, rep
        import onnx

        for w in target.check_graph(onnx.load(str(final), load_external_data=False), {"dla": opts.dla, "precision": cp}):
            warnings.append(f"{comp.name}: {w}" if len(plan.components) > 1 else w)
    for w in warnings:
        progress.say(f"    note: {w}")

    # -- verify -----------------------------------------------------------------------
    from lowlight.compile.plan import IMAGE_LAYOUTS

    out_layouts = {o: l for c in plan.components for o, l in c.output_layouts.items()}
    image_outputs = [o for o in plan.output_names if out_layouts.get(o, "other") in IMAGE_LAYOUTS]
    ov_paths: dict[str, dict[str, Path]] = {}
    ov_reports: dict[str, dict[str, Any]] = {}
    for b, prec in list(choice["candidates"]):
        if b != "openvino":
            continue
        try:
            ov_paths[prec], ov_reports[prec] = _build_openvino(plan, prec, floats, calib_by_comp, keep_by_comp, cache, progress)
        except (MemoryError, KeyboardInterrupt):
            raise
        except Exception as exc:  # noqa: BLE001 - OpenVINO/NNCF raise their own types; auto goes on without the candidate
            why = f"OpenVINO could not build {prec}: {exc.what if isinstance(exc, LowlightError) else _first_line(exc)}"
            if choice["mode"] != "auto":
                if isinstance(exc, LowlightError):
                    raise
                raise TargetError(why, "use --backend onnxruntime (or auto), and please report this with the model and command") from exc
            progress.say(f"    note: {why}; left out")
            choice["candidates"].remove((b, prec))
            choice["left_out"].append({"backend": b, "precision": prec, "rejected": why})

    with progress.stage("verify", f"vs {plan.reference_label} on {len(verify_frames)} held-out frames from {verify_src}") as note:
        feeds = plan.make_inputs(verify_frames, 1)
        if not feeds:
            raise CalibrationError(f"{verify_src} gave too few frames for one verification batch", "pass --verify-data with more frames")
        reference = [plan.reference(f) for f in progress.bar(feeds, "reference")]
        gt_feeds = gt = gt_ref = None
        if gt_frames and image_outputs and plan.inputs[0].layout in ("BCHW", "BTCHW"):
            gt_feeds, gt = _ground_truth_pairs(plan, gt_frames)
            gt_ref = [plan.reference(f) for f in gt_feeds]
        # TensorRT targets: onnxruntime runs the same graph here; the engine is verified on the device (build-engine).
        emulation = (f"onnxruntime on this host's CPU, running the ONNX graph the {target.name} TensorRT engine is built from; "
                     "the engine itself is verified on the device by `lowlight-compile build-engine`, which records it in the manifest"
                     if target.runtime == "tensorrt" else None)
        # Every candidate is verified on its own backend against the same reference outputs.
        sel = _select_backend(choice, plan, finals, ov_paths, feeds, reference, gt_feeds, gt_ref, gt, image_outputs, emulation,
                              opts, progress)
        chosen = sel["chosen_candidate"]
        verification, worst, artifact_call = sel["verification"], sel["worst"], sel["call"]
        warnings += sel["warnings"]
        reports["_worst_samples"] = (worst, image_outputs[0] if image_outputs else None, plan.inputs[0].name)
        from lowlight.compile.routing import has_routing, routing_agreement

        if has_routing(floats):  # a top-k mixture: do the reduced-precision graphs route tokens as FP32 does?
            on_ov = chosen[0] == "openvino"
            verification["routing"] = routing_agreement(plan.program, floats, ov_paths[chosen[1]] if on_ov else finals, feeds,
                                                        plan.output_names, plan.constants,
                                                        artifact_openvino_hint=sel["hint"] if on_ov else None)
        note["note"] = f"{verification['fidelity_psnr_db']:.2f} dB fidelity" + (
            f", {verification['ground_truth']['drop_db']:.3f} dB drop vs ground truth" if "ground_truth" in verification else ""
        ) + (f", routing {100 * verification['routing']['agreement']:.2f} % as FP32" if verification.get("routing", {}).get("tokens") else "") + (
            f"; {chosen[0]} {chosen[1]} chosen of {len(choice['candidates'])}" if len(choice["candidates"]) > 1 else "")
    precision = chosen[1]

    def run_artifact(feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return run_program(plan.program, artifact_call, feed, plan.output_names, plan.constants)

    if opts.pixel_format:
        with progress.stage("lower", f"{opts.pixel_format} conversion into the graph, checked against the host conversions") as note:
            plan, finals, feeds, reference, verification["pixel_format"] = _with_pixel_format(
                plan, finals, feeds, run_artifact, opts.pixel_format, cache)
            note["note"] = f"max {verification['pixel_format']['max_abs_levels']} level(s) from the host path"

    # -- bundle, profile: both run in the partial folder; only a finished bundle is renamed into place
    with staged_dir(out) as st:
        with progress.stage("bundle", str(out)):
            ov = {"paths": ov_paths[precision], "quantize": ov_reports[precision], "hint": sel["hint"]} if chosen[0] == "openvino" else None
            manifest = _write_bundle(st, out, plan, finals, floats, comp_reports, feeds, reference, verification, data,
                                     warnings, target, precision, opts, cache, progress, reports, ov, sel["selection"])
        profile = None
        with progress.stage("profile", f"{opts.profile_runs} runs on this host") as note:
            from lowlight.compile.profile import profile_bundle

            profile = profile_bundle(st, runs=opts.profile_runs)
            note["note"] = f"p50 {profile['latency_ms']['p50']:.1f} ms, {profile['fps']:.1f} frames/s"
        manifest = read_manifest(st)
        commit_dir(st, out)
    manifest.pop("report_warnings", None)
    notes = list(dict.fromkeys(list(plan.notes) + list(manifest.get("notes", []))))  # the manifest repeats the plan's
    progress.say(f"done in {time.perf_counter() - t_start:.1f} s")
    return CompileResult(out, manifest, verification, profile, notes)


def _with_pixel_format(plan: Any, finals: dict[str, Path], feeds: list[dict[str, np.ndarray]], run_artifact: Any,
                       fmt: str, cache: StageCache) -> tuple[Any, dict[str, Path], list[dict[str, np.ndarray]], list[dict[str, np.ndarray]], dict[str, Any]]:
    """The verified graph with the camera format's decode before it and encode after it (one graph).

    Checked on the verification samples: the wrapped graph on camera bytes against the
    host path (numpy conversion, `lowlight.runtime.pixel_formats`, tested against OpenCV,
    around the verified artifact); the bundle's reference outputs are that host path's bytes.
    """
    import onnx

    from lowlight.compile.export import onnx_sha256, save_onnx
    from lowlight.passes.pixel_format import frame_shape, wrap_pixel_format
    from lowlight.compile.plan import PlanComponent
    from lowlight.core.errors import VerificationError
    from lowlight.core.program import single_call_program
    from lowlight.models.family import Tensor
    from lowlight.runtime import pixel_formats as pf
    from lowlight.runtime.onnxruntime_backend import OnnxRuntimeBackend

    if len(plan.components) != 1 or len(plan.inputs) != 1 or len(plan.output_names) != 1 or plan.inputs[0].layout not in ("BCHW", "BTCHW"):
        raise LowlightError(
            f"--pixel-format needs a one-graph model with one image input and one image output; {plan.name} has "
            f"{len(plan.components)} component(s), inputs {[t.name for t in plan.inputs]}",
            "drop --pixel-format and convert on the host (Session.stream(pixel_format=...) does)",
        )
    comp, image = plan.components[0], plan.inputs[0]
    lead, (h, w) = tuple(image.shape[:-3]), tuple(image.shape[-2:])
    fshape = frame_shape(fmt, h, w)
    final = finals[comp.name]
    try:
        wrapped, _ = cache.run("pixel", onnx_sha256(final), {"format": fmt},
                               lambda d: save_onnx(wrap_pixel_format(onnx.load(str(final)), fmt, comp.inputs[0].name, comp.outputs[0]), d / "model.onnx"),
                               "model.onnx")
    except ValueError as exc:
        raise LowlightError(f"--pixel-format {fmt}: {exc}", "pick another --shape or --pixel-format") from None

    def to_frames(x: np.ndarray) -> np.ndarray:
        return np.stack([pf.from_rgb(f.transpose(1, 2, 0), fmt) for f in x.reshape(-1, 3, h, w)]).reshape(*lead, *fshape)

    def to_image(fr: np.ndarray) -> np.ndarray:
        return np.stack([pf.to_rgb(f, fmt).transpose(2, 0, 1) for f in fr.reshape(-1, *fshape)]).reshape(image.shape).astype(np.float32)

    sess = OnnxRuntimeBackend(wrapped)
    out_name = plan.output_names[0]
    new_feeds, new_ref, worst = [], [], 0
    for feed in feeds:
        frames = to_frames(feed[image.name])
        got = sess.run({"frame": frames})["enhanced_frame"]
        want = to_frames(run_artifact({image.name: to_image(frames)})[out_name])
        worst = max(worst, int(np.abs(got.astype(np.int16) - want.astype(np.int16)).max()))
        new_feeds.append({"frame": frames})
        new_ref.append({"enhanced_frame": want})
    report = {"format": fmt, "standard": "BT.601 limited range" if fmt in ("nv12", "yuyv") else "8-bit sRGB bytes",
              "max_abs_levels": worst, "samples": len(feeds)}
    if worst > 1:  # one level: float32 rounding at a .5 boundary; more would be a conversion bug
        raise VerificationError(f"the in-graph {fmt} conversion is {worst} levels from the host conversion", "please report this with the model and command")
    t_in = Tensor("frame", (*lead, *fshape), fmt, None, "uint8")
    pc = PlanComponent(comp.name, [t_in], ["enhanced_frame"], {"enhanced_frame": fmt}, comp.precision, onnx=wrapped)
    program = dict(single_call_program(comp.name, ["frame"], ["enhanced_frame"]), seed=plan.program.get("seed", 0))
    new_plan = dataclasses.replace(plan, inputs=[t_in], components=[pc], program=program, float_call=None,
                                   record={**plan.record, "pixel_format": report})
    return new_plan, {comp.name: wrapped}, new_feeds, new_ref, report


def _record(plan: Any, feeds: list[dict[str, np.ndarray]], progress: Progress) -> dict[str, list[dict[str, np.ndarray]]]:
    from lowlight.compile.plan import record_component_feeds

    progress.say(f"    calibration: running the float program on {len(feeds)} sample(s) to collect every component's inputs")
    return record_component_feeds(plan, feeds)


def _ort_call(paths: dict[str, Path]) -> Any:
    """`call(component, feeds)` over one onnxruntime session per component (opened once)."""
    from lowlight.runtime.onnxruntime_backend import OnnxRuntimeBackend

    sessions: dict[str, Any] = {}

    def call(name: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if name not in sessions:
            sessions[name] = OnnxRuntimeBackend(paths[name])
        return dict(sessions[name].run(feeds))

    return call


def _first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message (OpenVINO's run to pages)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return (lines[0][:300] if lines else "") or type(exc).__name__


def _ov_call(paths: dict[str, Path], hint: str) -> Any:
    """`call(component, feeds)` over one OpenVINO compiled model per component (opened once), at `hint`."""
    from lowlight.runtime.openvino_backend import OpenVINOBackend

    sessions: dict[str, Any] = {}

    def call(name: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if name not in sessions:
            sessions[name] = OpenVINOBackend(paths[name], precision_hint=hint)
        return dict(sessions[name].run(feeds))

    return call


def _build_openvino(plan: Any, precision: str, floats: dict[str, Path], calib_by_comp: dict[str, list[dict[str, np.ndarray]]],
                    keep_by_comp: dict[str, list[str]], cache: StageCache, progress: Progress) -> tuple[dict[str, Path], dict[str, Any]]:
    """OpenVINO IR per component from the lowered FP32 graph (fp32/bf16: the same IR), NNCF INT8 for int8; cached."""
    from lowlight.compile import openvino as ovc
    from lowlight.compile.export import onnx_sha256
    from lowlight.compile.quantize import weight_bits

    versions = {"openvino": ovc.openvino_version(), "tools": tool_versions()}
    bits = weight_bits("ort-u8s8")  # OpenVINO's CPU INT8 kernels are u8 x s8 as onnxruntime's
    paths: dict[str, Path] = {}
    report: dict[str, Any] = {}
    with progress.stage("quantize", f"OpenVINO {precision} (IR from the lowered graph" + (", NNCF INT8 on the OpenVINO model)" if precision == "int8" else ")")) as note:
        hits = []
        for comp in plan.components:
            lowered = floats[comp.name]
            ir, hit = cache.run("openvino-ir", onnx_sha256(lowered), versions, lambda d: ovc.to_ir(lowered, d / "model.xml"), "model.xml")
            hits.append(hit)
            if precision == "int8" and (comp.precision or "int8") == "int8":
                feeds = calib_by_comp.get(comp.name, [])
                if not feeds:
                    raise CalibrationError(f"component {comp.name!r} got no calibration samples", "pass more --calib frames")
                keep = keep_by_comp.get(comp.name, [])

                def _q(d: Path, ir: Path = ir, feeds: list[dict[str, np.ndarray]] = feeds, keep: list[str] = keep) -> None:
                    rep = ovc.quantize_ir(ir, d / "model.xml", feeds, keep, bits)
                    (d / "quantize.json").write_text(json.dumps(rep, indent=1))

                ir, hit = cache.run("openvino-int8", onnx_sha256(lowered), {**versions, "calib": _feeds_hash(feeds), "keep": keep, "weight_bits": bits}, _q, "model.xml")
                hits.append(hit)
                report[comp.name] = json.loads((ir.parent / "quantize.json").read_text())
            paths[comp.name] = ir
        note["note"] = ("cached, " if all(hits) else "") + f"hint {ovc.HINTS[precision]}"
    return paths, report


def _select_backend(choice: dict[str, Any], plan: Any, finals: dict[str, Path], ov_paths: dict[str, dict[str, Path]],
                    feeds: list[dict[str, np.ndarray]], reference: list[dict[str, np.ndarray]], gt_feeds: Any, gt_ref: Any, gt: Any,
                    image_outputs: list[str], emulation: str | None, opts: CompileOptions, progress: Progress) -> dict[str, Any]:
    """Verify every candidate on its own backend, reject unfused INT8, time the rest interleaved, keep the fastest.

    With one candidate this is today's verify: its VerificationError propagates. With several, a
    failing candidate is recorded and the next tried; if none passes, the most faithful one's error is raised.
    """
    from lowlight.compile import openvino as ovc
    from lowlight.compile.verify import verify
    from lowlight.core.errors import VerificationError
    from lowlight.core.program import run_program

    cands = list(choice["candidates"])
    several = len(cands) > 1
    records: list[dict[str, Any]] = []
    runs: list[dict[str, Any]] = []
    for backend, prec in cands:
        hint = ovc.HINTS[prec] if backend == "openvino" else None
        call = _ov_call(ov_paths[prec], hint) if backend == "openvino" else _ort_call(finals)  # type: ignore[arg-type]

        def run(feed: dict[str, np.ndarray], call: Any = call) -> dict[str, np.ndarray]:
            return run_program(plan.program, call, feed, plan.output_names, plan.constants)

        rec: dict[str, Any] = {"backend": backend, "precision": prec, "hint": hint}
        worst: list[Any] = []
        error = None
        if several:
            progress.say(f"    verifying {backend} {prec}" + (f" (hint {hint})" if hint else ""))
        try:
            v = verify(run, reference, feeds, opts.min_fidelity, opts.max_drop, image_outputs, gt_feeds, gt_ref, gt,
                       precision=prec, reference_label=plan.reference_label, emulation=emulation, worst=worst)
        except VerificationError as exc:
            if not several:
                raise
            v, error = exc.report, exc  # type: ignore[attr-defined]
            rec["rejected"] = f"failed verification: {exc.what}"
        except (MemoryError, KeyboardInterrupt):
            raise
        except Exception as exc:  # noqa: BLE001 - a backend that cannot run its candidate: the others still can
            if not several or isinstance(exc, LowlightError):
                raise
            rec.update(rejected=f"{backend} could not run it: {_first_line(exc)}", passed=False)
            records.append(rec)
            runs.append({"verification": {}, "worst": [], "call": call, "run": run,
                         "error": TargetError(f"{backend} {prec}: {_first_line(exc)}", "use another --backend")})
            continue
        rec.update(passed=bool(v["passed"]), fidelity_psnr_db=float(v["fidelity_psnr_db"]), fidelity_psnr_db_min=float(v["fidelity_psnr_db_min"]))
        if prec == "int8":
            rec["fusion"] = _int8_fusion(backend, ov_paths.get(prec) if backend == "openvino" else finals, hint, plan)
            if not rec["fusion"]["fused"] and several and not rec.get("rejected"):
                rec["rejected"] = (f"{rec['fusion']['quantized_convs'] - rec['fusion']['int8_kernels']} of {rec['fusion']['quantized_convs']} "
                                   f"quantized convolutions run in float kernels on {backend} (Q/DQ not fused): slower than it should be")
        records.append(rec)
        runs.append({"verification": v, "worst": worst, "call": call, "run": run, "error": error})
    contenders = [i for i, r in enumerate(records) if r["passed"] and not r.get("rejected")]
    if len(contenders) > 1:
        progress.say(f"    timing {len(contenders)} candidates interleaved, {ovc.SELECT_ROUNDS} rounds")
        times = ovc.time_interleaved({str(i): (lambda run=runs[i]["run"]: run(feeds[0])) for i in contenders})
        for i in contenders:
            records[i]["times_ms"] = [round(t, 3) for t in times[str(i)]]
            records[i]["median_ms"] = float(np.median(times[str(i)]))
    best, why = ovc.pick(records)
    if runs[best]["error"] is not None:  # no candidate passed verification: fail as a single build would
        raise runs[best]["error"]
    records[best]["chosen"] = True
    warnings = []
    fusion = records[best].get("fusion")
    if fusion and not fusion["fused"]:
        warnings.append(f"{fusion['quantized_convs'] - fusion['int8_kernels']} of {fusion['quantized_convs']} quantized convolutions run in "
                        f"float kernels on {records[best]['backend']} (Q/DQ not fused): this INT8 bundle may be no faster than FP32")
    chosen = (records[best]["backend"], records[best]["precision"])
    selection = {"mode": choice["mode"], "chosen": f"{chosen[0]} {chosen[1]}", "reason": why,
                 "candidates": records + list(choice.get("left_out", [])), "bf16": choice.get("bf16"),
                 "timing": {"rounds": ovc.SELECT_ROUNDS, "interleaved": True, "statistic": "median", "feed": "the first verification sample"}}
    verification = runs[best]["verification"]
    if choice["mode"] != "fixed":  # the cpu target: say what ran and why (TensorRT targets: `emulation` says it)
        verification["backend"] = chosen[0] + (f" (CPU, precision hint {records[best]['hint']})" if records[best]["hint"] else "")
        verification["backend_selection"] = selection
    return {"chosen_candidate": chosen, "verification": verification, "worst": runs[best]["worst"], "call": runs[best]["call"],
            "hint": records[best]["hint"], "selection": selection, "warnings": warnings}


def _int8_fusion(backend: str, paths: dict[str, Path] | None, hint: str | None, plan: Any) -> dict[str, Any]:
    """The INT8 fusion check (`lowlight.compile.openvino`) over every quantized component, summed."""
    from lowlight.compile import openvino as ovc

    parts = []
    for comp in plan.components:
        path = (paths or {})[comp.name]
        if backend == "openvino":
            import openvino as ov

            from lowlight.runtime.openvino_backend import OpenVINOBackend

            parts.append(ovc.ov_int8_fusion(ov.Core().read_model(str(path)), OpenVINOBackend(path, precision_hint=hint or "f32").compiled))
        else:
            parts.append(ovc.ort_int8_fusion(path))
    out = dict(parts[0])
    out.update(quantized_convs=sum(p["quantized_convs"] for p in parts), int8_kernels=sum(p["int8_kernels"] for p in parts),
               float_kernels=[k for p in parts for k in p["float_kernels"]][:20], fused=all(p["fused"] for p in parts))
    return out


def _compile_component(plan: Any, comp: Any, precision: str, target: Any, cache: StageCache, progress: Progress,
                       opts: CompileOptions, calib_feeds: list[dict[str, np.ndarray]],
                       measure_feeds: list[dict[str, np.ndarray]] | None = None) -> tuple[Path, Path, dict[str, Any]]:
    """Export (or take the user's ONNX), simplify, lower and quantize one component; all cached by content hash.
    `measure_feeds`: where INT8's float set is measured (default: the calibration feeds)."""
    import onnx

    from lowlight.compile.export import export_onnx, onnx_sha256
    from lowlight.compile.graph import keep_float_nodes
    from lowlight.compile.quantize import fp16_autocast, modelopt_missing, quantize_int8, to_fp16
    from lowlight.compile.simplify import simplify

    tag = f" [{comp.name}]" if len(plan.components) > 1 else ""
    report: dict[str, Any] = {}
    # -- export -----------------------------------------------------------------------
    if comp.onnx is not None:
        exported = Path(comp.onnx)
        _fix_input_shapes = {t.name: t.shape for t in comp.inputs}
        with progress.stage("export", f"given as ONNX ({exported.name}){tag}") as note:
            exported, hit = cache.run("import", onnx_sha256(exported), {"shapes": _fix_input_shapes},
                                      lambda d: _import_onnx(Path(comp.onnx), _fix_input_shapes, d / "model.onnx"), "model.onnx")
            note["note"] = "cached" if hit else "no export needed"
    else:
        example = {t.name: np.random.default_rng(0).random(t.shape, dtype=np.float32) for t in comp.inputs}
        # the model's weights and source are part of the key: editing the model must not reuse a stale export
        key = dict(plan.cache_identity, component=comp.name)
        with progress.stage("export", f"torch.onnx (dynamo){tag} at {'x'.join(map(str, comp.inputs[0].shape))}") as note:
            exported, hit = cache.run("export", str(key.get("weights")), key,
                                      lambda d: export_onnx(comp.module, example, comp.outputs, d / "model.onnx"), "model.onnx")
            note["note"] = "cached" if hit else ""

    # -- simplify ---------------------------------------------------------------------
    def _simplify(d: Path) -> None:
        rep = simplify(exported, d / "model.onnx")
        (d / "simplify.json").write_text(json.dumps(rep, indent=1))

    with progress.stage("simplify", f"onnxsim, onnxslim fallback; checked on random inputs{tag}") as note:
        simplified, hit = cache.run("simplify", onnx_sha256(exported), {}, _simplify, "model.onnx")
        report["simplify"] = json.loads((simplified.parent / "simplify.json").read_text())
        note["note"] = ("cached, " if hit else "") + f"{report['simplify']['tool']}, {report['simplify']['nodes_before']} -> {report['simplify']['nodes_after']} nodes"

    # -- lower ------------------------------------------------------------------------
    passes = target.lowering_passes()

    def _lower(d: Path) -> None:
        from lowlight.compile.export import save_onnx

        m = onnx.load(str(simplified))
        for _, fn in passes:
            m = fn(m)
        if passes:  # fold what the rewrites exposed (e.g. Unsqueeze of a weight), checked like simplify
            save_onnx(m, d / "raw.onnx")
            rep = simplify(d / "raw.onnx", d / "model.onnx")
            (d / "simplify.json").write_text(json.dumps(rep, indent=1))
        else:
            save_onnx(m, d / "model.onnx")

    with progress.stage("lower", (", ".join(n for n, _ in passes) or "nothing to do for this target") + tag) as note:
        lowered, hit = cache.run(
            "lower", onnx_sha256(simplified), {"target": target.name, "trt": getattr(target, "trt_version", None), "passes": [n for n, _ in passes]}, _lower, "model.onnx"
        )
        note["note"] = "cached" if hit else ""
    keep_float = keep_float_nodes(onnx.load(str(lowered)), plan.keep_float, onnx.load(str(simplified)) if passes else None)
    # under INT8 the family's policy is a floor (or nothing, int8_floor=False); the rest is measured
    int8_floor = keep_float if plan.keep_float.int8_floor else []
    report["_keep_float"] = keep_float if precision != "int8" else int8_floor  # popped by _build: OpenVINO's INT8 ignores the same nodes

    # -- quantize ---------------------------------------------------------------------
    with progress.stage("quantize", (f"{precision} ({target.qdq_flavour} Q/DQ)" if precision == "int8" else precision) + tag) as note:
        if precision == "fp32":
            final = lowered
            report["quantize"] = {"precision": "fp32"}
        elif _wants_autocast(opts, target, precision) and calib_feeds \
                and not _has_plugin_nodes(lowered):  # AutoCast's FP32 run cannot execute TensorRT plugin nodes
            def _autocast(d: Path) -> None:
                rep = fp16_autocast(lowered, d / "model.onnx", keep_float, calib_feeds)
                (d / "quantize.json").write_text(json.dumps(rep, indent=1))

            final, hit = cache.run("fp16", onnx_sha256(lowered), {"keep": keep_float, "engine": "modelopt.autocast",
                                                                  "calib": _feeds_hash(calib_feeds)}, _autocast, "model.onnx")
            auto = json.loads((final.parent / "quantize.json").read_text())
            report["quantize"] = {"precision": "fp16", "kept_float_nodes": len(keep_float), **auto}
            note["note"] = ("cached, " if hit else "") + f"AutoCast: {len(keep_float)} nodes FP32 by the family's policy, {len(auto['fp32_by_measurement'])} more by measurement"
        elif precision == "fp16":
            final, hit = cache.run("fp16", onnx_sha256(lowered), {"keep": keep_float}, lambda d: to_fp16(lowered, d / "model.onnx", keep_float), "model.onnx")
            report["quantize"] = {"precision": "fp16", "kept_float_nodes": len(keep_float), "engine": "onnxruntime.transformers.float16"}
            note["note"] = "cached" if hit else ""
        else:
            if not calib_feeds:
                raise CalibrationError(f"component {comp.name!r} got no calibration samples", "pass more --calib frames")
            quantizer = quantize_int8
            if plan.quantize_branches:
                from lowlight.compile.quantize_branches import quantize_int8_with_ifs as quantizer

            from lowlight.compile.quantize import weight_bits
            from lowlight.compile.sensitivity import MARGIN_DB, VERSION

            budget = opts.min_fidelity + MARGIN_DB
            measure = measure_feeds or calib_feeds

            def _int8(d: Path) -> None:
                rep = quantizer(
                    lowered, d / "model.onnx", calib_feeds, target.qdq_flavour, int8_floor,
                    engine=opts.int8_engine, min_fidelity=opts.min_fidelity, say=progress.say, budget_db=budget,
                    measure_feeds=measure,
                )
                (d / "quantize.json").write_text(json.dumps(rep, indent=1))

            final, hit = cache.run(
                "int8", onnx_sha256(lowered),
                # "select": the engine choice also requires onnxruntime to fuse the Q/DQ convolutions and, with a measured
                # float set, some INT8 compute left (older entries checked neither); "modelopt": whether auto could try
                # Model Optimizer for TensorRT (installing it changes the answer)
                {"flavour": target.qdq_flavour, "calib": _feeds_hash(calib_feeds), "engine": opts.int8_engine, "keep": int8_floor,
                 "select": "fused+int8-left", "float_set": {"measured": VERSION, "budget_db": budget, "frames": _feeds_hash(measure)},
                 "weight_bits": weight_bits(target.qdq_flavour),
                 **({"modelopt": modelopt_missing() is None} if target.qdq_flavour == "trt-s8s8" and opts.int8_engine == "auto" else {})},
                _int8, "model.onnx",
            )
            report["quantize"] = json.loads((final.parent / "quantize.json").read_text())
            report["_keep_float"] = report["quantize"].get("kept_float", int8_floor)
            note["note"] = ("cached, " if hit else "") + f"engine {report['quantize']['engine']}, {len(calib_feeds)} calibration samples"
    return final, lowered, report


def _wants_autocast(opts: CompileOptions, target: Any, precision: str) -> bool:
    """FP16 by Model Optimizer's AutoCast: --fp16-engine autocast, or auto on a TensorRT target where it imports."""
    from lowlight.compile.quantize import modelopt_missing

    if precision != "fp16" or opts.fp16_engine == "ort":
        return False
    if opts.fp16_engine == "autocast":
        if target.qdq_flavour != "trt-s8s8":
            raise LowlightError(f"--fp16-engine autocast is for TensorRT targets, not {target.name}", "use --fp16-engine auto or ort")
        if modelopt_missing():
            raise LowlightError(f"--fp16-engine autocast needs NVIDIA Model Optimizer ({modelopt_missing()})",
                                "pip install 'lowlight-compile[modelopt]', or use --fp16-engine ort")
        return True
    return target.qdq_flavour == "trt-s8s8" and modelopt_missing() is None


def _has_plugin_nodes(path: Path) -> bool:
    """Does the graph at `path` hold TensorRT plugin nodes (the lowlight custom domain)?"""
    import onnx

    from lowlight.core.onnx_graph import has_custom_nodes

    return has_custom_nodes(onnx.load(str(path), load_external_data=False))


def _import_onnx(src: Path, shapes: dict[str, tuple[int, ...]], dst: Path) -> None:
    """A user's ONNX with its dynamic input dimensions fixed to `shapes` (static shapes: what TensorRT and our passes need)."""
    import onnx

    from lowlight.compile.export import save_onnx
    from lowlight.core.onnx_graph import name_nodes

    m = onnx.load(str(src))
    for i in m.graph.input:
        if i.name in shapes:
            for d, v in zip(i.type.tensor_type.shape.dim, shapes[i.name]):
                d.ClearField("dim_param")
                d.dim_value = int(v)
    try:
        m = onnx.shape_inference.infer_shapes(m)
    except Exception:  # shapes are a help for later passes, not a requirement
        pass
    save_onnx(name_nodes(m), dst)


def _feeds_hash(feeds: list[dict[str, np.ndarray]]) -> str:
    import hashlib

    h = hashlib.sha256()
    for f in feeds:
        for k, v in f.items():
            h.update(k.encode())
            h.update(np.ascontiguousarray(v).tobytes()[::97])  # sparse sample: fast, still content-sensitive
            h.update(str(v.shape).encode())
    return h.hexdigest()


def _write_bundle(st: Path, out: Path, plan: Any, finals: dict[str, Path], floats: dict[str, Path], comp_reports: dict[str, Any],
                  feeds: list[dict[str, np.ndarray]], reference: list[dict[str, np.ndarray]], verification: dict[str, Any],
                  data: Any, warnings: list[str], target: Any, precision: str, opts: CompileOptions, cache: StageCache,
                  progress: Progress, reports: dict[str, Any], ov: dict[str, Any] | None = None,
                  selection: dict[str, Any] | None = None) -> dict[str, Any]:
    """Copy every component into the partial folder and write the manifest (format 2).

    `ov` (an OpenVINO bundle): {"paths": IR per component, "quantize": NNCF reports, "hint": the pinned
    precision hint}; the components are then OpenVINO IR (`file` .xml, `external_data` [.bin]).
    `selection`: how the backend was chosen (`_select_backend`), recorded as `backend_selection`.
    """
    import onnx

    from lowlight.compile.export import onnx_files
    from lowlight.core.onnx_graph import op_counts
    from lowlight.compile.verify import to_markdown
    from lowlight.core.bundle import write_manifest
    from lowlight.core.errors import TargetError

    single = len(plan.components) == 1
    components: dict[str, Any] = {}
    ops: dict[str, int] = {}
    runtime = "openvino" if ov else target.runtime
    for comp in plan.components:
        if ov:
            from lowlight.compile.openvino import ir_op_counts

            fname = "model.xml" if single else f"{comp.name}.xml"
            _copy_ir(ov["paths"][comp.name], st / fname)
            counts = ir_op_counts(st / fname)
            for k, v in counts.items():
                ops[k] = ops.get(k, 0) + v
            shapes = {o: reference[0][o].shape for o in comp.outputs if o in reference[0]}
            stages = dict(comp_reports[comp.name])
            if comp.name in ov["quantize"]:
                ort_q = stages.get("quantize") or {}
                stages["quantize"] = dict(ov["quantize"][comp.name])
                if ort_q.get("engines"):  # NNCF ignored the nodes measured on onnxruntime's Q/DQ graph: say so
                    stages["quantize"]["float_nodes"] = {**ort_q["engines"][ort_q["engine"]].get("float_nodes", {}),
                                                         "measured_on": f"onnxruntime Q/DQ graph ({ort_q['engine']})"}
                    stages["quantize"]["kept_float"] = ort_q.get("kept_float", [])
            else:
                stages["quantize"] = {"precision": precision, "openvino_precision_hint": ov["hint"]}
            components[comp.name] = {
                "file": fname, "external_data": [Path(fname).with_suffix(".bin").name], "format": "openvino-ir",
                "precision": comp.precision or precision,
                "inputs": [t.to_manifest() for t in comp.inputs],
                "outputs": [{"name": o, "shape": list(shapes.get(o, ())) or [1], "dtype": str(reference[0][o].dtype) if o in reference[0] else "float32",
                             "layout": comp.output_layouts.get(o, "other")}
                            for o in comp.outputs],
                "ops": counts, "stages": stages,
            }
            continue
        fname = "model.onnx" if single else f"{comp.name}.onnx"
        src_files = onnx_files(finals[comp.name])
        ext = []
        for f in src_files:
            dst = st / (fname if f == src_files[0] else fname + ".data")
            shutil.copyfile(f, dst)
            if f != src_files[0]:
                ext.append(dst.name)
        if ext:  # the copied graph must point at its renamed data file
            from lowlight.compile.export import save_onnx

            save_onnx(onnx.load(str(st / fname)), st / fname)
            ext = [p.name for p in onnx_files(st / fname)[1:]]
        counts = op_counts(onnx.load(str(st / fname), load_external_data=False))
        for k, v in counts.items():
            ops[k] = ops.get(k, 0) + v
        shapes = {o: reference[0][o].shape for o in comp.outputs if o in reference[0]}
        components[comp.name] = {
            "file": fname, "external_data": ext, "precision": comp.precision or precision,
            "inputs": [t.to_manifest() for t in comp.inputs],
            "outputs": [{"name": o, "shape": list(shapes.get(o, ())) or [1], "dtype": str(reference[0][o].dtype) if o in reference[0] else "float32",
                         "layout": comp.output_layouts.get(o, "other")}
                        for o in comp.outputs],
            "ops": counts, "stages": comp_reports[comp.name],
        }
    # internal outputs' shapes come from the float program; the program outputs' from the reference
    _fill_internal_shapes(plan, components, feeds[0])
    n_ref = min(2, len(feeds))
    np.savez_compressed(
        st / "reference.npz",
        **{f"input:{k}": np.stack([f[k] for f in feeds[:n_ref]]) for k in feeds[0]},
        **{f"output:{o}": np.stack([r[o] for r in reference[:n_ref]]) for o in plan.output_names},
    )
    if plan.constants:
        np.savez(st / "constants.npz", **plan.constants)
    # The verify stage hands over its worst samples (in `reports`, popped: they are arrays, not manifest material).
    worst, worst_output, worst_input = reports.pop("_worst_samples", ([], None, None))
    if worst_output:
        from lowlight.compile.verify import write_error_maps

        verification["error_maps"] = write_error_maps(st, worst, worst_output, worst_input)
    (st / "verification.json").write_text(json.dumps(verification, indent=2) + "\n")
    (st / "verification.md").write_text(to_markdown(verification, f"Verification: {plan.name} {plan.config}, {target.name}, {precision}", data=data.record()))
    # Model card facts into every graph's metadata_props, before a TensorRT engine is built from it.
    from lowlight.compile.report_html import MODEL_CARD, card_facts, model_card, stamp_onnx

    card_base: dict[str, Any] = {
        "name": out.name, **plan.record, "target": target.name, "runtime": runtime, "precision": precision,
        "inputs": [t.to_manifest() for t in plan.inputs], "data": data.record(), "tools": tool_versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "outputs": [{"name": o, "shape": list(reference[0][o].shape), "dtype": str(reference[0][o].dtype),
                     "layout": {o2: l for c in plan.components for o2, l in c.output_layouts.items()}.get(o, "other")}
                    for o in plan.output_names],
    }
    if target.runtime == "tensorrt":
        card_base["tensorrt"] = {"trt_version": str(getattr(target, "version", "")), "arch": getattr(getattr(target, "spec", None), "arch", "?")}
        card_base["engine_status"] = "built on the device by `lowlight-compile build-engine` (engines are tied to one TensorRT version and GPU)"
    for comp_entry in components.values():
        if ov:  # the same facts in the IR's rt_info (OpenVINO's metadata), read back by ov.Model.get_rt_info
            _stamp_ir(st / comp_entry["file"], card_facts(card_base, verification))
        else:
            stamp_onnx(st / comp_entry["file"], card_facts(card_base, verification))
    extra: dict[str, Any] = {}
    if target.runtime == "tensorrt":
        if not single:
            raise TargetError(
                f"{plan.name} compiles to {len(plan.components)} components; TensorRT build plans are made for one graph per bundle so far",
                "use the family's unrolled form (one graph), or --target cpu",
            )
        comp = plan.components[0]
        context = {
            "model_path": str(st / "model.onnx"),
            "float_model_path": str(floats[comp.name]),
            "precision": precision,
            "input_shapes": {t.name: list(t.shape) for t in comp.inputs},
            "output_names": list(comp.outputs),
            "reference_path": str(st / "reference.npz"),
            "cache_dir": str(cache.root),
            "dla": opts.dla,
            "verify": {"min_fidelity": opts.min_fidelity},
        }
        extra = target.finish_bundle(str(st), context)
    out_layouts = {o: l for c in plan.components for o, l in c.output_layouts.items()}
    tools = tool_versions()
    cpu_facts: dict[str, Any] = {}
    if target.backends:  # the cpu target: what the backend choice depended on
        from lowlight.compile.openvino import openvino_version

        if openvino_version():
            tools["openvino"] = openvino_version()
        cpu_facts["backend"] = runtime
        if selection is not None:
            cpu_facts["host_cpu"] = {"bf16": selection.get("bf16")}
            cpu_facts["backend_selection"] = selection
        if ov:
            cpu_facts["openvino"] = {"device": "CPU", "inference_precision_hint": ov["hint"], "version": tools.get("openvino", ""),
                                     "why_pinned": "OpenVINO's default hint on a CPU with BF16 is bf16: an unpinned FP32 bundle would run in BF16"}
    manifest: dict[str, Any] = {
        "name": out.name,
        **({"model": "model.onnx"} if single and not ov else {}),
        **plan.record,
        "components": components,
        "program": plan.program,
        **({"constants": "constants.npz"} if plan.constants else {}),
        "target": target.name,
        "runtime": runtime,
        "precision": precision,
        "qdq_flavour": target.qdq_flavour if precision == "int8" and not ov else None,
        **cpu_facts,
        "inputs": [t.to_manifest() for t in plan.inputs],
        "outputs": [{"name": o, "shape": list(reference[0][o].shape), "dtype": str(reference[0][o].dtype),
                     "layout": out_layouts.get(o, "other"), **({"range": [0.0, 1.0]} if out_layouts.get(o) in ("BCHW", "BTCHW") else {})}
                    for o in plan.output_names],
        "layout": plan.inputs[0].layout,
        "reference": "reference.npz",
        "ops": dict(sorted(ops.items())),
        "stages": {"seconds": progress.timings, **reports, **({"components": {k: c["stages"] for k, c in components.items()}} if not single else components[plan.components[0].name]["stages"])},
        "verification": {k: v for k, v in verification.items() if k not in ("per_sample", "error_maps", "backend_selection")},
        "data": data.record(),
        "warnings": warnings,
        "notes": list(plan.notes),
        "tools": tools,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    manifest.update(extra)
    (st / MODEL_CARD).write_text(model_card(manifest, verification))
    return write_manifest(st, manifest)


def _copy_ir(src: Path, dst: Path) -> None:
    """Copy an OpenVINO IR (.xml and its .bin) to `dst` (.xml), the .bin renamed to match (OpenVINO finds it by name)."""
    shutil.copyfile(src, dst)
    shutil.copyfile(src.with_suffix(".bin"), dst.with_suffix(".bin"))


def _stamp_ir(xml: Path, facts: dict[str, str]) -> None:
    """Write the model card facts into the IR's rt_info under `lowlight` (as `stamp_onnx` does for ONNX metadata)."""
    import openvino as ov

    model = ov.Core().read_model(str(xml))
    for k, v in facts.items():
        model.set_rt_info(str(v), ["lowlight", k.replace("lowlight.", "")])
    tmp = xml.with_name(xml.stem + ".stamped.xml")
    ov.save_model(model, str(tmp), compress_to_fp16=False)
    del model
    tmp.replace(xml)
    tmp.with_suffix(".bin").replace(xml.with_suffix(".bin"))


def _fill_internal_shapes(plan: Any, components: dict[str, Any], feed: dict[str, np.ndarray]) -> None:
    """Output shapes of every component, from one float run of the program (internal values have no reference)."""
    from lowlight.core.program import run_program

    internal = {o["name"] for c in components.values() for o in c["outputs"]} - set(plan.output_names)
    if plan.float_call is None or not internal:  # every output is a program output: the reference gave its shape
        return
    shapes: dict[str, dict[str, list[int]]] = {}
    dtypes: dict[str, dict[str, str]] = {}

    def call(name: str, f: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outs = plan.float_call(name, f)
        shapes.setdefault(name, {k: list(v.shape) for k, v in outs.items()})
        dtypes.setdefault(name, {k: str(v.dtype) for k, v in outs.items()})
        return outs

    run_program(plan.program, call, feed, plan.output_names, plan.constants)
    for name, comp in components.items():
        for o in comp["outputs"]:
            if name in shapes and o["name"] in shapes[name]:
                o["shape"] = shapes[name][o["name"]]
                o["dtype"] = dtypes[name][o["name"]]


def _ground_truth_pairs(plan: Any, clean_frames: list[np.ndarray]) -> tuple[list[dict[str, np.ndarray]], list[np.ndarray]]:
    """Synthetic (low-light input, clean target) pairs from clean photos, with the training degradation."""
    from lowlight.calibration.degrade import degrade_clip

    made = plan.make_ground_truth(clean_frames, 7) if getattr(plan, "make_ground_truth", None) else None
    if made is not None:  # the family's own degradation (DarkDiff: raw unprocessing and sensor noise)
        return list(made[0]), list(made[1])
    rng = np.random.default_rng(7)
    name = plan.inputs[0].name
    clean = plan.make_inputs(clean_frames, 2)
    feeds, gts = [], []
    for feed in clean:
        rgb = feed[name]
        flat = rgb.reshape(-1, *rgb.shape[-3:]).transpose(0, 2, 3, 1)  # frames x H x W x 3
        low = degrade_clip(flat, rng).transpose(0, 3, 1, 2).reshape(rgb.shape)
        feeds.append({**feed, name: low.astype(np.float32)})
        gts.append(rgb)
    return feeds, gts
