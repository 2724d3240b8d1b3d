"""A network wrapped with its preprocessing, as standard Keras layers: RGB pixels 0-255 in, the embedding out.

Keras only (no TensorFlow, no deploy/): deploy.preprocessing wraps our trained networks with the seed's numbers and
L2-normalises their output; nets.load_pretrained wraps an imported network with its own numbers (Preprocessing,
which the readers of nets.pretrained return) and returns its raw embedding, as insightface's models do.

The layers, in order: Rescaling (x - mean) * scale (which also casts a uint8 input), for a BGR network a fixed 1x1
convolution that reverses the channels (exact in float32), a bilinear Resizing when the images are not the
network's size, the network, and optionally UnitNormalization. `deployment_info` reads all of it back from a model.
"""

from __future__ import annotations

import keras
import numpy as np

from common.preprocessing import Preprocessing

# Layer names, by which deployment_info recognises a model that carries its preprocessing.
PREPROCESS_SCALE = "preprocess.scale"
PREPROCESS_BGR = "preprocess.rgb_to_bgr"
PREPROCESS_RESIZE = "preprocess.resize"
L2_NORMALIZE = "l2_normalize"
INPUT_DTYPES = {"uint8": "uint8 RGB", "float32": "float32 RGB 0-255"}
# mean is stored as Rescaling's offset (-mean * scale); dividing back is exact to ~1e-16, rounding removes that.
_MEAN_DECIMALS = 10


def with_preprocessing(network: keras.Model, preprocessing: Preprocessing, *,
                       input_size: tuple[int, int] | None = None, input_dtype: str = "uint8",
                       l2_normalize: bool = True) -> keras.Model:
    """`network` wrapped so it takes RGB images [N, H, W, 3] of pixel values 0-255, standard layers only.

    Args:
        network: an embedding network taking float images normalised by `preprocessing`.
        preprocessing: the network's channel order, mean and scale.
        input_size: (height, width) of the images fed; None: the network's own input size.
        input_dtype: "uint8", or "float32" (which takes uint8 and float pixel arrays alike, unrounded).
        l2_normalize: end with UnitNormalization (our deployments) or return the raw embedding.
    Raises ValueError when `network` already carries a preprocessing (wrapping twice maps every face to one point).
    """
    if deployment_info(network) is not None or network.inputs[0].dtype != "float32":
        raise ValueError(f"model {network.name} already takes uint8 images or pixels 0-255 (it carries the "
                         f"preprocessing); use it as it is instead of wrapping it again")
    if input_dtype not in INPUT_DTYPES:
        raise ValueError(f"input_dtype: expected one of {', '.join(INPUT_DTYPES)}; received {input_dtype!r}")
    network_size = tuple(network.input_shape[1:3])
    if input_size is not None and (len(input_size) != 2 or min(input_size) < 1):
        raise ValueError(f"input_size: expected [height, width] of positive integers; received {input_size}")
    input_size = network_size if input_size is None else (int(input_size[0]), int(input_size[1]))
    inputs = keras.Input((*input_size, 3), dtype=input_dtype, name=f"rgb_{input_dtype}")
    x = keras.layers.Rescaling(preprocessing.scale, offset=-preprocessing.mean * preprocessing.scale,
                               name=PREPROCESS_SCALE)(inputs)
    if preprocessing.channel_order == "BGR":
        reverse = np.eye(3, dtype=np.float32)[::-1].reshape(1, 1, 3, 3)
        x = keras.layers.Conv2D(3, 1, use_bias=False, trainable=False, name=PREPROCESS_BGR,
                                kernel_initializer=keras.initializers.Constant(reverse))(x)
    if input_size != network_size:
        x = keras.layers.Resizing(*network_size, interpolation="bilinear", name=PREPROCESS_RESIZE)(x)
    x = network(x, training=False)
    if l2_normalize:
        x = keras.layers.UnitNormalization(axis=-1, name=L2_NORMALIZE)(x)
    return keras.Model(inputs, x, name=f"{network.name}_deploy" if l2_normalize else f"{network.name}_pixels")


def deployment_info(model: keras.Model) -> dict | None:
    """What a with_preprocessing model expects, or None for a bare network.

    Keys: input_size [h, w], input ("uint8 RGB" or "float32 RGB 0-255"), channel_order (the network's), mean and
    scale (input = (pixel - mean) * scale), normalisation (that formula as text), network_input_size, resize,
    l2_normalized (whether the output is), output, network (the wrapped keras.Model).
    """
    names = {layer.name for layer in model.layers}
    if PREPROCESS_SCALE not in names:
        return None
    networks = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    if len(networks) != 1:
        raise ValueError(f"model {model.name}: expected one wrapped network beside its preprocessing; found "
                         f"{len(networks)}")
    rescaling = model.get_layer(PREPROCESS_SCALE)
    scale = float(rescaling.scale)
    mean = round(-float(rescaling.offset) / scale, _MEAN_DECIMALS)
    l2_normalized = L2_NORMALIZE in names
    embedding = f"{model.output_shape[-1]}-d embedding"
    return {"input_size": list(model.input_shape[1:3]),
            "input": INPUT_DTYPES.get(model.inputs[0].dtype, f"{model.inputs[0].dtype} RGB"),
            "channel_order": "BGR" if PREPROCESS_BGR in names else "RGB",
            "mean": mean, "scale": scale, "normalisation": f"(x - {mean}) * {scale}",
            "network_input_size": list(networks[0].input_shape[1:3]),
            "resize": "bilinear" if PREPROCESS_RESIZE in names else None,
            "l2_normalized": l2_normalized,
            "output": f"L2-normalised {embedding}" if l2_normalized else f"{embedding}, not normalised",
            "network": networks[0]}
