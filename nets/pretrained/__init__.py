"""insightface's released recognisers (ONNX, arcface_torch .pth, MXNet zoo) as Keras networks: `load_pretrained`.

A reader per format (torch_file, onnx_file, mxnet_file: `recognise(path)` by content, `read(path)` ->
weights.ImportedWeights) turns the file into named arrays and its preprocessing; build.build_from_weights builds
the network of this package they fit and loads them; nets.preprocessing puts the preprocessing in front.
Keras and numpy only: the readers are imported when a file is read, so a missing optional package (onnx) matters
for its format only.
"""

from __future__ import annotations

import importlib
import logging
from pathlib import Path

import keras

from nets import preprocessing
from nets.pretrained.build import ARCHITECTURES, build_from_weights
from nets.pretrained.weights import ImportedWeights, Preprocessing

log = logging.getLogger(__name__)

# Tried in this order; the first whose recognise(path) is True reads the file.
READERS: dict[str, str] = {
    "nets.pretrained.torch_file": "arcface_torch state dict (backbone.pth)",
    "nets.pretrained.onnx_file": "ONNX (insightface model zoo, arcface_torch torch2onnx)",
    "nets.pretrained.mxnet_file": "MXNet model zoo (<prefix>-symbol.json + <prefix>-<epoch>.params)",
}

__all__ = ["ARCHITECTURES", "READERS", "ImportedWeights", "Preprocessing", "build_from_weights", "is_pretrained_file",
           "load_pretrained", "read_weights"]


def _recognising_reader(path: Path, unavailable: list[str]):
    """The reader module whose recognise(path) is True, or None; readers that cannot be imported are listed in
    `unavailable` (with why)."""
    for module_name, description in READERS.items():
        try:
            reader = importlib.import_module(module_name)
        except ImportError as error:
            unavailable.append(f"{description}: {error}")
            continue
        if reader.recognise(path):
            return reader
    return None


def is_pretrained_file(path: str | Path) -> bool:
    """True when a reader of READERS recognises what is at `path` (by its content), without reading it all."""
    return _recognising_reader(Path(path), []) is not None


def read_weights(path: str | Path) -> ImportedWeights:
    """The arrays and preprocessing of the recogniser at `path`, read by the first reader that recognises it.

    Raises ValueError naming the path and the formats accepted when none does (and why a reader could not be
    imported, e.g. its optional package missing).
    """
    path = Path(path)
    unavailable: list[str] = []
    reader = _recognising_reader(path, unavailable)
    if reader is None:
        raise ValueError(f"{path}: not a recogniser file this package reads; accepted: {'; '.join(READERS.values())}"
                         + (f" (unavailable here: {'; '.join(unavailable)})" if unavailable else ""))
    log.info("reading %s as %s", path, READERS[reader.__name__])
    return reader.read(path)


def load_pretrained(path: str | Path) -> keras.Model:
    """insightface's recogniser at `path` as a Keras model: RGB pixels 0-255 in, its raw embedding out.

    The model takes float32 or uint8 arrays [N, H, W, 3] at its input size (model.input_shape) and applies the
    file's own preprocessing inside (nets.preprocessing.deployment_info(model) reports channel_order, mean and
    scale; info["network"] is the network alone, on normalised input). The embedding is not L2-normalised, as
    insightface's own models return it; normalise before comparing by cosine.
    """
    weights = read_weights(path)
    network = build_from_weights(weights)
    return preprocessing.with_preprocessing(network, weights.preprocessing, input_dtype="float32",
                                            l2_normalize=False)
