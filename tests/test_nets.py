"""The IR-ResNet family: every depth x norm x unit builds and runs, the seed's structure, names and weight counts."""

from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from losses import MarginHead, sparse_softmax_cross_entropy
from nets import get_mobilefacenet, get_resnet, get_resnet_v1, get_vgg
from nets.norms import BatchRenormalization
from nets.resnet_ir import STAGE_UNITS, seed_scope

REPO = Path(__file__).resolve().parents[1]


def _small_batch(size=32, n=2):
    return np.random.default_rng(0).uniform(-1, 1, size=(n, size, size, 3)).astype("float32")


def _variants():
    """Every depth x norm x unit; the deep ones beyond (bn, ir) are slow-marked to keep the default suite short."""
    for depth, norm, unit in itertools.product(sorted(STAGE_UNITS), ("bn", "gn", "brn"), ("ir", "se_ir")):
        slow = depth >= 100 and (norm, unit) != ("bn", "ir")
        yield pytest.param(depth, norm, unit, marks=[pytest.mark.slow] if slow else [])


@pytest.mark.parametrize("depth, norm, unit", _variants())
def test_every_variant_builds_and_gives_finite_embeddings(depth, norm, unit):
    model = get_resnet(depth, unit_type=unit, norm=norm, image_size=32, seed=0)
    for training in (True, False):
        out = model(_small_batch(), training=training)
        assert out.shape == (2, 512)
        assert np.isfinite(out.numpy()).all()


@pytest.mark.parametrize("depth, width, expected", [(50, 1, 43_624_640), (100, 1, 65_221_440),
                                                    (152, 1, 70_836_416), (50, 4, 176_367_808)])
def test_weight_counts_equal_the_seed(depth, width, expected):
    """All weights including BN moving statistics (seed-behaviour.md 2.1 table)."""
    assert get_resnet(depth, net_width=width).count_params() == expected


@pytest.mark.parametrize("norm, unit", [("bn", "ir"), ("gn", "ir"), ("brn", "ir"), ("bn", "se_ir")])
def test_every_trainable_weight_gets_a_gradient_and_frozen_gamma_stays(norm, unit):
    model = get_resnet(18, unit_type=unit, norm=norm, image_size=32, seed=1)
    head = MarginHead(4, seed=2)
    labels = tf.constant([0, 1, 2, 3])
    images = _small_batch(n=4)
    with tf.GradientTape() as tape:
        loss = sparse_softmax_cross_entropy(head(model(images, training=True), labels), labels)
    variables = model.trainable_variables + head.trainable_variables
    grads = tape.gradient(loss, variables)
    missing = [v.path for v, g in zip(variables, grads) if g is None or not np.any(g.numpy())]
    assert not missing, f"no gradient for {missing}"

    if norm == "brn":  # the seed's tf.layers renorm: every gamma starts at 1 and trains, E_BN2's included
        bn_layers = [layer for layer in model.layers if isinstance(layer, BatchRenormalization)]
        assert len(bn_layers) == 30 and model.get_layer("E_BN2") in bn_layers
        assert all(layer.gamma.trainable and np.all(layer.gamma.numpy() == 1) for layer in bn_layers)
        assert any(v is model.get_layer("E_BN2").gamma for v in model.trainable_variables)
    if norm == "bn":
        gamma = model.get_layer("E_BN2").gamma
        assert not gamma.trainable and all(v is not gamma for v in model.trainable_variables)
        before = gamma.numpy().copy()
        keras.optimizers.SGD(0.1).apply_gradients(zip(grads, variables))
        np.testing.assert_array_equal(gamma.numpy(), before)
        assert np.abs(before - 1).max() < 0.02  # N(1, 0.002) initialisation


def test_model_d_structure_and_names():
    model = get_resnet(50)
    assert model.name == "resnet_v1_50"
    assert model.get_layer("conv1").kernel.shape == (3, 3, 3, 64)
    # block1/unit_1: 64 -> 64 with stride 2, so the shortcut is a weightless 1x1 stride-2 subsample.
    pool = model.get_layer("block1.unit_1.bottleneck_v1.shortcut")
    assert isinstance(pool, keras.layers.MaxPooling2D) and pool.pool_size == (1, 1) and pool.strides == (2, 2)
    assert model.get_layer("block2.unit_1.bottleneck_v1.shortcut_conv").kernel.shape == (1, 1, 64, 128)
    assert model.get_layer("block2.unit_1.bottleneck_v1.shortcut_bn.BatchNorm").epsilon == pytest.approx(2e-5)
    # slim's conv2d_same: symmetric one-pixel padding then a VALID stride-2 conv.
    pad = model.get_layer("block3.unit_1.bottleneck_v1.padding_conv2")
    assert pad.padding == ((1, 1), (1, 1))
    conv2 = model.get_layer("block3.unit_1.bottleneck_v1.conv2")
    assert conv2.strides == (2, 2) and conv2.padding == "valid" and not conv2.use_bias
    assert model.get_layer("block4.unit_3.bottleneck_v1.conv2").output.shape[1:] == (7, 7, 512)
    assert model.get_layer("E_DenseLayer").kernel.shape == (25088, 512)
    bn = model.get_layer("bn0")
    assert bn.momentum == pytest.approx(0.9) and bn.epsilon == pytest.approx(2e-5)
    assert not np.any(model.get_layer("prelu0").alpha.numpy())
    assert model.get_layer("E_Dropout").rate == pytest.approx(0.4)
    assert seed_scope("block1.unit_1.bottleneck_v1.conv2_bn.BatchNorm", model.name) == \
        "resnet_v1_50/block1/unit_1/bottleneck_v1/conv2_bn/BatchNorm"
    assert len({layer.name for layer in model.layers}) == len(model.layers)


def test_shortcut_subsample_and_padding_act_as_the_seed():
    """The 1x1/2 pool is x[:, ::2, ::2]; the padded stride-2 conv equals a numpy conv with symmetric padding."""
    model = get_resnet(18, image_size=16, seed=3)
    x = np.random.default_rng(1).normal(size=(1, 16, 16, 64)).astype("float32")
    pool = model.get_layer("block1.unit_1.bottleneck_v1.shortcut")
    np.testing.assert_array_equal(pool(x).numpy(), x[:, ::2, ::2, :])

    conv = model.get_layer("block1.unit_1.bottleneck_v1.conv2")
    padded = model.get_layer("block1.unit_1.bottleneck_v1.padding_conv2")(x).numpy()
    kernel = conv.kernel.numpy().astype(np.float64)
    xp = np.pad(x.astype(np.float64), ((0, 0), (1, 1), (1, 1), (0, 0)))
    expected = np.zeros((1, 8, 8, kernel.shape[-1]))
    for i, j in itertools.product(range(8), range(8)):
        patch = xp[0, 2 * i:2 * i + 3, 2 * j:2 * j + 3, :]
        expected[0, i, j] = np.tensordot(patch, kernel, axes=3)
    np.testing.assert_allclose(conv(padded).numpy(), expected, rtol=1e-4, atol=1e-4)


def test_width_four_and_group_norm_variants():
    wide = get_resnet(50, net_width=4, image_size=32)
    assert wide.get_layer("block1.unit_1.bottleneck_v1.shortcut_conv").kernel.shape == (1, 1, 64, 256)
    assert wide.get_layer("block1.unit_1.bottleneck_v1.conv1").kernel.shape == (3, 3, 64, 64)
    assert wide.get_layer("block1.unit_1.bottleneck_v1.conv2").kernel.shape == (3, 3, 64, 256)
    gn = get_resnet(50, norm="gn", image_size=32)
    layer = gn.get_layer("block2.unit_1.bottleneck_v1.conv2_bn.GroupNorm")
    assert layer.groups == 32 and layer.epsilon == pytest.approx(1e-5)
    assert "E_BN2" not in [lyr.name for lyr in gn.layers]
    brn = get_resnet(18, norm="brn", image_size=32).get_layer("bn0")
    assert isinstance(brn, BatchRenormalization) and brn.epsilon == pytest.approx(1e-3)
    assert brn.renorm_clipping == {"rmax": 3.0, "rmin": 0.3333, "dmax": 5.0}
    assert brn.momentum == pytest.approx(0.9) and brn.renorm_momentum == pytest.approx(0.9)


def test_seeded_builds_are_identical():
    a, b = get_resnet(18, image_size=32, seed=5), get_resnet(18, image_size=32, seed=5)
    for wa, wb in zip(a.weights, b.weights):
        np.testing.assert_array_equal(wa.numpy(), wb.numpy())


BUILDERS = {"resnet_ir": lambda size: get_resnet(18, image_size=size, embedding_size=8),
            "resnet_v1": lambda size: get_resnet_v1(50, image_size=size, embedding_size=8),
            "mobilefacenet": lambda size: get_mobilefacenet(image_size=size, embedding_size=8),
            "vgg": lambda size: get_vgg(16, image_size=size, embedding_size=8)}


@pytest.mark.parametrize("builder", sorted(BUILDERS))
def test_every_builder_takes_one_n_for_n_by_n_and_refuses_other_sizes(builder):
    assert BUILDERS[builder]([32]).input_shape == (None, 32, 32, 3)
    with pytest.raises(ValueError, match=r"image size \[32, 32, 3\]: expected N or \[height, width\]"):
        BUILDERS[builder]([32, 32, 3])


@pytest.mark.parametrize("kwargs, fragment", [
    ({"num_layers": 51}, "18, 34, 50, 100, 152, 200"),
    ({"num_layers": 50, "unit_type": "bottleneck"}, "ir, se_ir"),
    ({"num_layers": 50, "norm": "ln"}, "bn, gn, brn"),
    ({"num_layers": 50, "net_width": 2}, "(1, 4)"),
])
def test_bad_options_name_the_choices(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        get_resnet(**kwargs)


class TF1BatchRenorm:
    """The TF 1.x tf.layers.batch_normalization(renorm=True) training step in float64 numpy (normalization.py:
    _renorm_correction_and_moments and call), with the seed's clipping, momenta and epsilon 1e-3."""

    def __init__(self, channels, epsilon=1e-3, momentum=0.9, renorm_momentum=0.9, rmin=0.3333, rmax=3.0, dmax=5.0):
        self.v = {"gamma": np.ones(channels), "beta": np.zeros(channels), "moving_mean": np.zeros(channels),
                  "moving_variance": np.ones(channels), "renorm_mean": np.zeros(channels),
                  "renorm_mean_weight": np.zeros(()), "renorm_stddev": np.zeros(channels),
                  "renorm_stddev_weight": np.zeros(())}
        self.eps, self.momentum, self.decay, self.rmin, self.rmax, self.dmax = (epsilon, momentum, renorm_momentum,
                                                                                rmin, rmax, dmax)

    def train_step(self, x, upstream):
        """Forward in training mode; returns (output, d loss / d x, d loss / d gamma, d loss / d beta) for the loss
        sum(output * upstream), then applies TF 1.x's updates of the six statistics."""
        v, axes = self.v, (0, 1, 2)
        mean, var = x.mean(axes), x.var(axes)  # biased variance, as tf.nn.moments
        stddev = np.sqrt(var + self.eps)
        mixed_mean = v["renorm_mean"] + (1 - v["renorm_mean_weight"]) * mean
        mixed_stddev = v["renorm_stddev"] + (1 - v["renorm_stddev_weight"]) * stddev
        r = np.clip(stddev / mixed_stddev, self.rmin, self.rmax)
        d = np.clip((mean - mixed_mean) / mixed_stddev, -self.dmax, self.dmax)
        self.corrections = (r, d)
        xhat = (x - mean) / stddev
        out = xhat * r * v["gamma"] + d * v["gamma"] + v["beta"]
        # r and d are constants for the gradient; mean and variance are not.
        n = x.size // x.shape[-1]
        g_xhat = upstream * r * v["gamma"]
        g_x = (n * g_xhat - g_xhat.sum(axes) - xhat * (g_xhat * xhat).sum(axes)) / (n * stddev)
        g_gamma = (upstream * (xhat * r + d)).sum(axes)
        g_beta = upstream.sum(axes)
        for name, value in (("renorm_mean", mean), ("renorm_stddev", stddev)):
            v[name] = self.decay * v[name] + (1 - self.decay) * value
            v[name + "_weight"] = self.decay * v[name + "_weight"] + (1 - self.decay)
        new_mean = v["renorm_mean"] / v["renorm_mean_weight"]
        new_variance = (v["renorm_stddev"] / v["renorm_stddev_weight"]) ** 2 - self.eps
        v["moving_mean"] = self.momentum * v["moving_mean"] + (1 - self.momentum) * new_mean
        v["moving_variance"] = self.momentum * v["moving_variance"] + (1 - self.momentum) * new_variance
        return out, g_x, g_gamma, g_beta


def _drifting_batches(steps=14, channels=5):
    """Batches whose mean and spread jump once the renorm weights near 1 (12 steps: 0.72), so r and d reach their
    clips; before, the mixing with the batch value keeps them near 1 and 0."""
    rng = np.random.default_rng(7)
    for step in range(steps):
        jumped = step >= 12  # channel 0 shifts, 1 shrinks, 2 widens; 3 and 4 wander a little
        scale = np.array([1.0, 0.02 if jumped else 1.0, 50.0 if jumped else 1.0, 1.0, 2.0]) * rng.uniform(0.7, 1.4)
        shift = np.array([50.0 if jumped else 0.0, 0.0, 0.0, 0.3 * step, -0.2 * step])
        yield rng.normal(shift, scale, size=(4, 3, 3, channels)), rng.normal(size=(4, 3, 3, channels))


def test_batch_renorm_is_the_seed_s_tf1_algorithm():
    """Outputs, gradients (input, gamma, beta) and all 8 variables over several SGD steps, against float64 numpy."""
    layer, reference, lr = BatchRenormalization(name="bn0"), TF1BatchRenorm(5), 0.1
    layer.build((None, 3, 3, 5))
    assert sorted(v.name for v in layer.weights) == sorted(reference.v)
    corrections = []
    for x, upstream in _drifting_batches():
        expected, g_x, g_gamma, g_beta = reference.train_step(x, upstream)
        inputs = tf.constant(x, tf.float32)
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            out = layer(inputs, training=True)
            loss = tf.reduce_sum(out * tf.constant(upstream, tf.float32))
        grads = tape.gradient(loss, [inputs, layer.gamma.value, layer.beta.value])
        scale = np.abs(expected).max()
        np.testing.assert_allclose(out.numpy(), expected, rtol=1e-4, atol=1e-5 * scale)
        for actual, wanted in zip(grads, (g_x, g_gamma, g_beta)):
            np.testing.assert_allclose(actual.numpy(), wanted, rtol=1e-3, atol=1e-5 * np.abs(wanted).max())
        for name, wanted in reference.v.items():
            np.testing.assert_allclose(getattr(layer, name).numpy(), wanted, rtol=1e-4, atol=1e-6, err_msg=name)
        # One SGD step on gamma and beta in both, so later steps use trained values.
        layer.gamma.assign(layer.gamma.numpy() - lr * g_gamma)
        layer.beta.assign(layer.beta.numpy() - lr * g_beta)
        reference.v["gamma"] -= lr * g_gamma
        reference.v["beta"] -= lr * g_beta
        corrections.append(reference.corrections)
    # The drift exercised the corrections: r reached both clips and d its clip, besides unclipped values.
    r, d = np.stack([c[0] for c in corrections]), np.stack([c[1] for c in corrections])
    assert np.any(r == 3.0) and np.any(r == 0.3333) and np.any(np.abs(d) == 5.0)
    assert np.any((r > 0.3333) & (r < 3) & (r != 1)) and np.any((np.abs(d) < 5) & (d != 0))


def test_batch_renorm_inference_uses_the_moving_statistics_and_updates_nothing():
    layer, reference = BatchRenormalization(name="bn0"), TF1BatchRenorm(5)
    layer.build((None, 3, 3, 5))
    for x, upstream in _drifting_batches(steps=3):
        layer(tf.constant(x, tf.float32), training=True)
        reference.train_step(x, upstream)
    before = {v.name: v.numpy().copy() for v in layer.weights}
    x = np.random.default_rng(1).normal(size=(2, 3, 3, 5))
    v = reference.v
    expected = (x - v["moving_mean"]) / np.sqrt(v["moving_variance"] + 1e-3) * v["gamma"] + v["beta"]
    np.testing.assert_allclose(layer(tf.constant(x, tf.float32), training=False).numpy(), expected,
                               rtol=1e-4, atol=1e-4)
    for variable in layer.weights:
        np.testing.assert_array_equal(variable.numpy(), before[variable.name])


SYNCHRONIZED = """
import sys
import numpy as np
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
sys.path.insert(0, {repo!r})
from nets.norms import BatchRenormalization

x = np.random.default_rng(0).normal(3.0, 2.0, (8, 2, 2, 4)).astype("float32")
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
with strategy.scope():
    layer = BatchRenormalization(synchronized=True)
    layer.build((None, 2, 2, 4))
batches = strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensor_slices(x).batch(8))
for _ in range(2):
    for batch in batches:
        strategy.run(tf.function(lambda b: layer(b, training=True)), (batch,))
single = BatchRenormalization()
single.build((None, 2, 2, 4))
for _ in range(2):
    single(x, training=True)
for a, b in zip(layer.weights, single.weights):
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6, err_msg=a.name)
print("replicas", strategy.num_replicas_in_sync)
"""


def test_synchronized_batch_renorm_uses_the_global_batch():
    """Two CPU replicas of 4 images each update the statistics as one device with the 8 images does."""
    result = subprocess.run([sys.executable, "-c", SYNCHRONIZED.format(repo=str(REPO))], cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "replicas 2" in result.stdout
