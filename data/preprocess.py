"""The seed's input convention applied to TensorFlow tensors: decoded RGB uint8 -> channel order -> (x - 127.5) / 128.

Training readers and the evaluator call `normalize`, so training and evaluation cannot disagree; the numbers and
check_channel_order live in common.preprocessing (TensorFlow-free), shared with the deployment wrapper
(deploy.preprocessing). The channel order is an Args setting ("BGR" for the seed and its released checkpoints)
recorded in args.json.
"""

from __future__ import annotations

import tensorflow as tf

from common.preprocessing import PIXEL_MEAN, PIXEL_SCALE, check_channel_order

__all__ = ["check_channel_order", "normalize"]


def normalize(rgb_images: tf.Tensor, channel_order: str = "BGR") -> tf.Tensor:
    """RGB images (uint8 or float, [..., H, W, 3]) -> float32 network input in `channel_order`, (x - 127.5) / 128."""
    check_channel_order(channel_order)
    images = tf.convert_to_tensor(rgb_images)
    if channel_order == "BGR":
        # tf.reverse, not a [..., ::-1] slice: the strided slice costs ~450 us per 112x112 image on CPU.
        images = tf.reverse(images, axis=[-1])
    return (tf.cast(images, tf.float32) - PIXEL_MEAN) * PIXEL_SCALE
