"""The L_Resnet_E_IR family of the seed, as one Keras builder: depth, unit type, normalisation and width.

Structure (the seed's "model D", nets/L_Resnet_E_IR_fix_issue9.py):

* stem: conv 3x3/1 (64) -> norm -> PReLU;
* four stages of units, stride 2 in the first unit of each stage (112 -> 56 -> 28 -> 14 -> 7);
* IR unit: norm -> conv 3x3/1 -> norm -> PReLU -> conv 3x3/stride -> norm, plus a shortcut that is the input itself,
  its stride-2 subsample (a 1x1 max-pool, no weights) when the channels match, or conv 1x1/stride + norm otherwise;
  no activation after the add. The SE-IR unit rescales the residual by a squeeze-excitation gate and ends in ReLU;
* output block "E" (nets.output_block): norm -> dropout -> flatten -> dense 512 -> batch norm with a frozen gamma.

`net_width=4` gives the seed's nets/L_Resnet_E_IR.py (models A-C): conv2 and the unit output four times wider.

Layer names are the seed's TensorLayer variable scopes below `resnet_v1_<depth>/`, with "/" written as "." (Keras
forbids "/" in names), so `seed_scope()` maps every layer onto the seed's checkpoint names one to one.

Only Keras layers and `keras.ops` are used, so the network builds under every Keras backend.
"""

from __future__ import annotations

import keras

from common.sizes import image_size_pair
from nets.norms import check_norm, make_norm
from nets.output_block import embedding_block

# Units per stage; 50/100/152 are the seed's, 18/34/200 the usual insightface/arcface_torch ones.
STAGE_UNITS: dict[int, tuple[int, int, int, int]] = {
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 14, 3),
    100: (3, 13, 30, 3),
    152: (3, 8, 36, 3),
    200: (6, 26, 60, 6),
}
STAGE_CHANNELS = (64, 128, 256, 512)
UNIT_TYPES = ("ir", "se_ir")
WIDTHS = (1, 4)
EMBEDDING_SIZE = 512
SE_REDUCTION = 16


def _conv_init(seed: int | None) -> keras.initializers.Initializer:
    # tf.contrib's xavier_initializer(uniform=False) == Glorot normal truncated at 2 std with the variance correction.
    return keras.initializers.GlorotNormal(seed=seed)


class _Builder:
    """Holds the options and a seed counter so each layer gets its own deterministic initialiser seed."""

    def __init__(self, norm: str, synchronized_bn: bool, seed: int | None, norm_epsilon: float | None = None,
                 projection_shortcut: bool = False) -> None:
        self.norm = norm
        self.synchronized_bn = synchronized_bn
        self.seed = seed
        self.norm_epsilon = norm_epsilon
        self.projection_shortcut = projection_shortcut
        self._count = 0

    def next_seed(self) -> int | None:
        if self.seed is None:
            return None
        self._count += 1
        return self.seed * 100_003 + self._count

    def conv(self, x, filters: int, kernel: int, stride: int, name: str, padding: str = "same"):
        return keras.layers.Conv2D(filters, kernel, strides=stride, padding=padding, use_bias=False,
                                   kernel_initializer=_conv_init(self.next_seed()), name=name)(x)

    def norm_layer(self, x, name: str, frozen_gamma: bool = False):
        return make_norm(self.norm, name, frozen_gamma=frozen_gamma, synchronized=self.synchronized_bn,
                         seed=self.next_seed(), epsilon=self.norm_epsilon)(x)

    @staticmethod
    def prelu(x, name: str):
        # One alpha per channel, starting at 0 (a ReLU), as TensorLayer 1.7's PReluLayer did.
        return keras.layers.PReLU(alpha_initializer="zeros", shared_axes=[1, 2], name=name)(x)


def _norm_name(norm: str, scope: str, bn_suffix: str = "") -> str:
    """The seed's names: BN and BRN layers share them; the GN net renamed a few."""
    if norm == "gn" and bn_suffix:
        return f"{scope}.GroupNorm"
    return f"{scope}{bn_suffix}"


def _ir_unit(b: _Builder, x, depth: int, depth_bottleneck: int, stride: int, unit_type: str, scope: str):
    depth_in = x.shape[-1]
    if depth == depth_in and not (stride > 1 and b.projection_shortcut):
        shortcut = x if stride == 1 else keras.layers.MaxPooling2D(1, strides=stride, padding="same",
                                                                    name=f"{scope}.shortcut")(x)
    else:
        shortcut = b.conv(x, depth, 1, stride, f"{scope}.shortcut_conv")
        # Named shortcut_bn/BatchNorm for every norm: the seed's GN net renamed only conv2_bn (to GroupNorm).
        shortcut = b.norm_layer(shortcut, f"{scope}.shortcut_bn.BatchNorm")

    residual = b.norm_layer(x, f"{scope}.conv1_bn1")
    residual = b.conv(residual, depth_bottleneck, 3, 1, f"{scope}.conv1")
    residual = b.norm_layer(residual, f"{scope}.conv1_bn2")
    residual = b.prelu(residual, f"{scope}.prelu_layer")
    if stride == 1:
        residual = b.conv(residual, depth, 3, 1, f"{scope}.conv2")
    else:
        # slim's conv2d_same: symmetric one-pixel padding, then a VALID conv ('same' would pad 0 before, 1 after).
        residual = keras.layers.ZeroPadding2D(1, name=f"{scope}.padding_conv2")(residual)
        residual = b.conv(residual, depth, 3, stride, f"{scope}.conv2", padding="valid")
    residual = b.norm_layer(residual, _norm_name(b.norm, f"{scope}.conv2_bn", ".BatchNorm"))

    if unit_type == "se_ir":
        squeeze = keras.layers.GlobalAveragePooling2D(keepdims=True, name=f"{scope}.squeeze")(residual)
        gate = keras.layers.Dense(depth // SE_REDUCTION, activation="relu", name=f"{scope}.excitation_1",
                                  kernel_initializer=_conv_init(b.next_seed()))(squeeze)
        gate = keras.layers.Dense(depth, activation="sigmoid", name=f"{scope}.excitation_2",
                                  kernel_initializer=_conv_init(b.next_seed()))(gate)
        residual = keras.layers.Multiply(name=f"{scope}.excitation_scale")([residual, gate])
        out = keras.layers.Add(name=f"{scope}.combine_layer")([shortcut, residual])
        return keras.layers.ReLU(name=f"{scope}.relu")(out)
    return keras.layers.Add(name=f"{scope}.combine_layer")([shortcut, residual])


def get_resnet(num_layers: int, unit_type: str = "ir", norm: str = "bn", net_width: int = 1, *,
               image_size: int | tuple[int, int] = 112, dropout_rate: float = 0.4,
               embedding_size: int = EMBEDDING_SIZE, synchronized_bn: bool = False,
               seed: int | None = None, name: str | None = None, norm_epsilon: float | None = None,
               projection_shortcut: bool = False) -> keras.Model:
    """Builds an L_Resnet_E_IR embedding network: float (N, H, W, 3) -> (N, embedding_size).

    Args:
        num_layers: depth, one of STAGE_UNITS (18, 34, 50, 100, 152, 200).
        unit_type: "ir" (model D's unit) or "se_ir" (squeeze-excitation IR unit).
        norm: "bn", "gn" or "brn" (see nets.norms).
        net_width: 1 (fix_issue9, model D) or 4 (L_Resnet_E_IR.py, models A-C: conv2 and unit outputs 4x wider).
        image_size: input height and width; the flatten of the output block fixes it at build time (112 -> 7x7).
        dropout_rate: fraction dropped before the final dense layer in training (insightface's 0.4; the seed fed
            keep_prob 0.4, i.e. dropped 0.6).
        embedding_size: output dimension (512).
        synchronized_bn: batch statistics over all replicas under a tf.distribute strategy.
        seed: makes every initialiser deterministic when given.
        name: model name; default "resnet_v1_<num_layers>", the seed's variable scope.
        norm_epsilon: every norm's variance epsilon; None: the seed's (nets.norms.SEED_EPSILONS; 2e-5 for "bn").
        projection_shortcut: the shortcut of every strided unit is conv 1x1/2 + norm, also where the channels match
            (arcface_torch's iresnet `downsample`, so its first stage too); False: the seed's 1x1 max-pool there.

    arcface_torch's iresnet18/34/50/100/200 is this network with norm_epsilon=1e-5, projection_shortcut=True and
    dropout_rate=0 (its default); its fc flattens NCHW, which nets.pretrained.build absorbs in the fc weight.

    Input images are expected preprocessed as the seed did: BGR, (x - 127.5) / 128 (see data.preprocess).
    """
    if num_layers not in STAGE_UNITS:
        raise ValueError(f"unknown num_layers {num_layers!r}; expected one of {sorted(STAGE_UNITS)}")
    if unit_type not in UNIT_TYPES:
        raise ValueError(f"unknown unit type {unit_type!r}; expected one of {', '.join(UNIT_TYPES)}")
    if net_width not in WIDTHS:
        raise ValueError(f"unknown net_width {net_width!r}; expected one of {WIDTHS}")
    check_norm(norm)
    if not 0.0 <= dropout_rate < 1.0:
        raise ValueError(f"dropout_rate must be in [0, 1); received {dropout_rate}")
    height, width = image_size_pair(image_size)

    b = _Builder(norm, synchronized_bn, seed, norm_epsilon, projection_shortcut)
    inputs = keras.Input((height, width, 3), name="input_layer")
    x = b.conv(inputs, 64, 3, 1, "conv1")
    x = b.norm_layer(x, "group_norm_0" if norm == "gn" else "bn0")
    x = b.prelu(x, "prelu0")
    for stage, (units, channels) in enumerate(zip(STAGE_UNITS[num_layers], STAGE_CHANNELS), start=1):
        for unit in range(1, units + 1):
            scope = f"block{stage}.unit_{unit}.bottleneck_v1"
            x = _ir_unit(b, x, channels * net_width, channels, 2 if unit == 1 else 1, unit_type, scope)

    x = embedding_block(x, norm=norm, dropout_rate=dropout_rate, embedding_size=embedding_size,
                        synchronized_bn=synchronized_bn, next_seed=b.next_seed, norm_epsilon=norm_epsilon)
    return keras.Model(inputs, x, name=name or f"resnet_v1_{num_layers}")


def seed_scope(layer_name: str, model_name: str) -> str:
    """The seed's TensorLayer variable scope of one of our layers, e.g. 'resnet_v1_50/block1/unit_1/...'."""
    return f"{model_name}/{layer_name.replace('.', '/')}"
