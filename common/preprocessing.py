"""The seed's input convention as numbers: decoded RGB uint8 -> channel order -> (x - 127.5) / 128.

Here without TensorFlow, so the TensorFlow input pipeline (data.preprocess.normalize) and the Keras-only deployment
wrapper (deploy.preprocessing) share one definition. The channel order is an Args setting ("BGR" for the seed and its
released checkpoints) recorded in args.json.
"""

from __future__ import annotations

import numpy as np

CHANNEL_ORDERS = ("BGR", "RGB")
PIXEL_MEAN = 127.5
PIXEL_SCALE = 1.0 / 128.0  # the seed's 0.0078125


def check_channel_order(channel_order: str) -> None:
    """ValueError naming the accepted orders unless `channel_order` is one of CHANNEL_ORDERS."""
    if channel_order not in CHANNEL_ORDERS:
        raise ValueError(f"unknown channel_order {channel_order!r}; expected one of {', '.join(CHANNEL_ORDERS)}")


def normalize(rgb_images: np.ndarray, channel_order: str = "BGR") -> np.ndarray:
    """RGB images (uint8 or float, [..., H, W, 3]) -> float32 network input in `channel_order`, (x - 127.5) / 128:
    data.preprocess.normalize in numpy, for the evaluator (eval/ runs without TensorFlow)."""
    check_channel_order(channel_order)
    images = np.asarray(rgb_images)
    if channel_order == "BGR":
        images = images[..., ::-1]
    return (images.astype(np.float32) - np.float32(PIXEL_MEAN)) * np.float32(PIXEL_SCALE)
