"""The deployable Keras model: the network wrapped with its preprocessing, saved as standard layers.

Keras and keras.ops only (no TensorFlow, no data/): a `.keras` file written here loads and runs with plain
`keras.saving.load_model` on any Keras 3 backend, and this module itself imports on a TensorFlow-free install.

`with_preprocessing` wraps the network so it takes uint8 RGB images [N, H, W, 3] (the network's input size, or any
size given, resized inside) and returns L2-normalised embeddings: the channel order and the (x - 127.5) / 128
scaling of common.preprocessing travel inside the model and deployers cannot get them wrong. `deployment_info` reads
that contract back from a model; `standard_model` / `save_keras` replace our own layers by standard ones.
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np

from common.preprocessing import PIXEL_MEAN, PIXEL_SCALE, check_channel_order
from nets import norms

# Layer names of with_preprocessing, by which deployment_info recognises a model that carries the preprocessing.
PREPROCESS_SCALE = "preprocess.scale"
PREPROCESS_BGR = "preprocess.rgb_to_bgr"
PREPROCESS_RESIZE = "preprocess.resize"


def standard_model(model: keras.Model) -> keras.Model:
    """A copy of `model` made of standard Keras layers only, with the same weights and inference output.

    Our frozen-gamma batch norm and batch renorm become plain BatchNormalization (nets.norms.standard_layer), so the
    saved file loads with plain `keras.saving.load_model` in a process that has never imported this package.
    """
    def clone(layer: keras.layers.Layer) -> keras.layers.Layer:
        return norms.standard_layer(layer) or layer.__class__.from_config(layer.get_config())

    copy = keras.models.clone_model(model, clone_function=clone, recursive=True)
    _copy_weights(model, copy)
    return copy


def _copy_weights(source: keras.Model, target: keras.Model) -> None:
    for layer in target.layers:
        if not layer.weights:  # e.g. a nested model's InputLayer, which the clone renames
            continue
        original = source.get_layer(layer.name)  # unique within a model; the clone keeps them
        if isinstance(layer, keras.Model):
            _copy_weights(original, layer)
        else:
            layer.set_weights(norms.standard_weights(original))


def save_keras(model: keras.Model, path: str | Path) -> Path:
    """Writes `model` as a `.keras` file of standard layers (standard_model): what training and export both save."""
    path = Path(path)
    standard_model(model).save(path)
    return path


def with_preprocessing(model: keras.Model, channel_order: str = "BGR",
                       input_size: tuple[int, int] | None = None) -> keras.Model:
    """`model` wrapped for deployment: uint8 RGB [N, H, W, 3] in, L2-normalised embedding out, standard layers only.

    The preprocessing is data.preprocess.normalize written as standard, backend-agnostic layers: Rescaling
    (x - 127.5) / 128 (which also casts the uint8 input), then for BGR a fixed 1x1 convolution that reverses the
    channels; both are exact in float32. With `input_size` the model takes images of that size and resizes them
    (bilinear) to the network's.

    Args:
        model: an embedding network that takes normalised float images (data.preprocess).
        channel_order: the order the network was trained with ("BGR" for the seed and its checkpoints).
        input_size: (height, width) of the images deployers feed; None: the network's own input size.
    Raises ValueError when `model` already carries the preprocessing (wrapping twice maps every face to one point).
    """
    check_channel_order(channel_order)
    if deployment_info(model) is not None or model.inputs[0].dtype != "float32":
        raise ValueError(f"model {model.name} already takes uint8 images (it carries the preprocessing); "
                         f"export it as it is instead of wrapping it again")
    network_size = tuple(model.input_shape[1:3])
    if input_size is not None and (len(input_size) != 2 or min(input_size) < 1):
        raise ValueError(f"input_size: expected [height, width] of positive integers; received {input_size}")
    input_size = network_size if input_size is None else (int(input_size[0]), int(input_size[1]))
    inputs = keras.Input((*input_size, 3), dtype="uint8", name="rgb_uint8")
    x = keras.layers.Rescaling(PIXEL_SCALE, offset=-PIXEL_MEAN * PIXEL_SCALE, name=PREPROCESS_SCALE)(inputs)
    if channel_order == "BGR":
        reverse = np.eye(3, dtype=np.float32)[::-1].reshape(1, 1, 3, 3)
        x = keras.layers.Conv2D(3, 1, use_bias=False, trainable=False, name=PREPROCESS_BGR,
                                kernel_initializer=keras.initializers.Constant(reverse))(x)
    if input_size != network_size:
        x = keras.layers.Resizing(*network_size, interpolation="bilinear", name=PREPROCESS_RESIZE)(x)
    x = model(x, training=False)
    x = keras.layers.UnitNormalization(axis=-1, name="l2_normalize")(x)
    return keras.Model(inputs, x, name=f"{model.name}_deploy")


def deployment_info(model: keras.Model) -> dict | None:
    """What a with_preprocessing model expects, or None for a bare network.

    Keys: input_size [h, w], input "uint8 RGB", channel_order (the network's), normalisation, network_input_size,
    output, network (the wrapped keras.Model).
    """
    names = {layer.name for layer in model.layers}
    if PREPROCESS_SCALE not in names:
        return None
    networks = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    if len(networks) != 1:
        raise ValueError(f"model {model.name}: expected one wrapped network beside its preprocessing; found "
                         f"{len(networks)}")
    return {"input_size": list(model.input_shape[1:3]), "input": "uint8 RGB",
            "channel_order": "BGR" if PREPROCESS_BGR in names else "RGB",
            "normalisation": f"(x - {PIXEL_MEAN}) * {PIXEL_SCALE}",
            "network_input_size": list(networks[0].input_shape[1:3]),
            "resize": "bilinear" if PREPROCESS_RESIZE in names else None,
            "output": f"L2-normalised {model.output_shape[-1]}-d embedding", "network": networks[0]}
