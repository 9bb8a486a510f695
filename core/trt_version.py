"""TensorRT versions: the one parser and comparison every package uses.

A version is MAJOR.MINOR[.PATCH]; anything after the patch (the build number
of "10.3.0.26") and non-digit suffixes ("10.0.0b6", an early-access tag) are
ignored, because engines, calibration caches and capability tables are keyed
by major.minor.patch. A missing patch ("11.4", as a user writes
`--trt-version 11.4`) means "the newest 11.4.x": it sorts after every 11.4.N
and `at_least(11, 4, 1)` holds, which is how JetPack 7.2.2+ (TensorRT 11.4.x,
DLA back from 11.4.1) is meant when a user names only the minor release.

Part of `lowlight.core`: pure Python, imported by the runtime (engine
portability), the TensorRT target (capabilities, build plan) and the engine
builder (calibration cache header).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import total_ordering

_LEADING_DIGITS = re.compile(r"\d+")
#: Sort key of a missing patch: after every real patch number.
_NEWEST_PATCH = 1 << 30


@total_ordering
@dataclass(frozen=True)
class TrtVersion:
    """A TensorRT version. A missing patch ("11.4") means the newest 11.4.x."""

    major: int
    minor: int
    patch: int | None = None

    @classmethod
    def parse(cls, text: object) -> "TrtVersion":
        """Parse "10.3", "11.4.1", "10.3.0.26" or "10.0.0b6"; TargetError when unreadable."""
        version = cls.try_parse(text)
        if version is None:
            from lowlight.core.errors import TargetError

            raise TargetError(f"cannot read TensorRT version {text!r}", "write it as MAJOR.MINOR[.PATCH], e.g. 10.3 or 11.4.1")
        return version

    @classmethod
    def try_parse(cls, text: object) -> "TrtVersion | None":
        """Like `parse`, but None for text that is not a version (a manifest's "?", None)."""
        if text is None:
            return None
        nums: list[int] = []
        for part in str(text).strip().split(".")[:3]:
            m = _LEADING_DIGITS.match(part)
            if m is None:
                break
            nums.append(int(m.group()))
            if m.end() != len(part):
                break  # "0b6": the patch is 0, the rest is a pre-release tag
        if len(nums) < 2:
            return None
        return cls(nums[0], nums[1], nums[2] if len(nums) > 2 else None)

    def _key(self) -> tuple[int, int, int]:
        return (self.major, self.minor, _NEWEST_PATCH if self.patch is None else self.patch)

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, TrtVersion):
            return NotImplemented
        return self._key() < other._key()

    def at_least(self, major: int, minor: int, patch: int = 0) -> bool:
        """True if this version is >= major.minor.patch (a missing patch counts as the newest)."""
        return self._key() >= (major, minor, patch)

    def matches(self, other: "TrtVersion") -> bool:
        """Same release for engine portability: major.minor equal, patches equal where both are known.

        An engine runs only on the TensorRT that built it; a plan that says
        "10.3" accepts whichever 10.3.x the device reports.
        """
        if (self.major, self.minor) != (other.major, other.minor):
            return False
        return self.patch is None or other.patch is None or self.patch == other.patch

    @property
    def code(self) -> int:
        """NV_TENSORRT_VERSION style number: 10.3.0 -> 100300 (calibration cache header); missing patch = 0."""
        return self.major * 10000 + self.minor * 100 + (self.patch or 0)

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}" + ("" if self.patch is None else f".{self.patch}")
