"""Safe checkpoint loading: safetensors, or a plain state_dict via weights-only torch.load.

Never unpickles arbitrary objects. Checkpoints are accepted as people have them:
BasicSR `{'params': ...}` / `{'params_ema': ...}`, Lightning `{'state_dict': ...}`
with `model.` keys, DDP `module.` keys, `{'model': ...}`, `{'model_state_dict': ...}`.
A wrapper is unwrapped and a prefix stripped only where that makes the keys match
the model, and each such step comes back as a note (`LoadedState.notes`) for the
manifest and the console. Mismatches are reported key by key, with the prefix
that would make them match when there is one.
"""
from __future__ import annotations

import re
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from lowlight.core.errors import CheckpointError

_MAX_LISTED = 12

#: Wrapper keys, in order of preference. BasicSR saves the EMA weights as
#: 'params_ema' beside the raw 'params'; its test options load the EMA ones, so they win.
WRAPPER_KEYS = ("params_ema", "params", "state_dict", "model_state_dict", "model")
#: File names a folder given as the checkpoint is searched for.
CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth", ".ckpt", ".bin")

#: rename(state) -> (state in the model's naming, note) for a foreign naming (e.g. the
#: official GM-MoE code's), or None when `state` is not in that naming.
Rename = Callable[[dict[str, torch.Tensor]], "tuple[dict[str, torch.Tensor], str] | None"]


@dataclass
class LoadedState:
    """A checkpoint's tensors keyed as the model names them, and how they were reached."""

    tensors: dict[str, torch.Tensor]
    #: the steps taken, e.g. ["unwrapped 'state_dict'", "stripped prefix 'model.'"]
    notes: list[str] = field(default_factory=list)
    #: why the keys may still not match (a prefix that would make them), for the mismatch error
    hints: list[str] = field(default_factory=list)
    #: the key set is exactly the model's (shapes are checked separately)
    exact: bool = False


# ----------------------------------------------------------------------------
# reading a file


def read_checkpoint(path: str | Path) -> Any:
    """The checkpoint's contents (dicts of tensors, numbers, strings), read without running code.

    Raises CheckpointError for a missing path, a folder, an empty file, an ONNX
    model, a pickle that needs code to load, and truncated or corrupt files.
    """
    path = Path(path)
    _check_is_file(path)
    kind = _sniff(path)
    if kind == "onnx":
        raise CheckpointError(
            f"{path} is an ONNX model, not a PyTorch checkpoint",
            f"compile it directly, passing it as the first argument: lowlight-compile {path} --target ...",
        )
    if kind == "safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:  # safetensors raises its own error types
            raise CheckpointError(
                f"checkpoint {path} is not a readable safetensors file ({exc})",
                "the file is truncated or corrupt: re-export or re-download it",
            ) from exc
    try:
        try:
            # mmap: a multi-GB checkpoint is paged in, not copied (released GM-MoE: 2.8 GB)
            return torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap can only be used" not in str(exc):
                raise
            return torch.load(str(path), map_location="cpu", weights_only=True)  # legacy (pre-zip) format
    except (zipfile.BadZipFile, EOFError, RuntimeError) as exc:
        if "weights_only" in str(exc) or "Unsupported global" in str(exc):
            raise _unsafe(path, exc) from None
        raise CheckpointError(
            f"checkpoint {path} cannot be read ({str(exc).splitlines()[0]})",
            "the file is truncated or corrupt: re-save it with torch.save(model.state_dict(), path) "
            "or safetensors.torch.save_file",
        ) from exc
    except Exception as exc:  # pickle.UnpicklingError and friends
        if "weights_only" in str(exc) or "Unsupported" in str(exc) or "GLOBAL" in str(exc):
            # `from None`: torch's message advises re-running with weights_only=False, the unsafe step
            raise _unsafe(path, exc) from None
        raise CheckpointError(
            f"checkpoint {path} cannot be read ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})",
            "re-save it with torch.save(model.state_dict(), path) or as .safetensors",
        ) from exc


def _check_is_file(path: Path) -> None:
    if path.is_dir():
        try:
            inside = sorted(p.name for p in path.iterdir() if p.is_file() and p.suffix in CHECKPOINT_SUFFIXES)
        except OSError:
            inside = []
        if len(inside) == 1:
            fix = f"pass the checkpoint file inside it: {path / inside[0]}"
        elif inside:
            shown = ", ".join(inside[:_MAX_LISTED]) + (" ..." if len(inside) > _MAX_LISTED else "")
            fix = f"pass one of the checkpoint files inside it: {shown}"
        else:
            fix = f"pass the checkpoint file itself ({', '.join(CHECKPOINT_SUFFIXES)}); this folder holds none"
        raise CheckpointError(f"checkpoint {path} is a directory, not a file", fix)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist", "check the path")
    if path.stat().st_size == 0:
        raise CheckpointError(
            f"checkpoint {path} is an empty file (0 bytes)",
            "the download or copy did not finish, or the save failed: fetch or save it again",
        )


# ModelProto field tags that can follow ir_version (field 1): producer_name (2), producer_version (3),
# domain (4), model_version (5), doc_string (6), graph (7), opset_import (8), metadata_props (14).
_ONNX_SECOND_TAGS = {0x12, 0x1A, 0x22, 0x28, 0x32, 0x3A, 0x42, 0x72}


def _sniff(path: Path) -> str:
    """"torch", "safetensors" or "onnx", from the first bytes (the suffix only breaks ties)."""
    with open(path, "rb") as f:
        head = f.read(16)
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":  # torch.save zip, or a legacy pickle
        return "torch"
    if len(head) > 8 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") < path.stat().st_size:
        return "safetensors"  # an 8-byte header length, then the JSON header
    # An ONNX ModelProto starts with ir_version (tag 0x08, a small varint), then another field.
    if path.suffix.lower() == ".onnx" or (len(head) > 2 and head[0] == 0x08 and 1 <= head[1] <= 30 and head[2] in _ONNX_SECOND_TAGS):
        return "onnx"
    return "safetensors" if path.suffix == ".safetensors" else "torch"


def _offending_globals(message: str) -> list[str]:
    """The globals torch's weights-only unpickler refused ("GLOBAL posix.system", "GLOBAL exec")."""
    names: list[str] = []
    for name in re.findall(r"GLOBAL ([\w.]+)", message):
        name = name if "." in name else f"builtins.{name}"  # torch prints builtins bare
        if name not in names:
            names.append(name)
    return names


def _pickle_globals(path: Path) -> tuple[int, list[str]]:
    """(pickle protocol, every global the pickle would import), read by disassembling it (pickletools runs nothing)."""
    import io
    import pickletools

    blobs: list[bytes] = []
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                blobs = [z.read(n) for n in z.namelist() if n.endswith("data.pkl")]
        else:
            blobs = [path.read_bytes()]
    except (OSError, zipfile.BadZipFile):
        return 0, []
    protocol, found = 0, []
    for blob in blobs:
        stream = io.BytesIO(blob)
        for _ in range(4):  # a legacy torch file is several pickles, then raw storage bytes
            pushed: list[Any] = []
            memo: dict[int, Any] = {}
            try:
                for op, arg, _pos in pickletools.genops(stream):
                    if op.name == "PROTO":
                        protocol = max(protocol, int(arg or 0))
                    elif "UNICODE" in op.name or "STRING" in op.name:
                        pushed.append(arg)
                    elif op.name == "MEMOIZE":
                        memo[len(memo)] = pushed[-1] if pushed else None
                    elif op.name in ("PUT", "BINPUT", "LONG_BINPUT"):
                        memo[int(arg or 0)] = pushed[-1] if pushed else None
                    elif op.name in ("GET", "BINGET", "LONG_BINGET"):
                        pushed.append(memo.get(int(arg or 0)))
                    elif op.name == "GLOBAL":
                        found.append(str(arg).replace(" ", ".", 1))
                        pushed.append(None)
                    elif op.name == "STACK_GLOBAL":
                        m, n = (pushed[-2], pushed[-1]) if len(pushed) > 1 else (None, None)
                        found.append(f"{m}.{n}" if isinstance(m, str) and isinstance(n, str) else "<a global named at run time>")
                        pushed.append(None)
                    elif op.name not in ("FRAME", "MARK", "STOP"):
                        pushed.append(None)
            except Exception:  # the raw bytes after a legacy file's pickles, or a truncated file
                break
    return protocol, list(dict.fromkeys(found))


def _tensor_global(name: str) -> bool:
    """Globals a plain state_dict pickle uses (tensor and storage rebuilding, dtypes, OrderedDict)."""
    module, _, attr = name.rpartition(".")
    if name in ("collections.OrderedDict", "torch.serialization._get_layout", "torch.device", "torch.Size",
                "torch._tensor._rebuild_from_type_v2", "torch.nn.parameter.Parameter", "torch.Tensor"):
        return True
    if module in ("torch._utils", "torch.storage") or (module == "torch" and attr.endswith("Storage")):
        return True
    return module == "torch" and isinstance(getattr(torch, attr, None), torch.dtype)


def _unsafe(path: Path, exc: Exception) -> CheckpointError:
    # Only the global's name is taken from torch's message: the rest advises re-running
    # with weights_only=False or allow-listing the global, i.e. running the file's code.
    names = _offending_globals(str(exc))
    if not names:
        # torch names no global when it stops earlier, at an opcode it lacks (protocol 4's FRAME)
        protocol, found = _pickle_globals(path)
        names = [g for g in found if not _tensor_global(g)]
        if not names and protocol >= 4:
            return CheckpointError(
                f"checkpoint {path} was pickled with protocol {protocol}, which torch's safe (weights-only) reader "
                "does not support, and we read checkpoints no other way (its pickle names only tensor types)",
                "re-save the weights where they were made, with torch's default protocol: "
                "torch.save(model.state_dict(), 'weights.pt') (no pickle_protocol argument), "
                "or safetensors.torch.save_file(model.state_dict(), 'weights.safetensors')",
            )
    needs = f" (loading it calls {', '.join(names)})" if names else ""
    return CheckpointError(
        f"checkpoint {path} contains pickled Python objects{needs}, which we refuse to unpickle: they could run code",
        "get the weights alone, which load without running code: ask whoever trained the model for "
        "safetensors.torch.save_file(model.state_dict(), 'weights.safetensors') or "
        "torch.save(model.state_dict(), 'weights.pt')",
    )


# ----------------------------------------------------------------------------
# finding the state_dict inside


def _is_state(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def state_candidates(obj: Any) -> list[tuple[dict[str, torch.Tensor], list[str]]]:
    """Every tensor dict reachable through the known wrappers (two levels deep), preferred first, with its notes."""
    found: list[tuple[dict[str, torch.Tensor], list[str]]] = []

    def visit(o: Any, notes: list[str], depth: int) -> None:
        if _is_state(o):
            found.append((o, notes))
            return
        if not isinstance(o, dict) or depth == 2:
            return
        for key in WRAPPER_KEYS:
            if key in o:
                note = f"unwrapped {key!r}"
                if key == "params_ema" and "params" in o:
                    note += " (BasicSR's EMA weights, preferred over its 'params')"
                visit(o[key], notes + [note], depth + 1)

    visit(obj, [], 0)
    return found


def _prefix_counts(keys: "set[str] | dict[str, Any]", targets: "set[str] | Mapping[str, Any]") -> Counter[str]:
    """For each dotted prefix p: how many keys are p + (a target)."""
    counts: Counter[str] = Counter()
    for k in keys:
        parts = k.split(".")
        for i in range(1, len(parts)):
            p = ".".join(parts[:i]) + "."
            if k[len(p):] in targets:
                counts[p] += 1
    return counts


def strip_prefix(state: dict[str, torch.Tensor], prefix: str) -> tuple[dict[str, torch.Tensor], list[str]]:
    """(the keys under `prefix`, without it; the keys outside it)."""
    inside = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    return inside, [k for k in state if not k.startswith(prefix)]


def _roots(keys: list[str]) -> str:
    roots = Counter(k.split(".")[0] for k in keys)
    return ", ".join(f"{r}.* ({n})" if n > 1 else r for r, n in roots.most_common(4)) + (" ..." if len(roots) > 4 else "")


def resolve_state(
    obj: Any, expected: Mapping[str, Any] | None = None, rename: Rename | None = None, source: str = "checkpoint"
) -> LoadedState:
    """The state_dict inside `obj` whose keys are `expected`'s, unwrapping and stripping only as needed.

    `expected`: the model's keys (a state_dict or {key: shape}); None takes the
    first candidate as it is. `rename` maps a foreign naming to the model's. When
    nothing matches exactly, the closest candidate comes back with `hints`.
    """
    cands = state_candidates(obj)
    if not cands:
        what = type(obj).__name__
        if isinstance(obj, dict):
            what += " with keys " + ", ".join(map(repr, list(obj)[:_MAX_LISTED]))
        raise CheckpointError(
            f"{source} holds a {what}, not a state_dict of tensors",
            "save the weights with torch.save(model.state_dict(), path) or as .safetensors",
        )
    variants: list[tuple[dict[str, torch.Tensor], list[str]]] = []
    for state, notes in cands:
        renamed = rename(state) if rename else None
        if renamed is not None:
            variants.append((renamed[0], notes + [renamed[1]]))
        variants.append((state, notes))
    if expected is None:
        return LoadedState(dict(variants[0][0]), variants[0][1])
    want = set(expected)
    best: tuple[int, dict[str, torch.Tensor], list[str]] | None = None
    for state, notes in variants:
        if set(state) == want:
            return LoadedState(dict(state), notes, exact=True)
        overlap = len(want & set(state))
        if best is None or overlap > best[0]:
            best = (overlap, state, notes)
        counts = _prefix_counts(state, want)
        # a Lightning checkpoint may hold `model_ema.` beside `model.`: the EMA weights win, as above
        for p in sorted(counts, key=lambda p: (-counts[p], "ema" not in p)):
            inside, outside = strip_prefix(state, p)
            if set(inside) == want:
                note = f"stripped prefix {p!r}"
                if outside:
                    note += f" (ignored {len(outside)} key(s) outside it: {_roots(outside)})"
                return LoadedState(inside, notes + [note], exact=True)
            if counts[p] > best[0]:
                best = (counts[p], inside, notes + [f"stripped prefix {p!r} (the closest match)"])
    assert best is not None
    overlap, state, notes = best
    hints = []
    if overlap < len(want):
        # the other direction: the checkpoint holds only part of the model (e.g. a submodule's state_dict)
        counts = _prefix_counts(want, state)
        if counts:
            n = max(counts.values())
            tied = sorted(q for q, c in counts.items() if c == n)  # twin submodules (two encoders) tie
            if n > overlap:
                where = " or ".join(map(repr, tied[:3])) + (" ..." if len(tied) > 3 else "")
                hints.append(
                    f"{n} of the checkpoint's {len(state)} keys match the model's keys under prefix {where}: "
                    "it may hold only that part of the model"
                )
    return LoadedState(dict(state), notes, hints)


def read_state_dict(
    path: str | Path, expected: Mapping[str, Any] | None = None, rename: Rename | None = None
) -> LoadedState:
    """Read `path` safely and find its state_dict (see `resolve_state`)."""
    return resolve_state(read_checkpoint(path), expected, rename, source=f"checkpoint {path}")


def check_state_dict(
    model: "torch.nn.Module | Mapping[str, Any]", state: dict[str, torch.Tensor], what: str, loaded: LoadedState | None = None
) -> None:
    """Raise CheckpointError naming every missing, unexpected and mis-shaped key.

    `model`: the module, or its state_dict / {key: shape}. `loaded`: how `state`
    was found; its notes and prefix hints go into the message.
    """
    expected = {k: getattr(v, "shape", v) for k, v in (model.state_dict() if isinstance(model, torch.nn.Module) else model).items()}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    misshaped = sorted(
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k])}"
        for k in set(state) & set(expected)
        if tuple(state[k].shape) != tuple(expected[k])
    )
    if not (missing or unexpected or misshaped):
        return
    lines = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)):
        if keys:
            shown = ", ".join(keys[:_MAX_LISTED]) + (f" (+{len(keys) - _MAX_LISTED} more)" if len(keys) > _MAX_LISTED else "")
            lines.append(f"{len(keys)} {label} key(s): {shown}")
    if loaded is not None:
        lines += [f"({n})" for n in loaded.notes] + loaded.hints
    raise CheckpointError(
        f"checkpoint does not match {what}: " + "; ".join(lines),
        "check --model/--config (and --modalities/--experts) match the checkpoint's training run",
    )


def load_state_dict_into(
    model: torch.nn.Module, path: "str | Path | Any", what: str, rename: Rename | None = None
) -> list[str]:
    """Read `path` safely, check every key and shape, load it into `model`; returns the unwrap notes.

    `path` may also be what `read_checkpoint` returned (to read a large file once).
    """
    obj = read_checkpoint(path) if isinstance(path, (str, Path)) else path
    loaded = resolve_state(obj, model.state_dict(), rename, source=f"checkpoint {path}" if isinstance(path, (str, Path)) else "checkpoint")
    check_state_dict(model, loaded.tensors, what, loaded)
    model.load_state_dict(loaded.tensors, strict=True)
    return loaded.notes
