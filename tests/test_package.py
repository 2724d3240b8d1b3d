"""The project as an installed package (pyproject.toml; `make setup` runs `pip install -e .`): every script, `python -m`
entry and console script runs from any working directory, and no file of the project edits sys.path to get there."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from setuptools import find_namespace_packages

REPO = Path(__file__).resolve().parents[1]
# Each console script and the seed-named script it runs (the job list of issue 13).
CONSOLE_SCRIPTS = {"insightface-train": "train_nets.py", "insightface-train-mgpu": "train_nets_mgpu_new.py",
                   "insightface-eval": "eval_ckpt_file.py", "insightface-export": "export.py",
                   "insightface-pairs": "generate_pairs.py", "insightface-align": "align/align_dataset_mtcnn.py",
                   "insightface-make-bin": "eval/make_bin.py", "insightface-demo": "demo.py",
                   "insightface-recognize": "recognize.py", "insightface-identify": "identify.py"}
# Top-level folders that belong to the repository, not to the installed package.
NOT_INSTALLED = {"tests", "bench", "notebooks", "tools"}
# An absl/TSL C++ log record ("I0000 00:00:1796123710.191372    9794 port.cc:153] ...") and absl's pre-init banner.
ABSL_RECORD = re.compile(r"^[IWEF]\d{4} [\d:.]+\s+\d+ [\w.]+:\d+\] ", re.M)
ABSL_BANNER = "All log messages before absl::InitializeLog()"
# sys.path changed in place or assigned: .insert/.append/.extend/..., a slice assignment, +=, or a new list.
SYS_PATH_EDIT = re.compile(r"\bsys\.path\s*(\.\s*(insert|append|extend|remove|pop|clear)\s*\(|\[[^\]]*\]\s*=[^=]|"
                           r"[+-]?=[^=])")


def _run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """A fresh process as a user starts it, TensorFlow's log level and our debug switch left to their defaults."""
    environment = {key: value for key, value in os.environ.items()
                   if key not in ("TF_CPP_MIN_LOG_LEVEL", "INSIGHTFACE_TF_DEBUG")}
    return subprocess.run(argv, cwd=cwd, env=environment, capture_output=True, text=True, timeout=300)


def _assert_quiet_success(result: subprocess.CompletedProcess) -> None:
    """Exit 0, no traceback, and none of TensorFlow's C++ start-up lines (config recognised the program as ours)."""
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert not ABSL_RECORD.search(result.stderr) and ABSL_BANNER not in result.stderr, result.stderr[-2000:]


def _summary(script: str) -> str:
    """The first line of a script's module docstring, read from its source."""
    return ast.get_docstring(ast.parse((REPO / script).read_text())).splitlines()[0]


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


# ---------------------------------------------------------------------------------------- from another folder


@pytest.mark.parametrize("script", ["train_nets.py", "align/align_dataset_mtcnn.py"])
def test_a_script_runs_by_its_path_from_another_folder(script, tmp_path):
    result = _run([sys.executable, str(REPO / script), "--help"], tmp_path)
    _assert_quiet_success(result)
    assert result.stdout.startswith(f"usage: python {REPO / script} [--key=value ...]"), result.stdout[:300]
    assert _summary(script) in result.stdout


def test_python_m_nets_builds_a_network_from_another_folder(tmp_path):
    result = _run([sys.executable, "-m", "nets", "--image_size=32", "--net_depth=18"], tmp_path)
    _assert_quiet_success(result)
    assert "(None, 32, 32, 3)" in result.stderr


def test_python_m_eval_make_bin_runs_from_another_folder(tmp_path):
    result = _run([sys.executable, "-m", "eval.make_bin", "--help"], tmp_path)
    _assert_quiet_success(result)
    assert result.stdout.startswith("usage: python -m eval.make_bin ") and "--jpeg_quality" in result.stdout


@pytest.mark.parametrize("name, script", CONSOLE_SCRIPTS.items())
def test_each_console_script_runs_its_script_from_another_folder(name, script, installed_scripts, tmp_path):
    result = _run([str(installed_scripts / name), "--help"], tmp_path)
    _assert_quiet_success(result)
    assert result.stdout.startswith(f"usage: {name} [--key=value ...]"), result.stdout[:300]
    assert _summary(script) in result.stdout


def test_a_console_script_names_its_module_in_its_error_line(installed_scripts, tmp_path):
    result = _run([str(installed_scripts / "insightface-pairs"), "--num_folds=ten"], tmp_path)
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert " generate_pairs: " in line and "num_folds='ten'" in line, line


# ------------------------------------------------------------------------------------------------ pyproject.toml


def test_pyproject_declares_the_console_scripts_of_the_main_jobs():
    scripts = _pyproject()["project"]["scripts"]
    assert set(scripts) == set(CONSOLE_SCRIPTS)
    for name, target in scripts.items():
        module, function = target.split(":")
        assert (module.replace(".", "/") + ".py", function) == (CONSOLE_SCRIPTS[name], "cli")


def test_pyproject_installs_every_top_level_package_and_script_and_no_test_or_bench_code():
    tool = _pyproject()["tool"]["setuptools"]
    found = find_namespace_packages(str(REPO), include=tool["packages"]["find"]["include"])
    folders = {path.name for path in REPO.iterdir() if path.is_dir() and not path.name.startswith((".", "__"))
               and any(path.glob("*.py"))}
    assert {name.split(".")[0] for name in found} == folders - NOT_INSTALLED
    scripts = {path.stem for path in REPO.glob("*.py")}
    assert set(tool["py-modules"]) == scripts


# ------------------------------------------------------------------------------------------------------ sys.path


def test_the_sys_path_edit_pattern_tells_edits_from_mentions():
    edits = ["sys.path.insert(0, str(REPO))", "sys.path.append(folder)", "sys.path[:0] = [x]", "sys.path += [x]",
             "sys.path = [x, *sys.path]", "sys.path .extend(more)"]
    mentions = ["bench/ is first on sys.path when run", "if sys.path[0] == here:", "print(sys.path)"]
    assert all(SYS_PATH_EDIT.search(text) for text in edits)
    assert not any(SYS_PATH_EDIT.search(text) for text in mentions)


def test_no_python_file_outside_tests_edits_sys_path():
    edits = []
    for folder, subfolders, files in os.walk(REPO):
        subfolders[:] = [name for name in subfolders if not name.startswith((".", "__")) and name not in {"build"}
                         and not (Path(folder) == REPO and name == "tests")]
        for name in files:
            if name.endswith(".py"):
                path = Path(folder, name)
                edits += [f"{path.relative_to(REPO)}: {line.strip()}" for line in path.read_text().splitlines()
                          if SYS_PATH_EDIT.search(line)]
    assert edits == []
