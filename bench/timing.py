"""What the bench scripts share (timing, writing their results), imported as a sibling module: Python puts bench/
first on the module search path when a script runs as `python bench/<script>.py`."""

from __future__ import annotations

import importlib.util
import json
import logging
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Callable

import numpy as np

from common.files import write_replacing

log = logging.getLogger(__name__)
TESTS = Path(__file__).resolve().parents[1] / "tests"


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


def tests_module(name: str) -> ModuleType:
    """A module of tests/ (a reference implementation, a side-venv builder), loaded from its file: tests/ is not an
    installed package, and a bench must not edit sys.path. It is registered under its plain name, as the tests import
    their siblings (torch_side imports side_venv: load side_venv first)."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, TESTS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]
