"""The IR-ResNet family: every depth x norm x unit builds and runs, the seed's structure, names and weight counts."""

from __future__ import annotations

import itertools

import keras
import numpy as np
import pytest
import tensorflow as tf

from losses import MarginHead, sparse_softmax_cross_entropy
from nets import get_resnet
from nets.resnet_ir import STAGE_UNITS, seed_scope


def _small_batch(size=32, n=2):
    return np.random.default_rng(0).uniform(-1, 1, size=(n, size, size, 3)).astype("float32")


def _variants():
    """Every depth x norm x unit; the deep ones beyond (bn, ir) are slow-marked to keep the default suite short."""
    for depth, norm, unit in itertools.product(sorted(STAGE_UNITS), ("bn", "gn", "brn"), ("ir", "se_ir")):
        slow = depth >= 100 and (norm, unit) != ("bn", "ir")
        yield pytest.param(depth, norm, unit, marks=[pytest.mark.slow] if slow else [])


@pytest.mark.parametrize("depth, norm, unit", _variants())
def test_every_variant_builds_and_gives_finite_embeddings(depth, norm, unit):
    model = get_resnet(depth, type=unit, norm=norm, image_size=32, seed=0)
    for training in (True, False):
        out = model(_small_batch(), training=training)
        assert out.shape == (2, 512)
        assert np.isfinite(out.numpy()).all()


@pytest.mark.parametrize("depth, width, expected", [(50, 1, 43_624_640), (100, 1, 65_221_440),
                                                    (152, 1, 70_836_416), (50, 4, 176_367_808)])
def test_weight_counts_equal_the_seed(depth, width, expected):
    """All weights including BN moving statistics (seed-behaviour.md 2.1 table)."""
    assert get_resnet(depth, width=width).count_params() == expected


@pytest.mark.parametrize("norm, unit", [("bn", "ir"), ("gn", "ir"), ("brn", "ir"), ("bn", "se_ir")])
def test_every_trainable_weight_gets_a_gradient_and_frozen_gamma_stays(norm, unit):
    model = get_resnet(18, type=unit, norm=norm, image_size=32, seed=1)
    head = MarginHead(4, seed=2)
    labels = tf.constant([0, 1, 2, 3])
    images = _small_batch(n=4)
    with tf.GradientTape() as tape:
        loss = sparse_softmax_cross_entropy(head(model(images, training=True), labels), labels)
    variables = model.trainable_variables + head.trainable_variables
    grads = tape.gradient(loss, variables)
    missing = [v.path for v, g in zip(variables, grads) if g is None or not np.any(g.numpy())]
    assert not missing, f"no gradient for {missing}"

    if norm != "gn":
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
    wide = get_resnet(50, width=4, image_size=32)
    assert wide.get_layer("block1.unit_1.bottleneck_v1.shortcut_conv").kernel.shape == (1, 1, 64, 256)
    assert wide.get_layer("block1.unit_1.bottleneck_v1.conv1").kernel.shape == (3, 3, 64, 64)
    assert wide.get_layer("block1.unit_1.bottleneck_v1.conv2").kernel.shape == (3, 3, 64, 256)
    gn = get_resnet(50, norm="gn", image_size=32)
    layer = gn.get_layer("block2.unit_1.bottleneck_v1.conv2_bn.GroupNorm")
    assert layer.groups == 32 and layer.epsilon == pytest.approx(1e-5)
    assert "E_BN2" not in [lyr.name for lyr in gn.layers]
    brn = get_resnet(18, norm="brn", image_size=32).get_layer("bn0")
    assert brn.renorm and brn.renorm_clipping == {"rmax": 3.0, "rmin": 1.0 / 3.0, "dmax": 5.0}


def test_seeded_builds_are_identical():
    a, b = get_resnet(18, image_size=32, seed=5), get_resnet(18, image_size=32, seed=5)
    for wa, wb in zip(a.weights, b.weights):
        np.testing.assert_array_equal(wa.numpy(), wb.numpy())


@pytest.mark.parametrize("kwargs, fragment", [
    ({"num_layers": 51}, "18, 34, 50, 100, 152, 200"),
    ({"num_layers": 50, "type": "bottleneck"}, "ir, se_ir"),
    ({"num_layers": 50, "norm": "ln"}, "bn, gn, brn"),
    ({"num_layers": 50, "width": 2}, "(1, 4)"),
])
def test_bad_options_name_the_choices(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        get_resnet(**kwargs)
