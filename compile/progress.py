"""Stage progress: one line per stage with its timing, and tqdm bars for long loops."""
from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")


class Progress:
    """Prints `[i/n] stage ... done (1.2 s)`; quiet=True prints nothing."""

    def __init__(self, stages: list[str], quiet: bool = False) -> None:
        self.stages, self.quiet = stages, quiet
        self.timings: dict[str, float] = {}

    def say(self, text: str) -> None:
        if not self.quiet:
            print(text, file=sys.stderr, flush=True)

    @contextmanager
    def stage(self, name: str, detail: str = "") -> Iterator[dict[str, str]]:
        """Time a stage; the body may set note['note'] (e.g. 'cached') to show after it."""
        i = self.stages.index(name) + 1 if name in self.stages else 0
        head = f"[{i}/{len(self.stages)}] {name}" + (f": {detail}" if detail else "")
        self.say(f"{head} ...")
        note: dict[str, str] = {}
        t0 = time.perf_counter()
        yield note
        dt = time.perf_counter() - t0
        self.timings[name] = round(dt, 3)
        self.say(f"{head} done ({dt:.1f} s{', ' + note['note'] if note.get('note') else ''})")

    def bar(self, items: Iterable[T], desc: str, total: int | None = None) -> Iterable[T]:
        from tqdm import tqdm

        return tqdm(items, desc=f"    {desc}", total=total, disable=self.quiet, leave=False, file=sys.stderr)
