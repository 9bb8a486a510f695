"""Read a bundle: manifest.json plus the files whose sha256 it records (no PyTorch)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from lowlight.runtime.errors import BundleError

MANIFEST = "manifest.json"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_manifest(bundle: str | Path, check_hashes: bool = True) -> dict[str, Any]:
    """The bundle's manifest; with check_hashes, every listed file must exist and match its sha256."""
    root = Path(bundle)
    path = root / MANIFEST
    if not root.is_dir():
        raise BundleError(f"bundle {root} is not a directory", "pass the directory lowlight-compile wrote (--out)")
    if not path.is_file():
        raise BundleError(f"bundle {root} has no {MANIFEST}", "it is not a complete bundle: compile it again")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise BundleError(f"{path} is not valid JSON ({exc})", "the bundle is damaged: compile it again") from exc
    if check_hashes:
        bad = []
        for name, digest in manifest.get("files", {}).items():
            f = root / name
            if not f.is_file():
                bad.append(f"{name} (missing)")
            elif _sha256(f) != digest:
                bad.append(f"{name} (sha256 mismatch)")
        if bad:
            raise BundleError(
                f"bundle {root} no longer matches its manifest: {', '.join(bad)}",
                "the files were modified or damaged after compilation: recompile, or copy the bundle again",
            )
    return manifest
