"""Shared fixtures: quiet TensorFlow, the real-face data of ../shared/data, a temporary output folder."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHARED_DATA = REPO.parent / "shared" / "data"


def shared_data_path(name: str) -> Path:
    """Path of a file or folder of ../shared/data, skipping the test (with the reason) when it is absent."""
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"real-face data {path} is not present on this machine")
    return path


@pytest.fixture
def orl_faces() -> Path:
    return shared_data_path("orl_faces")


@pytest.fixture
def yale_faces() -> Path:
    return shared_data_path("yale_faces")


@pytest.fixture
def lfw_pairs() -> Path:
    return shared_data_path("lfw_pairs.txt")
