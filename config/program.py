"""Which program is running: one of this repository's scripts (run by its path, with ``python -m``, or as an installed
console script such as ``insightface-train``), or something else (pytest, a notebook, ``python -c``).

The TensorFlow log filter asks, to quiet TensorFlow before a script imports it; ``--help`` and the one-line errors
ask, to name the command the user typed.
"""

from __future__ import annotations

import functools
import importlib.metadata
import sys
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]  # config/ sits at the repository root
DISTRIBUTION = "insightface-tf"  # the project name in pyproject.toml


def called_as_a_script() -> bool:
    """True when the running program is one of this repository's scripts (not pytest, a notebook or python -c)."""
    if _module_run_of_this_repository(REPOSITORY):
        return True
    # "__mp_main__": the script's module as a spawned worker process (align's) imports it.
    for main_name in ("__main__", "__mp_main__"):
        main_file = getattr(sys.modules.get(main_name), "__file__", None)
        path = Path(main_file).resolve() if main_file else None
        if path is not None and path.is_relative_to(REPOSITORY) and not any(
                part.startswith(".") or part == "site-packages" for part in path.relative_to(REPOSITORY).parts):
            return True
    return console_script() is not None


def _module_run_of_this_repository(root: Path) -> bool:
    """True for ``python -m <package>.<module>`` of a package of this repository: during such a run the package's
    __init__ (which may import Keras, hence TensorFlow) executes before __main__ exists, so only the command line
    says what is running."""
    argv = getattr(sys, "orig_argv", [])
    if "-m" not in argv[1:-1]:
        return False
    package = argv[argv.index("-m", 1) + 1].split(".")[0]
    return (root / package / "__init__.py").is_file() or (root / f"{package}.py").is_file()


@functools.cache
def console_script() -> importlib.metadata.EntryPoint | None:
    """The console script of this project being run (``insightface-train``), or None. Its launcher lives in the
    environment's bin/, outside the repository, and imports the script's module before calling it: only the
    program name in sys.argv[0] says which one it is."""
    try:
        scripts = importlib.metadata.distribution(DISTRIBUTION).entry_points.select(group="console_scripts")
    except importlib.metadata.PackageNotFoundError:  # not installed (`pip install -e .` not run)
        return None
    program = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else ""
    return next((script for script in scripts if script.name == program), None)


def program_name() -> str:
    """How this script was started: ``insightface-train``, ``python -m nets`` or ``python train_nets.py``."""
    script = console_script()
    if script is not None:
        return script.name
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)  # None for a script run by its path
    if spec is not None:
        return f"python -m {spec.name.removesuffix('.__main__')}"
    return f"python {sys.argv[0]}"


def script_module_name() -> str:
    """The module name of the running script ("train_nets", "nets", "data.synthetic"), for its logger."""
    script = console_script()
    if script is not None:
        return script.module
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return spec.name.removesuffix(".__main__") if spec is not None else Path(sys.argv[0]).stem
