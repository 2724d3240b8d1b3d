"""What the bench scripts share (timing, writing their results), imported as a sibling module: Python puts bench/
first on the module search path when a script runs as `python bench/<script>.py`."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Callable

import numpy as np

from common.files import write_replacing

log = logging.getLogger(__name__)


def median_seconds(function: Callable[[], object], repeats: int) -> float:
    """Median wall time of `repeats` calls, after one untimed warm-up call (graph building, allocation)."""
    function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def write_results(path: str | Path, report: dict) -> Path:
    """Writes a bench report as JSON (bench/results/*.json, read by run_all.py), replacing the previous one whole."""
    written = write_replacing(path, json.dumps(report, indent=1) + "\n")
    log.info("wrote %s", written)
    return written
