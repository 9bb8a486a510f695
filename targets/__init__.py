"""Deployment targets: what each device can run and how we build for it."""
from __future__ import annotations

from lowlight.targets.base import CPU, PRECISIONS, Target

_REGISTRY: dict[str, Target] = {CPU.name: CPU}


def register(target: Target, *aliases: str) -> None:
    """Add a target (and aliases) to the registry."""
    for name in (target.name, *aliases):
        _REGISTRY[name] = target


def _register_tensorrt_targets() -> None:
    # GPU and Jetson targets; imported here (not at the top) because
    # targets.tensorrt imports targets.base from this package.
    from lowlight.targets.tensorrt import tensorrt_targets

    for target, aliases in tensorrt_targets():
        register(target, *aliases)


_register_tensorrt_targets()


def get_target(name: str, trt_version: str | None = None) -> Target:
    """Look a target up by name; `trt_version` overrides its TensorRT version."""
    from lowlight.core.errors import TargetError

    if name not in _REGISTRY:
        raise TargetError(
            f"unknown target {name!r}",
            f"choose one of: {', '.join(sorted(_REGISTRY))} (`lowlight-compile targets` lists them)",
        )
    target = _REGISTRY[name]
    if trt_version is not None:
        if target.runtime != "tensorrt":
            raise TargetError(
                f"--trt-version was given but target {name!r} does not use TensorRT",
                "drop --trt-version, or pick a GPU target",
            )
        rebind = getattr(target, "with_trt_version", None)
        if rebind is not None:
            target = rebind(trt_version)
    return target


def names() -> list[str]:
    """All registered target names, aliases included."""
    return sorted(_REGISTRY)


__all__ = ["Target", "PRECISIONS", "get_target", "register", "names"]
