"""Keeps TensorFlow's C++ start-up log quiet for the scripts: TF_CPP_MIN_LOG_LEVEL, and an import hook that applies it
to the lines TensorFlow's libraries print while they load (before they read it).

Imported by `config` itself, so a script that imports config first is quieted before TensorFlow loads.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import re
import sys
import tempfile
import types
from typing import Any, Iterable

from config.program import called_as_a_script

DEBUG_ENV = "INSIGHTFACE_TF_DEBUG"
TF_LOG_ENV = "TF_CPP_MIN_LOG_LEVEL"


def debug_requested(argv: Iterable[str]) -> bool:
    """True for ``--debug`` among the arguments or INSIGHTFACE_TF_DEBUG=1: full tracebacks and TensorFlow's logs."""
    return "--debug" in argv or os.environ.get(DEBUG_ENV, "") == "1"


def quiet_tensorflow(argv: Iterable[str]) -> None:
    """Hides TensorFlow's C++ start-up notices and the CUDA-not-found errors, unless TF_CPP_MIN_LOG_LEVEL is set or
    debugging is asked for.

    Set in the environment, so worker processes (align's) inherit it. TensorFlow reads it once, when it is imported:
    this has to run before that, hence also on importing this module from a script (`called_as_a_script`).
    Python-side warnings (ours and TensorFlow's) are not affected.
    """
    if debug_requested(argv):
        return
    os.environ.setdefault(TF_LOG_ENV, "3")
    _filter_tensorflow_import()


# The lines TensorFlow's libraries print while they load, before they read TF_CPP_MIN_LOG_LEVEL: absl's banner, and
# records such as "I0000 00:00:1796123710.191372    9794 port.cc:153] oneDNN custom operations are on...".
_ABSL_BANNER = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
_ABSL_RECORD = re.compile(r"^([IWE])\d{4} \d\d:\d\d:[\d.]+\s+\d+ \S+:\d+\] ")
_SEVERITIES = "IWE"  # TF_CPP_MIN_LOG_LEVEL 1 hides I, 2 also W, 3 also E


def _filter_tensorflow_import() -> None:
    """Applies TF_CPP_MIN_LOG_LEVEL to those load-time lines too, by filtering stderr while `tensorflow` is imported."""
    try:
        level = int(os.environ.get(TF_LOG_ENV, "0"))
    except ValueError:
        return
    if level > 0 and "tensorflow" not in sys.modules and not any(
            isinstance(finder, _TensorFlowImportFilter) for finder in sys.meta_path):
        sys.meta_path.insert(0, _TensorFlowImportFilter(_SEVERITIES[:level]))


class _TensorFlowImportFilter(importlib.abc.MetaPathFinder):
    """Finds `tensorflow` as usual, but runs its import with file descriptor 2 captured, then writes back every line
    except the absl banner and absl records of the hidden severities (Python warnings and errors come through)."""

    def __init__(self, hidden: str) -> None:
        self.hidden = hidden

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)  # once, and the real finders do the finding
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            spec.loader = _FilteredLoader(spec.loader, self.hidden)
        return spec


class _FilteredLoader(importlib.abc.Loader):
    def __init__(self, loader: Any, hidden: str) -> None:
        self.loader, self.hidden = loader, hidden

    def create_module(self, spec: Any) -> Any:
        return self.loader.create_module(spec)

    def exec_module(self, module: types.ModuleType) -> None:
        module.__loader__ = module.__spec__.loader = self.loader  # TensorFlow sees its real loader
        sys.stderr.flush()
        saved = os.dup(2)
        with tempfile.TemporaryFile() as captured:
            os.dup2(captured.fileno(), 2)
            try:
                self.loader.exec_module(module)
            finally:
                sys.stderr.flush()
                os.dup2(saved, 2)
                os.close(saved)
                captured.seek(0)
                kept = [line for line in captured.read().decode(errors="replace").splitlines(keepends=True)
                        if not self._hidden(line)]
                os.write(2, "".join(kept).encode())

    def _hidden(self, line: str) -> bool:
        record = _ABSL_RECORD.match(line)
        return line.strip() == _ABSL_BANNER or (record is not None and record.group(1) in self.hidden)


if called_as_a_script():
    quiet_tensorflow(sys.argv[1:])
