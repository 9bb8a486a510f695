"""Where the shared real-photo/video data lives (read in place, never copied into the repo)."""
from __future__ import annotations

import os
from pathlib import Path

from lowlight.core.errors import CalibrationError

#: The sample frames shipped for `make demo` and the default calibration set.
SAMPLES_DIR = Path(__file__).resolve().parent / "samples"


def shared_data_dir(required: bool = True) -> Path | None:
    """`$LOWLIGHT_DATA`, else `../shared/data` beside the repository checkout."""
    env = os.environ.get("LOWLIGHT_DATA")
    candidates = [Path(env)] if env else []
    here = Path(__file__).resolve()
    candidates += [p / "shared" / "data" for p in here.parents[:4]]
    for c in candidates:
        if c.is_dir():
            return c
    if required:
        raise CalibrationError(
            "the shared data folder (../shared/data) was not found",
            "set LOWLIGHT_DATA=/path/to/shared/data",
        )
    return None
