"""Shared fixtures: quiet TensorFlow, the real-face data of ../shared/data, the mxnet reference in a side venv.

A test that needs ../shared/data skips with a reason naming the missing path; when ../shared/data is present such a
skip fails the run (exit status 1, with a line naming the tests): a machine that has the data must run those tests.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHARED_DATA = REPO.parent / "shared" / "data"
MXNET_REQUIREMENTS = ("mxnet==1.9.1", "numpy<1.24")
MXNET_WRITER = Path(__file__).resolve().parent / "mxnet_writer.py"
_shared_data_skips: list[str] = []  # "nodeid (reason)" of this run's skips that name ../shared/data


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


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Remembers the skips whose reason names ../shared/data (shared_data_path's, or any test's own)."""
    if report.skipped and isinstance(report.longrepr, tuple) and str(SHARED_DATA) in report.longrepr[2]:
        _shared_data_skips.append(f"{report.nodeid} ({report.longrepr[2].removeprefix('Skipped: ')})")


def pytest_sessionfinish(session: pytest.Session) -> None:
    if SHARED_DATA.is_dir() and _shared_data_skips and session.exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    if SHARED_DATA.is_dir() and _shared_data_skips:
        terminalreporter.write_line(f"FAILED: {len(_shared_data_skips)} test(s) needing real-face data skipped "
                                    f"although {SHARED_DATA} is present: " + "; ".join(_shared_data_skips),
                                    red=True, bold=True)


@pytest.fixture(scope="session")
def mxnet_python() -> Path:
    """The python of a side venv with mxnet 1.9.1 (built on first use: ~30 s with the 49 MB download, then reused);
    skips with the precise reason when it cannot be built here."""
    from side_venv import SideVenvUnavailable, side_venv_python

    try:
        return side_venv_python("mxnet-venv", MXNET_REQUIREMENTS,
                                "import mxnet, numpy; assert mxnet.__version__ == '1.9.1', mxnet.__version__")
    except SideVenvUnavailable as err:
        pytest.skip(f"mxnet cross-check not run: {err}")


@pytest.fixture(scope="session")
def mxnet_files(mxnet_python: Path) -> Callable[[str, dict, Path], dict]:
    """Runs tests/mxnet_writer.py in the mxnet side venv: (mode 'rec' | 'bin', spec, out folder) -> its result."""

    def run(mode: str, spec: dict, out: Path) -> dict:
        out.mkdir(parents=True, exist_ok=True)
        spec_path = out / "spec.json"
        spec_path.write_text(json.dumps(spec))
        done = subprocess.run([str(mxnet_python), str(MXNET_WRITER), mode, str(spec_path), str(out)],
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"mxnet writer failed:\n{done.stdout}\n{done.stderr}"
        with open(out / "result.pickle", "rb") as stream:
            return pickle.load(stream)

    return run
