"""Shared fixtures: quiet TensorFlow, the real-face data of ../shared/data, the mxnet reference in a side venv.

A test that needs ../shared/data skips with a reason naming the missing path; when ../shared/data is present such a
skip fails the run (exit status 1, with a line naming the tests): a machine that has the data must run those tests.
Likewise a test of the installed project (its console scripts) skips without the editable install, and that skip
fails the run in the repository's .venv, which `make setup` (hence `make test`) always installs the project into.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import pickle
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Any, Callable

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
MXNET_REQUIREMENTS = ("mxnet==1.9.1", "numpy<1.24")
MXNET_WRITER = Path(__file__).resolve().parent / "mxnet_writer.py"
_shared_data_skips: list[str] = []  # "nodeid (reason)" of this run's skips that name ../shared/data
DISTRIBUTION = "insightface-tf"  # pyproject.toml's project name
NOT_INSTALLED = f"the project is not installed editable from {REPO} (`make setup` runs `pip install -e .`)"
MAKE_VENV = REPO / ".venv"  # where `make setup` installs it
_install_skips: list[str] = []  # "nodeid" of this run's skips for NOT_INSTALLED


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


@pytest.fixture(scope="session")
def installed_scripts() -> Path:
    """The folder of the project's console scripts (insightface-train, ...), skipping the test when this Python has
    no editable install of this checkout."""
    # Every copy of the metadata: run from the repository root, the *.egg-info that the build leaves there comes first.
    origins = [json.loads(found.read_text("direct_url.json") or "{}")
               for found in importlib.metadata.distributions(name=DISTRIBUTION)]
    if not any(origin.get("dir_info", {}).get("editable") and origin.get("url") == REPO.as_uri() for origin in origins):
        pytest.skip(NOT_INSTALLED)
    return Path(sysconfig.get_path("scripts"))


def _in_make_venv() -> bool:
    return Path(sys.prefix).resolve() == MAKE_VENV.resolve()


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Remembers the skips whose reason names ../shared/data (shared_data_path's, or any test's own), and those for
    a missing editable install."""
    if report.skipped and isinstance(report.longrepr, tuple) and str(SHARED_DATA) in report.longrepr[2]:
        _shared_data_skips.append(f"{report.nodeid} ({report.longrepr[2].removeprefix('Skipped: ')})")
    if report.skipped and isinstance(report.longrepr, tuple) and NOT_INSTALLED in report.longrepr[2]:
        _install_skips.append(report.nodeid)


def pytest_sessionfinish(session: pytest.Session) -> None:
    required_skips = (SHARED_DATA.is_dir() and _shared_data_skips) or (_in_make_venv() and _install_skips)
    if required_skips and session.exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    if SHARED_DATA.is_dir() and _shared_data_skips:
        terminalreporter.write_line(f"FAILED: {len(_shared_data_skips)} test(s) needing real-face data skipped "
                                    f"although {SHARED_DATA} is present: " + "; ".join(_shared_data_skips),
                                    red=True, bold=True)
    if _in_make_venv() and _install_skips:
        terminalreporter.write_line(f"FAILED: {len(_install_skips)} test(s) of the installed project skipped in "
                                    f"{MAKE_VENV}: {NOT_INSTALLED}: " + "; ".join(_install_skips),
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


@pytest.fixture(scope="session")
def torch_references(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """torch's own reference files (tests/torch_side.py): backbones/ for test_pretrained_torch.py, onnx/ for
    test_pretrained_onnx.py, written by one run in the PyTorch side venv; skips with the reason when it cannot be
    built here."""
    from side_venv import SideVenvUnavailable
    from torch_side import torch_python, write_references

    try:
        python = torch_python()
    except SideVenvUnavailable as err:
        pytest.skip(f"PyTorch reference not run: {err}")
    out = tmp_path_factory.mktemp("torch_references")
    write_references(python, out)
    return out
