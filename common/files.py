"""Writing files so that a failure never leaves a half-written one where a user looks.

Every writer of something a user keeps (args.json, classes.txt, report.json, pairs.txt, a .bin set, an aligned
image, an export) goes through `write_replacing` or `replacing`: the new content is written beside the target
under a temporary name and moved over it only once complete, so a full disk, a bad value or Ctrl-C leaves the
earlier file as it was and no temporary file behind.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

TEMPORARY_SUFFIX = ".tmp"


@contextlib.contextmanager
def replacing(path: str | Path) -> Iterator[Path]:
    """Yields a temporary path beside `path` for the caller to write (a file, or a folder); when the block ends
    without an error that temporary replaces `path`, otherwise it is removed and `path` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + TEMPORARY_SUFFIX)
    _remove(temporary)  # left by a run that was killed
    try:
        yield temporary
        move_into_place(temporary, path)
    finally:
        _remove(temporary)


def write_replacing(path: str | Path, content: str | bytes) -> Path:
    """Writes `content` (text as UTF-8, or bytes) to `path` through a temporary file beside it (see `replacing`)."""
    with replacing(path) as temporary:
        if isinstance(content, bytes):
            temporary.write_bytes(content)
        else:
            temporary.write_text(content, encoding="utf-8")
    return Path(path)


def move_into_place(source: Path, destination: Path) -> None:
    """Moves a finished file or folder over `destination`. A file is replaced atomically; a folder (a SavedModel)
    cannot be, so the previous one is moved aside first and removed only once the new one is in place."""
    if not destination.is_dir():
        os.replace(source, destination)
        return
    backup = destination.with_name(destination.name + ".previous")
    _remove(backup)
    destination.rename(backup)
    try:
        source.rename(destination)
    except OSError:
        backup.rename(destination)
        raise
    _remove(backup)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
