"""The backbone registry: every backbone builds, trains one step with a margin head, and has its published size.

Weight counts are compared with independent references: keras.applications (built with weights=None) and the
numbers published for the original definitions (torchvision's model cards for ResNet-50/101/152 and ResNeXt-50
32x4d, the SENet authors' SE-ResNet-50, the MobileFaceNet paper). Published counts are trainable weights (BN
moving statistics excluded); keras.applications counts everything including its convolution biases, which slim's
ResNet v1 (the seed's) does not have, so those biases are subtracted.
"""

from __future__ import annotations

import functools

import keras
import numpy as np
import pytest
import tensorflow as tf

from losses import MarginHead, sparse_softmax_cross_entropy
from nets import backbone_names, get_backbone
from nets.mobilefacenet import get_mobilefacenet
from nets.resnet_v1 import get_resnet_v1
from nets.vgg import get_vgg


def trainable_count(model: keras.Model) -> int:
    return sum(int(np.prod(v.shape)) for v in model.trainable_weights)


def keras_applications_count_without_conv_biases(name: str) -> int:
    reference = getattr(keras.applications, name)(weights=None)
    conv_biases = sum(int(np.prod(layer.bias.shape)) for layer in reference.layers
                      if isinstance(layer, keras.layers.Conv2D) and layer.use_bias)
    return reference.count_params() - conv_biases


# ------------------------------------------------------------------------------------------------ registry
def test_unknown_name_lists_the_known_ones():
    with pytest.raises(ValueError) as error:
        get_backbone("resnet51")
    for name in ("resnet50_ir", "LResNet100E-IR", "resnet101_v1", "se_resnet50_v1", "resnext50_32x4d", "vgg16",
                 "vgg19", "mobilefacenet"):
        assert name in str(error.value) and name in backbone_names()


def test_names_are_case_insensitive_and_pass_options_through():
    model = get_backbone("lresnet18e-ir", norm="gn", image_size=32)
    assert model.name == "resnet_v1_18" and model.get_layer("E_GN_0") is not None


# ------------------------------------------------------------------------------------------------ one training step
TRAIN_CASES = [
    pytest.param("resnet50_v1", 32, id="resnet50_v1"),
    pytest.param("se_resnet50_v1", 32, id="se_resnet50_v1"),
    pytest.param("vgg16", 32, id="vgg16"),
    pytest.param("resnext50_32x4d", 32, id="resnext50_32x4d"),
    pytest.param("mobilefacenet", 64, id="mobilefacenet"),
    pytest.param("vgg19", 32, id="vgg19", marks=pytest.mark.slow),
    pytest.param("resnet101_v1", 32, id="resnet101_v1", marks=pytest.mark.slow),
    pytest.param("resnext152_32x4d", 32, id="resnext152_32x4d", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("name, image_size", TRAIN_CASES)
def test_backbone_trains_one_step_with_a_margin_head(name, image_size):
    """Every trainable weight gets a finite, non-zero gradient through the ArcFace head and one SGD step moves it."""
    model = get_backbone(name, image_size=image_size, seed=0)
    head = MarginHead(2, seed=1)
    images = tf.constant(np.random.default_rng(0).uniform(-1, 1, (2, image_size, image_size, 3)), tf.float32)
    labels = tf.constant([0, 1])
    with tf.GradientTape() as tape:
        loss = sparse_softmax_cross_entropy(head(model(images, training=True), labels), labels)
    variables = model.trainable_variables + head.trainable_variables
    gradients = tape.gradient(loss, variables)
    assert model.output_shape == (None, 512) and np.isfinite(float(loss))
    without = [v.path for v, g in zip(variables, gradients)
               if g is None or not np.any(g.numpy()) or not np.isfinite(g.numpy()).all()]
    assert not without, f"no usable gradient for {without}"
    before = [v.numpy() for v in variables]
    keras.optimizers.SGD(0.1).apply_gradients(zip(gradients, variables))
    assert all(np.any(v.numpy() != b) for v, b in zip(variables, before))


# ------------------------------------------------------------------------------------------------ published sizes
@pytest.mark.parametrize("depth, keras_name, published", [
    pytest.param(50, "ResNet50", 25_557_032, id="resnet50"),
    pytest.param(101, "ResNet101", 44_549_160, id="resnet101", marks=pytest.mark.slow),
    pytest.param(152, "ResNet152", 60_192_808, id="resnet152", marks=pytest.mark.slow),
])
def test_resnet_v1_imagenet_sizes(depth, keras_name, published):
    model = get_resnet_v1(depth, image_size=224, num_classes=1000)
    assert trainable_count(model) == published  # torchvision resnet{50,101,152}
    assert model.count_params() == keras_applications_count_without_conv_biases(keras_name)


@pytest.mark.parametrize("unit_type, published", [("se", 28_088_024), ("resnext", 25_028_904)])
def test_se_resnet50_and_resnext50_imagenet_sizes(unit_type, published):
    """SE-ResNet-50: 28.09 M (Hu et al., the authors' Caffe model); ResNeXt-50 32x4d: 25.03 M (torchvision)."""
    model = get_resnet_v1(50, unit_type, image_size=224, num_classes=1000)
    assert trainable_count(model) == published


@pytest.mark.slow
@pytest.mark.parametrize("depth, keras_name, published", [(16, "VGG16", 138_357_544), (19, "VGG19", 143_667_240)])
def test_vgg_imagenet_sizes(depth, keras_name, published):
    model = get_vgg(depth, image_size=224, num_classes=1000)
    assert model.count_params() == published == getattr(keras.applications, keras_name)(weights=None).count_params()


def test_mobilefacenet_matches_the_paper():
    """Paper (Chen et al. 2018, Table 1-2): 0.99 M parameters and 221 M multiply-adds at 112x112, 128-d output."""
    model = get_mobilefacenet(embedding_size=128)
    macs = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            macs += int(np.prod(layer.output.shape[1:])) * int(np.prod(layer.kernel_size))
        elif isinstance(layer, keras.layers.Conv2D):
            macs += int(np.prod(layer.output.shape[1:])) * int(np.prod(layer.kernel_size)) * layer.input.shape[-1]
        elif isinstance(layer, keras.layers.Dense):
            macs += int(np.prod(layer.kernel.shape))
    assert round(macs / 1e6) == 221
    # The paper does not say whether its 0.99 M counts BN and PReLU parameters: within 1.5 % either way.
    assert abs(trainable_count(model) - 0.99e6) / 0.99e6 < 0.015
    prelu = sum(int(np.prod(layer.alpha.shape)) for layer in model.layers if isinstance(layer, keras.layers.PReLU))
    assert abs(trainable_count(model) - prelu - 0.99e6) / 0.99e6 < 0.015


# ------------------------------------------------------------------------------------------------ the seed's file names
def test_seed_file_names_are_entry_points_over_one_builder():
    import nets.L_Resnet_E_IR as wide
    import nets.L_Resnet_E_IR_fix_issue9 as model_d

    reference = get_backbone("resnet18_ir", image_size=32)
    assert [w.shape for w in model_d.get_resnet(18, image_size=32).weights] == [w.shape for w in reference.weights]
    with pytest.raises(ValueError, match=r"\[50, 101, 152\]"):
        wide.get_resnet(100)  # the seed's 4x-wide files key the 100-layer net 101


@pytest.mark.slow
def test_seed_wide_files_build_the_seed_scopes():
    import nets.L_Resnet_E_IR as wide
    import nets.L_Resnet_E_IR_GBN as group_norm

    model_c = wide.get_resnet(101, image_size=32)  # the 100-layer units [3, 13, 30, 3] under scope resnet_v1_101
    assert model_c.name == "resnet_v1_101"
    assert model_c.get_layer("block3.unit_30.bottleneck_v1.conv2").kernel.shape == (3, 3, 256, 1024)
    assert model_c.get_layer("block4.unit_3.bottleneck_v1.conv2").kernel.shape == (3, 3, 512, 2048)
    model_a = group_norm.get_resnet(50, image_size=32)
    assert model_a.name == "resnet_v1_50" and model_a.get_layer("group_norm_0").groups == 32


# ------------------------------------------------------------------------------------------------ training's options
# The smallest backbone of each builder in the registry; every registry name is built by one of them.
OPTION_CASES = ["resnet18_ir", "resnet50_v1", "vgg16", "mobilefacenet"]


def _builder_function(name: str):
    from nets.registry import BACKBONES

    builder = BACKBONES[name]
    return builder.func if isinstance(builder, functools.partial) else builder


def test_the_option_cases_cover_every_registry_builder():
    assert {_builder_function(name) for name in backbone_names()} == {_builder_function(n) for n in OPTION_CASES}


@pytest.mark.parametrize("name", OPTION_CASES)
def test_backbone_honours_the_training_norm_sync_bn_and_seed(name):
    """train_nets' --backbone gets Args.norm, sync_bn and seed: group norm everywhere, synchronised batch norm,
    the same weights for the same seed and other weights for another."""
    import train_nets
    from nets.spec import NetworkSpec

    def build(global_seed: int, **fields) -> keras.Model:
        keras.utils.set_random_seed(global_seed)  # a seeded build must not depend on the global RNG
        return NetworkSpec.from_mapping(train_nets.Args(backbone=name, image_size=[32, 32], **fields).to_dict()).build()

    def norm_layers(model: keras.Model, kind: type) -> list:
        return [layer for layer in model.layers if isinstance(layer, kind)]

    group = build(0, norm="gn", seed=1)
    assert norm_layers(group, keras.layers.GroupNormalization)
    assert not norm_layers(group, keras.layers.BatchNormalization)
    synced = build(0, sync_bn=True, seed=1)
    assert norm_layers(synced, keras.layers.BatchNormalization)
    assert all(layer.synchronized for layer in norm_layers(synced, keras.layers.BatchNormalization))

    same, other = build(5, norm="gn", seed=1), build(0, norm="gn", seed=2)
    for a, b, c in zip(group.weights, same.weights, other.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)
        if a.path.endswith("kernel"):
            assert np.all(a.numpy() != c.numpy()), f"{a.path} is the same for seeds 1 and 2"
