"""Bundle stage: a directory with the artifact, manifest.json (sha256 of every file) and reports.

Written to a temporary sibling directory and renamed into place, so an
interrupted build never leaves a half bundle (and an old bundle at the same
path survives until the new one is complete).
"""
from __future__ import annotations

import json
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from lowlight.compile.cache import file_sha256

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


def hash_files(root: Path) -> dict[str, str]:
    """sha256 of every file under root except the manifest, by relative POSIX path."""
    return {
        p.relative_to(root).as_posix(): file_sha256(p)
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }


def write_manifest(root: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """(Re)write manifest.json with fresh hashes, atomically."""
    manifest = dict(manifest, format_version=FORMAT_VERSION, files=hash_files(root))
    tmp = root / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=False, default=str) + "\n")
    tmp.replace(root / MANIFEST)
    return manifest


@contextmanager
def staging(out: str | Path) -> Iterator[Path]:
    """Yield a temporary directory that becomes `out` only if the body completes."""
    out = Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        yield tmp
        old = None
        if out.exists():
            old = out.with_name(f".{out.name}.old-{tmp.name[-8:]}")
            out.rename(old)
        tmp.rename(out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
