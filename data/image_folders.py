"""A folder of identity folders (`root/<identity>/<any name>.jpg`): the seed's custom-dataset layout.

Label = index of the identity folder in the sorted list of the folders that hold at least one image
(jpg/jpeg/png/bmp, any case). Other files, hidden entries and folders without images are ignored; files inside
nested sub-folders are not read.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from data.image_io import IMAGE_EXTENSIONS

log = logging.getLogger(__name__)


def _is_visible(entry: os.DirEntry) -> bool:
    return not entry.name.startswith(".")


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
        folders = sorted(entry.path for entry in entries if _is_visible(entry) and entry.is_dir())
    for folder in folders:
        with os.scandir(folder) as entries:
            images = sorted(entry.path for entry in entries if _is_visible(entry) and entry.is_file()
                            and os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS)
        if not images:
            empty.append(os.path.basename(folder))
            continue
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
