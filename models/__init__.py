"""Model families (AMNet, GM-MoE...): `build` fresh modules, `load` reference or user weights.

`--config` takes a config name, "auto" (read from the checkpoint) or a training
options .yml (GM-MoE's official code); `load_checkpoint` also returns the config
built and notes on how the checkpoint was read, for the manifest and the console.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from lowlight.models.family import Family, family_names, get_family, register

if TYPE_CHECKING:
    import torch


#: --config value that reads the config from the checkpoint.
AUTO = "auto"
#: --config values ending so are training-options files (the official GM-MoE code's BasicSR YAML).
OPTIONS_SUFFIXES = (".yml", ".yaml")


@dataclass
class Loaded:
    """A loaded model and what loading it involved (for the manifest and the console)."""

    model: "torch.nn.Module"
    #: the config built: a name of the family, or (gmmoe) a layout name such as "w48-e2.2.4.8-m12-d2.2.2.2"
    config: str
    #: how the config and the weights were found, e.g. "config auto: ...", "unwrapped 'state_dict'",
    #: "stripped prefix 'model.'", "renamed 2152 keys from the official GM-MoE code's naming (OURNet24)"
    notes: list[str] = field(default_factory=list)


def build(family: str, config: str | None = None, **options: Any) -> "torch.nn.Module":
    """Construct `family` at `config` (a name, or a training-options .yml) with fresh (untrained) weights."""
    fam = get_family(family)
    config, _ = _resolve(fam, config, None, options)
    return fam.build(config, **options)


def resolve_config(family: str, config: str | None = None, checkpoint: str | None = None, **options: Any) -> tuple[str, list[str]]:
    """(the config name `config` stands for, notes saying how it was found).

    None: the family's default. A name: itself, checked. "auto": the named config
    whose keys and shapes `checkpoint` matches, else the layout the family reads
    from its keys and shapes (`infer_config`). A path ending .yml/.yaml: the family's
    `config_from_file` (GM-MoE: the official code's options). Raises LowlightError
    (CheckpointError for checkpoint problems) with a fix.
    """
    fam = get_family(family)
    return _resolve(fam, config, _reader(checkpoint) if checkpoint is not None else None, options, checkpoint)


def load(family: str, config: str | None = None, checkpoint: str | None = None, **options: Any) -> "torch.nn.Module":
    """Eval-mode module with `checkpoint`'s weights (None: the shipped reference weights); see `load_checkpoint`."""
    return load_checkpoint(family, config, checkpoint, **options).model


def load_checkpoint(family: str, config: str | None = None, checkpoint: str | None = None, **options: Any) -> Loaded:
    """Eval-mode module with `checkpoint`'s weights, the config built and the notes on how.

    `config` as in `resolve_config` ("auto" and .yml included). The checkpoint is
    read once, without running code; wrappers are unwrapped and prefixes stripped
    only where that makes its keys match (`checkpoint.resolve_state`), and a family
    may rename a foreign naming (GM-MoE: the official code's keys).
    """
    from lowlight.core.errors import CheckpointError
    from lowlight.models.checkpoint import check_state_dict, resolve_state

    fam = get_family(family)
    raw_given = _reader(checkpoint) if checkpoint is not None else None
    config, notes = _resolve(fam, config, raw_given, options, checkpoint)
    if raw_given is not None:
        raw_given()  # an unreadable checkpoint fails before a (690M-parameter: 14 s) build
    model = fam.build(config, **options)
    if checkpoint is None:
        path = fam.weights_path(config)
        if path is None or not path.exists():
            raise CheckpointError(
                f"no reference weights are shipped for {family} config {config!r}",
                f"pass a checkpoint path, or train one with `lowlight-compile zoo train {family} --config {config}`",
            )
        checkpoint = str(path)
    raw = _reader(checkpoint) if raw_given is None else raw_given
    rename = getattr(fam, "checkpoint_rename", None)
    loaded = resolve_state(raw(), model.state_dict(), rename, source=f"checkpoint {checkpoint}")
    try:
        check_state_dict(model, loaded.tensors, f"{family} config {config!r}", loaded)
    except CheckpointError as exc:
        other = _matching_config(fam, config, raw(), options)
        if other:
            via = f"pass --config {other}" if dict.__contains__(fam.configs, other) else f"pass --config {AUTO} (its layout: {other})"
            raise CheckpointError(exc.what, f"this checkpoint is {family} config {other!r}: {via}") from None
        raise
    model.load_state_dict(loaded.tensors, strict=True)
    more = fam.finish_load(model, Path(checkpoint), config, **options)  # e.g. DarkDiff's student for steps=K
    return Loaded(model.eval(), config, notes + loaded.notes + more)


def _reader(checkpoint: str | Path) -> "Callable[[], Any]":
    """A function reading `checkpoint` safely on its first call and returning the same object after."""
    from lowlight.models.checkpoint import read_checkpoint

    cache: list[Any] = []

    def raw() -> Any:
        if not cache:
            cache.append(read_checkpoint(checkpoint))
        return cache[0]

    return raw


def _resolve(fam: Family, config: str | None, raw: "Callable[[], Any] | None", options: dict[str, Any],
             checkpoint: str | None = None) -> tuple[str, list[str]]:
    """See `resolve_config`; `raw` reads the checkpoint (lazily: only "auto" needs it)."""
    from lowlight.core.errors import CheckpointError, LowlightError

    config = config or fam.default_config
    if config.lower().endswith(OPTIONS_SUFFIXES):
        from_file = getattr(fam, "config_from_file", None)
        if from_file is None:
            raise LowlightError(f"model {fam.name!r} cannot read a config from an options file ({config})",
                                f"use --config {AUTO} with a checkpoint, or one of: {', '.join(fam.configs)}")
        if not Path(config).is_file():
            raise LowlightError(f"options file {config} does not exist", "check the path of the training options .yml")
        return from_file(config)
    if config == AUTO:
        if raw is None:
            raise LowlightError(f"--config {AUTO} reads the config from a checkpoint, and none was given",
                                f"pass the checkpoint, or --config with one of: {', '.join(fam.configs)}")
        state = raw()
        named = _matching_config(fam, None, state, options, named_only=True)
        if named:
            return named, [f"config {AUTO}: the checkpoint matches {fam.name} config {named!r}"]
        inferred = _inferred_config(fam, state)
        if inferred:
            describe = getattr(fam, "describe_config", None)
            how = f" ({describe(inferred)})" if describe else ""
            return inferred, [f"config {AUTO}: {inferred}{how}, read from the checkpoint's keys and shapes"]
        from lowlight.models.checkpoint import state_candidates

        cands = state_candidates(state)
        first = ", ".join(list(cands[0][0])[:6]) if cands else "none"
        raise CheckpointError(
            f"cannot tell which {fam.name} config checkpoint {checkpoint} is: its keys and shapes match none of "
            f"{', '.join(fam.configs)}" + (" and no layout can be read from them" if _infers(fam) else "") + f" (first keys: {first})",
            "pass --config NAME" + (" or the training options file (--config train.yml)" if hasattr(fam, "config_from_file") else "")
            + f", or check that the checkpoint is a {fam.name} model",
        )
    fam.check_config(config)
    return config, []


def _infers(fam: Family) -> bool:
    return type(fam).infer_config is not Family.infer_config


def _inferred_config(fam: Family, raw: Any) -> str | None:
    """The config the family reads from the first candidate state_dict it understands."""
    from lowlight.models.checkpoint import state_candidates

    if not _infers(fam):
        return None
    for state, _ in state_candidates(raw):
        name = fam.infer_config(state)
        if name is not None:
            return str(name)
    return None


def _expected_shapes(fam: Family, name: str, options: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """{key: shape} of config `name`, built on the meta device (no memory, no init time)."""
    import torch

    try:
        with torch.device("meta"):
            model = fam.build(name, **options)
    except Exception:  # a user's factory may not build on meta (e.g. it loads weights)
        model = fam.build(name, **options)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _matching_config(fam: Family, tried: str | None, raw: Any, options: dict[str, Any], named_only: bool = False) -> str | None:
    """Another config of `fam` whose keys and shapes the checkpoint matches exactly (else the inferred layout)."""
    from lowlight.models.checkpoint import resolve_state

    rename = getattr(fam, "checkpoint_rename", None)
    for name in fam.configs:
        if name == tried:
            continue
        shapes = _expected_shapes(fam, name, options)
        loaded = resolve_state(raw, shapes, rename)
        if loaded.exact and all(tuple(loaded.tensors[k].shape) == s for k, s in shapes.items()):
            return name
    if named_only:
        return None
    inferred = _inferred_config(fam, raw)
    return inferred if inferred not in (None, tried) else None


__all__ = ["AUTO", "Family", "Loaded", "build", "load", "load_checkpoint", "resolve_config", "get_family", "family_names", "register"]
