"""Loading the seed's TF1 / TensorLayer 1.7 checkpoints (the released models A-D) into our Keras IR-ResNet.

A seed checkpoint is the prefix given to the seed's `Saver.restore` (``.../InsightFace_iter_best_710000.ckpt``, with
``.index`` and ``.data-*`` files beside it). Its variables carry TensorLayer 1.7 names below the scope
``resnet_v1_<depth>``: ``conv1/W_conv2d``, ``bn0/{beta,gamma,moving_mean,moving_variance}``, ``prelu0/alphas``,
``block1/unit_1/bottleneck_v1/...``, ``E_DenseLayer/{W,b}``, and the class weights ``arcface_loss/embedding_weights``
(512 x classes). The architecture is read from the names and shapes found:

* depth: the units per block (the 4x-wide files key the 100-layer net 101, so the scope number is kept as the model
  name and the depth comes from the units);
* width: channels of block1/unit_1/conv2 (64: L_Resnet_E_IR_fix_issue9.py, model D; 256: the 4x-wide
  L_Resnet_E_IR.py, models B-C, or L_Resnet_E_IR_GBN.py, model A);
* norm: batch norm (``bn0``) or group norm (``group_norm_0``; ``scale``/``offset`` of shape [1, C, 1, 1]);
* unit type: squeeze-excitation when ``excitation_1`` variables exist;
* input size and embedding size: the shape of ``E_DenseLayer/W`` (7 x 7 x C rows at 112 x 112).

Our layer names are the seed's scopes with "/" written as "." (nets.resnet_ir.seed_scope); the variables map
kernel <-> W_conv2d (conv) / W (dense), bias <-> b, alpha <-> alphas, GN gamma/beta <-> scale/offset, BN statistics
by their own names. Optimizer slots (``.../Momentum``) and ``global_step`` are ignored; anything else that does not
match is an error listing the missing and unexpected variables.

TensorFlow reads the checkpoint (tf.train.load_checkpoint); the networks themselves stay backend-neutral. The functions
here take a checkpoint prefix; models.load_embedding_model (which resolves a folder or one of the checkpoint's files
to its prefix first) is the way in for users.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
from pathlib import Path
from typing import Mapping

import keras
import numpy as np
import tensorflow as tf

from nets.resnet_ir import STAGE_CHANNELS, STAGE_UNITS, get_resnet, seed_scope

log = logging.getLogger(__name__)

# Scopes of the class weights written by the seed's losses (combine_loss_val created its variable without a scope).
CLASS_WEIGHT_NAMES = ("arcface_loss/embedding_weights", "cosineface_loss/embedding_weights", "embedding_weights")
# Training state a seed checkpoint may hold beside the model: the step counter and optimizer slots.
TRAINING_STATE_NAMES = ("global_step", "beta1_power", "beta2_power")
TRAINING_STATE_SLOTS = ("Momentum", "Adam", "Adam_1", "RMSProp", "RMSProp_1")
# Keras variable name -> TensorLayer 1.7 variable name, per layer kind.
_CONV_NAMES = {"kernel": "W_conv2d", "bias": "b_conv2d"}
_DENSE_NAMES = {"kernel": "W", "bias": "b"}
_PRELU_NAMES = {"alpha": "alphas"}
_GROUP_NORM_NAMES = {"gamma": "scale", "beta": "offset"}
_BATCH_NORM_NAMES = {name: name for name in ("gamma", "beta", "moving_mean", "moving_variance")}
# (width, norm) -> the seed's file and the released models built with it (model D is the depth-50 one).
_SEED_FILES = {(1, "bn"): ("L_Resnet_E_IR_fix_issue9.py", "model D"),
               (4, "bn"): ("L_Resnet_E_IR.py", "models B-C"),
               (4, "gn"): ("L_Resnet_E_IR_GBN.py", "model A")}
_MODEL_D_DEPTH = 50
_MAX_LISTED = 40
_SEED_STEM_KERNEL = re.compile(r"resnet_v1_\d+/conv1/W_conv2d")


@dataclasses.dataclass(frozen=True)
class SeedArchitecture:
    """The network a seed checkpoint holds, as recognised from its variable names and shapes."""

    scope: str  # "resnet_v1_50"; the model name, so our layers map onto the checkpoint's scopes
    depth: int  # our depth key (nets.resnet_ir.STAGE_UNITS); the scope says 101 for the 4x-wide 100-layer net
    unit_type: str  # "ir" or "se_ir"
    norm: str  # "bn" or "gn"
    width: int  # 1 or 4
    image_size: tuple[int, int]
    embedding_size: int
    class_weights_name: str | None  # e.g. "arcface_loss/embedding_weights"
    num_classes: int | None

    @property
    def seed_file(self) -> str:
        """The seed's nets/ file that builds this network, and which released model it is."""
        file, model = _SEED_FILES.get((self.width, self.norm), ("no seed file", "not a released model"))
        if model == "model D" and self.depth != _MODEL_D_DEPTH:
            model = "not a released model"
        return f"{file} ({model})"

    def describe(self) -> str:
        head = (f"class weights {self.class_weights_name} ({self.embedding_size} x {self.num_classes})"
                if self.class_weights_name else "no class weights")
        return (f"{self.seed_file}: depth {self.depth} (scope {self.scope}), {self.unit_type} units, width "
                f"{self.width}, {'group' if self.norm == 'gn' else 'batch'} norm, input {self.image_size[0]}x"
                f"{self.image_size[1]}, {self.embedding_size}-d embedding; {head}")

    def build(self) -> keras.Model:
        """Our Keras network with this architecture (random weights), named after the checkpoint's scope."""
        return get_resnet(self.depth, self.unit_type, self.norm, self.width, image_size=self.image_size,
                          embedding_size=self.embedding_size, name=self.scope)


def read_variable_shapes(ckpt_prefix: str | Path) -> dict[str, tuple[int, ...]]:
    """Variable name -> shape of every variable in the TF checkpoint `ckpt_prefix`."""
    return {name: tuple(shape) for name, shape in tf.train.list_variables(str(ckpt_prefix))}


def is_training_state(name: str) -> bool:
    """True for the step counter and optimizer slot variables, which an embedding model does not need."""
    return name in TRAINING_STATE_NAMES or name.rsplit("/", 1)[-1] in TRAINING_STATE_SLOTS


def _feature_size(pixels: int) -> int:
    """Side of the last feature map: four stride-2 stages, each ceil(n / 2) (symmetric padding, 3x3 VALID)."""
    for _ in range(len(STAGE_CHANNELS)):
        pixels = (pixels + 1) // 2
    return pixels


def _find_scope(shapes: Mapping[str, tuple[int, ...]]) -> str:
    scopes = sorted({name.split("/", 1)[0] for name in shapes if _SEED_STEM_KERNEL.fullmatch(name)})
    if len(scopes) != 1:
        examples = ", ".join(sorted(shapes)[:5])
        raise ValueError(f"expected the variables of one seed IR-ResNet (resnet_v1_<depth>/conv1/W_conv2d); found "
                         f"{len(scopes)} such scopes {scopes} among {len(shapes)} variables (e.g. {examples})")
    return scopes[0]


def _recognise_depth(shapes: Mapping[str, tuple[int, ...]], scope: str) -> int:
    units = [0] * len(STAGE_CHANNELS)
    for name in shapes:
        match = re.match(rf"{scope}/block(\d)/unit_(\d+)/", name)
        if match and 1 <= int(match[1]) <= len(units):
            units[int(match[1]) - 1] = max(units[int(match[1]) - 1], int(match[2]))
    depths = [depth for depth, stage_units in STAGE_UNITS.items() if stage_units == tuple(units)]
    if not depths:
        raise ValueError(f"{scope}: units per block {tuple(units)} match no known depth "
                         f"({', '.join(f'{d}: {u}' for d, u in STAGE_UNITS.items())})")
    return depths[0]


def _recognise_image_size(dense_rows: int, channels: int, image_size: tuple[int, int] | None,
                          scope: str) -> tuple[int, int]:
    cells, remainder = divmod(dense_rows, channels)
    if remainder:
        raise ValueError(f"{scope}/E_DenseLayer/W has {dense_rows} rows, not a multiple of the {channels} channels "
                         f"of the last feature map")
    if image_size is not None:
        if _feature_size(image_size[0]) * _feature_size(image_size[1]) != cells:
            raise ValueError(f"image_size {image_size} gives a {_feature_size(image_size[0])}x"
                             f"{_feature_size(image_size[1])} feature map, but {scope}/E_DenseLayer/W expects "
                             f"{cells} cells ({dense_rows} rows / {channels} channels)")
        return image_size
    side = math.isqrt(cells)
    if side * side != cells:
        raise ValueError(f"{scope}/E_DenseLayer/W expects a {cells}-cell feature map, which is not square: pass "
                         f"image_size=(height, width)")
    return side * 16, side * 16


def _class_weights_name(shapes: Mapping[str, tuple[int, ...]], embedding_size: int) -> str | None:
    """The checkpoint's class weights (embedding_size x classes), under the scope of whichever seed loss wrote them."""
    return next((name for name in CLASS_WEIGHT_NAMES
                 if name in shapes and len(shapes[name]) == 2 and shapes[name][0] == embedding_size), None)


def recognise(shapes: Mapping[str, tuple[int, ...]],
              image_size: tuple[int, int] | None = None) -> SeedArchitecture:
    """The architecture of a seed checkpoint from its variable names and shapes (see the module docstring).

    Args:
        shapes: variable name -> shape, as read_variable_shapes returns.
        image_size: input (height, width) when the checkpoint's dense layer cannot tell it (non-square inputs).
    """
    scope = _find_scope(shapes)
    image_size = None if image_size is None else (int(image_size[0]), int(image_size[1]))
    if any("renorm" in name for name in shapes):
        raise ValueError(f"{scope}: batch-renorm variables (renorm_*) found; checkpoints of the seed's "
                         f"L_Resnet_E_IR_RBN.py are not supported (only models A-D: BN or GN)")
    depth = _recognise_depth(shapes, scope)
    if f"{scope}/group_norm_0/scale" in shapes:
        norm = "gn"
    elif f"{scope}/bn0/moving_mean" in shapes:
        norm = "bn"
    else:
        raise ValueError(f"{scope}: neither {scope}/bn0/moving_mean (batch norm) nor {scope}/group_norm_0/scale "
                         f"(group norm) found")
    conv2 = f"{scope}/block1/unit_1/bottleneck_v1/conv2/W_conv2d"
    if conv2 not in shapes or shapes[conv2][-1] not in (STAGE_CHANNELS[0], 4 * STAGE_CHANNELS[0]):
        raise ValueError(f"{conv2}: expected shape (3, 3, 64, 64) (width 1) or (3, 3, 64, 256) (width 4); found "
                         f"{shapes.get(conv2)}")
    width = shapes[conv2][-1] // STAGE_CHANNELS[0]
    unit_type = "se_ir" if any(re.search(r"/excitation_1/W$", name) for name in shapes) else "ir"
    dense = f"{scope}/E_DenseLayer/W"
    if dense not in shapes or len(shapes[dense]) != 2:
        raise ValueError(f"{dense}: expected a 2-D dense kernel; found {shapes.get(dense)}")
    rows, embedding_size = shapes[dense]
    image_size = _recognise_image_size(rows, STAGE_CHANNELS[-1] * width, image_size, scope)
    class_name = _class_weights_name(shapes, embedding_size)
    return SeedArchitecture(scope=scope, depth=depth, unit_type=unit_type, norm=norm, width=width,
                            image_size=image_size, embedding_size=embedding_size,
                            class_weights_name=class_name, num_classes=shapes[class_name][1] if class_name else None)


def _seed_variable_names(layer: keras.layers.Layer) -> dict[str, str]:
    if isinstance(layer, keras.layers.GroupNormalization):
        return _GROUP_NORM_NAMES
    if isinstance(layer, keras.layers.BatchNormalization):
        return _BATCH_NORM_NAMES
    if isinstance(layer, keras.layers.PReLU):
        return _PRELU_NAMES
    if isinstance(layer, keras.layers.Dense):
        return _DENSE_NAMES
    return _CONV_NAMES


def seed_variables(model: keras.Model, scope: str | None = None) -> dict[str, keras.Variable]:
    """The seed's checkpoint name of every variable of `model` (an IR-ResNet) below `scope` (default: the model's
    name, e.g. "resnet_v1_50")."""
    scope = scope or model.name
    variables = {}
    for layer in model.layers:
        names = _seed_variable_names(layer)
        for variable in layer.weights:
            if variable.name not in names:
                raise ValueError(f"layer {layer.name} ({type(layer).__name__}) has a variable {variable.name!r} with "
                                 f"no TensorLayer equivalent (known: {', '.join(names)})")
            variables[f"{seed_scope(layer.name, scope)}/{names[variable.name]}"] = variable
    return variables


def _without_unit_axes(shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(d for d in shape if d != 1)


def _same_values_shape(checkpoint_shape: tuple[int, ...], variable_shape: tuple[int, ...]) -> bool:
    # GN's scale/offset are [1, C, 1, 1] in the seed and (C,) here; everything else matches exactly.
    return (tuple(checkpoint_shape) == tuple(variable_shape)
            or _without_unit_axes(checkpoint_shape) == _without_unit_axes(variable_shape))


def _listed(names: list[str]) -> str:
    shown = "\n  ".join(names[:_MAX_LISTED])
    more = f"\n  ... and {len(names) - _MAX_LISTED} more" if len(names) > _MAX_LISTED else ""
    return f"\n  {shown}{more}" if names else " none"


def match_variables(model: keras.Model, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, keras.Variable]:
    """Checkpoint name -> variable of `model` for every model variable; raises ValueError listing the missing,
    unexpected and wrongly shaped variables when the checkpoint does not hold exactly this network (class weights,
    optimizer slots and the step counter aside).

    Names are matched below the checkpoint's own scope, whatever the model is called: training names the 4x-wide
    100-layer net resnet_v1_100 (its depth), the seed's checkpoints of it say resnet_v1_101.
    """
    variables = seed_variables(model, _find_scope(shapes))
    extras = {name for name in shapes if is_training_state(name) or name in CLASS_WEIGHT_NAMES}
    missing = sorted(set(variables) - set(shapes))
    unexpected = sorted(set(shapes) - set(variables) - extras)
    wrong_shape = sorted(f"{name}: checkpoint {tuple(shapes[name])}, model {tuple(variables[name].shape)}"
                         for name in set(variables) & set(shapes)
                         if not _same_values_shape(shapes[name], tuple(variables[name].shape)))
    if missing or unexpected or wrong_shape:
        raise ValueError(f"the checkpoint does not hold the network {model.name} ({len(variables)} variables):\n"
                         f"missing from the checkpoint ({len(missing)}):{_listed(missing)}\n"
                         f"unexpected in the checkpoint ({len(unexpected)}):{_listed(unexpected)}\n"
                         f"wrong shape ({len(wrong_shape)}):{_listed(wrong_shape)}")
    return variables


def restore_weights(model: keras.Model, ckpt_prefix: str | Path) -> np.ndarray | None:
    """Copies a seed checkpoint into `model` (an IR-ResNet of the checkpoint's architecture, e.g. one built by
    SeedArchitecture.build or by training with the same depth/width/norm/unit type) and returns its class weights
    (D, C), or None when it holds none. Raises ValueError listing the differences when the networks do not match."""
    prefix = str(ckpt_prefix)
    shapes = read_variable_shapes(prefix)
    variables = match_variables(model, shapes)
    reader = tf.train.load_checkpoint(prefix)
    for name, variable in variables.items():
        variable.assign(reader.get_tensor(name).reshape(tuple(variable.shape)))
    ignored = sorted(name for name in shapes if is_training_state(name))
    if ignored:
        log.info("%s: ignored %d optimizer/step variables (e.g. %s)", prefix, len(ignored), ignored[0])
    class_name = _class_weights_name(shapes, int(model.output_shape[-1]))
    return None if class_name is None else reader.get_tensor(class_name)


def load(ckpt_prefix: str | Path, image_size: tuple[int, int] | None = None) -> tuple[keras.Model, np.ndarray | None]:
    """Loads a seed checkpoint: returns (embedding model, class weights (512, C) or None).

    The embedding model is our IR-ResNet (nets.resnet_ir) with the recognised architecture, named after the seed's
    scope; it takes 112x112 (or the recognised size) BGR images normalised as (x - 127.5) / 128 (data.preprocess
    with channel_order="BGR", the seed's convention).

    Args:
        ckpt_prefix: the prefix given to the seed's Saver.restore (models.load_embedding_model also takes a folder
            or one of the checkpoint's files, and resolves it first).
        image_size: input (height, width) when the checkpoint cannot tell it (non-square inputs).
    """
    prefix = str(ckpt_prefix)
    architecture = recognise(read_variable_shapes(prefix), image_size)
    log.info("seed checkpoint %s: %s", prefix, architecture.describe())
    model = architecture.build()
    class_weights = restore_weights(model, prefix)
    log.info("loaded %d weights into %s", model.count_params(), model.name)
    return model, class_weights


def restore_class_weights(head: keras.layers.Layer, class_weights: np.ndarray | None) -> bool:
    """Copies the seed's class weights into a built margin head (losses.margin_head.MarginHead) when the shapes match.

    Returns True when copied; False (logged) when there are none or the head has another shape (e.g. fine-tuning
    on a different set of identities, where the head starts fresh).
    """
    if class_weights is None:
        log.info("no class weights in the seed checkpoint; the head %s keeps its initial weights", head.name)
        return False
    target = head.embedding_weights
    if tuple(target.shape) != tuple(class_weights.shape):
        log.warning("seed class weights %s do not fit the head %s %s; the head keeps its initial weights",
                    tuple(class_weights.shape), head.name, tuple(target.shape))
        return False
    target.assign(class_weights)
    log.info("restored the seed's class weights %s into %s", tuple(class_weights.shape), head.name)
    return True
