"""An imported recogniser's arrays -> this package's network with those weights (nets.resnet_ir, nets.mobilefacenet).

The architecture is recognised from the arrays' names and shapes (layout "arcface_torch", nets.pretrained.weights):

* iresnet18/34/50/100/200: the units per stage from the `layer{k}.{i}.` keys, the embedding size from `features`,
  the input size from the fc's in_features (512 * s * s for an s x s last map: 112x112 -> 7x7);
* mbf (arcface_torch's MobileFaceNet): the `layers.{k}` / `conv_sep` / `features.layers` keys, the stage shapes from
  the weights, the input size from the global depthwise kernel (7x7 -> 112x112).

The builders are given the options in which arcface_torch differs from the seed (torch's BN epsilon 1e-5, no
dropout, iresnet's projection shortcut in every strided unit, mbf's stages); what is left is a difference of layout
that the loading absorbs: OIHW -> HWIO kernels, (out, in) -> (in, out) dense weights, and iresnet's fc, which reads
the last map flattened NCHW (ours flattens NHWC), with its rows permuted. Every array is used exactly once.
"""

from __future__ import annotations

import functools
import logging
import re
from typing import Callable

import keras
import numpy as np

from nets.mobilefacenet import get_mobilefacenet
from nets.pretrained.weights import ARCFACE_TORCH_BN_EPSILON, ImportedWeights
from nets.resnet_ir import STAGE_CHANNELS, STAGE_UNITS, get_resnet

log = logging.getLogger(__name__)

ARCHITECTURES = ("iresnet18", "iresnet34", "iresnet50", "iresnet100", "iresnet200", "mbf")
_IRESNET_DEPTHS = (18, 34, 50, 100, 200)
_BN_ARRAYS = ("weight", "bias", "running_mean", "running_var")  # Keras' order: gamma, beta, mean, variance
# torch's BN counter: training state, no part of the computation.
_IGNORED_SUFFIX = ".num_batches_tracked"
# mbf's module indices: (DepthWise that changes stride or channels, Residual after it), one pair per stage pair.
_MBF_STAGE_MODULES = ((2, 3), (4, 5), (6, 7))


def _conv(arrays: list[np.ndarray]) -> list[np.ndarray]:
    return [arrays[0].transpose(2, 3, 1, 0)]  # OIHW -> HWIO


def _depthwise(arrays: list[np.ndarray]) -> list[np.ndarray]:
    return [arrays[0].transpose(2, 3, 0, 1)]  # (C, 1, H, W) -> (H, W, C, 1)


def _prelu(arrays: list[np.ndarray]) -> list[np.ndarray]:
    return [arrays[0].reshape(1, 1, -1)]  # one alpha per channel, shared over H and W


def _dense(arrays: list[np.ndarray]) -> list[np.ndarray]:
    return [array.T if array.ndim == 2 else array for array in arrays]


def _same(arrays: list[np.ndarray]) -> list[np.ndarray]:
    return list(arrays)


def _fc_from_nchw(map_shape: tuple[int, int, int], arrays: list[np.ndarray]) -> list[np.ndarray]:
    """iresnet's fc reads the (C, H, W) map flattened; ours flattens (H, W, C): the same weights, rows reordered."""
    weight, bias = arrays
    height, width, channels = map_shape
    kernel = weight.reshape(-1, channels, height, width).transpose(2, 3, 1, 0).reshape(height * width * channels, -1)
    return [kernel, bias]


# kind -> (the torch array names under the module's prefix, the conversion to the Keras layer's weights)
Conversion = Callable[[list[np.ndarray]], list[np.ndarray]]
_KINDS: dict[str, tuple[tuple[str, ...], Conversion]] = {
    "conv": (("weight",), _conv),
    "depthwise": (("weight",), _depthwise),
    "bn": (_BN_ARRAYS, _same),
    "prelu": (("weight",), _prelu),
    "dense": (("weight",), _dense),
    "dense_bias": (("weight", "bias"), _dense),
}


class _Mapping:
    """Per layer of ours: its name, the torch arrays that fill it and their conversion, for one architecture."""

    def __init__(self) -> None:
        self.entries: list[tuple[str, list[str], Conversion]] = []

    def add(self, prefix: str, layer: str, kind: str) -> None:
        names, convert = _KINDS[kind]
        self.add_arrays(layer, [f"{prefix}.{name}" for name in names], convert)

    def add_arrays(self, layer: str, keys: list[str], convert: Conversion) -> None:
        self.entries.append((layer, keys, convert))

    def conv_bn_prelu(self, prefix: str, layer: str, depthwise: bool = False, activation: bool = True) -> None:
        """arcface_torch's mobilefacenet ConvBlock / LinearBlock: layers.0 conv, .1 BN, .2 PReLU."""
        self.add(f"{prefix}.layers.0", layer, "depthwise" if depthwise else "conv")
        self.add(f"{prefix}.layers.1", f"{layer}_bn", "bn")
        if activation:
            self.add(f"{prefix}.layers.2", f"{layer}_prelu", "prelu")


def build_from_weights(weights: ImportedWeights) -> keras.Model:
    """The network `weights` hold, built with this package's builders and loaded with every array.

    The model takes float NHWC images normalised by `weights.preprocessing` and returns the raw embedding.
    Raises ValueError for an unknown layout or architecture (naming the key prefixes found and the architectures
    accepted), a missing or unused array, or an array of the wrong shape.
    """
    if weights.layout != "arcface_torch":
        raise ValueError(f"{weights.source}: unknown weights layout {weights.layout!r}; expected 'arcface_torch'")
    arrays = {name: array for name, array in weights.arrays.items() if not name.endswith(_IGNORED_SUFFIX)}
    if "fc.weight" in arrays and any(name.startswith("layer1.") for name in arrays):
        model, mapping = _iresnet(arrays)
    elif "conv_sep.layers.0.weight" in arrays and "layers.0.layers.0.weight" in arrays:
        model, mapping = _mbf(arrays)
    else:
        raise ValueError(f"{weights.source}: not an architecture this importer knows; arrays found under "
                         f"{_prefixes(arrays)}; accepted: arcface_torch's {', '.join(ARCHITECTURES)}")
    _load(model, mapping, arrays, weights.source)
    log.info("built %s (%d weights) from %s", model.name, model.count_params(), weights.source or "arrays")
    return model


def _prefixes(arrays: dict[str, np.ndarray]) -> str:
    """The distinct top-level module names of the arrays, for messages."""
    return ", ".join(sorted({name.split(".")[0] for name in arrays})) or "(no arrays)"


def _count(arrays: dict[str, np.ndarray], pattern: str) -> int:
    """How many distinct indices i the keys matching `pattern` (a regex with one group for i) hold."""
    return len({match.group(1) for name in arrays if (match := re.match(pattern, name))})


def _iresnet(arrays: dict[str, np.ndarray]) -> tuple[keras.Model, _Mapping]:
    units = tuple(_count(arrays, rf"layer{stage}\.(\d+)\.") for stage in range(1, 5))
    depths = [depth for depth in _IRESNET_DEPTHS if STAGE_UNITS[depth] == units]
    if not depths:
        accepted = ", ".join(f"{STAGE_UNITS[depth]} (iresnet{depth})" for depth in _IRESNET_DEPTHS)
        raise ValueError(f"an iresnet with {units} units per stage; accepted: {accepted}")
    embedding_size, flat = arrays["fc.weight"].shape
    side = _square_side(flat // STAGE_CHANNELS[-1]) if flat % STAGE_CHANNELS[-1] == 0 else None
    if side is None:
        raise ValueError(f"fc.weight {arrays['fc.weight'].shape}: its in_features {flat} are not 512 x s x s "
                         f"(the last map of a square input)")
    # Each of the four strided stages halves the size (torch: ceil(n / 2)); 16 s is the canonical input (112 for 7).
    model = get_resnet(depths[0], image_size=16 * side, dropout_rate=0.0, embedding_size=embedding_size,
                       norm_epsilon=ARCFACE_TORCH_BN_EPSILON, projection_shortcut=True, name=f"iresnet{depths[0]}")
    return model, _iresnet_mapping(units, (side, side, STAGE_CHANNELS[-1]))


def _square_side(area: int) -> int | None:
    side = int(round(area ** 0.5))
    return side if side > 0 and side * side == area else None


def _iresnet_mapping(units: tuple[int, ...], last_map: tuple[int, int, int]) -> _Mapping:
    mapping = _Mapping()
    mapping.add("conv1", "conv1", "conv")
    mapping.add("bn1", "bn0", "bn")
    mapping.add("prelu", "prelu0", "prelu")
    for stage, count in enumerate(units, start=1):
        for index in range(count):
            torch_unit, ours = f"layer{stage}.{index}", f"block{stage}.unit_{index + 1}.bottleneck_v1"
            mapping.add(f"{torch_unit}.bn1", f"{ours}.conv1_bn1", "bn")
            mapping.add(f"{torch_unit}.conv1", f"{ours}.conv1", "conv")
            mapping.add(f"{torch_unit}.bn2", f"{ours}.conv1_bn2", "bn")
            mapping.add(f"{torch_unit}.prelu", f"{ours}.prelu_layer", "prelu")
            mapping.add(f"{torch_unit}.conv2", f"{ours}.conv2", "conv")
            mapping.add(f"{torch_unit}.bn3", f"{ours}.conv2_bn.BatchNorm", "bn")
            if index == 0:
                mapping.add(f"{torch_unit}.downsample.0", f"{ours}.shortcut_conv", "conv")
                mapping.add(f"{torch_unit}.downsample.1", f"{ours}.shortcut_bn.BatchNorm", "bn")
    mapping.add("bn2", "E_BN1", "bn")
    mapping.add_arrays("E_DenseLayer", ["fc.weight", "fc.bias"], functools.partial(_fc_from_nchw, last_map))
    mapping.add("features", "E_BN2", "bn")
    return mapping


def _mbf(arrays: dict[str, np.ndarray]) -> tuple[keras.Model, _Mapping]:
    """arcface_torch's MobileFaceNet with a ConvBlock second (blocks[0] == 1: `mbf`, not `mbf_large`); at the MXNet
    zoo's width (64 channels, that conv depthwise) it is the paper's network, our get_mobilefacenet's default."""
    modules = _count(arrays, r"layers\.(\d+)\.")
    if "layers.1.layers.0.weight" not in arrays or modules != 8:
        raise ValueError(f"a MobileFaceNet of {modules} modules layers.N; accepted: arcface_torch's mbf (layers.0 to "
                         f"layers.7, layers.1 a ConvBlock)")
    stem_channels = arrays["layers.0.layers.0.weight"].shape[0]
    stem_groups = stem_channels // arrays["layers.1.layers.0.weight"].shape[1]
    depthwise_stem = stem_groups == stem_channels
    bottlenecks = []
    for depthwise, residual in _MBF_STAGE_MODULES:
        channels_in = arrays[f"layers.{depthwise}.layers.0.layers.0.weight"].shape[1]
        bottlenecks.append(_mbf_stage(arrays, f"layers.{depthwise}", channels_in, 1, 2))
        channels = bottlenecks[-1][1]
        bottlenecks.append(_mbf_stage(arrays, f"layers.{residual}.layers.0", channels,
                                      _count(arrays, rf"layers\.{residual}\.layers\.(\d+)\."), 1))
    embedding_size = arrays["features.layers.2.weight"].shape[0]
    gdc_side = arrays["features.layers.0.layers.0.weight"].shape[-1]
    model = get_mobilefacenet(image_size=16 * gdc_side, embedding_size=embedding_size, dropout_rate=0.0,
                              norm_epsilon=ARCFACE_TORCH_BN_EPSILON, stem_channels=stem_channels,
                              stem_groups=None if depthwise_stem else stem_groups, bottlenecks=tuple(bottlenecks),
                              name="mbf")
    return model, _mbf_mapping(bottlenecks, depthwise_stem)


def _mbf_stage(arrays: dict[str, np.ndarray], first_unit: str, channels_in: int, units: int,
               stride: int) -> tuple[int, int, int, int]:
    """(expansion, channels, units, stride) of a stage from its first DepthWise block's 1x1 convolutions."""
    expanded = arrays[f"{first_unit}.layers.0.layers.0.weight"].shape[0]
    channels = arrays[f"{first_unit}.layers.2.layers.0.weight"].shape[0]
    if expanded % channels_in:
        raise ValueError(f"{first_unit}: expands {channels_in} channels to {expanded}, not a whole multiple")
    return expanded // channels_in, channels, units, stride


def _mbf_mapping(bottlenecks: list[tuple[int, int, int, int]], depthwise_stem: bool) -> _Mapping:
    mapping = _Mapping()
    mapping.conv_bn_prelu("layers.0", "conv1")
    mapping.conv_bn_prelu("layers.1", "conv2_dw" if depthwise_stem else "conv2_grouped", depthwise=depthwise_stem)
    torch_units = []
    for depthwise, residual in _MBF_STAGE_MODULES:
        torch_units.append([f"layers.{depthwise}"])
        torch_units.append([f"layers.{residual}.layers.{index}" for index in range(bottlenecks[len(torch_units)][2])])
    for stage, units in enumerate(torch_units, start=1):
        for index, torch_unit in enumerate(units, start=1):
            ours = f"stage{stage}.unit_{index}"
            mapping.conv_bn_prelu(f"{torch_unit}.layers.0", f"{ours}.expand")
            mapping.conv_bn_prelu(f"{torch_unit}.layers.1", f"{ours}.depthwise", depthwise=True)
            mapping.conv_bn_prelu(f"{torch_unit}.layers.2", f"{ours}.project", activation=False)
    mapping.conv_bn_prelu("conv_sep", "conv_sep")
    mapping.conv_bn_prelu("features.layers.0", "gdc", depthwise=True, activation=False)
    mapping.add("features.layers.2", "embedding", "dense")
    mapping.add("features.layers.3", "embedding_bn", "bn")
    return mapping


def _load(model: keras.Model, mapping: _Mapping, arrays: dict[str, np.ndarray], source: str) -> None:
    """Sets every mapped layer's weights, then checks that no array was left unused and no weighted layer unset."""
    unused = dict(arrays)
    missing: list[str] = []
    loaded_layers = set()
    for layer_name, keys, convert in mapping.entries:
        absent = [key for key in keys if key not in arrays]
        if absent:
            missing += absent
            continue
        values = convert([np.asarray(unused.pop(key), np.float32) for key in keys])
        _set_weights(model.get_layer(layer_name), values, keys, source)
        loaded_layers.add(layer_name)
    if missing or unused:
        raise ValueError(f"{source}: the arrays do not match {model.name}"
                         + (f"; missing: {', '.join(missing)}" if missing else "")
                         + (f"; not used: {', '.join(sorted(unused))}" if unused else ""))
    unset = [layer.name for layer in model.layers if layer.weights and layer.name not in loaded_layers]
    if unset:
        raise ValueError(f"{source}: no arrays for the layers {', '.join(unset)} of {model.name}")


def _set_weights(layer: keras.layers.Layer, values: list[np.ndarray], keys: list[str], source: str) -> None:
    expected = [tuple(weight.shape) for weight in layer.weights]
    found = [value.shape for value in values]
    if expected != found:
        raise ValueError(f"{source}: {', '.join(keys)} have the shapes {found} (as converted); the layer "
                         f"{layer.name} needs {expected}")
    layer.set_weights(values)
