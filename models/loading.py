"""`load_embedding_model(path)`: any model this toolkit reads -> an EmbeddingModel (network, channel order, size).

The kind of `path` is recognised from what is there (a Keras archive, a TF2 object-based checkpoint, a TF1
name-based one, one of insightface's released recognisers: ONNX, arcface_torch .pth, MXNet .params), not from its
name alone; KINDS lists them in the order they are tried. Adding a kind is one
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

from common.preprocessing import PIXEL_MEAN, PIXEL_SCALE, Preprocessing, check_channel_order
from deploy.preprocessing import deployment_info
from models.channel_order import RecordedOrder, recorded_in_args_json, resolve_channel_order
from models.checkpoints import (find_args_json, is_object_checkpoint, looks_like_checkpoint, read_args_json, reading,
                                resolve_checkpoint, restore_embedding_weights)
from nets import pretrained, seed_checkpoint  # importing nets also registers the layer classes older .keras files name
from nets.spec import NetworkSpec

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class EmbeddingModel:
    """A loaded model and what feeding it needs."""

    model: keras.Model  # images -> embeddings; float (x - 127.5) / 128 input, or uint8 RGB for an export that
    # carries its preprocessing (deploy.preprocessing.deployment_info tells which)
    channel_order: str  # "BGR" or "RGB": the order the network was trained with (models.channel_order)
    source: str  # the resolved path: the .keras file or the checkpoint prefix
    kind: str  # the name of its entry in KINDS

    @property
    def network(self) -> keras.Model:
        """The network alone, taking float images normalised by `preprocessing` (what evaluation feeds): `model`
        itself, or the network inside a model that carries its preprocessing (an export, an imported recogniser)."""
        info = deployment_info(self.model)
        return self.model if info is None else info["network"]

    @property
    def input_size(self) -> tuple[int, int]:
        """(height, width) of the faces `network` takes (an export may resize other sizes to it)."""
        return tuple(self.network.input_shape[1:3])

    @property
    def preprocessing(self) -> Preprocessing:
        """How images become the input of `network`: `channel_order` with the numbers the model carries (an
        imported recogniser's own), else the seed's (x - 127.5) / 128 that the networks trained here take."""
        info = deployment_info(self.model)
        mean, scale = (PIXEL_MEAN, PIXEL_SCALE) if info is None else (info["mean"], info["scale"])
        return Preprocessing(self.channel_order, mean, scale)


@dataclasses.dataclass(frozen=True)
class Loaded:
    """What a kind's loader returns: the model, the resolved path, and the channel order recorded with it."""

    model: keras.Model
    source: str
    recorded_order: RecordedOrder | None


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
    # Before the checkpoints: a folder holding an MXNet model-symbol.json + model-0000.params pair is one of these.
    Kind("pretrained", "one of insightface's released recognisers: " + "; ".join(pretrained.READERS.values()),
         _load_pretrained_file),
    Kind("checkpoint", "a training checkpoint: its prefix (.../InsightFace_iter-<step>) or one of its .index/.data "
                       "files, a run folder (its latest checkpoint) or best/, with the run's args.json",
         _load_training_checkpoint),
    Kind("seed_checkpoint", "a seed TF1 checkpoint (models A-D): the prefix given to Saver.restore "
                            "(.../InsightFace_iter_best_710000.ckpt) or a folder holding it", _load_seed_checkpoint),
)


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
            log.info("loaded %s (%s, %d weights) from %s", loaded.model.name, kind.name, loaded.model.count_params(),
                     loaded.source)
            return EmbeddingModel(model=loaded.model,
                                  channel_order=resolve_channel_order(channel_order, loaded.recorded_order,
                                                                      loaded.source),
                                  source=loaded.source,
                                  kind=kind.name)
    accepted = "; ".join(f"{kind.name}: {kind.accepts}" for kind in KINDS)
    if not path.exists():
        raise FileNotFoundError(f"no model at {path}: nothing there (accepted: {accepted})")
    raise ValueError(f"{path} is not a model this toolkit reads (accepted: {accepted})")
