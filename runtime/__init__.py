"""lowlight.runtime: run a compiled bundle on camera frames. Ships to the vehicle: no PyTorch here."""
from __future__ import annotations

from lowlight.core.errors import BundleError, InputError, LowlightError
from lowlight.runtime.session import Session, load

__all__ = ["load", "Session", "LowlightError", "InputError", "BundleError"]
