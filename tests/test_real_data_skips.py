"""tests/conftest.py's session hook (a skip for missing ../shared/data fails the run when ../shared/data is present)
and tests/side_venv.py (the side venv the mxnet cross-checks run in: a clear reason when it cannot be built, rebuilt
when broken)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from side_venv import CACHE_ENV, SideVenvUnavailable, side_venv_python

TESTS = Path(__file__).resolve().parent
GENERATED_TEST = '''
def test_needs_orl(orl_faces):
    assert orl_faces.is_dir()


def test_plain():
    pass
'''


def run_copied_suite(tmp_path: Path, data: str | None, *options: str) -> subprocess.CompletedProcess:
    """pytest (with `options`) in a fresh process on a copy of our conftest beside a generated test file, in
    tmp/repo, with tmp/shared/data absent (data None), present but empty (''), or holding the folder `data`."""
    repo = tmp_path / "repo"
    (repo / "tests").mkdir(parents=True)
    shutil.copy(TESTS / "conftest.py", repo / "tests" / "conftest.py")
    (repo / "tests" / "test_generated.py").write_text(GENERATED_TEST)
    if data is not None:
        (tmp_path / "shared" / "data" / data).mkdir(parents=True)
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-ra", *options, "tests"],
                          cwd=repo, capture_output=True, text=True, timeout=120)


def test_skip_names_the_missing_path_and_passes_without_shared_data(tmp_path):
    done = run_copied_suite(tmp_path, None)
    assert done.returncode == 0, done.stdout
    missing = tmp_path / "shared" / "data" / "orl_faces"
    assert f"SKIPPED [1] tests/test_generated.py:2: real-face data {missing} is not present" in done.stdout
    assert "FAILED" not in done.stdout


# `make test` runs the suite on pytest-xdist workers: the hook must see the workers' skips too.
@pytest.mark.parametrize("options", [(), ("-n", "2", "--dist", "loadfile")], ids=["one process", "two workers"])
def test_skip_while_shared_data_is_present_fails_the_run(tmp_path, options):
    done = run_copied_suite(tmp_path, "", *options)
    assert done.returncode == 1, done.stdout
    assert "1 passed, 1 skipped" in done.stdout  # the test itself still skipped: the hook turned it into a failure
    assert (f"FAILED: 1 test(s) needing real-face data skipped although {tmp_path / 'shared' / 'data'} is present: "
            f"tests/test_generated.py::test_needs_orl") in done.stdout


def test_present_data_runs_and_passes(tmp_path):
    done = run_copied_suite(tmp_path, "orl_faces")
    assert done.returncode == 0 and "2 passed" in done.stdout and "FAILED" not in done.stdout, done.stdout


def test_side_venv_without_a_reachable_registry_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    for variable in ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL"):
        monkeypatch.setenv(variable, "http://127.0.0.1:9/simple")  # nothing listens on the discard port
    monkeypatch.setenv("PIP_FIND_LINKS", "")
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")
    with pytest.raises(SideVenvUnavailable, match=r"no package registry reachable \(.*Connection refused"):
        side_venv_python("offline", ["mxnet==1.9.1"], "import mxnet")
    assert not (tmp_path / "offline").exists()  # nothing half-built is left to be taken for a venv next time


def test_side_venv_is_rebuilt_when_broken_then_reused(tmp_path, monkeypatch):
    # "pip" is already in every fresh venv: installing it needs no registry.
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    marker = tmp_path / "probe" / ".complete"
    marker.parent.mkdir()
    marker.write_text("pip")  # a venv that says it is complete but has no python: an interrupted or damaged one
    python = side_venv_python("probe", ["pip"], "import pip")
    assert python == tmp_path / "probe" / "bin" / "python"
    assert subprocess.run([str(python), "-c", "import pip"]).returncode == 0
    sentinel = tmp_path / "probe" / "sentinel"
    sentinel.touch()
    assert side_venv_python("probe", ["pip"], "import pip") == python
    assert sentinel.exists()  # a working one is reused, not rebuilt (a rebuild starts from an empty folder)
