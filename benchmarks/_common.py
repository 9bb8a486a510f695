"""What the family benchmarks share: the median timer and the results file."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


def timed(fn: Callable[[], Any], runs: int) -> tuple[float, Any]:
    """Median seconds of `runs` calls (after one warm-up) and the last result."""
    out = fn()
    ts = []
    for _ in range(runs):
        t0 = time.perf_counter()
        out = fn()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts)), out


def write_result(name: str, result: dict[str, Any]) -> Path:
    """benchmarks/results/<name>-<result's date>.json, printed too; returns the path."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}-{result['date']}.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    print(f"written {path}")
    return path
