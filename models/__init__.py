"""Model families (AMNet, GM-MoE...): `build` fresh modules, `load` reference or user weights."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lowlight.models.registry import Family, family_names, get_family, register

if TYPE_CHECKING:
    import torch


def build(family: str, config: str | None = None, **options: Any) -> "torch.nn.Module":
    """Construct `family` at `config` with fresh (untrained) weights."""
    fam = get_family(family)
    config = config or fam.default_config
    if config not in fam.configs:
        from lowlight.core.errors import LowlightError

        raise LowlightError(
            f"model {family!r} has no config {config!r}",
            f"use --config with one of: {', '.join(fam.configs)}",
        )
    return fam.build_fn(config, **options)


def load(
    family: str, config: str | None = None, checkpoint: str | None = None, **options: Any
) -> "torch.nn.Module":
    """Eval-mode module with `checkpoint`'s weights (None: the shipped reference weights)."""
    from lowlight.models.checkpoint import load_state_dict_into

    fam = get_family(family)
    config = config or fam.default_config
    model = build(family, config, **options)
    if checkpoint is None:
        path = fam.weights_path(config)
        if path is None or not path.exists():
            from lowlight.core.errors import CheckpointError

            raise CheckpointError(
                f"no reference weights are shipped for {family} config {config!r}",
                f"pass a checkpoint path, or train one with `lowlight-compile zoo train {family} --config {config}`",
            )
        checkpoint = str(path)
    try:
        load_state_dict_into(model, checkpoint, what=f"{family} config {config!r}")
    except Exception as exc:
        from lowlight.core.errors import CheckpointError

        if isinstance(exc, CheckpointError) and "does not match" in exc.what:
            other = _matching_config(fam, config, checkpoint, options)
            if other:
                raise CheckpointError(exc.what, f"this checkpoint is {family} config {other!r}: pass --config {other}") from exc
        raise
    return model.eval()


def _matching_config(fam: Family, tried: str, checkpoint: str, options: dict[str, Any]) -> str | None:
    """The other config of `fam` whose parameter shapes match the checkpoint, if one does."""
    from lowlight.models.checkpoint import read_state_dict

    state = read_state_dict(checkpoint)
    for name in fam.configs:
        if name == tried:
            continue
        expected = fam.build_fn(name, **options).state_dict()
        if set(expected) == set(state) and all(expected[k].shape == state[k].shape for k in state):
            return name
    return None


__all__ = ["Family", "build", "load", "get_family", "family_names", "register"]
