"""The bundle format: a directory with manifest.json, the compiled model files and reports.

One module for the compiler (which writes bundles) and the runtime (which
loads them on the vehicle), so both agree on what a valid bundle is:

- `manifest.json` passes `check_manifest` (a schema check: types, required
  keys, paths) or loading fails with a BundleError, never a traceback.
- Every file a backend executes or reads (`model`, `engine.file`, `reference`,
  the build plan, the calibration cache) is listed under `files` with its
  sha256 and lies inside the bundle: relative, no `..`, no link out of it.
- Reports (`*.md`, `*.html`, `*.csv`, `verification.json`, `profile.json`) are
  hashed apart under `reports`: a user may annotate them; a changed report is
  a warning on load, never a reason to refuse the model.

Bundles written before reports were hashed apart list everything under
`files`; for those, report-like files are still treated as reports.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path, PurePosixPath
from typing import Any

from lowlight.core.errors import BundleError

MANIFEST = "manifest.json"
FORMAT_VERSION = 2
SUPPORTED_FORMATS = (1, 2)

#: Files that describe a bundle rather than run it: editable without invalidating the model.
REPORT_SUFFIXES = {".md", ".html", ".csv", ".txt", ".png", ".svg"}
REPORT_NAMES = {"verification.json", "profile.json", "simplify.json", "profile_layers.json", "engine_profile_layers.json"}

_HEX = set("0123456789abcdef")
#: Inputs are fed as float32: a declared range beyond it could not be honoured by any frame.
_F32_MAX = 3.4028234663852886e38
_FIX_RECOMPILE = "the bundle is damaged or was edited by hand: recompile it, or copy it again from where it was built"


def sha256(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def is_report(relpath: str) -> bool:
    """True for report files (hashed apart from the model files)."""
    p = PurePosixPath(relpath)
    return p.suffix.lower() in REPORT_SUFFIXES or p.name in REPORT_NAMES


def hash_files(root: Path) -> tuple[dict[str, str], dict[str, str]]:
    """(model files, reports): sha256 of every file under root except the manifest, by relative POSIX path."""
    files: dict[str, str] = {}
    reports: dict[str, str] = {}
    for p in sorted(root.rglob("*")):
        if not p.is_file() or p.name == MANIFEST or p.name.startswith(f".{MANIFEST}"):
            continue
        rel = p.relative_to(root).as_posix()
        (reports if is_report(rel) else files)[rel] = sha256(p)
    return files, reports


def write_manifest(root: str | Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """(Re)write manifest.json with fresh hashes of every file under root, atomically."""
    root = Path(root)
    body = {k: v for k, v in manifest.items() if k not in ("files", "reports", "format_version", "report_warnings")}
    files, reports = hash_files(root)
    # A bundle from before components keeps format 1 when profile or build-engine rewrite it.
    out = dict(body, format_version=FORMAT_VERSION if "components" in body else 1, files=files, reports=reports)
    check_manifest(out, root)
    tmp = root / f".{MANIFEST}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(out, indent=2, sort_keys=False, default=str) + "\n")
    os.replace(tmp, root / MANIFEST)
    return out


# -- schema -----------------------------------------------------------------------------


def _short(value: Any, limit: int = 80) -> str:
    """repr(value), cut to `limit` characters: a damaged manifest must not produce a megabyte message."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _err(root: Path | None, what: str) -> BundleError:
    where = f"{root / MANIFEST}" if root is not None else MANIFEST
    return BundleError(f"{where} is not a valid bundle manifest: {what}", _FIX_RECOMPILE)


def _inside(root: Path | None, rel: Any, key: str) -> str:
    """`rel` as a safe relative path inside the bundle, or BundleError."""
    if not isinstance(rel, str) or not rel or "\x00" in rel:
        raise _err(root, f"{key} must be a non-empty file name, got {_short(rel)}")
    p = PurePosixPath(rel.replace("\\", "/"))
    if p.is_absolute() or ".." in p.parts or rel.startswith(("/", "\\")) or (len(rel) > 1 and rel[1] == ":"):
        raise _err(root, f"{key} {_short(rel)} points outside the bundle (paths must be relative, without '..')")
    return p.as_posix()


def _tensor_list(root: Path | None, value: Any, key: str) -> None:
    if value is None:
        raise _err(root, f"required key {key!r} (the model's {key}: names, shapes, dtypes) is missing")
    if not isinstance(value, list) or not value:
        raise _err(root, f"{key!r} must be a non-empty list of tensors, got {_short(value)}")
    names = set()
    for i, t in enumerate(value):
        where = f"{key}[{i}]"
        if not isinstance(t, dict):
            raise _err(root, f"{where} must be an object with 'name' and 'shape'")
        name, shape = t.get("name"), t.get("shape")
        if not isinstance(name, str) or not name:
            raise _err(root, f"{where}.name must be a non-empty string")
        if name in names:
            raise _err(root, f"{key} names {_short(name)} twice")
        names.add(name)
        if not isinstance(shape, list) or not shape or not all(type(d) is int and 0 < d < 1 << 31 for d in shape):
            raise _err(root, f"{where}.shape must be a list of positive integers, got {_short(shape)}")
        rng = t.get("range")
        if rng is not None:
            ok = isinstance(rng, list) and len(rng) == 2 and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and abs(v) <= _F32_MAX for v in rng)
            if not ok or rng[0] > rng[1]:
                raise _err(root, f"{where}.range must be [low, high] with finite float32 low <= high, got {_short(rng)}")
        dtype = t.get("dtype", "float32")
        if not isinstance(dtype, str):
            raise _err(root, f"{where}.dtype must be a string, got {_short(dtype)}")


def _hashes(root: Path | None, value: Any, key: str) -> dict[str, str]:
    if value is None and key == "files":
        raise _err(root, "required key 'files' (the sha256 of every model file) is missing, so the model cannot be checked")
    if not isinstance(value, dict):
        raise _err(root, f"{key!r} must map file names to sha256 hex digests")
    out = {}
    for name, digest in value.items():
        rel = _inside(root, name, f"{key} entry")
        if not isinstance(digest, str) or len(digest) != 64 or not set(digest) <= _HEX:
            raise _err(root, f"{key}[{_short(name)}] must be a sha256 hex digest, got {_short(digest)}")
        if rel in out:  # "model.onnx" and "./model.onnx": two hashes for one file, one of them wrong
            raise _err(root, f"{key} lists {_short(rel)} twice")
        out[rel] = digest
    return out


def model_files(manifest: dict[str, Any]) -> list[str]:
    """Files a backend loads: every component's ONNX (and external data), the engine, constants, reference data."""
    names: list[str] = []
    for comp in manifest.get("components", {}).values():
        names.append(comp["file"])
        names.extend(comp.get("external_data", []))
    if not names and manifest.get("model"):
        names.append(manifest["model"])
    engine = manifest.get("engine")
    if isinstance(engine, dict) and engine.get("file"):
        names.append(engine["file"])
    for key in ("reference", "constants"):
        if manifest.get(key):
            names.append(manifest[key])
    return list(dict.fromkeys(names))


def _check_components(root: Path | None, manifest: dict[str, Any]) -> None:
    """Format 2: `components` (each its own graph) and the `program` over them."""
    from lowlight.core.program import check_program

    comps = manifest.get("components")
    if not isinstance(comps, dict) or not comps:
        raise _err(root, "'components' must map component names to their graphs")
    for name, c in comps.items():
        if not isinstance(name, str) or not name or not isinstance(c, dict):
            raise _err(root, f"component {_short(name)} must be an object")
        c["file"] = _inside(root, c.get("file"), f"'components.{name}.file'")
        ext = c.get("external_data", [])
        if not isinstance(ext, list):
            raise _err(root, f"'components.{name}.external_data' must be a list of file names")
        c["external_data"] = [_inside(root, e, f"'components.{name}.external_data'") for e in ext]
        _tensor_list(root, c.get("inputs"), f"components.{name}.inputs")
        _tensor_list(root, c.get("outputs"), f"components.{name}.outputs")
    if manifest.get("constants") is not None:
        manifest["constants"] = _inside(root, manifest["constants"], "'constants'")
    try:
        check_program(manifest.get("program"), comps, [t["name"] for t in manifest["inputs"]], [t["name"] for t in manifest["outputs"]],
                      input_shapes={t["name"]: t["shape"] for t in manifest["inputs"]},
                      output_shapes={t["name"]: t["shape"] for t in manifest["outputs"]})
    except BundleError as exc:
        raise _err(root, exc.what) from None


def as_program_manifest(manifest: dict[str, Any]) -> dict[str, Any]:
    """A format-1 manifest (one `model`) seen as format 2: one component "model" and a program calling it."""
    from lowlight.core.program import single_call_program

    if "components" in manifest:
        return manifest
    m = dict(manifest)
    m["components"] = {"model": {"file": m["model"], "external_data": [], "precision": m.get("precision"),
                                 "inputs": m["inputs"], "outputs": m["outputs"]}}
    m["program"] = single_call_program("model", [t["name"] for t in m["inputs"]], [t["name"] for t in m["outputs"]])
    return m


def check_manifest(manifest: Any, root: Path | None = None) -> dict[str, Any]:
    """Validate a parsed manifest's structure; returns it, or raises BundleError saying what is wrong."""
    if not isinstance(manifest, dict):
        raise _err(root, f"expected a JSON object, got {type(manifest).__name__}")
    if "format_version" not in manifest:
        raise _err(root, "required key 'format_version' is missing (is this a lowlight bundle's manifest?)")
    version = manifest.get("format_version")
    if type(version) is not int:
        raise _err(root, f"'format_version' must be an integer, got {_short(version)}")
    if version not in SUPPORTED_FORMATS:
        raise BundleError(
            f"bundle {root} has format version {_short(version, 40)}; this lowlight runtime reads {', '.join(map(str, SUPPORTED_FORMATS))}",
            "upgrade lowlight-compile on this machine, or recompile the bundle with the version installed here",
        )
    _tensor_list(root, manifest.get("inputs"), "inputs")
    _tensor_list(root, manifest.get("outputs"), "outputs")
    if version == 1 or "model" in manifest:
        manifest["model"] = _inside(root, manifest.get("model"), "'model'")
    if version >= 2:
        _check_components(root, manifest)
    files = _hashes(root, manifest.get("files"), "files")
    reports = _hashes(root, manifest.get("reports", {}), "reports")
    engine = manifest.get("engine")
    if engine is not None:
        if not isinstance(engine, dict):
            raise _err(root, "'engine' must be an object or null")
        if engine.get("file") is not None:
            engine["file"] = _inside(root, engine["file"], "'engine.file'")
    if manifest.get("reference") is not None:
        manifest["reference"] = _inside(root, manifest["reference"], "'reference'")
    unlisted = [f for f in model_files(manifest) if f not in files]
    if unlisted:
        raise _err(root, f"{', '.join(unlisted)} {'is' if len(unlisted) == 1 else 'are'} not listed with a hash under 'files'")
    manifest["files"], manifest["reports"] = files, reports
    return manifest


# -- reading ----------------------------------------------------------------------------


def _resolve(root: Path, rel: str) -> Path:
    """root/rel, refusing anything (a link included) that resolves outside the bundle."""
    path = root / rel
    real_root = root.resolve()
    try:
        path.resolve().relative_to(real_root)
    except (ValueError, OSError):  # OSError: a link loop, a name too long: not a file the bundle can hold
        raise BundleError(f"bundle file {rel} resolves outside {root} (a link?)", _FIX_RECOMPILE) from None
    return path


def read_manifest(bundle: str | Path, check_hashes: bool = True) -> dict[str, Any]:
    """The bundle's validated manifest; with check_hashes, every model file must match its sha256.

    Changed reports do not fail the load: their names are in `manifest["report_warnings"]`.
    """
    root = Path(bundle)
    path = root / MANIFEST
    try:
        exists, is_dir, has_manifest = root.exists(), root.is_dir(), path.is_file()
    except OSError as exc:  # a name too long, no permission on a parent...
        raise BundleError(f"cannot access bundle {root} ({exc.strerror or exc})", "check the path and its permissions") from exc
    if not exists:
        raise BundleError(f"bundle {root} does not exist", "pass the directory lowlight-compile wrote (--out)")
    if not is_dir:
        raise BundleError(f"bundle {root} is not a directory", "pass the directory lowlight-compile wrote (--out)")
    if not has_manifest:
        raise BundleError(f"{root} has no {MANIFEST}: it is not a bundle (or not a complete one)", "pass the directory lowlight-compile wrote (--out), or compile it again")
    try:
        raw = json.loads(path.read_bytes())
    except (ValueError, RecursionError) as exc:  # ValueError: bad JSON, bad UTF-8, or an integer with > 4300 digits
        first = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise BundleError(f"{path} is not valid JSON ({first})", _FIX_RECOMPILE) from exc
    except OSError as exc:
        raise BundleError(f"cannot read {path} ({exc.strerror or exc})", "check the bundle's permissions") from exc
    manifest = check_manifest(raw, root)
    # Bundles from before reports were hashed apart list them under files.
    for name in [n for n in manifest["files"] if is_report(n) and n not in model_files(manifest)]:
        manifest["reports"][name] = manifest["files"].pop(name)
    warnings: list[str] = []
    if check_hashes:
        bad = []
        for name, digest in manifest["files"].items():
            f = _resolve(root, name)
            try:
                ok = f.is_file() and sha256(f) == digest
            except OSError as exc:
                bad.append(f"{name} (unreadable: {exc.strerror or exc})")
                continue
            if not ok:
                bad.append(f"{name} ({'missing' if not f.is_file() else 'sha256 mismatch'})")
        if bad:
            raise BundleError(
                f"bundle {root} no longer matches its manifest: {', '.join(bad)}",
                "the files were modified or damaged after compilation: recompile, or copy the bundle again",
            )
        for name, digest in manifest["reports"].items():
            # A report never blocks the model: whatever is wrong with it is a warning.
            try:
                f = _resolve(root, name)
                state = "changed" if f.is_file() and sha256(f) != digest else ("removed" if not f.is_file() else "")
            except BundleError:
                state = "replaced by a link out of the bundle"
            except OSError as exc:
                state = f"made unreadable ({exc.strerror or exc})"
            if state:
                warnings.append(f"report {name} was {state} after compilation (the model files are intact)")
    manifest["report_warnings"] = warnings
    return manifest


def bundle_path(root: str | Path, manifest: dict[str, Any], rel: str) -> Path:
    """Absolute path of a file the (validated) manifest names, checked to lie inside the bundle."""
    return _resolve(Path(root), _inside(Path(root), rel, "file"))
