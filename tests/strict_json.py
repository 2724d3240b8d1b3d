"""Strict JSON for the tests: Python's json.loads accepts NaN and Infinity, which JSON (and most readers) refuse."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def _refuse(constant: str) -> Any:
    raise ValueError(f"{constant} is not JSON")


def load_strict_json(path: str | Path) -> Any:
    """The content of a JSON file; ValueError naming the file when it holds NaN, Infinity or -Infinity."""
    try:
        return json.loads(Path(path).read_text(), parse_constant=_refuse)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
