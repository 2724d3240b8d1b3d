"""TensorFlow-only kernels that nets' layers call on the TensorFlow backend (never imported on another backend)."""

from __future__ import annotations

import tensorflow as tf


def fused_batch_norm(inputs: tf.Tensor, gamma: tf.Tensor, beta: tf.Tensor, epsilon: float
                     ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Batch norm of NHWC `inputs` over their batch statistics by FusedBatchNormV3: (outputs, mean, biased
    variance), the statistics in float32. The kernel returns the unbiased variance (for TF 1.x's moving averages),
    rescaled here to the biased one that Keras averages."""
    none = tf.constant([], tf.float32)
    outputs, mean, unbiased_variance, *_ = tf.raw_ops.FusedBatchNormV3(
        x=inputs, scale=gamma, offset=beta, mean=none, variance=none, epsilon=epsilon, exponential_avg_factor=1.0,
        data_format="NHWC", is_training=True)
    count = tf.cast(tf.reduce_prod(tf.shape(inputs)[:-1]), tf.float32)
    return outputs, mean, unbiased_variance * (count - 1.0) / count


def fused_batch_norm_inference(inputs: tf.Tensor, gamma: tf.Tensor, beta: tf.Tensor, mean: tf.Tensor,
                               variance: tf.Tensor, epsilon: float) -> tf.Tensor:
    """Batch norm of NHWC `inputs` over given statistics by FusedBatchNormV3."""
    return tf.raw_ops.FusedBatchNormV3(x=inputs, scale=gamma, offset=beta, mean=mean, variance=variance,
                                       epsilon=epsilon, data_format="NHWC", is_training=False)[0]
