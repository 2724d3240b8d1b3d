"""Log set-up shared by every script: one format, the console, and optionally a log file."""

from __future__ import annotations

import logging
import time
from pathlib import Path

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(log_file: str | Path | None = None, level: int = logging.INFO) -> None:
    """Logs to the console and, when given, to `log_file` (created with its folder); INFO by default."""
    handlers: list[logging.Handler] = [logging.StreamHandler()]
    if log_file is not None:
        handlers.append(_file_handler(Path(log_file)))
    logging.basicConfig(level=level, format=LOG_FORMAT, handlers=handlers, force=True)
    # TensorFlow gives its logger a console handler of its own when it is imported before logging is set up; its
    # records also reach ours through the root logger, so every TensorFlow line would be printed twice.
    logging.getLogger("tensorflow").handlers.clear()


def add_log_file(folder: str | Path, prefix: str) -> logging.Handler:
    """Adds a `<prefix>_<date>-<time>.log` file in `folder` to the root logger; remove the handler returned (and
    close it) when the job ends."""
    handler = _file_handler(Path(folder) / time.strftime(f"{prefix}_%Y-%m-%d-%H-%M.log"))
    logging.getLogger().addHandler(handler)
    return handler


def _file_handler(path: Path) -> logging.FileHandler:
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    return handler
