"""Side virtual environments for reference implementations that cannot share our venv (mxnet 1.9.1 needs numpy<1.24).

A side venv is built once with `python -m venv` + `pip install` from the package registry, in a cache folder outside
the repository (~/.cache/insightface_tf/<name>, or $INSIGHTFACE_TF_SIDE_VENVS/<name>), and reused by later runs. It
counts as built only when its `.complete` marker exists and `check` imports in it; otherwise it is deleted and built
again. A file lock serialises builds by concurrent test runs. When it cannot be built (no registry reachable, no
wheel for any Python here) `SideVenvUnavailable` says why, with pip's own last lines; tests turn that into a skip.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Sequence

log = logging.getLogger(__name__)

CACHE_ENV = "INSIGHTFACE_TF_SIDE_VENVS"
DEFAULT_CACHE = Path.home() / ".cache" / "insightface_tf"
BUILD_TIMEOUT_S = 900
_NO_REGISTRY = "no package registry reachable"
# pip's words when no index could be reached (DNS, refused connection, proxy, TLS).
_NETWORK_SIGNS = ("NewConnectionError", "Temporary failure in name resolution", "Network is unreachable",
                  "Failed to establish a new connection", "ProxyError", "SSLError", "ConnectionError",
                  "Read timed out", "No route to host")


class SideVenvUnavailable(RuntimeError):
    """The side venv could not be built here; the message says why (tests skip with it)."""


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE)


def _interpreters(max_version: tuple[int, int]) -> list[tuple[str, tuple[int, int]]]:
    """(path, version) of the Pythons here not newer than `max_version`, this one's base interpreter first."""
    candidates = [getattr(sys, "_base_executable", sys.executable)]
    candidates += [found for minor in range(max_version[1], 7, -1)
                   if (found := shutil.which(f"python{max_version[0]}.{minor}"))]
    usable: dict[tuple[int, int], str] = {}  # one per version: another copy of it gets the same wheels
    for candidate in candidates:
        try:
            text = subprocess.run([candidate, "-c", "import sys; print(*sys.version_info[:2])"], capture_output=True,
                                  text=True, timeout=30, check=True).stdout
        except (OSError, subprocess.SubprocessError):
            continue
        version = (int(text.split()[0]), int(text.split()[1]))
        if version <= max_version:
            usable.setdefault(version, candidate)
    return [(candidate, version) for version, candidate in usable.items()]


def _works(python: Path, check: str) -> bool:
    try:
        return subprocess.run([str(python), "-c", check], capture_output=True, timeout=120).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def _pip_failure(output: str) -> str:
    tail = " | ".join(line.strip() for line in output.strip().splitlines()[-3:])
    if any(sign in output for sign in _NETWORK_SIGNS):
        return f"{_NO_REGISTRY} ({tail})"
    return tail


def _build(folder: Path, interpreter: str, requirements: Sequence[str]) -> str | None:
    """Builds the venv in `folder`; None when it worked, else why not (the folder is then removed)."""
    shutil.rmtree(folder, ignore_errors=True)
    steps = [[interpreter, "-m", "venv", str(folder)],
             [str(folder / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
              "--retries", "1", "--timeout", "30", *requirements]]
    for step in steps:
        try:
            done = subprocess.run(step, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            shutil.rmtree(folder, ignore_errors=True)
            return f"`{' '.join(step[:4])} ...` ran over {BUILD_TIMEOUT_S} s"
        if done.returncode != 0:
            shutil.rmtree(folder, ignore_errors=True)
            return _pip_failure(done.stdout + done.stderr)
    return None


def side_venv_python(name: str, requirements: Sequence[str], check: str,
                     max_python: tuple[int, int] = (3, 11)) -> Path:
    """The python of the side venv `name` holding `requirements`, built on first use (and rebuilt when broken).

    Args:
        name: folder name under the cache root.
        requirements: pip requirement strings.
        check: Python code that must run without error in a working venv (e.g. imports and version asserts).
        max_python: newest Python the requirements have wheels for (numpy<1.24 stops at 3.11).

    Raises:
        SideVenvUnavailable: no Python here could get the requirements installed; says what was tried and why.
    """
    folder = cache_root() / name
    python = folder / "bin" / "python"
    marker = folder / ".complete"
    wanted = "\n".join(requirements)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another test run may be building it right now
        if marker.is_file() and marker.read_text() == wanted and _works(python, check):
            return python
        interpreters = _interpreters(max_python)
        if not interpreters:
            raise SideVenvUnavailable(f"side venv {name}: no Python <= {max_python[0]}.{max_python[1]} on this "
                                      f"machine (the wheels of {' '.join(requirements)} need one)")
        failures = []
        for interpreter, version in interpreters:
            log.info("building side venv %s with Python %d.%d: %s", folder, *version, " ".join(requirements))
            failure = _build(folder, interpreter, requirements)
            if failure is None and not _works(python, check):
                failure = f"installed, but the check failed: {check}"
                shutil.rmtree(folder, ignore_errors=True)
            if failure is None:
                marker.write_text(wanted)
                return python
            failures.append(f"Python {version[0]}.{version[1]} ({interpreter}): {failure}")
            if failure.startswith(_NO_REGISTRY):
                break  # another Python will not reach it either
    raise SideVenvUnavailable(f"side venv {name}: pip install {' '.join(requirements)} failed, tried "
                              f"{len(failures)} of {len(interpreters)} Python(s) here: " + "; ".join(failures))
