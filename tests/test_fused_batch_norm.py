"""nets.norms.FusedBatchNormalization: TensorFlow's fused kernel computing Keras' batch norm, against float64 numpy."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from nets.norms import FusedBatchNormalization, make_norm, standard_layer

EPSILON = 2e-5
MOMENTUM = 0.9


def batch(shape=(4, 5, 6, 8), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).normal(2.0, 3.0, shape).astype(np.float32)


def reference_training(x: np.ndarray, gamma: np.ndarray, upstream: np.ndarray):
    """float64 batch norm over all axes but the last: output, batch mean, biased variance and the gradients of
    sum(output * upstream) with respect to x, gamma and beta (the textbook backward pass)."""
    x, gamma, upstream = (a.astype(np.float64) for a in (x, gamma, upstream))
    axes = tuple(range(x.ndim - 1))
    mean, variance = x.mean(axes), x.var(axes)
    stddev = np.sqrt(variance + EPSILON)
    normalised = (x - mean) / stddev
    d_gamma = (upstream * normalised).sum(axes)
    d_beta = upstream.sum(axes)
    d_x = gamma / stddev * (upstream - upstream.mean(axes) - normalised * (upstream * normalised).mean(axes))
    return normalised, mean, variance, (d_x, d_gamma, d_beta)


def test_training_step_matches_the_float64_formula_and_moves_the_averages():
    x, upstream = batch(), batch(seed=1)
    layer = make_norm("bn", "bn", seed=0)
    layer.build(x.shape)
    layer.beta.assign(np.linspace(-1, 1, 8))
    gamma, beta = layer.gamma.numpy(), layer.beta.numpy()
    inputs = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(inputs)
        outputs = layer(inputs, training=True)
        loss = tf.reduce_sum(outputs * upstream)
    gradients = tape.gradient(loss, [inputs, layer.gamma, layer.beta])
    normalised, mean, variance, expected_gradients = reference_training(x, gamma, upstream)

    np.testing.assert_allclose(outputs.numpy(), normalised * gamma + beta, atol=2e-6)
    for got, expected in zip(gradients, expected_gradients):
        np.testing.assert_allclose(got.numpy(), expected, rtol=1e-4, atol=1e-4)
    # Keras' update: the moving variance moves towards the biased batch variance (the kernel returns the unbiased)
    np.testing.assert_allclose(layer.moving_mean.numpy(), (1 - MOMENTUM) * mean, atol=1e-6)
    np.testing.assert_allclose(layer.moving_variance.numpy(), MOMENTUM + (1 - MOMENTUM) * variance, rtol=1e-6)


def test_inference_uses_the_moving_statistics_and_updates_nothing():
    x = batch()
    layer = make_norm("bn", "bn", seed=0)
    layer.build(x.shape)
    moving_mean, moving_variance = np.linspace(-1, 3, 8), np.linspace(0.5, 9, 8)
    layer.moving_mean.assign(moving_mean)
    layer.moving_variance.assign(moving_variance)
    outputs = layer(x, training=False).numpy()
    expected = (x - moving_mean) / np.sqrt(moving_variance + EPSILON) * layer.gamma.numpy() + layer.beta.numpy()
    np.testing.assert_allclose(outputs, expected, atol=2e-6)
    np.testing.assert_array_equal(layer.moving_mean.numpy(), moving_mean.astype(np.float32))
    np.testing.assert_array_equal(layer.moving_variance.numpy(), moving_variance.astype(np.float32))


def test_bfloat16_activations_keep_float32_statistics():
    x = batch()
    layer = FusedBatchNormalization(momentum=MOMENTUM, epsilon=EPSILON, dtype="mixed_bfloat16")
    outputs = layer(x, training=True)
    assert outputs.dtype == tf.bfloat16
    assert layer.moving_variance.dtype == "float32"
    # bfloat16 keeps 8 significant bits: the input rounding alone moves a normalised value by up to ~2**-8 * |x| / std
    rounded = tf.cast(tf.cast(x, tf.bfloat16), tf.float32).numpy()
    normalised, mean, variance, _ = reference_training(rounded, layer.gamma.numpy(), np.ones_like(x))
    np.testing.assert_allclose(tf.cast(outputs, tf.float32).numpy(), normalised * layer.gamma.numpy(), atol=0.02)
    np.testing.assert_allclose(layer.moving_variance.numpy(), MOMENTUM + (1 - MOMENTUM) * variance, rtol=1e-5)


def op_types(function, *args) -> set[str]:
    return {op.type for op in function.get_concrete_function(*args).graph.get_operations()}


def test_one_fused_kernel_runs_forward_and_backward():
    layer = make_norm("bn", "bn", seed=0)
    layer.build((4, 5, 6, 8))

    @tf.function
    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(layer(x, training=True))
        return tape.gradient(loss, [x, layer.gamma])

    ops = op_types(step, tf.TensorSpec((4, 5, 6, 8), tf.float32))
    assert {"FusedBatchNormV3", "FusedBatchNormGradV3"} <= ops
    assert not {"Mean", "Rsqrt", "SquaredDifference"} & ops  # none of Keras' separate moments and normalisation


@pytest.mark.parametrize("case", ["2-D input", "synchronized"])
def test_keras_computes_where_the_kernel_does_not_apply(case):
    shape = (6, 8) if case == "2-D input" else (4, 5, 6, 8)
    layer = FusedBatchNormalization(momentum=MOMENTUM, epsilon=EPSILON, synchronized=case == "synchronized")
    layer.build(shape)
    ops = op_types(tf.function(lambda x: layer(x, training=True)), tf.TensorSpec(shape, tf.float32))
    assert "FusedBatchNormV3" not in ops
    x = batch(shape)
    normalised, mean, _, _ = reference_training(x, layer.gamma.numpy(), np.ones_like(x))
    np.testing.assert_allclose(layer(x, training=True).numpy(), normalised, atol=2e-6)
    np.testing.assert_allclose(layer.moving_mean.numpy(), (1 - MOMENTUM) * mean, atol=1e-6)


def test_the_standard_layer_is_plain_keras_batch_norm_with_the_same_output():
    x = batch()
    layer = make_norm("bn", "bn", seed=0)
    layer(x, training=True)
    standard = standard_layer(layer)
    assert type(standard) is keras.layers.BatchNormalization
    standard.build(x.shape)
    standard.set_weights(layer.get_weights())
    np.testing.assert_allclose(standard(x, training=False).numpy(), layer(x, training=False).numpy(), atol=2e-6)
