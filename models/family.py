"""The family contract: what the compiler needs to know about a model, as a typed base class.

A family is one file (under `models/`, in a user's file given as
`--model path/to/file.py:Name`, or in an installed package's entry point in the
group `lowlight.families`) that defines a `Family` subclass:

- `configs`, `default_config`, `weights` (shipped reference weights per config);
- `options`: declared `Option`s. They become CLI flags (`--experts top2`), are
  validated against their choices and recorded in the bundle's manifest; the
  generic CLI and pipeline never name a family or one of its options;
- `build(config, **options)` -> a fresh `torch.nn.Module`;
- `inputs(shape, config, **options)` -> the named, laid-out input tensors a
  `--shape` string stands for (raises ShapeError naming the dimension);
- `make_inputs(frames, shape, config, seed, **options)` -> feeds built from real
  HxWx3 frames in [0,1] (calibration and verification data);
- `components(model, inputs, config, **options)` and `program(...)`: the graphs
  to export and what the runtime executes over them (`lowlight.core.program`).
  The defaults are one component called "model" and a program that calls it;
- `keep_float`: what stays float under reduced precision, stated as graph facts
  (`KeepFloat`) that the quantizer resolves on any graph without knowing the model;
- `quantize_branches`: the model routes through ONNX `If` (top-2 experts), so
  INT8 must reach inside the branches (a generic quantizer capability);
- `trainer`: "module:function" of the training recipe, imported only by
  `lowlight-compile zoo train`, so a model file never imports its trainer.

Families are discovered: every module of `lowlight.models` that is not a
trainer or a helper is imported and its `Family` subclasses registered.
"""
from __future__ import annotations

import importlib
import importlib.util
import inspect
import pkgutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar

import numpy as np

from lowlight.core.errors import LowlightError

if TYPE_CHECKING:
    import torch

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"

#: Modules of lowlight.models that hold no family (discovery skips them without importing).
_NOT_FAMILIES = {"family", "checkpoint", "registry"}


@dataclass(frozen=True)
class Option:
    """A family option: a CLI flag `--NAME` with fixed choices, recorded in the manifest."""

    name: str
    choices: tuple[str, ...]
    default: str
    help: str

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


@dataclass(frozen=True)
class Tensor:
    """A named input or output of a program or component, with its declared layout and value range."""

    name: str
    shape: tuple[int, ...]
    layout: str  # a key of lowlight.core.program.LAYOUTS
    range: tuple[float, float] | None = (0.0, 1.0)
    dtype: str = "float32"

    def to_manifest(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "shape": list(self.shape), "dtype": self.dtype, "layout": self.layout}
        if self.range is not None:
            d["range"] = [float(self.range[0]), float(self.range[1])]
        return d


@dataclass(frozen=True)
class KeepFloat:
    """Nodes that stay float under INT8 (and FP16), as facts about the graph.

    The quantizer resolves these on the lowered graph (`compile.graph.keep_float_nodes`);
    it never needs to know which model it is looking at. Under INT8 they are a floor:
    which other nodes return to float is measured (`compile.sensitivity`).
    """

    #: Nodes on a path from a forward DFT to an inverse DFT: frequency coefficients
    #: span a far larger range than activations (AMNet's FBS gate).
    spectral_path: bool = False
    #: The first Conv after each input and the last before each output: INT8 error
    #: there lands straight in the image (the usual first/last-layer rule).
    boundary_convs: bool = False
    #: Nodes the target's lowering created (DFT matrices, decomposed custom ops).
    lowered_nodes: bool = True
    #: Mixture gates: each Softmax and the nodes computing its logits, back to the
    #: pooling that reads the block input (a flipped expert choice changes a whole block).
    gates: bool = False
    #: Op types kept float wherever they occur.
    op_types: tuple[str, ...] = ()
    #: Regular expressions over node names.
    name_patterns: tuple[str, ...] = ()
    #: Regular expressions over the PyTorch module path of each node (kept from export in the
    #: graph's `lowlight.node_modules` metadata), e.g. r"\.conv_in$": exported node names such as
    #: `node_conv2d_3` do not say which module they came from.
    module_patterns: tuple[str, ...] = ()
    #: False: the rules above are FP16's floor only; under INT8 every node starts quantized
    #: and the measurement alone decides what returns to float (a hand rule such as
    #: "spectral path and boundary convs" is then a guess the measurement replaces).
    int8_floor: bool = True


@dataclass
class Component:
    """One graph of a bundle: a module exported on its own, with its own precision."""

    name: str
    #: Takes the inputs positionally in `inputs` order; returns a tensor, or a tuple in `outputs` order.
    module: "torch.nn.Module"
    inputs: list[Tensor]
    outputs: list[str]
    #: Layout of each output (missing: "other").
    output_layouts: dict[str, str] = field(default_factory=dict)
    #: None: the bundle's precision. "fp32" pins a component float (e.g. a sampler's update).
    precision: str | None = None


class Family:
    """Base class of a model family. Subclass it in one file; see the module docstring."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    configs: ClassVar[dict[str, Any]] = {}
    default_config: ClassVar[str] = ""
    options: ClassVar[tuple[Option, ...]] = ()
    weights: ClassVar[dict[str, str]] = {}
    trainer: ClassVar[str | None] = None
    #: "module:function(model, image HxWx3) -> HxWx3" that runs one photo through a loaded model, for
    #: `lowlight-compile zoo eval` (`models.evaluate`); imported only then, like `trainer`.
    evaluator: ClassVar[str | None] = None
    keep_float: ClassVar[KeepFloat] = KeepFloat()
    quantize_branches: ClassVar[bool] = False
    #: The family `lowlight-compile` compiles when --model is not given (one family says so).
    default_family: ClassVar[bool] = False
    #: Output names of the default single component, in the module's return order.
    output_names: ClassVar[tuple[str, ...]] = ("enhanced",)
    #: The option holding a diffusion sampler's step count K (DarkDiff: "steps"). A compile for a
    #: K whose student is not beside the teacher runs the distill stage (`lowlight.compile.distill`,
    #: with the `distill_setup` of the family's training recipe) and compiles that student.
    distill_option: ClassVar[str | None] = None
    #: The step count of the teacher itself (no student needed).
    teacher_steps: ClassVar[int | None] = None

    # -- to implement -------------------------------------------------------------------

    def build(self, config: str, **options: str) -> "torch.nn.Module":
        """A fresh module at `config` (untrained weights)."""
        raise NotImplementedError

    def default_shape(self, config: str, **options: str) -> str:
        """The --shape used when none is given."""
        raise NotImplementedError

    def inputs(self, shape: str, config: str, **options: str) -> list[Tensor]:
        """The program's inputs for a --shape string; ShapeError names the dimension that is wrong."""
        raise NotImplementedError

    def make_inputs(self, frames: list[np.ndarray], shape: str, config: str, seed: int = 0, **options: str) -> list[dict[str, np.ndarray]]:
        """Feeds (one dict per sample) made from real HxWx3 float32 frames in [0,1]."""
        raise NotImplementedError

    # -- optional -----------------------------------------------------------------------

    def ground_truth_inputs(self, frames: list[np.ndarray], shape: str, config: str, seed: int = 0,
                            **options: str) -> tuple[list[dict[str, np.ndarray]], list[np.ndarray]] | None:
        """(feeds, targets) made from clean frames the way the family's training data is made.

        Used for `--ground-truth`. None (default): the pipeline darkens the first input
        of `make_inputs` with the sRGB degradation model (image families). A raw family
        (DarkDiff) unprocesses and darkens in the raw domain and returns ISP targets.
        """
        return None

    def export_module(self, model: "torch.nn.Module", **options: str) -> "torch.nn.Module":
        """The module the default component exports: takes the inputs positionally."""
        return model

    def output_layout(self, inputs: list[Tensor]) -> str:
        """Layout of the default component's outputs: that of its first input."""
        return inputs[0].layout

    def components(self, model: "torch.nn.Module", inputs: list[Tensor], config: str, **options: str) -> list[Component]:
        """The graphs to export. Default: the whole model as one component named "model"."""
        layout = self.output_layout(inputs)
        return [Component("model", self.export_module(model, **options), inputs, list(self.output_names),
                          {o: layout for o in self.output_names})]

    def program(self, components: list[Component], inputs: list[Tensor], config: str, **options: str) -> dict[str, Any]:
        """What the runtime executes over the components. Default: call the single component."""
        from lowlight.core.program import single_call_program

        if len(components) != 1:
            raise NotImplementedError(f"{self.name} has {len(components)} components: define program()")
        c = components[0]
        prog = single_call_program(c.name, [t.name for t in c.inputs], c.outputs)
        prog["steps"][0]["in"] = {ci.name: pi.name for ci, pi in zip(c.inputs, inputs)}
        return prog

    def constants(self, config: str, **options: str) -> dict[str, np.ndarray]:
        """Arrays the program reads with `const` steps (timesteps, prompt embeddings)."""
        return {}

    def reference_options(self, options: dict[str, str], trained: dict[str, str]) -> dict[str, str]:
        """Options of the PyTorch reference the bundle is verified against.

        `trained` holds what the checkpoint says about how it was trained
        (safetensors metadata). Default: the options compiled. A family whose
        compiled form approximates the trained network (top-2 of a dense-trained
        MoE) returns the trained options, so the approximation counts against
        the fidelity budget.
        """
        return dict(options)

    def trained_options(self, checkpoint: str | Path | None, config: str) -> dict[str, str]:
        """How a checkpoint was trained, as option values: safetensors metadata
        `lowlight.trained_options` (JSON), else `trained_options` in the JSON beside
        the weights (`NAME.json`); {} when the checkpoint does not say."""
        import json

        path = Path(checkpoint) if checkpoint else self.weights_path(config)
        if path is None or not path.is_file():
            return {}
        if path.suffix == ".safetensors":
            try:
                from safetensors import safe_open

                with safe_open(str(path), "np") as f:
                    meta = f.metadata() or {}
                if "lowlight.trained_options" in meta:
                    return {str(k): str(v) for k, v in json.loads(meta["lowlight.trained_options"]).items()}
            except Exception:  # unreadable metadata: the load itself reports a damaged file
                pass
        side = path.with_suffix(".json")
        try:
            info = json.loads(side.read_text()) if side.is_file() else {}
        except (OSError, ValueError):
            info = {}
        got = info.get("trained_options") if isinstance(info, dict) else None
        return {str(k): str(v) for k, v in got.items()} if isinstance(got, dict) else {}

    def finish_load(self, model: "torch.nn.Module", checkpoint: Path, config: str, **options: Any) -> list[str]:
        """After `checkpoint`'s weights are in `model`: load what else the options ask for.

        DarkDiff loads the distilled student for `steps=K` found beside the teacher.
        Returns notes saying what was loaded. Default: nothing more.
        """
        return []

    def catalog(self) -> list[str]:
        """Lines `lowlight-compile zoo list` prints under the family: what ships beside the weights
        (MMAIF: its prompts). Default: nothing."""
        return []

    def needs_student(self, steps: int, **options: str) -> bool:
        """Whether a compile at `--{distill_option} steps` (and the other `options`) runs a distilled student
        (distilling one when none lies beside the teacher). Default: every step count but the teacher's own."""
        return steps != self.teacher_steps

    @staticmethod
    def student_path(teacher: Path, steps: int) -> Path:
        """Where the K-step student of `teacher` is looked for: beside it, `<stem>_student<K>.safetensors`
        (what `lowlight-compile distill T.safetensors --steps K --out T_student<K>.safetensors` writes)."""
        return teacher.with_name(f"{teacher.stem}_student{int(steps)}.safetensors")

    def infer_config(self, state: dict[str, Any]) -> Any:
        """A config name or object that fits a checkpoint's tensors (`--config auto`); None: not inferable."""
        return None

    # -- provided -----------------------------------------------------------------------

    def resolve_options(self, given: dict[str, str | None]) -> dict[str, str]:
        """Every declared option with its value: given, else its default; unknown names and values refused."""
        known = {o.name: o for o in self.options}
        unknown = [k for k, v in given.items() if v is not None and k not in known]
        if unknown:
            flags = ", ".join("--" + k.replace("_", "-") for k in unknown)
            have = ", ".join(o.flag for o in self.options) or "none"
            raise LowlightError(f"model {self.name!r} has no option {flags}", f"drop it; {self.name}'s options: {have}")
        out = {}
        for o in self.options:
            v = given.get(o.name)
            v = o.default if v is None else v
            if v not in o.choices:
                raise LowlightError(f"{o.flag} {v!r} is not one of {self.name}'s choices", f"use {o.flag} with one of: {', '.join(o.choices)}")
            out[o.name] = v
        return out

    def check_config(self, config: str) -> None:
        if config not in self.configs:
            raise LowlightError(f"model {self.name!r} has no config {config!r}", f"use --config with one of: {', '.join(self.configs)}")

    def weights_path(self, config: str) -> Path | None:
        """Path of the shipped reference weights for `config`, if any."""
        name = self.weights.get(config)
        return WEIGHTS_DIR / name if name else None

    def train(self, config: str, out: str, **kw: Any) -> Any:
        """Run the family's training recipe (`trainer`), imported only now."""
        if not self.trainer:
            raise LowlightError(f"{self.name} has no training recipe", "train it outside lowlight and pass the checkpoint")
        module, _, fn = self.trainer.partition(":")
        return getattr(importlib.import_module(module), fn)(config=config, out=out, **kw)


    def enhancer(self, model: "torch.nn.Module") -> Callable[[np.ndarray], np.ndarray]:
        """One-photo enhancement with `model` for `models.evaluate` (the family's `evaluator`)."""
        if not self.evaluator:
            raise LowlightError(f"{self.name} has no photo evaluator", "evaluate it with its own benchmark under benchmarks/")
        module, _, fn = self.evaluator.partition(":")
        run = getattr(importlib.import_module(module), fn)
        return lambda img: run(model, img)


def read_student(family: str, checkpoint: Path, steps: int, modules: tuple[str, ...], student: Any,
                 default_path: Any) -> tuple[dict[str, Any], Path] | None:
    """A distilled student's tensors for a teacher `checkpoint` at `steps`, checked; None if there is none.

    `student`: a path (must exist), or None/True/"yes" to look at `default_path(checkpoint, steps)`
    (beside the teacher). The file must be a `lowlight-compile distill` student for `steps`, of
    this teacher (sha256 in its metadata), holding only tensors of `modules` (e.g. "flow.").
    Raises CheckpointError with the fix otherwise.
    """
    import json

    from lowlight.core.bundle import sha256
    from lowlight.core.errors import CheckpointError

    explicit = isinstance(student, (str, Path)) and str(student).lower() not in ("yes", "true")
    path = Path(str(student)) if explicit else Path(default_path(checkpoint, steps))
    if not path.is_file():
        if explicit:
            raise CheckpointError(f"student {path} does not exist", "pass the file `lowlight-compile distill` wrote")
        return None
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
            tensors = {key: f.get_tensor(key) for key in f.keys()}
    except Exception as exc:  # safetensors raises its own error types
        raise CheckpointError(f"student {path} is not a readable safetensors file ({exc})",
                              "distill it again with `lowlight-compile distill`") from exc
    record = json.loads(meta.get("lowlight.distill", "{}"))
    if int(record.get("steps", steps)) != steps:
        raise CheckpointError(f"student {path.name} was distilled for {record.get('steps')} steps, not {steps}",
                              f"pass the {steps}-step student, or --steps {record.get('steps')}")
    if record.get("teacher_sha256") and record["teacher_sha256"] != sha256(checkpoint):
        raise CheckpointError(f"student {path.name} was distilled from another teacher than {checkpoint.name}",
                              f"distill it from this teacher: lowlight-compile distill {checkpoint} --model {family} "
                              f"--steps {steps} --out {path}")
    if any(key.split(".", 1)[0] not in modules for key in tensors):
        raise CheckpointError(f"student {path.name} holds tensors other than {', '.join(m + '.*' for m in modules)}",
                              "pass a student written by `lowlight-compile distill`")
    return tensors, path


# -- discovery ------------------------------------------------------------------------------

_FAMILIES: dict[str, Family] = {}
_USER: dict[str, Family] = {}
_DISCOVERED = False


def declines_student(student: Any) -> bool:
    """True when a `student` option says not to use a distilled student (False, "no", "false")."""
    return student is False or (isinstance(student, str) and student.lower() in ("no", "false"))


def load_student_into(fam: Family, model: "torch.nn.Module", checkpoint: Path, config: str, steps: int,
                      modules: tuple[str, ...], student: Any) -> Path | None:
    """Load the `steps`-step student of teacher `checkpoint` (`read_student`) into `model`'s `modules` and set
    `model.student_steps`; returns its path, or None when none lies beside the teacher. CheckpointError when
    it does not fit `config`."""
    from lowlight.core.errors import CheckpointError

    got = read_student(fam.name, checkpoint, steps, modules, student, fam.student_path)
    if got is None:
        return None
    tensors, path = got
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    missing = [m for m in missing if m.split(".", 1)[0] in modules]
    if missing or unexpected:
        raise CheckpointError(f"student {path.name} does not fit {fam.name} config {config!r} ({len(missing)} missing, "
                              f"{len(unexpected)} unexpected keys)", "distill a student of this config")
    model.student_steps = steps  # type: ignore[assignment]
    return path


def register(family: Family | type[Family]) -> Family:
    """Add a family (class or instance) to the registry; returns the instance."""
    inst = family() if isinstance(family, type) else family
    if not inst.name:
        raise LowlightError(f"{type(inst).__name__} has no `name`", "set the class attribute name = '...'")
    _FAMILIES[inst.name] = inst
    return inst


def _families_in(module: Any) -> list[type[Family]]:
    return [
        obj for obj in vars(module).values()
        if inspect.isclass(obj) and issubclass(obj, Family) and obj is not Family and obj.__module__ == module.__name__ and obj.name
    ]


def discover() -> None:
    """Import every family module of lowlight.models and the `lowlight.families` entry points (once)."""
    global _DISCOVERED
    if _DISCOVERED:
        return
    _DISCOVERED = True
    # The folder itself, not `import lowlight.models` (which imports this module: a cycle).
    for info in pkgutil.iter_modules([str(Path(__file__).resolve().parent)]):
        if info.name.startswith(("train_", "_")) or info.name in _NOT_FAMILIES:
            continue
        module = importlib.import_module(f"lowlight.models.{info.name}")
        for cls in _families_in(module):
            register(cls)
    from importlib.metadata import entry_points

    for ep in entry_points(group="lowlight.families"):
        try:
            obj = ep.load()
        except Exception as exc:  # a broken third-party package must not break the built-in families
            print(f"warning: entry point {ep.name} ({ep.value}) failed to load: {exc}", file=sys.stderr)
            continue
        if inspect.isclass(obj) and issubclass(obj, Family):
            register(obj)


def get_family(name: str) -> Family:
    """The family `name` (built-in or entry point), or `path/to/file.py:Name` (a user's model file)."""
    if ":" in name and name.split(":", 1)[0].endswith(".py"):
        key = str(Path(name.rsplit(":", 1)[0]).resolve()) + ":" + name.rsplit(":", 1)[1]
        if key not in _USER:  # imported once: the file runs once per process
            _USER[key] = load_model_file(name)
        return _USER[key]
    discover()
    if name not in _FAMILIES:
        raise LowlightError(
            f"unknown model family {name!r}",
            f"use --model with one of: {', '.join(sorted(_FAMILIES))}, or path/to/file.py:Name for your own model",
        )
    return _FAMILIES[name]


def default_family() -> str:
    """The family compiled when --model is not given: the discovered one marked `default_family = True`."""
    names = family_names()
    marked = [n for n in names if _FAMILIES[n].default_family]
    return marked[0] if marked else names[0]


def family_names() -> list[str]:
    discover()
    return sorted(_FAMILIES)


def load_model_file(spec: str) -> Family:
    """`path/to/file.py:Name` -> a Family: `Name` is a Family subclass, or a function returning an image model."""
    path_text, _, attr = spec.rpartition(":")
    path = Path(path_text)
    if not path.is_file():
        raise LowlightError(f"model file {path} does not exist", "pass --model path/to/file.py:Name with an existing file")
    mod_name = f"lowlight_user_model_{abs(hash(str(path.resolve())))}"
    try:
        spec_obj = importlib.util.spec_from_file_location(mod_name, path)
        assert spec_obj is not None and spec_obj.loader is not None
        module = importlib.util.module_from_spec(spec_obj)
        sys.modules[mod_name] = module
        spec_obj.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(mod_name, None)
        raise LowlightError(
            f"model file {path} failed to import: {type(exc).__name__}: {exc}",
            "run `python " + str(path) + "` to see the full error, fix it, then compile again",
        ) from exc
    if not attr or not hasattr(module, attr):
        found = sorted(n for n, o in vars(module).items() if callable(o) and not n.startswith("_") and getattr(o, "__module__", None) == mod_name)
        raise LowlightError(
            f"model file {path} has no {attr!r}",
            f"name a Family subclass or a function returning a torch.nn.Module: {', '.join(found) or 'none defined'}",
        )
    obj = getattr(module, attr)
    if inspect.isclass(obj) and issubclass(obj, Family):
        inst = obj()
        if not inst.name:
            type(inst).name = f"{path.name}:{attr}"
        return inst
    if not callable(obj):
        raise LowlightError(f"{spec} is a {type(obj).__name__}, not a Family subclass or a function", "point --model at a function returning a torch.nn.Module")
    return ImageModelFamily(f"{path.name}:{attr}", obj, str(path.resolve()))


class ImageModelFamily(Family):
    """A user's function returning a module that maps an image [B,3,H,W] in [0,1] to the same shape.

    Input `rgb`, output `enhanced`, one config ("user"); the shape comes from --shape.
    """

    default_config = "user"
    configs: ClassVar[dict[str, Any]] = {"user": None}

    def __init__(self, name: str, factory: Any, source: str) -> None:
        self.name = name  # type: ignore[misc]  (instance attribute shadows the ClassVar on purpose)
        self.factory, self.source = factory, source

    def build(self, config: str, **options: str) -> "torch.nn.Module":
        import torch

        model = self.factory()
        if not isinstance(model, torch.nn.Module):
            raise LowlightError(
                f"{self.name} returned a {type(model).__name__}, not a torch.nn.Module",
                "make the function return the model (an nn.Module mapping [B,3,H,W] in [0,1] to the same shape)",
            )
        return model

    def default_shape(self, config: str, **options: str) -> str:
        return "1x3x256x256"

    def inputs(self, shape: str, config: str, **options: str) -> list[Tensor]:
        from lowlight.core.errors import ShapeError

        dims = _parse_shape(shape)
        if len(dims) != 4 or dims[1] != 3:
            raise ShapeError(f"--shape {shape} is not an image batch [B,3,H,W]", "give --shape like 1x3x256x256")
        return [Tensor("rgb", dims, "BCHW")]

    def make_inputs(self, frames: list[np.ndarray], shape: str, config: str, seed: int = 0, **options: str) -> list[dict[str, np.ndarray]]:
        return image_batches(frames, self.inputs(shape, config)[0].shape)


def _parse_shape(shape: str) -> tuple[int, ...]:
    from lowlight.core.errors import ShapeError

    try:
        dims = tuple(int(d) for d in str(shape).lower().split("x"))
    except ValueError:
        raise ShapeError(f"--shape {shape!r} is not a list of integers like 1x3x256x256", "write it as BxCxHxW (or BxTxCxHxW for clips)") from None
    if not dims or any(d < 1 for d in dims):
        raise ShapeError(f"--shape {shape!r} has a dimension below 1", "every dimension must be a positive integer")
    return dims


def image_batches(frames: list[np.ndarray], shape: tuple[int, ...]) -> list[dict[str, np.ndarray]]:
    """Feeds {"rgb": [B,3,H,W]} from frames fitted (resize + centre crop) to H x W; whole batches only."""
    from lowlight.runtime.io import fit_frame

    b, _, h, w = shape
    fitted = [fit_frame(f, h, w).transpose(2, 0, 1) for f in frames]
    return [{"rgb": np.stack(fitted[i : i + b]).astype(np.float32)} for i in range(0, len(fitted) - b + 1, b)]
