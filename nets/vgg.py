"""VGG16 and VGG19 (configurations D and E of Simonyan & Zisserman), the seed's nets/vgg16.py and nets/vgg19.py.

Five blocks of 3x3 convolutions with bias and ReLU (64, 128, 256, 512, 512 channels; 2-2-3-3-3 convolutions for
VGG16, 2-2-4-4-4 for VGG19), each followed by a 2x2/2 max-pool (SAME, as the seed's TensorLayer port). As a face
backbone (`num_classes=None`) the last feature map goes through the shared output block "E" (nets.output_block);
with `num_classes` the network is the ImageNet classifier (fc 4096 -> fc 4096 -> logits), used to compare weight
counts with the published definition. The seed's mean subtraction is left out: face inputs arrive already normalised
(data.preprocess).

Only Keras layers and `keras.ops` are used, so the network builds under every Keras backend.
"""

from __future__ import annotations

import keras

from common.sizes import image_size_pair
from nets.norms import check_norm
from nets.output_block import embedding_block, seed_sequence

BLOCK_CONVS: dict[int, tuple[int, ...]] = {16: (2, 2, 3, 3, 3), 19: (2, 2, 4, 4, 4)}
BLOCK_CHANNELS = (64, 128, 256, 512, 512)
FC_UNITS = 4096


def get_vgg(num_layers: int = 16, *, image_size: int | tuple[int, int] = 112, num_classes: int | None = None,
            norm: str = "bn", dropout_rate: float = 0.4, embedding_size: int = 512, synchronized_bn: bool = False,
            seed: int | None = None, name: str | None = None) -> keras.Model:
    """Builds VGG16 or VGG19: float (N, H, W, 3) -> (N, embedding_size), or (N, num_classes) with `num_classes`.

    Args:
        num_layers: 16 or 19.
        image_size: input height and width (112 gives a 4x4x512 map before the output block).
        num_classes: None for the face backbone (output block "E"); a class count for the ImageNet classifier.
        norm: norm of the output block ("bn", "gn" or "brn"); VGG's convolutions have none.
        dropout_rate: fraction dropped before the output block's dense layer in training.
        embedding_size: output dimension of the face backbone.
        synchronized_bn: batch statistics over all replicas under a tf.distribute strategy.
        seed: makes every initialiser deterministic when given.
        name: model name; default "vgg16" or "vgg19".
    """
    if num_layers not in BLOCK_CONVS:
        raise ValueError(f"unknown num_layers {num_layers!r}; expected one of {sorted(BLOCK_CONVS)}")
    check_norm(norm)
    height, width = image_size_pair(image_size)
    next_seed = seed_sequence(seed)
    inputs = keras.Input((height, width, 3), name="input_layer")
    x = inputs
    for block, (convs, channels) in enumerate(zip(BLOCK_CONVS[num_layers], BLOCK_CHANNELS), start=1):
        for conv in range(1, convs + 1):
            x = keras.layers.Conv2D(channels, 3, padding="same", activation="relu", name=f"conv{block}_{conv}",
                                    kernel_initializer=keras.initializers.GlorotNormal(seed=next_seed()))(x)
        x = keras.layers.MaxPooling2D(2, strides=2, padding="same", name=f"pool{block}")(x)

    if num_classes is None:
        x = embedding_block(x, norm=norm, dropout_rate=dropout_rate, embedding_size=embedding_size,
                            synchronized_bn=synchronized_bn, next_seed=next_seed)
    else:
        x = keras.layers.Flatten(name="flatten")(x)
        for index, (units, activation) in enumerate(((FC_UNITS, "relu"), (FC_UNITS, "relu"), (num_classes, None)),
                                                    start=6):
            x = keras.layers.Dense(units, activation=activation, name=f"fc{index}",
                                   kernel_initializer=keras.initializers.GlorotNormal(seed=next_seed()))(x)
    return keras.Model(inputs, x, name=name or f"vgg{num_layers}")
