"""MTCNN face detection (the `mtcnn` package, weights inside its wheel) with the seed's settings and face choice.

TensorFlow is imported when the first detector is built, so a process that only dispatches work (the aligner's main
process) does not pay its ~3 s and ~700 MB.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from align.warp import template_for_size

# Fewer of TensorFlow's C++ start-up notices, which every worker process prints (those absl writes before its log is
# initialised still appear); Python-side warnings and errors still show.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# P-net's input window: the smallest face MTCNN finds in the image it is given (a smaller min_face_size makes it
# upsample that image instead).
MTCNN_WINDOW_PX = 12
# Longest side of the copy MTCNN searches (0 = the image itself): a 4352x2903 photo aligns 3.9x faster, its faces
# under 12 x 4352 / 1280 = 41 px are then missed (docs/alignment.md#large-photos-detect_max_side).
DEFAULT_DETECT_MAX_SIDE = 1280


@dataclass(frozen=True)
class Face:
    """One detected face: box (x1, y1, x2, y2), score, and landmarks [5, 2] (x, y) in the template's order."""

    box: np.ndarray
    score: float
    landmarks: np.ndarray


def limit_tensorflow_threads() -> None:
    """One TensorFlow thread per process: worker processes already use every core, more threads only contend.

    Must run before TensorFlow executes anything in this process.
    """
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)


def check_detect_max_side(detect_max_side: int) -> None:
    """Raises ValueError unless detect_max_side is 0 (full resolution) or a side MTCNN can look at."""
    if detect_max_side != 0 and detect_max_side < MTCNN_WINDOW_PX:
        raise ValueError(f"detect_max_side={detect_max_side}: expected 0 (detect at full resolution) or at least "
                         f"{MTCNN_WINDOW_PX} pixels")


def detection_plan(image_shape: tuple[int, ...], detect_max_side: int, min_face_size: float) -> tuple[float, float]:
    """(scale of the detection copy, min_face_size on that copy) for an image of `image_shape`.

    The copy's longest side is at most detect_max_side (0: no limit; an image within it is never upscaled). The
    smallest face looked for shrinks with the copy, but not below MTCNN's 12-pixel window: below it MTCNN would
    upsample the copy again, costing what the full-resolution pass costs. So on a copy of scale s < 1 the smallest
    face found is max(min_face_size, 12 / s) original pixels.
    """
    check_detect_max_side(detect_max_side)
    longest = max(image_shape[:2])
    if detect_max_side == 0 or longest <= detect_max_side:
        return 1.0, float(min_face_size)
    scale = detect_max_side / longest
    return scale, max(min_face_size * scale, float(MTCNN_WINDOW_PX))


def check_detector_settings(min_face_size: int, thresholds: Sequence[float], scale_factor: float) -> None:
    """Raises ValueError naming the MTCNN setting that is out of range."""
    if min_face_size <= 0:
        raise ValueError(f"min_face_size must be a positive number of pixels, got {min_face_size}")
    if len(thresholds) != 3 or not all(0.0 <= t <= 1.0 for t in thresholds):
        raise ValueError(f"thresholds must be 3 probabilities (P-net, R-net, O-net), got {list(thresholds)}")
    if not 0.0 < scale_factor < 1.0:
        raise ValueError(f"scale_factor must lie in (0, 1), got {scale_factor}")


class FaceDetector:
    """MTCNN with the seed's parameters (facenet's `align_dataset_mtcnn.py`): minsize 20, thresholds
    [0.6, 0.7, 0.7], pyramid factor 0.709. The `mtcnn` package's own O-net default threshold (0.8) is overridden.

    detect_max_side > 0: MTCNN searches a copy whose longest side is at most that (cv2.INTER_AREA), with the smallest
    face scaled as `detection_plan` says; boxes and landmarks are mapped back to the image given. 0: full resolution.
    """

    def __init__(self, min_face_size: int = 20, thresholds: Sequence[float] = (0.6, 0.7, 0.7),
                 scale_factor: float = 0.709, detect_max_side: int = DEFAULT_DETECT_MAX_SIDE) -> None:
        check_detector_settings(min_face_size, thresholds, scale_factor)
        check_detect_max_side(detect_max_side)
        self.detect_max_side = detect_max_side
        from mtcnn import MTCNN

        self._mtcnn = MTCNN(device="CPU:0")
        self._options = dict(min_face_size=min_face_size, scale_factor=scale_factor, threshold_pnet=thresholds[0],
                             threshold_rnet=thresholds[1], threshold_onet=thresholds[2])

    def detect(self, rgb: np.ndarray) -> list[Face]:
        """All faces in an RGB uint8 [H, W, 3] image, in the detector's order (empty list when there is none), in
        that image's pixel coordinates whatever copy was searched."""
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ValueError(f"expected an RGB uint8 [H, W, 3] image, got {rgb.dtype} {rgb.shape}")
        scale, min_face_size = detection_plan(rgb.shape, self.detect_max_side, self._options["min_face_size"])
        height, width = rgb.shape[:2]
        size = (max(round(width * scale), 1), max(round(height * scale), 1))  # (width, height), as OpenCV takes it
        copy = rgb if scale == 1.0 else cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
        rows = self._mtcnn.detect_faces(copy, box_format="xyxy", output_type="numpy",
                                        **{**self._options, "min_face_size": min_face_size})
        # Row layout: image index, x1, y1, x2, y2, score, the 5 landmark x, then the 5 landmark y.
        rows = np.asarray(rows, dtype=np.float64).reshape(-1, 16)
        # Per axis (the copy's sides are rounded), pixel centres to pixel centres: x = (x' + 0.5) * W / W' - 0.5.
        x_ratio, y_ratio = width / size[0], height / size[1]
        return [Face(box=to_original(row[1:5].reshape(2, 2), x_ratio, y_ratio).reshape(4), score=float(row[5]),
                     landmarks=to_original(np.stack([row[6:11], row[11:16]], axis=1), x_ratio, y_ratio))
                for row in rows]


def to_original(points: np.ndarray, x_ratio: float, y_ratio: float) -> np.ndarray:
    """(x, y) points [N, 2] of a resized copy mapped back to the image it was resized from (ratio = original / copy
    side), pixel centre onto pixel centre as cv2.resize places them."""
    if x_ratio == 1.0 and y_ratio == 1.0:
        return points.copy()
    return (points + 0.5) * np.array([x_ratio, y_ratio]) - 0.5


def pick_central_face(faces: list[Face], image_shape: tuple[int, ...]) -> Face:
    """The seed's choice among several faces: argmax(box area - 2 * squared distance of box centre to image centre)."""
    if not faces:
        raise ValueError("pick_central_face needs at least one face")
    height, width = image_shape[:2]
    boxes = np.stack([face.box for face in faces])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    squared_offsets = ((centres - np.array([width / 2, height / 2])) ** 2).sum(axis=1)
    return faces[int(np.argmax(areas - 2.0 * squared_offsets))]


def template_eye_error(aligned_rgb: np.ndarray, detector: FaceDetector, padding: int | None = None) -> float | None:
    """Quality check of a similarity-aligned face: the larger distance (pixels) between an eye detected again in the
    aligned image and the template's eye for its size; None when no face is found again.

    The aligned face fills its frame, which MTCNN's box regression was not trained for, so the image is padded by
    `padding` pixels (default: half its size) of replicated border before the detection.
    """
    size = aligned_rgb.shape[0]
    if aligned_rgb.shape[1] != size:
        raise ValueError(f"expected a square aligned face, got shape {aligned_rgb.shape}")
    padding = size // 2 if padding is None else padding
    padded = np.pad(aligned_rgb, ((padding, padding), (padding, padding), (0, 0)), mode="edge")
    faces = detector.detect(padded)
    if not faces:
        return None
    eyes = pick_central_face(faces, padded.shape).landmarks[:2] - padding
    return float(np.linalg.norm(eyes - template_for_size(size)[:2], axis=1).max())
