"""What lowlight-compile is: its installed version (both CLIs and every report say it)."""
from __future__ import annotations


def version() -> str:
    """The installed lowlight-compile version."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as v

    try:
        return v("lowlight-compile")
    except PackageNotFoundError:
        return "unknown (not installed)"
