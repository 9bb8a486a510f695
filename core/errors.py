"""Errors with a fix: every failure a user can cause says what was wrong and what to do.

Part of the foundation (`lowlight.core`): every subpackage, the runtime included,
raises these, and the CLIs turn them into a message and exit code 2.
"""
from __future__ import annotations


class LowlightError(Exception):
    """A problem the user can fix. `what` says what went wrong, `fix` how to fix it."""

    def __init__(self, what: str, fix: str | None = None) -> None:
        self.what = what
        self.fix = fix
        super().__init__(what if fix is None else f"{what}\n  fix: {fix}")


class CheckpointError(LowlightError):
    """The checkpoint is unreadable, unsafe, or does not match the model."""


class ShapeError(LowlightError):
    """An input shape the model cannot take."""


class CalibrationError(LowlightError):
    """Calibration or verification data is missing or unreadable."""


class InputError(LowlightError):
    """Bad runtime input: wrong names, shapes, dtypes, NaN/Inf, undecodable video."""


class BundleError(LowlightError):
    """A bundle is missing files, or its files no longer match their hashes."""


class VerificationError(LowlightError):
    """The compiled artifact drifts further from the FP32 model than allowed."""


class OutputError(LowlightError):
    """An output path this tool must not write: someone else's file or folder, the input itself, unwritable."""


class TargetError(LowlightError):
    """The target cannot take this graph or option (unknown target, unsupported op...)."""
