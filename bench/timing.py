"""Timing shared by the bench scripts, which import it as a sibling module: Python puts bench/ first on the module
search path when a script runs as `python bench/<script>.py`."""

from __future__ import annotations

import time
from typing import Callable

import numpy as np


def median_seconds(function: Callable[[], object], repeats: int) -> float:
    """Median wall time of `repeats` calls, after one untimed warm-up call (graph building, allocation)."""
    function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return float(np.median(times))
