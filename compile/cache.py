"""Content-addressed stage cache: key = hash(stage, input hash, options, tool versions).

Each stage writes its artifact under `<cache>/<stage>/<key>/`; re-running with
the same inputs and options reuses it, `--force` recomputes it.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any, Callable

from lowlight.core.bundle import sha256 as file_sha256  # one sha256 for cache keys and bundles
from lowlight.core.fsio import partial_dir, remove_stale_partials

__all__ = ["StageCache", "cache_key", "file_sha256", "tool_versions"]


def tool_versions() -> dict[str, str]:
    """Versions of the tools whose output a stage depends on (also recorded in the manifest)."""
    import importlib.metadata as md

    out = {}
    for pkg in ("lowlight-compile", "torch", "onnx", "onnxscript", "onnxruntime", "onnxsim", "onnxslim", "nncf", "numpy"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def cache_key(stage: str, input_hash: str, options: dict[str, Any]) -> str:
    payload = json.dumps({"stage": stage, "input": input_hash, "options": options, "tools": tool_versions()}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


class StageCache:
    """Directory of finished stage artifacts."""

    def __init__(self, root: str | Path, force: bool = False) -> None:
        self.root, self.force = Path(root), force

    def run(
        self, stage: str, input_hash: str, options: dict[str, Any], produce: Callable[[Path], None], filename: str
    ) -> tuple[Path, bool]:
        """Return (artifact path, was cached). `produce(dir)` writes `filename` into dir.

        Work happens in a temporary directory renamed into place on success, so an
        interrupted stage never leaves a half artifact in the cache.
        """
        key = cache_key(stage, input_hash, options)
        final = self.root / stage / key
        artifact = final / filename
        if artifact.exists() and not self.force:
            return artifact, True
        final.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_partials(final.parent)  # what killed runs left (their PID is gone)
        tmp = partial_dir(final)
        try:
            produce(tmp)
            if not (tmp / filename).exists():
                raise RuntimeError(f"stage {stage} did not write {filename}")
            (tmp / "stage.json").write_text(json.dumps({"stage": stage, "input": input_hash, "options": options}, default=str, indent=1))
            if final.exists():
                shutil.rmtree(final)
            tmp.rename(final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return artifact, False
