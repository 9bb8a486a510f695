"""Model families: how to build each one, what it takes as input, where its weights live.

A family module (amnet.py, gmmoe.py...) calls `register(Family(...))` at import;
`lowlight.models.build/load` and the compiler only talk to `Family` objects.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    import numpy as np
    import torch

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


@dataclass(frozen=True)
class Family:
    """One model family and the facts the compiler needs about it."""

    name: str
    #: config name -> config object passed to `build_fn`.
    configs: dict[str, Any]
    #: build_fn(config, **options) -> torch.nn.Module with fresh weights.
    build_fn: Callable[..., "torch.nn.Module"]
    #: default --shape string for `config` and options, e.g. "1x8x3x256x256".
    default_shape: Callable[..., str]
    #: input_shapes(shape, **options) -> {input name: shape tuple}; raises ShapeError.
    input_shapes: Callable[..., dict[str, tuple[int, ...]]]
    #: make_inputs(frames, shape, **options) -> list of {name: array} feeds built from
    #: float32 HxWx3 frames in [0,1] (calibration/verification data).
    make_inputs: Callable[..., list[dict[str, "np.ndarray"]]]
    #: config name -> weights file name under models/weights/ (shipped reference).
    weights: dict[str, str] = field(default_factory=dict)
    #: options the CLI passes through (e.g. modalities for amnet, experts for gmmoe).
    option_names: tuple[str, ...] = ()
    default_config: str = "base"
    #: train_fn(config, out, **kw) for `lowlight-compile zoo train`.
    train_fn: Callable[..., Any] | None = None
    output_name: str = "enhanced"
    #: export_wrapper(model, **options) -> module taking the inputs positionally in
    #: `input_shapes` order (e.g. AMNet with a fixed modality set). None: the model itself.
    export_wrapper: Callable[..., "torch.nn.Module"] | None = None
    #: int8_fn(src, dst, feeds, flavour, keep_float, **kw) -> report: a family-specific
    #: INT8 quantizer with quantize_int8's signature (GM-MoE: reaches into If branches).
    int8_fn: Callable[..., dict[str, Any]] | None = None

    def call(self, fn_name: str, *args: Any, **kwargs: Any) -> Any:
        """Call one of the family's callables with only the keyword options it accepts."""
        import inspect

        fn = getattr(self, fn_name)
        params = inspect.signature(fn).parameters
        if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            kwargs = {k: v for k, v in kwargs.items() if k in params}
        return fn(*args, **kwargs)

    def weights_path(self, config: str) -> Path | None:
        """Path of the shipped reference weights for `config`, if any."""
        name = self.weights.get(config)
        return WEIGHTS_DIR / name if name else None


_FAMILIES: dict[str, Family] = {}


def register(family: Family) -> None:
    _FAMILIES[family.name] = family


def get_family(name: str) -> Family:
    """The registered family `name` (importing the family modules on first use)."""
    from lowlight.core.errors import LowlightError

    _import_families()
    if name not in _FAMILIES:
        raise LowlightError(
            f"unknown model family {name!r}",
            f"use --model with one of: {', '.join(sorted(_FAMILIES))}",
        )
    return _FAMILIES[name]


def family_names() -> list[str]:
    _import_families()
    return sorted(_FAMILIES)


def _import_families() -> None:
    # Deferred: importing a family imports torch.
    import importlib

    for module in ("amnet", "gmmoe"):
        try:
            importlib.import_module(f"lowlight.models.{module}")
        except ModuleNotFoundError as exc:
            if exc.name != f"lowlight.models.{module}":
                raise
