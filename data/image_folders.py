"""A folder of identity folders (`root/<identity>/<any name>.jpg`): the seed's custom-dataset layout.

Label = index of the identity folder in the sorted list of the folders that hold at least one image
(jpg/jpeg/png/bmp, any case). Other files, hidden entries and folders without images are ignored; files inside
nested sub-folders are not read. An entry that cannot be examined (a symlink loop, a broken link, no permission) is
skipped with a warning naming it. Identity folder names must be valid UTF-8, since they are written to classes.txt:
an undecodable name is refused, naming the folder, before anything is written.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from data.image_io import IMAGE_EXTENSIONS

log = logging.getLogger(__name__)


def _is_visible(entry: os.DirEntry) -> bool:
    return not entry.name.startswith(".")


def printable_path(path: str | os.PathLike) -> str:
    """`path` for messages, with bytes that are not UTF-8 shown as \\x.. escapes (a log line must not fail on them)."""
    return os.fsencode(path).decode("utf-8", errors="backslashreplace")


def _is_kind(entry: os.DirEntry, kind: str) -> bool:
    """entry.is_dir() / entry.is_file() following links; False, with a warning naming the entry, when it cannot be
    examined (a symlink loop raises ELOOP, a link into a folder without permission EACCES)."""
    try:
        return entry.is_dir() if kind == "dir" else entry.is_file()
    except OSError as err:
        log.warning("skipping %s: cannot examine it (%s)", printable_path(entry.path), err.strerror or err)
        return False


def is_utf8(text: str) -> bool:
    """False for a str holding lone surrogates (file-name bytes that are not UTF-8, or a JSON "\\udcxx" escape)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _check_utf8_name(folder: str) -> None:
    """Refuses an identity folder whose name the file system gave as undecodable bytes (surrogate escapes)."""
    if not is_utf8(os.path.basename(folder)):
        raise ValueError(f"identity folder {os.fsencode(folder)!r}: its name is not valid UTF-8, so it cannot be "
                         f"written to classes.txt; rename it in UTF-8 (e.g. convmv -f latin1 -t utf8)")


def list_identity_folders(root: str | Path) -> tuple[list[str], list[str], list[int]]:
    """Returns (class names, image paths, labels) of a folder-per-identity dataset, in sorted order.

    Raises FileNotFoundError when `root` is not a folder and ValueError when it holds no identity folder with images.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder dataset not found: {root}")
    class_names: list[str] = []
    paths: list[str] = []
    labels: list[int] = []
    empty = []
    with os.scandir(root) as entries:
        folders = sorted(entry.path for entry in entries if _is_visible(entry) and _is_kind(entry, "dir"))
    for folder in folders:
        with os.scandir(folder) as entries:
            images = sorted(entry.path for entry in entries if _is_visible(entry)
                            and os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS
                            and _is_kind(entry, "file"))
        if not images:
            empty.append(os.path.basename(folder))
            continue
        _check_utf8_name(folder)
        paths.extend(images)
        labels.extend([len(class_names)] * len(images))
        class_names.append(os.path.basename(folder))
    if empty:
        log.info("%s: ignored %d identity folders without images (first: %s)", root, len(empty), empty[0])
    if not class_names:
        raise ValueError(f"{root}: no identity folder with images ({', '.join(IMAGE_EXTENSIONS)}) found; expected "
                         f"{root}/<identity>/<image>")
    return class_names, paths, labels


class FolderImages:
    """The images of a folder-per-identity dataset by position: `len`, `read(i)`, `describe(i)`, `class_names`."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.class_names, self.paths, self.labels = list_identity_folders(self.root)

    def __len__(self) -> int:
        return len(self.paths)

    def describe(self, position: int) -> str:
        return self.paths[position]

    def read(self, position: int) -> tuple[bytes, int]:
        """(encoded image, label) of the `position`-th image."""
        with open(self.paths[position], "rb") as stream:
            return stream.read(), self.labels[position]
