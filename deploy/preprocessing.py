"""The deployable Keras model: the network wrapped with its preprocessing, saved as standard layers.

Keras and keras.ops only (no TensorFlow, no data/): a `.keras` file written here loads and runs with plain
`keras.saving.load_model` on any Keras 3 backend, and this module itself imports on a TensorFlow-free install.

`with_preprocessing` wraps the network so it takes uint8 RGB images [N, H, W, 3] (the network's input size, or any
size given, resized inside) and returns L2-normalised embeddings: the channel order and the (x - 127.5) / 128
scaling of common.preprocessing travel inside the model and deployers cannot get them wrong. The layers themselves
are nets.preprocessing's (nets.load_pretrained wraps imported networks with them too); `deployment_info` reads that
contract back from a model; `standard_model` / `save_keras` replace our own layers by standard ones.
"""

from __future__ import annotations

from pathlib import Path

import keras

from common.preprocessing import PIXEL_MEAN, PIXEL_SCALE, Preprocessing
from nets import norms
from nets import preprocessing as nets_preprocessing
# Re-exported: deployment_info and the layer names it reads live with the layers, in nets/.
from nets.preprocessing import PREPROCESS_BGR, PREPROCESS_RESIZE, PREPROCESS_SCALE, deployment_info

__all__ = ["PREPROCESS_BGR", "PREPROCESS_RESIZE", "PREPROCESS_SCALE", "deployment_info", "save_keras",
           "standard_model", "with_preprocessing"]


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
                       input_size: tuple[int, int] | None = None, *, mean: float = PIXEL_MEAN,
                       scale: float = PIXEL_SCALE) -> keras.Model:
    """`model` wrapped for deployment: uint8 RGB [N, H, W, 3] in, L2-normalised embedding out, standard layers only.

    The preprocessing is data.preprocess.normalize written as standard, backend-agnostic layers
    (nets.preprocessing.with_preprocessing): Rescaling (x - mean) * scale (the seed's 127.5 and 1/128 by default),
    then for BGR a channel reversal; with `input_size` the model takes images of that size and resizes them
    (bilinear) to the network's.

    Args:
        model: an embedding network that takes normalised float images (data.preprocess).
        channel_order: the order the network was trained with ("BGR" for the seed and its checkpoints).
        input_size: (height, width) of the images deployers feed; None: the network's own input size.
        mean, scale: the network's normalisation; other than the seed's for an imported network
            (common.preprocessing.Preprocessing).
    Raises ValueError when `model` already carries the preprocessing (wrapping twice maps every face to one point).
    """
    return nets_preprocessing.with_preprocessing(model, Preprocessing(channel_order, mean, scale),
                                                 input_size=input_size)
