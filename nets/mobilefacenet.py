"""MobileFaceNet (Chen et al., 2018): the light face backbone for CPUs and phones (~1 M weights, 0.22 G MACs).

Table 1 of the paper, at 112x112:

* conv 3x3/2 (64) -> depthwise conv 3x3/1 (64);
* inverted-residual bottlenecks (expand 1x1 x t -> depthwise 3x3/s -> linear project 1x1, identity shortcut when
  the shape is kept), as (t, channels, units, stride): (2, 64, 5, 2), (4, 128, 1, 2), (2, 128, 6, 1),
  (4, 128, 1, 2), (2, 128, 2, 1);
* conv 1x1 (512) -> linear global depthwise conv (GDC, a depthwise conv as large as the 7x7 map) -> linear 1x1 to the
  embedding (a dense layer on the 1x1 map).

Every convolution is followed by a norm (the paper's batch norm by default, any of nets.norms); the non-linear ones
by PReLU (one alpha per channel, 0.25 at start).
The paper's embedding is 128-d; this builder defaults to 512 so it plugs into the same margin heads, evaluation and
export as the other backbones. Stride-2 3x3 convolutions pad symmetrically (as the IR-ResNet; PyTorch's padding=1).

Only Keras layers and `keras.ops` are used, so the network builds under every Keras backend.
"""

from __future__ import annotations

import keras

from common.sizes import image_size_pair
from nets.norms import check_norm, make_norm
from nets.output_block import seed_sequence

# (expansion t, output channels c, units n, stride of the first unit s), the paper's Table 1.
BOTTLENECKS: tuple[tuple[int, int, int, int], ...] = (
    (2, 64, 5, 2),
    (4, 128, 1, 2),
    (2, 128, 6, 1),
    (4, 128, 1, 2),
    (2, 128, 2, 1),
)
# arcface_torch's mbf (backbones/mobilefacenet.py, scale 2, blocks (1, 4, 6, 2)) in the same terms.
ARCFACE_TORCH_MBF_BOTTLENECKS: tuple[tuple[int, int, int, int], ...] = (
    (1, 128, 5, 2),
    (2, 256, 1, 2),
    (1, 256, 6, 1),
    (2, 256, 1, 2),
    (1, 256, 2, 1),
)
STEM_CHANNELS = 64
SEPARABLE_CHANNELS = 512
PRELU_INIT = 0.25


class _Builder:
    def __init__(self, norm: str, synchronized_bn: bool, seed: int | None, norm_epsilon: float | None) -> None:
        self.norm = norm
        self.synchronized_bn = synchronized_bn
        self.norm_epsilon = norm_epsilon
        self.next_seed = seed_sequence(seed)

    def initializer(self) -> keras.initializers.Initializer:
        return keras.initializers.GlorotNormal(seed=self.next_seed())

    @staticmethod
    def _pad_for_stride(x, kernel: int, stride: int, name: str):
        """Symmetric padding before a strided conv; 'same' otherwise (which is symmetric at stride 1)."""
        if stride > 1 and kernel > 1:
            return keras.layers.ZeroPadding2D((kernel - 1) // 2, name=f"{name}_padding")(x), "valid"
        return x, "same"

    def conv_bn(self, x, filters: int, kernel: int, stride: int, name: str, activation: bool = True,
                groups: int = 1):
        x, padding = self._pad_for_stride(x, kernel, stride, name)
        x = keras.layers.Conv2D(filters, kernel, strides=stride, padding=padding, groups=groups, use_bias=False,
                                kernel_initializer=self.initializer(), name=name)(x)
        return self._bn_prelu(x, name, activation)

    def depthwise_bn(self, x, kernel: int, stride: int, name: str, activation: bool = True, padding: str = "same"):
        if padding == "same":
            x, padding = self._pad_for_stride(x, kernel, stride, name)
        x = keras.layers.DepthwiseConv2D(kernel, strides=stride, padding=padding, use_bias=False,
                                         depthwise_initializer=self.initializer(), name=name)(x)
        return self._bn_prelu(x, name, activation)

    def _bn_prelu(self, x, name: str, activation: bool):
        x = self.norm_layer(x, f"{name}_bn")
        if activation:
            x = keras.layers.PReLU(alpha_initializer=keras.initializers.Constant(PRELU_INIT), shared_axes=[1, 2],
                                   name=f"{name}_prelu")(x)
        return x

    def norm_layer(self, x, name: str):
        return make_norm(self.norm, name, synchronized=self.synchronized_bn, seed=self.next_seed(),
                         epsilon=self.norm_epsilon)(x)


def _bottleneck(b: _Builder, x, expansion: int, channels: int, stride: int, scope: str):
    residual = b.conv_bn(x, x.shape[-1] * expansion, 1, 1, f"{scope}.expand")
    residual = b.depthwise_bn(residual, 3, stride, f"{scope}.depthwise")
    residual = b.conv_bn(residual, channels, 1, 1, f"{scope}.project", activation=False)
    if stride == 1 and x.shape[-1] == channels:
        return keras.layers.Add(name=f"{scope}.add")([x, residual])
    return residual


def get_mobilefacenet(*, image_size: int | tuple[int, int] = 112, embedding_size: int = 512, dropout_rate: float = 0.0,
                      norm: str = "bn", synchronized_bn: bool = False, seed: int | None = None,
                      name: str = "mobilefacenet", norm_epsilon: float | None = None,
                      stem_channels: int = STEM_CHANNELS, stem_groups: int | None = None,
                      bottlenecks: tuple[tuple[int, int, int, int], ...] = BOTTLENECKS) -> keras.Model:
    """Builds MobileFaceNet: float (N, H, W, 3) -> (N, embedding_size).

    Args:
        image_size: input height and width; the GDC kernel covers the whole last map (7x7 at 112).
        embedding_size: output dimension (the paper's 128; 512 by default, as the other backbones).
        dropout_rate: fraction dropped before the embedding layer in training; 0 (the paper's network) by default,
            set by train_nets.Args.dropout_rate like every backbone's output block.
        norm: "bn" (the paper's), "gn" or "brn" (nets.norms), after every convolution and the embedding.
        synchronized_bn: batch statistics over all replicas under a tf.distribute strategy.
        seed: makes every initialiser deterministic when given.
        name: model name.
        norm_epsilon: every norm's variance epsilon; None: the seed's (nets.norms.SEED_EPSILONS).
        stem_channels: channels of the two stem convolutions (the paper's 64).
        stem_groups: None: the second stem convolution is depthwise (the paper's); a number: a grouped 3x3
            convolution with that many groups (arcface_torch's mbf: 64 groups over 128 channels).
        bottlenecks: the (expansion, channels, units, stride) stages; the paper's Table 1 by default.

    arcface_torch's `mbf` is this network with norm_epsilon=1e-5, stem_channels=128, stem_groups=64 and
    bottlenecks ARCFACE_TORCH_MBF_BOTTLENECKS (its DepthWise blocks are the units that change stride or channels,
    its Residual blocks the identity-shortcut units after them).

    Input images are expected preprocessed (data.preprocess), as for every backbone of this package.
    """
    check_norm(norm)
    height, width = image_size_pair(image_size)
    b = _Builder(norm, synchronized_bn, seed, norm_epsilon)
    inputs = keras.Input((height, width, 3), name="input_layer")
    x = b.conv_bn(inputs, stem_channels, 3, 2, "conv1")
    if stem_groups is None:
        x = b.depthwise_bn(x, 3, 1, "conv2_dw")
    else:
        x = b.conv_bn(x, stem_channels, 3, 1, "conv2_grouped", groups=stem_groups)
    for stage, (expansion, channels, units, stride) in enumerate(bottlenecks, start=1):
        for unit in range(1, units + 1):
            x = _bottleneck(b, x, expansion, channels, stride if unit == 1 else 1, f"stage{stage}.unit_{unit}")
    x = b.conv_bn(x, SEPARABLE_CHANNELS, 1, 1, "conv_sep")
    x = b.depthwise_bn(x, tuple(x.shape[1:3]), 1, "gdc", activation=False, padding="valid")
    x = keras.layers.Flatten(name="gdc_flatten")(x)
    if dropout_rate:
        x = keras.layers.Dropout(dropout_rate, name="embedding_dropout")(x)
    x = keras.layers.Dense(embedding_size, use_bias=False, kernel_initializer=b.initializer(), name="embedding")(x)
    x = b.norm_layer(x, "embedding_bn")
    return keras.Model(inputs, x, name=name)
