"""`load_embedding_model(path)`: any model this toolkit reads -> an EmbeddingModel (network, channel order, size).

The kind of `path` is recognised from what is there (a Keras archive, an export of export.py run by its own runtime:
SavedModel, ONNX, TFLite, a TF2 object-based checkpoint, a TF1 name-based one, one of insightface's released
recognisers: ONNX, arcface_torch .pth, MXNet .params), not from its name alone; KINDS lists them in the order they are
tried. Every kind embeds through EmbeddingModel.embed_function (uint8 RGB batches in). Adding a kind is one
function `(path) -> Loaded | None` (None: "not mine") and one line in KINDS.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np

from common.preprocessing import PIXEL_MEAN, PIXEL_SCALE, Preprocessing, check_channel_order, normalize
from deploy.preprocessing import deployment_info
from models.channel_order import RecordedOrder, recorded_in_args_json, resolve_channel_order
from models.checkpoints import (find_args_json, is_object_checkpoint, looks_like_checkpoint, read_args_json, reading,
                                resolve_checkpoint, restore_embedding_weights)
from models.exported import METADATA_FILE, Export, find_export
from nets import pretrained, seed_checkpoint  # importing nets also registers the layer classes older .keras files name
from nets.spec import NetworkSpec

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class EmbeddingModel:
    """A loaded model and what feeding it needs; embed_function embeds with it, whichever kind it is."""

    keras_model: keras.Model | None  # images -> embeddings; float (x - 127.5) / 128 input, or uint8 RGB for an
    # export that carries its preprocessing (deploy.preprocessing.deployment_info tells which); None for `export`
    channel_order: str  # "BGR" or "RGB": the order the network was trained with (models.channel_order)
    source: str  # the resolved path: the .keras file, the checkpoint prefix, the exported file
    kind: str  # the name of its entry in KINDS
    export: Export | None = None  # an export of export.py run by its own runtime (kind "export"), not Keras

    def __post_init__(self) -> None:
        recorded = None if self.export is None else self.export.recorded_channel_order
        if recorded is not None and self.channel_order != recorded:
            raise ValueError(f"channel_order={self.channel_order}: the export {self.source} converts {recorded} "
                             f"pixels inside; it cannot be fed otherwise (leave channel_order unset)")

    @property
    def model(self) -> keras.Model:
        """The Keras model; ValueError for an export run by its runtime (kind "export"), which is none."""
        if self.keras_model is None:
            raise ValueError(f"{self.source} is an export ({self.export.format}) run by its own runtime, not a Keras "
                             f"model: give the .keras export beside it or the checkpoint it was exported from")
        return self.keras_model

    @property
    def network(self) -> keras.Model:
        """The network alone, taking float images normalised by `preprocessing`: `model` itself, or the network
        inside a model that carries its preprocessing (a .keras export, an imported recogniser)."""
        info = deployment_info(self.model)
        return self.model if info is None else info["network"]

    @property
    def input_size(self) -> tuple[int, int]:
        """(height, width) of the faces embed_function takes: the network's (a .keras export that resizes is
        evaluated through its network), or an export's own input."""
        if self.export is not None:
            return self.export.input_size
        return tuple(self.network.input_shape[1:3])

    @property
    def preprocessing(self) -> Preprocessing:
        """How images become the input of the network: `channel_order` with the numbers the model carries (an
        imported recogniser's own, those inside an export), else the seed's (x - 127.5) / 128 that the networks
        trained here take."""
        if self.export is not None:
            return self.export.preprocessing(self.channel_order)
        info = deployment_info(self.model)
        mean, scale = (PIXEL_MEAN, PIXEL_SCALE) if info is None else (info["mean"], info["scale"])
        return Preprocessing(self.channel_order, mean, scale)

    def embed_function(self) -> Callable[[np.ndarray], np.ndarray]:
        """uint8 RGB batches [b, H, W, 3] at input_size -> [b, D] embeddings (numpy), what evaluation and faces/
        embed with. A Keras model: its network, compiled, in inference mode, on the batch normalised by
        `preprocessing` (the raw embedding); an export: the file run by its own runtime on the pixels (its
        preprocessing inside; the output L2-normalised when export.py wrapped it, as it does by default)."""
        if self.export is not None:
            return self.export.embed_function(self.preprocessing)
        from training.validation import embedding_function  # TensorFlow's compiled call; training/ imports eval/

        embed = embedding_function(self.network)
        preprocessing = self.preprocessing
        return lambda batch: embed(normalize(batch, preprocessing))


@dataclasses.dataclass(frozen=True)
class Loaded:
    """What a kind's loader returns: the model, the resolved path, and the channel order recorded with it."""

    model: keras.Model | None  # None for an export
    source: str
    recorded_order: RecordedOrder | None
    export: Export | None = None


@dataclasses.dataclass(frozen=True)
class Kind:
    name: str
    accepts: str  # the paths it takes, for the error on a path no kind takes
    load: Callable[[Path], Loaded | None]


def _is_keras_archive(path: Path) -> bool:
    """A .keras file, or a zip holding what Keras writes into one (config.json, metadata.json) under another name."""
    if not path.is_file():
        return False
    if path.suffix == ".keras":
        return True
    try:
        with zipfile.ZipFile(path) as archive:
            return {"config.json", "metadata.json"} <= set(archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def _read_keras_archive(path: Path) -> keras.Model:
    if path.suffix == ".keras":
        return keras.saving.load_model(path, compile=False)
    # Keras reads a zip only under a .keras name: give it one, through a link.
    with tempfile.TemporaryDirectory() as folder:
        link = Path(folder) / "model.keras"
        link.symlink_to(path.resolve())
        return keras.saving.load_model(link, compile=False)


def _load_keras_file(path: Path) -> Loaded | None:
    if not _is_keras_archive(path):
        return None
    model = _read_keras_archive(path)
    info = deployment_info(model)
    recorded = (RecordedOrder(info["channel_order"], f"the preprocessing inside {path}") if info is not None
                else recorded_in_args_json(path))
    return Loaded(model, str(path), recorded)


def _load_export(path: Path) -> Loaded | None:
    export = find_export(path)
    if export is None:
        return None
    recorded = (RecordedOrder(export.recorded_channel_order, f"the preprocessing inside {path}")
                if export.takes_pixels else recorded_in_args_json(path))
    return Loaded(None, str(path), recorded, export)


def _checkpoint_prefix(path: Path, object_based: bool) -> str | None:
    """The checkpoint `path` means when it is one of the kind asked (ours: object-based; the seed's: name-based)."""
    if not looks_like_checkpoint(path):
        return None
    prefix = resolve_checkpoint(path)
    return prefix if is_object_checkpoint(prefix) == object_based else None


def _load_training_checkpoint(path: Path) -> Loaded | None:
    prefix = _checkpoint_prefix(path, object_based=True)
    if prefix is None:
        return None
    model = NetworkSpec.from_mapping(read_args_json(find_args_json(prefix))).build()
    restore_embedding_weights(model, prefix)
    return Loaded(model, prefix, recorded_in_args_json(prefix))


def _load_seed_checkpoint(path: Path) -> Loaded | None:
    prefix = _checkpoint_prefix(path, object_based=False)
    if prefix is None:
        return None
    with reading(prefix):
        model, _ = seed_checkpoint.load(prefix)
    return Loaded(model, prefix, recorded_in_args_json(prefix))


def _load_pretrained_file(path: Path) -> Loaded | None:
    if not pretrained.is_pretrained_file(path):
        return None
    model = pretrained.load_pretrained(path)
    return Loaded(model, str(path), RecordedOrder(deployment_info(model)["channel_order"], f"the format of {path}"))


KINDS: tuple[Kind, ...] = (
    Kind("keras", "a Keras archive (.keras: best/embedding.keras, an export)", _load_keras_file),
    # Before "pretrained": an ONNX export of ours is recognised by the input contract in its metadata.
    Kind("export", "an export of export.py run by its runtime: its saved_model/ folder, embedding.onnx or a .tflite "
                   f"(the SavedModel and TFLite with export.py's {METADATA_FILE} beside them)", _load_export),
    # Before the checkpoints: a folder holding an MXNet model-symbol.json + model-0000.params pair is one of these.
    Kind("pretrained", "one of insightface's released recognisers: " + "; ".join(pretrained.READERS.values()),
         _load_pretrained_file),
    Kind("checkpoint", "a training checkpoint: its prefix (.../InsightFace_iter-<step>) or one of its .index/.data "
                       "files, a run folder (its latest checkpoint) or best/, with the run's args.json",
         _load_training_checkpoint),
    Kind("seed_checkpoint", "a seed TF1 checkpoint (models A-D): the prefix given to Saver.restore "
                            "(.../InsightFace_iter_best_710000.ckpt) or a folder holding it", _load_seed_checkpoint),
)


def _description(loaded: Loaded) -> str:
    if loaded.export is not None:
        return f"a {loaded.export.format} export ({loaded.export.metadata['input']} {loaded.export.input_size})"
    return f"{loaded.model.name} ({loaded.model.count_params()} weights)"


def load_embedding_model(path: str | Path, channel_order: str | None = None) -> EmbeddingModel:
    """The embedding model at `path`, whichever of KINDS it is, with the channel order to feed it: `channel_order`
    when given, else the recorded one, else the seed's BGR (models.channel_order).

    FileNotFoundError when nothing is at `path` (or a folder holds no checkpoint, or several and no state file);
    ValueError when what is there is none of KINDS or cannot be read.
    """
    if channel_order is not None:
        check_channel_order(channel_order)
    path = Path(path)
    for kind in KINDS:
        loaded = kind.load(path)
        if loaded is not None:
            log.info("loaded %s (%s) from %s", _description(loaded), kind.name, loaded.source)
            return EmbeddingModel(keras_model=loaded.model,
                                  channel_order=resolve_channel_order(channel_order, loaded.recorded_order,
                                                                      loaded.source),
                                  source=loaded.source,
                                  kind=kind.name,
                                  export=loaded.export)
    accepted = "; ".join(f"{kind.name}: {kind.accepts}" for kind in KINDS)
    if not path.exists():
        raise FileNotFoundError(f"no model at {path}: nothing there (accepted: {accepted})")
    raise ValueError(f"{path} is not a model this toolkit reads (accepted: {accepted})")
