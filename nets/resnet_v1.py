"""The ImageNet ResNet v1 family of the seed's nets/resnet.py: ResNet v1, SE-ResNet and ResNeXt (32x4d), 50/101/152.

Structure (slim's resnet_v1, as the seed's TensorLayer port built it):

* stem: conv 7x7/2 with symmetric padding (slim's conv2d_same) -> norm -> ReLU -> max-pool 2x2/2 SAME;
* four blocks of bottleneck units; the stride sits in the **last** unit of blocks 1-3 and block 4 keeps stride 1
  (slim's convention; torchvision strides the first unit, which changes no weight count);
* bottleneck unit: conv 1x1 -> norm -> ReLU -> conv 3x3/stride -> norm -> ReLU -> conv 1x1 -> norm, plus a shortcut
  (the input, its 1x1 max-pool subsample when the unit strides, or conv 1x1/stride + norm when the channels change),
  then ReLU after the add;
* "se": a squeeze-excitation gate (average -> dense C/16 ReLU -> dense C sigmoid, both with bias) rescales the
  residual before the add, as the seed's nets/resnet_se.py;
* "resnext": the 3x3 conv is a grouped convolution, cardinality 32 with 4 channels per group in block 1 (doubling
  per block), the grouped form of the seed's 32 explicit branches (same function, same weight count).

As a face backbone (`num_classes=None`) the network ends in the shared output block "E" (nets.output_block); with
`num_classes` it is the ImageNet classifier of the seed (global average pool -> logits with bias), used to compare
weight counts with the published definitions. Convolutions have no bias (slim's, followed by a norm). The seed's
`mean_rgb` subtraction is left out: face inputs arrive already normalised (data.preprocess).

Only Keras layers and `keras.ops` are used, so the network builds under every Keras backend.
"""

from __future__ import annotations

import keras

from common.sizes import image_size_pair
from nets.norms import check_norm, make_norm
from nets.output_block import embedding_block, seed_sequence

STAGE_UNITS: dict[int, tuple[int, int, int, int]] = {
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
}
BASE_DEPTHS = (64, 128, 256, 512)  # bottleneck width of each block; the unit output is 4x wider
BLOCK_STRIDES = (2, 2, 2, 1)
UNIT_TYPES = ("bottleneck", "se", "resnext")
SE_REDUCTION = 16
RESNEXT_CARDINALITY = 32
RESNEXT_GROUP_WIDTH = 4  # channels per group in block 1 ("32x4d")
MODEL_NAMES = {"bottleneck": "resnet{}_v1", "se": "se_resnet{}_v1", "resnext": "resnext{}_32x4d"}


class _Builder:
    """Holds the norm choice and a seed counter so each layer gets its own deterministic initialiser seed."""

    def __init__(self, norm: str, synchronized_bn: bool, seed: int | None) -> None:
        self.norm = norm
        self.synchronized_bn = synchronized_bn
        self.next_seed = seed_sequence(seed)

    def conv(self, x, filters: int, kernel: int, stride: int, name: str, groups: int = 1):
        """Conv without bias; stride 2 with a kernel > 1 pads symmetrically first (slim's conv2d_same)."""
        padding = "same"
        if stride > 1 and kernel > 1:
            x = keras.layers.ZeroPadding2D((kernel - 1) // 2, name=f"padding_{name}")(x)
            padding = "valid"
        return keras.layers.Conv2D(filters, kernel, strides=stride, padding=padding, groups=groups, use_bias=False,
                                   kernel_initializer=keras.initializers.GlorotNormal(seed=self.next_seed()),
                                   name=name)(x)

    def norm_layer(self, x, name: str):
        return make_norm(self.norm, name, synchronized=self.synchronized_bn, seed=self.next_seed())(x)

    def dense(self, x, units: int, activation: str, name: str):
        return keras.layers.Dense(units, activation=activation, name=name,
                                  kernel_initializer=keras.initializers.GlorotNormal(seed=self.next_seed()))(x)


def _bottleneck_unit(b: _Builder, x, depth: int, depth_bottleneck: int, stride: int, unit_type: str, scope: str):
    if depth == x.shape[-1]:
        shortcut = x if stride == 1 else keras.layers.MaxPooling2D(1, strides=stride, padding="same",
                                                                    name=f"{scope}.shortcut")(x)
    else:
        shortcut = b.conv(x, depth, 1, stride, f"{scope}.shortcut_conv")
        shortcut = b.norm_layer(shortcut, f"{scope}.shortcut_bn.BatchNorm")

    groups = RESNEXT_CARDINALITY if unit_type == "resnext" else 1
    residual = b.conv(x, depth_bottleneck, 1, 1, f"{scope}.conv1")
    residual = b.norm_layer(residual, f"{scope}.conv1_bn.BatchNorm")
    residual = keras.layers.ReLU(name=f"{scope}.conv1_relu")(residual)
    residual = b.conv(residual, depth_bottleneck, 3, stride, f"{scope}.conv2", groups=groups)
    residual = b.norm_layer(residual, f"{scope}.conv2_bn.BatchNorm")
    residual = keras.layers.ReLU(name=f"{scope}.conv2_relu")(residual)
    residual = b.conv(residual, depth, 1, 1, f"{scope}.conv3")
    residual = b.norm_layer(residual, f"{scope}.conv3_bn.BatchNorm")

    if unit_type == "se":
        squeeze = keras.layers.GlobalAveragePooling2D(keepdims=True, name=f"{scope}.squeeze")(residual)
        gate = b.dense(squeeze, depth // SE_REDUCTION, "relu", f"{scope}.excitation_1")
        gate = b.dense(gate, depth, "sigmoid", f"{scope}.excitation_2")
        residual = keras.layers.Multiply(name=f"{scope}.excitation_scale")([residual, gate])
    out = keras.layers.Add(name=f"{scope}.combine_layer")([shortcut, residual])
    return keras.layers.ReLU(name=f"{scope}.relu")(out)


def get_resnet_v1(num_layers: int = 50, unit_type: str = "bottleneck", *, image_size: int | tuple[int, int] = 112,
                  num_classes: int | None = None, norm: str = "bn", dropout_rate: float = 0.4,
                  embedding_size: int = 512, synchronized_bn: bool = False, seed: int | None = None,
                  name: str | None = None) -> keras.Model:
    """Builds an ImageNet-style ResNet v1 / SE-ResNet / ResNeXt-32x4d: float (N, H, W, 3) -> (N, embedding_size).

    Args:
        num_layers: 50, 101 or 152.
        unit_type: "bottleneck" (ResNet v1), "se" (SE-ResNet) or "resnext" (ResNeXt 32x4d).
        image_size: input height and width (112 gives a 4x4x2048 map before the output block).
        num_classes: None for the face backbone (output block "E"); a class count for the ImageNet classifier
            (global average pool -> logits), whose weights match the published definitions.
        norm: "bn", "gn" or "brn" (nets.norms).
        dropout_rate: fraction dropped before the output block's dense layer in training.
        embedding_size: output dimension of the face backbone.
        synchronized_bn: batch statistics over all replicas under a tf.distribute strategy.
        seed: makes every initialiser deterministic when given.
        name: model name; default "resnet50_v1", "se_resnet50_v1" or "resnext50_32x4d".

    Input images are expected preprocessed (data.preprocess), as for every backbone of this package.
    """
    if num_layers not in STAGE_UNITS:
        raise ValueError(f"unknown num_layers {num_layers!r}; expected one of {sorted(STAGE_UNITS)}")
    if unit_type not in UNIT_TYPES:
        raise ValueError(f"unknown unit_type {unit_type!r}; expected one of {', '.join(UNIT_TYPES)}")
    check_norm(norm)
    height, width = image_size_pair(image_size)

    b = _Builder(norm, synchronized_bn, seed)
    inputs = keras.Input((height, width, 3), name="input_layer")
    x = b.conv(inputs, 64, 7, 2, "conv1")
    x = b.norm_layer(x, "conv1_bn.BatchNorm")
    x = keras.layers.ReLU(name="conv1_relu")(x)
    x = keras.layers.MaxPooling2D(2, strides=2, padding="same", name="pool1")(x)
    for stage, (units, base_depth, stride) in enumerate(zip(STAGE_UNITS[num_layers], BASE_DEPTHS, BLOCK_STRIDES),
                                                        start=1):
        depth_bottleneck = base_depth
        if unit_type == "resnext":
            depth_bottleneck = RESNEXT_CARDINALITY * RESNEXT_GROUP_WIDTH * base_depth // BASE_DEPTHS[0]
        for unit in range(1, units + 1):
            x = _bottleneck_unit(b, x, base_depth * 4, depth_bottleneck, stride if unit == units else 1, unit_type,
                                 f"block{stage}.unit_{unit}.bottleneck_v1")

    if num_classes is None:
        x = embedding_block(x, norm=norm, dropout_rate=dropout_rate, embedding_size=embedding_size,
                            synchronized_bn=synchronized_bn, next_seed=b.next_seed)
    else:
        x = keras.layers.GlobalAveragePooling2D(name="global_pool")(x)
        x = b.dense(x, num_classes, None, "logits")
    return keras.Model(inputs, x, name=name or MODEL_NAMES[unit_type].format(num_layers))
