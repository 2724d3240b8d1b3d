"""The install: requirements.txt is the runtime, requirements-test.txt adds the test tools, and the Makefile's
`make demo` installs the first and then the project itself (editable, without dependencies: requirements.txt pins
them) while `make test` (what CI and the README's second command run) adds the test tools."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]
# What the tests need beyond what the code does: pytest and its parallel workers (pytest-xdist, execnet), the notebook
# runner.
TEST_TOOLS = {"pytest", "pytest-xdist", "execnet", "nbclient", "nbformat", "ipykernel"}


def requirement_lines(path: Path) -> list[str]:
    lines = [line.split("#")[0].strip() for line in path.read_text().splitlines()]
    return [line for line in lines if line]


def names(lines: list[str]) -> set[str]:
    return {Requirement(line).name.lower() for line in lines if not line.startswith("-")}


def test_the_runtime_is_pinned_exactly_and_holds_no_test_tool():
    runtime = [Requirement(line) for line in requirement_lines(REPO / "requirements.txt")]
    assert all(len(r.specifier) == 1 and next(iter(r.specifier)).operator == "==" for r in runtime)
    assert {r.name.lower() for r in runtime} & TEST_TOOLS == set()


def test_the_test_requirements_are_the_runtime_plus_the_test_tools():
    lines = requirement_lines(REPO / "requirements-test.txt")
    assert "-r requirements.txt" in lines
    assert names(lines) == TEST_TOOLS


def pip_installs(target: str, tmp_path: Path) -> list[list[str]]:
    """The `pip install` commands that `make <target>` would run on a fresh machine (a dry run, into a new venv)."""
    dry_run = subprocess.run(f"make -n {target} VENV={shlex.quote(str(tmp_path / 'venv'))} PYTHON={sys.executable}",
                             shell=True, cwd=REPO, capture_output=True, text=True, check=True).stdout
    commands = [shlex.split(line) for line in dry_run.splitlines()]
    return [words[2:] for words in commands if words[0].endswith("/pip") and words[1] == "install"
            and "--upgrade" not in words]


def test_make_demo_installs_the_runtime_then_the_project_and_make_test_the_test_tools_too(tmp_path):
    runtime_then_project = [["--quiet", "-r", "requirements.txt"], ["--quiet", "--no-deps", "-e", "."]]
    assert pip_installs("demo", tmp_path) == runtime_then_project
    assert pip_installs("test", tmp_path) == [*runtime_then_project, ["--quiet", "-r", "requirements-test.txt"]]
