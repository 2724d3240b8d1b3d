"""Every face backbone by name: `get_backbone("resnet50_ir")`, `get_backbone("mobilefacenet")`, ...

Each returns a keras.Model float (N, H, W, 3) -> (N, embedding_size) (512 by default) that takes preprocessed images
(data.preprocess) and plugs into the margin heads (losses.margin_head), evaluation and export.

Names (case-insensitive):

* IR-ResNet (nets.resnet_ir, the seed's L_Resnet_E_IR family): ``resnet{18,34,50,100,152,200}_ir``, the
  squeeze-excitation units ``resnet{depth}_se_ir``, and the insightface names ``LResNet{depth}E-IR``; keyword
  arguments `norm` ("bn", "gn", "brn") and `net_width` (1, or 4 for the seed's L_Resnet_E_IR.py) pass through;
* ImageNet ResNet v1 of the seed's nets/resnet.py (nets.resnet_v1): ``resnet{50,101,152}_v1``,
  ``se_resnet{50,101,152}_v1``, ``resnext{50,101,152}_32x4d``;
* ``vgg16``, ``vgg19`` (nets.vgg);
* ``mobilefacenet`` (nets.mobilefacenet), and ``mobilefacenet_arcface_torch``, insightface arcface_torch's `mbf`
  (its stem and stages; give it norm_epsilon=1e-5 as nets.pretrained.build does for an imported one).

Every builder takes `norm` ("bn", "gn", "brn"), `synchronized_bn` and `seed` (nets.norms.make_norm for every norm
layer; the VGGs have norms in their output block only).

`get_seed_wide_resnet` builds the seed's 4x-wide files (L_Resnet_E_IR.py, _GBN.py, _RBN.py) under their own depth
keys (100 layers keyed 101) and scopes, which their checkpoints need.
"""

from __future__ import annotations

import functools
from typing import Callable

import keras

from nets import resnet_ir, resnet_v1
from nets.mobilefacenet import ARCFACE_TORCH_MBF_BOTTLENECKS, get_mobilefacenet
from nets.vgg import BLOCK_CONVS, get_vgg


# The seed's 4x-wide files key the 100-layer net 101 (scope resnet_v1_101); their other depths are ours.
SEED_WIDE_DEPTHS = {50: 50, 101: 100, 152: 152}
# arcface_torch's mbf stem: 128 channels, its second convolution grouped in 64 groups (nets.mobilefacenet).
ARCFACE_TORCH_MBF_STEM = (128, 64)


def get_seed_wide_resnet(num_layers: int, unit_type: str = "ir", norm: str = "bn", **kwargs) -> keras.Model:
    """The seed's 4x-wide IR-ResNet (models A-C): net_width 4, depth `num_layers` in SEED_WIDE_DEPTHS, model (scope)
    name "resnet_v1_<num_layers>" as in its checkpoints. Other keyword arguments as nets.resnet_ir.get_resnet."""
    if num_layers not in SEED_WIDE_DEPTHS:
        raise ValueError(f"unknown num_layers {num_layers!r} for the seed's 4x-wide net; expected one of "
                         f"{sorted(SEED_WIDE_DEPTHS)}")
    kwargs.setdefault("name", f"resnet_v1_{num_layers}")
    return resnet_ir.get_resnet(SEED_WIDE_DEPTHS[num_layers], unit_type, norm, net_width=4, **kwargs)


def _registry() -> dict[str, Callable[..., keras.Model]]:
    builders: dict[str, Callable[..., keras.Model]] = {}
    for depth in resnet_ir.STAGE_UNITS:
        builders[f"resnet{depth}_ir"] = functools.partial(resnet_ir.get_resnet, depth, "ir")
        builders[f"resnet{depth}_se_ir"] = functools.partial(resnet_ir.get_resnet, depth, "se_ir")
        builders[f"LResNet{depth}E-IR"] = builders[f"resnet{depth}_ir"]
    for depth in resnet_v1.STAGE_UNITS:
        for unit_type in resnet_v1.UNIT_TYPES:
            name = resnet_v1.MODEL_NAMES[unit_type].format(depth)
            builders[name] = functools.partial(resnet_v1.get_resnet_v1, depth, unit_type)
    for depth in BLOCK_CONVS:
        builders[f"vgg{depth}"] = functools.partial(get_vgg, depth)
    builders["mobilefacenet"] = get_mobilefacenet
    builders["mobilefacenet_arcface_torch"] = functools.partial(
        get_mobilefacenet, stem_channels=ARCFACE_TORCH_MBF_STEM[0], stem_groups=ARCFACE_TORCH_MBF_STEM[1],
        bottlenecks=ARCFACE_TORCH_MBF_BOTTLENECKS)
    return builders


BACKBONES: dict[str, Callable[..., keras.Model]] = _registry()
_BY_LOWER_NAME = {name.lower(): builder for name, builder in BACKBONES.items()}


def backbone_names() -> list[str]:
    """The names get_backbone accepts, in registry order."""
    return list(BACKBONES)


def get_backbone(name: str, **kwargs) -> keras.Model:
    """Builds the backbone `name` (case-insensitive; see the module docstring) with the builder's keyword arguments.

    Every builder takes image_size, embedding_size, dropout_rate, norm, synchronized_bn, seed and name (train_nets
    passes Args.norm, sync_bn and seed for every backbone). Raises ValueError listing the known names when `name` is
    unknown.
    """
    builder = _BY_LOWER_NAME.get(name.lower())
    if builder is None:
        raise ValueError(f"unknown backbone {name!r}; expected one of: {', '.join(BACKBONES)}")
    return builder(**kwargs)
