"""What to compile, whatever it came from: a model family, a user's model file, or an ONNX file.

A `Plan` holds the program inputs, the components (each a PyTorch module to
export, or an ONNX file given by the user), the program over them, the
family's keep-float policy, how to turn real frames into feeds, and the
reference the bundle is verified against: the model *as the user trained it*,
running the same schedule. The pipeline (`compile.pipeline`) only reads Plans.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from lowlight.core.errors import LowlightError, ShapeError
from lowlight.core.program import run_program
from lowlight.models.family import Family, KeepFloat, Tensor

if TYPE_CHECKING:
    import torch

Feed = dict[str, np.ndarray]

#: Layouts that hold images: fidelity (PSNR/SSIM) is measured on outputs with these.
IMAGE_LAYOUTS = ("BCHW", "BTCHW", "RGGB")


@dataclass
class PlanComponent:
    """One graph to produce: `module` is exported, or `onnx` (a user's file) is taken as the export."""

    name: str
    inputs: list[Tensor]
    outputs: list[str]
    output_layouts: dict[str, str]
    precision: str | None = None
    module: "torch.nn.Module | None" = None
    onnx: Path | None = None


@dataclass
class Plan:
    """Everything the pipeline needs to compile, verify and describe one model."""

    name: str  # family name, user model spec, or ONNX file name
    config: str
    options: dict[str, str]
    inputs: list[Tensor]
    components: list[PlanComponent]
    program: dict[str, Any]
    constants: dict[str, np.ndarray]
    keep_float: KeepFloat
    quantize_branches: bool
    make_inputs: Callable[[list[np.ndarray], int], list[Feed]]
    #: The model as trained, same schedule: feed -> {output name: array}.
    reference: Callable[[Feed], dict[str, np.ndarray]]
    reference_label: str
    #: Run the compiled form's float modules (calibration inputs of every component).
    float_call: Callable[[str, Feed], dict[str, np.ndarray]] | None
    #: Manifest entries that say what was compiled (family, options, checkpoint...).
    record: dict[str, Any] = field(default_factory=dict)
    #: Identity of the weights and code for the export cache key.
    cache_identity: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    #: Clean frames -> (feeds, targets) as the family's training data is made; None: sRGB darkening of input 0.
    make_ground_truth: Callable[[list[np.ndarray], int], Any] | None = None
    #: A stage between load and export (the distill stage): (name, run(say, cache_root, force) -> the plan to compile).
    prepare: tuple[str, Callable[[Callable[[str], None], Path, bool], "Plan"]] | None = None

    @property
    def output_names(self) -> list[str]:
        """The program's outputs: the last call's outputs, in order."""
        return list(self.program["steps"][-1]["out"].values()) if self.program["steps"][-1]["op"] == "call" else []


def torch_call(components: list[PlanComponent]) -> Callable[[str, Feed], dict[str, np.ndarray]]:
    """`call(component, feeds)` over PyTorch modules: inputs positionally in declared order."""
    import torch

    by_name = {c.name: c for c in components}

    def call(name: str, feeds: Feed) -> dict[str, np.ndarray]:
        c = by_name[name]
        with torch.no_grad():
            out = c.module(*(torch.from_numpy(np.ascontiguousarray(feeds[t.name])) for t in c.inputs))  # type: ignore[misc]
        outs = out if isinstance(out, (tuple, list)) else (out,)
        return {n: o.detach().cpu().numpy() for n, o in zip(c.outputs, outs)}

    return call


def record_component_feeds(plan: Plan, feeds: list[Feed]) -> dict[str, list[Feed]]:
    """Each component's inputs at every call, running the float program on `feeds` (its calibration data)."""
    assert plan.float_call is not None
    seen: dict[str, list[Feed]] = {c.name: [] for c in plan.components}
    call = plan.float_call

    def recording(name: str, f: Feed) -> dict[str, np.ndarray]:
        seen[name].append({k: np.ascontiguousarray(v) for k, v in f.items()})
        return call(name, f)

    for feed in feeds:
        run_program(plan.program, recording, feed, plan.output_names, plan.constants)
    return seen


# -- from a family --------------------------------------------------------------------------


def family_plan(fam: Family, config: str, options: dict[str, str], shape: str, checkpoint: str | None) -> Plan:
    """Build the plan of a family at `config`/`options` with `checkpoint`'s weights (None: shipped).

    A diffusion family compiled for K steps whose student was not found beside
    the teacher gets `plan.prepare`: the distill stage, which the pipeline runs
    as its own stage before compiling the plan it returns.
    """
    from lowlight.models import load_checkpoint

    notes: list[str] = []
    if checkpoint is None and fam.weights_path(config) is None:
        model = fam.build(config, **options).eval()  # a user's model with its own weights
    else:
        loaded = load_checkpoint(fam.name, config, checkpoint, **options)
        model, notes = loaded.model, list(loaded.notes)
    plan = _plan_of(fam, model, config, options, shape, checkpoint, notes, {})
    k = int(options[fam.distill_option]) if fam.distill_option and options.get(fam.distill_option) else None
    if k is not None and fam.needs_student(k, **{o: v for o, v in options.items() if o != fam.distill_option}) and getattr(model, "student_steps", None) != k:
        ckpt = Path(checkpoint) if checkpoint else fam.weights_path(config)

        def distill_stage(say: Callable[[str], None], cache_root: Path, force: bool) -> Plan:
            """The distill stage: the K-step student of this teacher, from the stage cache or distilled now."""
            from lowlight.compile.cmd_distill import student_for
            from lowlight.core.bundle import sha256
            from lowlight.models import load_checkpoint

            if ckpt is None:
                raise LowlightError(f"{fam.name} --{fam.distill_option} {k} needs a trained teacher to distill from",
                                    f"pass the teacher checkpoint, or train one with `lowlight-compile zoo train {fam.name}`")
            got = student_for(fam.name, ckpt, config, k, cache_dir=cache_root, force=force, say=say)
            path = got.paths[k]
            loaded = load_checkpoint(fam.name, config, checkpoint, **options, student=str(path))
            facts = {"steps": k, "student": str(path), "sha256": sha256(path), "cached": bool(got.cached),
                     "teacher_sha256": sha256(ckpt), "method": got.info.get("method", ""),
                     "seconds": got.info.get("seconds"), "reference": f"the distilled {k}-step student"}
            return _plan_of(fam, loaded.model, config, options, shape, checkpoint, notes + list(loaded.notes), facts)

        plan.prepare = ("distill", distill_stage)
    return plan


def _plan_of(fam: Family, model: Any, config: str, options: dict[str, str], shape: str, checkpoint: str | None,
             notes: list[str], prepared: dict[str, Any]) -> Plan:
    """The plan of `model` (loaded, and prepared when the family has a prepare stage)."""
    from lowlight.models import load as load_model

    inputs = fam.inputs(shape, config, **options)
    notes = list(notes)
    comps = fam.components(model, inputs, config, **options)
    program = dict(fam.program(comps, inputs, config, **options))
    program.setdefault("seed", 0)
    program.setdefault("unrolled", False)
    constants = {k: np.asarray(v) for k, v in fam.constants(config, **options).items()}
    pcs = [PlanComponent(c.name, c.inputs, c.outputs, c.output_layouts, c.precision, module=c.module) for c in comps]
    float_call = torch_call(pcs)

    trained = fam.trained_options(checkpoint, config)
    ref_options = fam.reference_options(options, trained)
    if ref_options != options:
        ref_model = load_model(fam.name, config, checkpoint=checkpoint, **ref_options)
        ref_comps = fam.components(ref_model, inputs, config, **ref_options)
        ref_program = dict(fam.program(ref_comps, inputs, config, **ref_options))
        ref_call = torch_call([PlanComponent(c.name, c.inputs, c.outputs, c.output_layouts, c.precision, module=c.module) for c in ref_comps])
        changed = ", ".join(f"{k}={v}" for k, v in ref_options.items() if options.get(k) != v)
        label = f"FP32 PyTorch as trained ({changed})"
        notes.append(f"verified against the model as trained ({changed}): the compiled {', '.join(f'{k}={options[k]}' for k in ref_options if options.get(k) != ref_options[k])} deviation counts against --min-fidelity")
    else:
        ref_program, ref_call, label = program, float_call, "FP32 PyTorch" + (f" ({prepared['reference']})" if prepared.get("reference") else "")
    out_names = list(program["steps"][-1]["out"].values())
    consts = constants

    def reference(feed: Feed) -> dict[str, np.ndarray]:
        return run_program(ref_program, ref_call, feed, out_names, consts)

    ckpt = Path(checkpoint) if checkpoint else fam.weights_path(config)
    from lowlight.core.bundle import sha256

    ckpt_hash = sha256(ckpt) if ckpt and ckpt.is_file() else "none"
    record = {
        "family": fam.name,
        "config": config,
        "family_options": dict(options),
        "checkpoint": {"path": str(ckpt) if ckpt else None, "sha256": ckpt_hash, "reference_weights": checkpoint is None,
                       "trained_options": trained},
        "verified_against": label,
        "load_notes": list(notes),
    }
    if prepared:
        record["distill"] = prepared
    return Plan(
        name=fam.name, config=config, options=dict(options), inputs=inputs, components=pcs, program=program,
        constants=constants, keep_float=fam.keep_float, quantize_branches=fam.quantize_branches,
        make_inputs=lambda frames, seed: fam.make_inputs(frames, shape, config, seed=seed, **options),
        make_ground_truth=lambda frames, seed: fam.ground_truth_inputs(frames, shape, config, seed=seed, **options),
        reference=reference, reference_label=label, float_call=float_call, record=record,
        # what prepare made (a distilled student's sha256) is part of what the export depends on
        cache_identity={"weights": _state_hash(model), "code": _code_hash(model), "family": fam.name, "config": config, "options": options,
                        "shape": shape, "prepared": prepared.get("sha256")},
        notes=notes,
    )


def _state_hash(model: Any) -> str:
    """sha256 of the module's tensors (names, dtypes, shapes, bytes): what the export reads of a checkpoint.

    Not the file's hash: the same tensors saved again with other metadata (a training record, a
    `trained_options` note) export to the same graph and share its cache entries.
    """
    import hashlib

    import torch

    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())  # a view: no copy of a large model's weights
    return h.hexdigest()[:32]


def _code_hash(model: Any) -> str:
    """sha256 of the source files that define `model` and the export translations (a stale export must not be reused)."""
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


# -- from an ONNX file ----------------------------------------------------------------------


def onnx_plan(path: Path, shape: str | None) -> Plan:
    """A plan for a user's ONNX model: inputs from the graph, `--shape` fixes dynamic dimensions.

    Verified against the FP32 ONNX graph itself in onnxruntime. Inputs that look
    like images ([B,3,H,W] or [B,T,3,H,W]) are fed real frames; any other input
    gets seeded uniform noise in [0,1], which the manifest and report say.
    """
    import onnx

    from lowlight.core.bundle import sha256

    try:
        onnx.checker.check_model(str(path))
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises ValidationError, DecodeError, OSError...
        raise LowlightError(
            f"{path} is not a valid ONNX model: {str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__}",
            "export it again (torch.onnx.export) and check it with `python -c \"import onnx; onnx.checker.check_model('model.onnx')\"`",
        ) from exc
    inits = {i.name for i in model.graph.initializer}
    graph_inputs = [i for i in model.graph.input if i.name not in inits]
    fixed = _fix_shapes(path, graph_inputs, shape)
    inputs = [Tensor(name, dims, _guess_layout(dims), (0.0, 1.0)) for name, dims in fixed.items()]
    outputs = [o.name for o in model.graph.output]
    image_like = [t for t in inputs if t.layout in ("BCHW", "BTCHW")]
    layouts = {o: (image_like[0].layout if image_like else "other") for o in outputs}
    comp = PlanComponent("model", inputs, outputs, layouts, onnx=path)
    from lowlight.core.program import single_call_program

    program = single_call_program("model", [t.name for t in inputs], outputs)
    program.update(seed=0)
    session: dict[str, Any] = {}

    def reference(feed: Feed) -> dict[str, np.ndarray]:
        from lowlight.runtime.onnxruntime_backend import OnnxRuntimeBackend

        if "s" not in session:
            session["s"] = OnnxRuntimeBackend(path)
        return dict(session["s"].run(feed))

    def make_inputs(frames: list[np.ndarray], seed: int) -> list[Feed]:
        return _onnx_feeds(inputs, frames, seed)

    digest = sha256(path)
    notes = []
    if not image_like:
        notes.append("no input looks like an image ([B,3,H,W] or [B,T,3,H,W]): calibration and verification feed seeded noise in [0,1]")
    record = {"family": None, "config": None, "family_options": {}, "source": {"kind": "onnx", "path": str(path), "sha256": digest},
              "checkpoint": None, "verified_against": "FP32 ONNX (onnxruntime)"}
    return Plan(
        name=path.name, config="onnx", options={}, inputs=inputs, components=[comp], program=program, constants={},
        keep_float=KeepFloat(boundary_convs=True, int8_floor=False), quantize_branches=any(n.op_type == "If" for n in model.graph.node),
        make_inputs=make_inputs, reference=reference, reference_label="FP32 ONNX (onnxruntime)",
        float_call=lambda name, feed: reference(feed), record=record,
        cache_identity={"onnx": digest, "shapes": {t.name: t.shape for t in inputs}}, notes=notes,
    )


def _guess_layout(dims: tuple[int, ...]) -> str:
    if len(dims) == 4 and dims[1] == 3:
        return "BCHW"
    if len(dims) == 5 and dims[2] == 3:
        return "BTCHW"
    return "other"


def _fix_shapes(path: Path, graph_inputs: list[Any], shape: str | None) -> dict[str, tuple[int, ...]]:
    """Static input shapes: the graph's, with dynamic dimensions taken from --shape (one input, or NAME=SHAPE,...)."""
    given: dict[str, tuple[int, ...]] = {}
    if shape:
        parts = [p for p in str(shape).split(",") if p.strip()]
        for p in parts:
            name, _, dims = p.rpartition("=")
            if not name:
                if len(graph_inputs) != 1:
                    raise ShapeError(
                        f"{path} has {len(graph_inputs)} inputs; --shape {shape} does not say which it is for",
                        "give one per input: --shape " + ",".join(f"{i.name}=1x3x256x256" for i in graph_inputs),
                    )
                name = graph_inputs[0].name
            try:
                given[name] = tuple(int(d) for d in dims.lower().split("x"))
            except ValueError:
                raise ShapeError(f"--shape {p!r} is not NAME=BxCxHxW with integers", "e.g. --shape 1x3x256x256") from None
    out: dict[str, tuple[int, ...]] = {}
    unknown = [n for n in given if n not in {i.name for i in graph_inputs}]
    if unknown:
        raise ShapeError(f"--shape names {unknown}, which {path} does not take", f"its inputs are: {', '.join(i.name for i in graph_inputs)}")
    for i in graph_inputs:
        dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in i.type.tensor_type.shape.dim]
        want = given.get(i.name)
        if want is not None:
            if len(want) != len(dims) or any(d is not None and d != w for d, w in zip(dims, want)):
                raise ShapeError(
                    f"--shape gives {i.name!r} {'x'.join(map(str, want))}, but {path} declares {['?' if d is None else d for d in dims]}",
                    "match the graph's fixed dimensions; only dynamic ones (?) can be chosen",
                )
            out[i.name] = tuple(want)
        elif any(d is None for d in dims):
            raise ShapeError(
                f"input {i.name!r} of {path} has dynamic dimensions {['?' if d is None else d for d in dims]}",
                f"fix them with --shape, e.g. --shape {'x'.join(str(d or 256) for d in dims)}",
            )
        else:
            out[i.name] = tuple(int(d) for d in dims if d is not None)
        elem = i.type.tensor_type.elem_type
        if elem != 1:  # FLOAT
            raise ShapeError(f"input {i.name!r} of {path} is not float32 (ONNX type {elem})", "export the model with float32 inputs")
    return out


def _onnx_feeds(inputs: list[Tensor], frames: list[np.ndarray], seed: int) -> list[Feed]:
    """Image-like inputs get real frames (resize + centre crop); others seeded uniform noise."""
    from lowlight.runtime.io import fit_frame

    rng = np.random.default_rng(seed)
    image = next((t for t in inputs if t.layout in ("BCHW", "BTCHW")), None)
    if image is None:
        return [{t.name: rng.random(t.shape, dtype=np.float32) for t in inputs} for _ in range(max(1, len(frames)))]
    h, w = image.shape[-2:]
    per = int(np.prod(image.shape[:-3]))
    fitted = [fit_frame(f, h, w).transpose(2, 0, 1) for f in frames]
    feeds = []
    for i in range(0, len(fitted) - per + 1, per):
        feed = {image.name: np.stack(fitted[i : i + per]).reshape(image.shape).astype(np.float32)}
        for t in inputs:
            if t.name != image.name:
                feed[t.name] = rng.random(t.shape, dtype=np.float32)
        feeds.append(feed)
    return feeds
