"""Face images for a model: the images of a folder (identity folders or flat), and one image file -> the face crop a
model of a given input size takes (as it is, resized when already aligned, else MTCNN + the 5-point ArcFace warp of
align/, the code align/align_dataset_mtcnn.py runs)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from align.detector import Face, FaceDetector, pick_central_face
from align.warp import warp_to_template
from data.image_folders import list_identity_folders
from data.image_io import IMAGE_EXTENSIONS, read_rgb

log = logging.getLogger(__name__)


class NoFaceError(ValueError):
    """An image in which the detector finds no face."""


class Detector(Protocol):
    """What alignment needs of a detector (align.detector.FaceDetector, or a stand-in in tests)."""

    def detect(self, rgb: np.ndarray) -> list[Face]: ...


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".") and path.is_file()


def list_face_images(folder: str | Path) -> tuple[list[str], list[str]]:
    """(image paths, identity names) of `folder`, sorted: with identity folders (`folder/<identity>/<image>`, the
    layout of data.image_folders) the folder name; flat (`folder/<image>`), each image is its own identity, named by
    its file name without extension. Images beside identity folders are ignored (logged)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder not found: {folder}")
    loose = sorted(path for path in folder.iterdir() if _is_image(path))
    if any(entry.is_dir() and not entry.name.startswith(".") for entry in folder.iterdir()):
        try:
            names, paths, labels = list_identity_folders(folder)
        except ValueError:  # sub-folders without images: a flat folder after all
            names = []
        if names:
            if loose:
                log.info("%s: %d images beside its identity folders ignored (first: %s)", folder, len(loose),
                         loose[0].name)
            return paths, [names[label] for label in labels]
    if not loose:
        raise ValueError(f"{folder}: no images ({', '.join(IMAGE_EXTENSIONS)}) in it or in identity folders under it")
    return [str(path) for path in loose], [path.stem for path in loose]


class FaceCropper:
    """Image file -> RGB uint8 face crop of `input_size` (height, width).

    An image already of that size is taken as it is; otherwise, with `aligned` it is resized (bilinear), without it
    MTCNN finds the faces, the central one is chosen (align.detector.pick_central_face) and warped onto the ArcFace
    template (align.warp). The detector is built on the first image that needs it (TensorFlow, ~3 s).
    """

    def __init__(self, input_size: tuple[int, int], aligned: bool = False, detector: Detector | None = None) -> None:
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.aligned = aligned
        self._detector = detector

    def __call__(self, path: str | Path) -> np.ndarray:
        """The face crop; NoFaceError when no face is found, OSError / ValueError when the file is unreadable."""
        image = read_rgb(path)
        if image.shape[:2] == self.input_size:
            return image
        if self.aligned:
            height, width = self.input_size
            return cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
        return self._align(image, path)

    def _align(self, image: np.ndarray, path: str | Path) -> np.ndarray:
        height, width = self.input_size
        if height != width:
            raise ValueError(f"{path}: the ArcFace template is square, the model's input is {height}x{width}; align "
                             "the images to it first and set aligned")
        if self._detector is None:
            self._detector = FaceDetector()
        faces = self._detector.detect(image)
        if not faces:
            raise NoFaceError(f"{os.fspath(path)}: no face detected")
        return warp_to_template(image, pick_central_face(faces, image.shape).landmarks, height)
