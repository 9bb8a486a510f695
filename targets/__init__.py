"""Deployment targets: what each device can run and how we build for it.

Adding a target is one file: a module (or subpackage) in this folder whose
`TARGETS` lists what it contributes, each entry a `Target` or a
`(Target, aliases)` pair. On first use the registry imports every module
here (`cpu.py`, `tensorrt/`, ...) and registers their `TARGETS`; no module is
named in this file, so the registry imports no target package by name and
the folder has no import cycle through it. `register()` adds a target at run
time (tests, applications embedding the compiler).
"""
from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterable

from lowlight.targets.base import PRECISIONS, Target

_REGISTRY: dict[str, Target] = {}
_discovered = False


def _entries(module_name: str, listed: Iterable[object]) -> list[tuple[Target, tuple[str, ...]]]:
    """A module's `TARGETS`, each entry as (target, aliases)."""
    out: list[tuple[Target, tuple[str, ...]]] = []
    for entry in listed:
        if isinstance(entry, Target):
            out.append((entry, ()))
        elif (isinstance(entry, tuple) and len(entry) == 2 and isinstance(entry[0], Target)
              and isinstance(entry[1], (tuple, list)) and all(isinstance(a, str) for a in entry[1])):
            out.append((entry[0], tuple(entry[1])))
        else:
            raise TypeError(f"{module_name}.TARGETS: {entry!r} is neither a Target nor a (Target, (alias, ...)) pair")
    return out


def discover() -> list[tuple[Target, tuple[str, ...]]]:
    """Every (target, aliases) that the modules on this package's path list in `TARGETS`, in module order.

    A module that fails to import raises: a target that silently disappears
    would turn into a confusing "unknown target" later.
    """
    found: list[tuple[Target, tuple[str, ...]]] = []
    for info in pkgutil.iter_modules(__path__, prefix=f"{__name__}."):
        if info.name.rpartition(".")[2].startswith("_"):
            continue
        module = importlib.import_module(info.name)
        listed = getattr(module, "TARGETS", None)
        if listed is not None:
            found += _entries(info.name, listed)
    return found


def _registry() -> dict[str, Target]:
    """The registry, filled by `discover()` on first use."""
    global _discovered
    if not _discovered:
        # Set first: a target module that asks the registry while it is being
        # imported sees what is there, instead of recursing into discovery.
        _discovered = True
        try:
            found = discover()
        except BaseException:
            _discovered = False  # retry (and raise again) on the next lookup, not an empty registry
            raise
        for target, aliases in found:
            _add(target, aliases)
    return _REGISTRY


def _add(target: Target, aliases: tuple[str, ...]) -> None:
    for name in (target.name, *aliases):
        _REGISTRY[name] = target


def register(target: Target, *aliases: str) -> None:
    """Add a target (and aliases) to the registry; replaces one of the same name."""
    _registry()
    _add(target, aliases)


def get_target(name: str, trt_version: str | None = None) -> Target:
    """Look a target up by name; `trt_version` overrides its TensorRT version."""
    from lowlight.core.errors import TargetError

    registry = _registry()
    if name not in registry:
        raise TargetError(
            f"unknown target {name!r}",
            f"choose one of: {', '.join(sorted(registry))} (`lowlight-compile targets` lists them)",
        )
    target = registry[name]
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
    return sorted(_registry())


def listed() -> list[tuple[Target, tuple[str, ...]]]:
    """Each registered target once, with its aliases, in registration order (the device tables' order)."""
    out: dict[str, tuple[Target, list[str]]] = {}
    for name, target in _registry().items():
        _, aliases = out.setdefault(target.name, (target, []))
        if name != target.name:
            aliases.append(name)
    return [(target, tuple(aliases)) for target, aliases in out.values()]


__all__ = ["Target", "PRECISIONS", "get_target", "register", "names", "listed", "discover"]
