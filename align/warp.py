"""Geometry of an aligned face: the 5-point similarity warp onto the ArcFace template, and the seed's box crop.

The InsightFace training data (MS1M, the validation .bin files) was aligned by a least-squares similarity transform
(rotation, uniform scale, shift) of 5 landmarks (eye centres, nose tip, mouth corners, in image order: left-in-image
eye first) onto a fixed 112x112 template. A model only sees faces like its training faces when custom data is aligned
the same way; the seed's box crop (kept here as mode "box") ignored the landmarks.
"""

from __future__ import annotations

import cv2
import numpy as np

# insightface's reference points for 112x112 (its 96x112 points shifted by +8 in x): left eye, right eye, nose tip,
# left mouth corner, right mouth corner, as (x, y) in pixels, "left" meaning the smaller x in the image.
ARCFACE_TEMPLATE_112 = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float64)


def template_for_size(image_size: int) -> np.ndarray:
    """The ArcFace template scaled from 112x112 to image_size x image_size, float64 [5, 2]."""
    if image_size <= 0:
        raise ValueError(f"image_size must be a positive number of pixels, got {image_size}")
    return ARCFACE_TEMPLATE_112 * (image_size / 112.0)


def estimate_similarity(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Least-squares similarity transform (Umeyama, 1991) mapping `source` points onto `target` points.

    Args:
        source, target: [N, 2] point sets (N >= 2) in (x, y) order.
    Returns:
        float64 [2, 3] matrix M with target ~= M[:, :2] @ source + M[:, 2] (the form cv2.warpAffine takes).
    """
    source = np.asarray(source, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    if source.shape != target.shape or source.ndim != 2 or source.shape[1] != 2 or source.shape[0] < 2:
        raise ValueError(f"expected two [N, 2] point sets with N >= 2, got {source.shape} and {target.shape}")
    source_mean, target_mean = source.mean(axis=0), target.mean(axis=0)
    source_centred, target_centred = source - source_mean, target - target_mean
    source_variance = (source_centred ** 2).sum() / len(source)
    if source_variance == 0:
        raise ValueError("the source points all coincide; no similarity transform is defined")
    covariance = target_centred.T @ source_centred / len(source)
    u, singular_values, vt = np.linalg.svd(covariance)
    # Umeyama's sign correction: keeps a proper rotation where the best orthogonal fit would be a reflection.
    signs = np.array([1.0, -1.0 if np.linalg.det(u) * np.linalg.det(vt) < 0 else 1.0])
    rotation = u @ np.diag(signs) @ vt
    scale = (singular_values * signs).sum() / source_variance
    shift = target_mean - scale * rotation @ source_mean
    return np.hstack([scale * rotation, shift[:, None]])


def warp_to_template(image: np.ndarray, landmarks: np.ndarray, image_size: int = 112) -> np.ndarray:
    """Warps `image` so that its 5 `landmarks` ([5, 2], (x, y)) land on the ArcFace template of `image_size`.

    Bilinear sampling; pixels from outside the image are black, as in insightface's `norm_crop`.
    Returns an image_size x image_size image of the input's dtype and channels.
    """
    matrix = estimate_similarity(landmarks, template_for_size(image_size))
    return cv2.warpAffine(image, matrix, (image_size, image_size), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def margin_box(box: np.ndarray, margin: int, image_shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    """The seed's crop box: the detection box (x1, y1, x2, y2) grown by margin/2 on each side, clipped to the image.

    Coordinates are truncated to integers as the seed's int32 array did.
    """
    height, width = image_shape[:2]
    x1, y1, x2, y2 = (float(v) for v in box)
    return (int(max(x1 - margin / 2, 0)), int(max(y1 - margin / 2, 0)),
            int(min(x2 + margin / 2, width)), int(min(y2 + margin / 2, height)))


def crop_box(image: np.ndarray, box: np.ndarray, margin: int, image_size: int) -> np.ndarray:
    """The seed's "box" alignment: the margin box cropped and resized (bilinear) to image_size x image_size.

    The aspect ratio is not kept, as in the seed. Raises ValueError when the box lies outside the image.
    """
    x1, y1, x2, y2 = margin_box(box, margin, image.shape)
    if x2 <= x1 or y2 <= y1:
        raise ValueError(f"face box {np.asarray(box).tolist()} with margin {margin} is empty inside an image of "
                         f"shape {image.shape[:2]}")
    return cv2.resize(image[y1:y2, x1:x2], (image_size, image_size), interpolation=cv2.INTER_LINEAR)
