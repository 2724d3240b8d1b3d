"""Reading one image file as RGB uint8 with numpy/OpenCV (evaluation sets, alignment, .bin packing).

The training pipeline decodes in tf.data instead (data/ readers); both give 3-channel RGB: grey is replicated and
the alpha channel of RGBA is dropped, as the seed's `decode_*(channels=3)` did.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")


def decode_rgb(encoded: bytes, source: str = "<bytes>") -> np.ndarray:
    """Decodes JPEG/PNG/BMP bytes to RGB uint8 [H, W, 3]; ValueError naming `source` when they are not an image."""
    array = cv2.imdecode(np.frombuffer(encoded, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if array is None or array.size == 0:
        raise ValueError(f"{source}: not a decodable image (corrupt, truncated or not JPEG/PNG/BMP)")
    if array.dtype != np.uint8:
        # 16-bit PNGs: keep the 8 most significant bits.
        array = (array >> 8).astype(np.uint8) if array.dtype == np.uint16 else array.astype(np.uint8)
    if array.ndim == 2:
        return np.repeat(array[:, :, None], 3, axis=2)
    if array.shape[2] == 1:
        return np.repeat(array, 3, axis=2)
    return cv2.cvtColor(array[:, :, :3], cv2.COLOR_BGR2RGB)


def decode_to_size(encoded: bytes, source: str, image_size: tuple[int, int] | None) -> np.ndarray:
    """Decodes JPEG/PNG/BMP bytes to RGB uint8 [H, W, 3], resized (bilinear) to `image_size` = (height, width) when
    given and different; ValueError naming `source` when undecodable."""
    image = decode_rgb(encoded, source)
    if image_size is not None and image.shape[:2] != tuple(image_size):
        height, width = image_size
        image = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
    return image


def read_rgb(path: str | Path, image_size: tuple[int, int] | None = None) -> np.ndarray:
    """Reads an image file as RGB uint8 [H, W, 3], resized (bilinear) to `image_size` = (height, width) if given.

    Raises FileNotFoundError for a missing file and ValueError naming the file for an unreadable one.
    """
    path = Path(path)
    try:
        encoded = path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"image file not found: {path}") from None
    return decode_to_size(encoded, str(path), image_size)
