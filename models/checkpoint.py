"""Safe checkpoint loading: safetensors, or a plain state_dict via weights-only torch.load.

Never unpickles arbitrary objects. Mismatches are reported key by key.
"""
from __future__ import annotations

import zipfile
from pathlib import Path

import torch

from lowlight.core.errors import CheckpointError

_MAX_LISTED = 12


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read tensors from a .safetensors file or a weights-only torch checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist", "check the path")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:  # safetensors raises its own error types
            raise CheckpointError(
                f"checkpoint {path} is not a readable safetensors file ({exc})",
                "the file is truncated or corrupt: re-export or re-download it",
            ) from exc
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except (zipfile.BadZipFile, EOFError, RuntimeError) as exc:
        if "weights_only" in str(exc) or "Unsupported global" in str(exc):
            raise _unsafe(path, exc) from exc
        raise CheckpointError(
            f"checkpoint {path} cannot be read ({str(exc).splitlines()[0]})",
            "the file is truncated or corrupt: re-save it with torch.save(model.state_dict(), path) "
            "or safetensors.torch.save_file",
        ) from exc
    except Exception as exc:  # pickle.UnpicklingError and friends
        if "weights_only" in str(exc) or "Unsupported" in str(exc) or "GLOBAL" in str(exc):
            raise _unsafe(path, exc) from exc
        raise CheckpointError(
            f"checkpoint {path} cannot be read ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})",
            "re-save it with torch.save(model.state_dict(), path) or as .safetensors",
        ) from exc
    # Accept the common wrappers {"state_dict": ...} / {"model": ...} / {"params": ...}.
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "params", "model_state_dict"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(
            f"checkpoint {path} holds a {type(obj).__name__}, not a state_dict of tensors",
            "save the weights with torch.save(model.state_dict(), path) or as .safetensors",
        )
    return obj


def _unsafe(path: Path, exc: Exception) -> CheckpointError:
    return CheckpointError(
        f"checkpoint {path} contains pickled Python objects, which we refuse to unpickle "
        f"(it could run code): {str(exc).splitlines()[0]}",
        "convert it where you trust it: torch.save(model.state_dict(), 'weights.pt') or "
        "safetensors.torch.save_file(model.state_dict(), 'weights.safetensors')",
    )


def check_state_dict(model: torch.nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """Raise CheckpointError naming every missing, unexpected and mis-shaped key."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    misshaped = sorted(
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in set(state) & set(expected)
        if state[k].shape != expected[k].shape
    )
    if not (missing or unexpected or misshaped):
        return
    lines = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)):
        if keys:
            shown = ", ".join(keys[:_MAX_LISTED]) + (f" (+{len(keys) - _MAX_LISTED} more)" if len(keys) > _MAX_LISTED else "")
            lines.append(f"{len(keys)} {label} key(s): {shown}")
    raise CheckpointError(
        f"checkpoint does not match {what}: " + "; ".join(lines),
        "check --model/--config (and --modalities/--experts) match the checkpoint's training run",
    )


def load_state_dict_into(model: torch.nn.Module, path: str | Path, what: str) -> None:
    """Read `path` safely, check every key and shape, then load it into `model`."""
    state = read_state_dict(path)
    check_state_dict(model, state, what)
    model.load_state_dict(state, strict=True)
