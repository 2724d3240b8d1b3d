"""Our own exports (export.py: a SavedModel folder, an ONNX file, a TFLite file) as models to evaluate.

Recognised by content and by the input contract export.py records with them (deploy.formats: export_metadata.json
beside the files, and inside an ONNX file its metadata_props), never by the name alone; run by each format's own
runtime (deploy.formats.load_runner), so what is evaluated is the deployed file itself. An export is not a
keras.Model: fine-tuning from it or exporting it again needs the .keras export or the checkpoint it came from.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np

from common.preprocessing import PIXEL_MEAN, PIXEL_SCALE, Preprocessing, normalize
from deploy.formats import METADATA_FILE, load_runner

log = logging.getLogger(__name__)

SAVED_MODEL_FILE = "saved_model.pb"
TFLITE_IDENTIFIER = b"TFL3"  # the flatbuffer's file identifier, bytes 4-8
_ONNX_FIRST_BYTE = b"\x08"  # a ModelProto starts with field 1 (ir_version), a varint
_CONTRACT_KEYS = {"input_size", "input", "output"}  # what deploy.formats._metadata writes for every export


@dataclasses.dataclass(frozen=True)
class Export:
    """One exported file and the input contract recorded with it."""

    format: str  # "saved_model", "onnx" or "tflite" (deploy.formats.FORMATS)
    path: Path
    metadata: dict  # deploy.formats._metadata: input_size, input, output (+ channel_order, mean, scale, ... when
    # the export carries its preprocessing)

    @property
    def takes_pixels(self) -> bool:
        """Whether the export carries its preprocessing (RGB pixels in), rather than being the bare network."""
        return "channel_order" in self.metadata

    @property
    def input_size(self) -> tuple[int, int]:
        return tuple(self.metadata["input_size"])

    @property
    def recorded_channel_order(self) -> str | None:
        return self.metadata.get("channel_order")

    def preprocessing(self, channel_order: str) -> Preprocessing:
        """How pixels become the network's input: the numbers inside an export that carries its preprocessing, else
        the seed's (x - 127.5) / 128 in `channel_order` (a bare network trained here)."""
        if self.takes_pixels:
            return Preprocessing(self.metadata["channel_order"], self.metadata["mean"], self.metadata["scale"])
        return Preprocessing(channel_order, PIXEL_MEAN, PIXEL_SCALE)

    def embed_function(self, preprocessing: Preprocessing) -> Callable[[np.ndarray], np.ndarray]:
        """uint8 RGB batches at input_size -> the export's outputs (numpy), through its own runtime; a bare
        network's export is fed the batches normalised by `preprocessing`."""
        run = load_runner(self.format, self.path)
        if not self.takes_pixels:
            return lambda batch: run(np.ascontiguousarray(normalize(batch, preprocessing)))
        dtype = np.uint8 if self.metadata["input"].startswith("uint8") else np.float32
        # contiguous: the mirrored views of a batch have negative strides, which TFLite's set_tensor refuses
        return lambda batch: run(np.ascontiguousarray(batch, dtype))


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"{path}: not readable as export.py's {METADATA_FILE} ({error})") from error


def _checked_contract(metadata: dict, where: str) -> dict:
    missing = sorted(_CONTRACT_KEYS - set(metadata))
    if missing:
        raise ValueError(f"{where} is not export.py's input contract: {', '.join(missing)} missing")
    return metadata


def _metadata_beside(path: Path, fmt: str) -> dict:
    """export_metadata.json of the export folder holding `path` (an export without it cannot be fed)."""
    metadata_path = path.parent / METADATA_FILE
    if not metadata_path.is_file():
        raise ValueError(f"{path} is a {fmt} without export.py's {METADATA_FILE} beside it: its input (size, "
                         f"dtype, preprocessing) is not known; evaluate the model it was exported from instead")
    return _checked_contract(_read_json(metadata_path), str(metadata_path))


def _onnx_metadata(path: Path) -> dict | None:
    """Our metadata_props of the ONNX file `path` (json values), or None when it is no ONNX file of ours (e.g. one
    of insightface's released recognisers: nets.pretrained reads those)."""
    try:
        with open(path, "rb") as stream:
            if stream.read(1) != _ONNX_FIRST_BYTE:
                return None
        import onnx  # only reading ONNX files needs it
        from google.protobuf.message import DecodeError

        proto = onnx.load_model(str(path), format="protobuf", load_external_data=False)
    except (OSError, ValueError, DecodeError):
        return None
    props = {prop.key: prop.value for prop in proto.metadata_props}
    if not _CONTRACT_KEYS <= set(props):
        return None
    try:
        return {key: json.loads(value) for key, value in props.items()}
    except ValueError as error:
        raise ValueError(f"{path}: the ONNX metadata of an export is not JSON ({error})") from error


def _is_tflite(path: Path) -> bool:
    try:
        with open(path, "rb") as stream:
            return stream.read(8)[4:] == TFLITE_IDENTIFIER
    except OSError:
        return False


def find_export(path: Path) -> Export | None:
    """The export at `path` (a SavedModel folder, an ONNX or TFLite file written by export.py), or None when `path`
    is none of these. ValueError for a SavedModel or TFLite file without export.py's metadata beside it."""
    if path.is_dir():
        if not (path / SAVED_MODEL_FILE).is_file():
            return None
        return Export("saved_model", path, _metadata_beside(path, "SavedModel"))
    if not path.is_file():
        return None
    if _is_tflite(path):
        return Export("tflite", path, _metadata_beside(path, "TFLite file"))
    metadata = _onnx_metadata(path)
    return None if metadata is None else Export("onnx", path, metadata)
