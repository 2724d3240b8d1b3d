"""The seed's input convention as numbers: decoded RGB uint8 -> channel order -> (x - 127.5) / 128.

Here without TensorFlow, so the TensorFlow input pipeline (data.preprocess.normalize) and the Keras-only deployment
wrapper (deploy.preprocessing) share one definition. The channel order is an Args setting ("BGR" for the seed and its
released checkpoints) recorded in args.json.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CHANNEL_ORDERS = ("BGR", "RGB")
PIXEL_MEAN = 127.5
PIXEL_SCALE = 1.0 / 128.0  # the seed's 0.0078125


def check_channel_order(channel_order: str) -> None:
    """ValueError naming the accepted orders unless `channel_order` is one of CHANNEL_ORDERS."""
    if channel_order not in CHANNEL_ORDERS:
        raise ValueError(f"unknown channel_order {channel_order!r}; expected one of {', '.join(CHANNEL_ORDERS)}")


@dataclass(frozen=True)
class Preprocessing:
    """How pixels 0-255 become a network's input: (x - mean) * scale, channels in `channel_order`.

    The seed and the networks trained here: SEED_PREPROCESSING (BGR or, when trained so, RGB; 127.5, 1/128).
    arcface_torch: RGB, 127.5, 1/127.5 (the defaults). The MXNet model zoo: RGB with mean / scale read from its graph.
    """

    channel_order: str = "RGB"
    mean: float = 127.5
    scale: float = 1 / 127.5

    def __post_init__(self) -> None:
        check_channel_order(self.channel_order)
        if not self.scale > 0:
            raise ValueError(f"scale: expected a positive number; received {self.scale}")


SEED_PREPROCESSING = Preprocessing("BGR", PIXEL_MEAN, PIXEL_SCALE)


def as_preprocessing(preprocessing: Preprocessing | str) -> Preprocessing:
    """`preprocessing` itself, or for a channel order alone the seed's numbers in that order (what the networks
    trained here take)."""
    if isinstance(preprocessing, Preprocessing):
        return preprocessing
    return Preprocessing(preprocessing, PIXEL_MEAN, PIXEL_SCALE)


def normalize(rgb_images: np.ndarray, preprocessing: Preprocessing | str = "BGR") -> np.ndarray:
    """RGB images (uint8 or float, [..., H, W, 3]) -> float32 network input: channels in the order and
    (x - mean) * scale of `preprocessing` (a channel order alone: the seed's (x - 127.5) / 128). For the seed's
    numbers this is data.preprocess.normalize in numpy, for the evaluator (eval/ runs without TensorFlow)."""
    preprocessing = as_preprocessing(preprocessing)
    images = np.asarray(rgb_images)
    if preprocessing.channel_order == "BGR":
        images = images[..., ::-1]
    return (images.astype(np.float32) - np.float32(preprocessing.mean)) * np.float32(preprocessing.scale)
