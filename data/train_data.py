"""Training input: an identity-folder tree, an MXNet `train.rec` or TFRecords -> one tf.data pipeline.

    data = open_train_data("faces_emore/train.rec")        # or a folder of identity folders, or "*.tfrecord"
    for epoch in range(num_epochs):
        for images, labels in data.dataset(batch_size=32, epoch=epoch, seed=0):
            ...                                             # images float32 [32,112,112,3] normalised, labels int64

Each epoch is one pass over a permutation of the WHOLE index fixed by (seed, epoch) (the seed shuffled a 10k buffer
over records ordered by identity, which barely mixes them), in batches of `batch_size` (the last partial batch is
dropped). The random left-right flip is fixed by (seed, epoch, batch), so `dataset(..., skip_batches=k)` yields
exactly the batches k, k+1, ... of the uninterrupted epoch: resuming a run mid-epoch sees the same data. Skipped
batches are never read.

A batch is read and decoded by a numpy function (OpenCV decodes with the GIL released; tf.data runs several batches
in parallel), which lets an unreadable, corrupt or truncated image be skipped instead of stopping the run: it is
logged once with its file (and record offset), counted in `num_skipped`, and its slot in the batch is filled with
another image of the same batch, so batches keep their size and position.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Protocol, Sequence

import cv2
import numpy as np
import tensorflow as tf
from tqdm import tqdm

from data.image_io import decode_to_size
from data.image_folders import FolderImages
from data.preprocess import check_channel_order, normalize
from data.recordio import RecordIOImages
from data.tfrecords import TFRecordImages

log = logging.getLogger(__name__)

class ImageSource(Protocol):
    """Random access to the encoded images of a data set."""

    def __len__(self) -> int: ...

    def read(self, position: int) -> tuple[bytes, int]:
        """(encoded image, label); ValueError or OSError for an unreadable sample."""

    def describe(self, position: int) -> str:
        """The file (and record) of a sample, for messages."""


def detect_format(source: str | Path) -> tuple[str, str]:
    """(format, path to open) of a training source: a `.rec` (or a folder holding `train.rec`), TFRecord files
    (a file, a glob, or a folder holding `*.tfrecord*` files) or a folder of identity folders."""
    text = str(source)
    path = Path(text)
    if path.is_file():
        if path.suffix == ".rec":
            return "recordio", text
        if ".tfrecord" in path.name:
            return "tfrecord", text
        raise ValueError(f"training source {text}: unknown file type; expected a .rec, a .tfrecord file or a folder")
    if path.is_dir():
        if (path / "train.rec").is_file():
            return "recordio", str(path / "train.rec")
        if any(".tfrecord" in entry.name and entry.is_file() for entry in path.iterdir()):
            return "tfrecord", text
        return "folder", text
    if any(char in text for char in "*?["):
        return "tfrecord", text
    raise FileNotFoundError(f"training source not found: {text}")


def count_classes(images: ImageSource) -> int:
    """1 + the largest label, read from every sample (only when no metadata gives the class count)."""
    log.warning("no class count in the data set's metadata: reading every record's label")
    largest = -1
    for position in tqdm(range(len(images)), desc="counting classes", unit="img"):
        try:
            largest = max(largest, images.read(position)[1])
        except (ValueError, OSError) as err:
            log.warning("skipping an unreadable sample while counting classes: %s", err)
    if largest < 0:
        raise ValueError("no readable labelled sample in the data set")
    return largest + 1


class TrainData:
    """A training data set: its size and classes, and `dataset(...)` giving one epoch of normalised batches."""

    def __init__(self, images: ImageSource, format: str, num_classes: int, class_names: Sequence[str] | None,
                 image_size: tuple[int, int], channel_order: str) -> None:
        check_channel_order(channel_order)
        if len(images) == 0:
            raise ValueError("the training data set holds no images")
        self.images = images
        self.format = format
        self.num_classes = num_classes
        self.class_names = list(class_names) if class_names is not None else None
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.channel_order = channel_order
        self.skipped: dict[str, str] = {}
        self._skipped_lock = threading.Lock()

    @property
    def num_images(self) -> int:
        return len(self.images)

    @property
    def num_skipped(self) -> int:
        """How many distinct images were unreadable so far (each was logged once)."""
        return len(self.skipped)

    def save_class_list(self, path: str | Path) -> Path:
        """Writes one class name per line, line i for label i (the label number itself when the format has no
        names), so that labels stay reproducible."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        names = self.class_names if self.class_names is not None else [str(k) for k in range(self.num_classes)]
        path.write_text("".join(f"{name}\n" for name in names))
        return path

    def batches_per_epoch(self, batch_size: int) -> int:
        return self.num_images // batch_size

    def epoch_order(self, seed: int, epoch: int) -> np.ndarray:
        """The permutation of all sample positions for (seed, epoch)."""
        return np.random.default_rng([seed, epoch]).permutation(self.num_images)

    def _report_bad(self, position: int, err: Exception) -> None:
        name = self.images.describe(position)
        with self._skipped_lock:
            if name in self.skipped:
                return
            self.skipped[name] = str(err)
            count = len(self.skipped)
        log.warning("skipping an unreadable training image (%d so far): %s", count, err)

    def _read_sample(self, position: int) -> tuple[np.ndarray, int]:
        encoded, label = self.images.read(position)
        if not 0 <= label < self.num_classes:
            raise ValueError(f"{self.images.describe(position)}: label {label} outside [0, {self.num_classes})")
        return decode_to_size(encoded, self.images.describe(position), self.image_size), label

    def load_batch(self, positions: np.ndarray, flip_seed: Sequence[int] | None) -> tuple[np.ndarray, np.ndarray, bool]:
        """Reads and decodes the samples at `positions`: (RGB uint8 [B,H,W,3], int64 labels [B], usable).

        Unreadable samples are replaced by readable ones of the same batch; `usable` is False when none is readable.
        With `flip_seed`, each image is flipped left-right with probability 1/2 drawn from that seed.
        """
        height, width = self.image_size
        images = np.empty((len(positions), height, width, 3), dtype=np.uint8)
        labels = np.empty(len(positions), dtype=np.int64)
        readable = np.ones(len(positions), dtype=bool)
        for row, position in enumerate(positions):
            try:
                images[row], labels[row] = self._read_sample(int(position))
            except (ValueError, OSError, cv2.error) as err:  # cv2.error: e.g. an image over OpenCV's pixel limit
                readable[row] = False
                self._report_bad(int(position), err)
        good_rows = np.flatnonzero(readable)
        if len(good_rows) == 0:
            return images, labels, False
        bad_rows = np.flatnonzero(~readable)
        replacements = good_rows[np.arange(len(bad_rows)) % len(good_rows)]
        images[bad_rows], labels[bad_rows] = images[replacements], labels[replacements]
        if flip_seed is not None:
            flips = np.random.default_rng(list(flip_seed)).random(len(positions)) < 0.5
            for row in np.flatnonzero(flips):
                cv2.flip(images[row], 1, dst=images[row])  # 20x faster than numpy's reversed-stride copy
        return images, labels, True

    def dataset(self, batch_size: int, epoch: int, seed: int, skip_batches: int = 0,
                augment: bool = True) -> tf.data.Dataset:
        """One epoch of `(images float32 [batch_size, H, W, 3] normalised in channel_order, labels int64 [batch_size])`.

        Args:
            batch_size: images per batch; the last partial batch of the epoch is dropped.
            epoch: epoch number (>= 0); with `seed` it fixes the order and the flips.
            seed: run seed (>= 0).
            skip_batches: batches of this epoch already consumed (resume); they are not read.
            augment: random left-right flip (the seed's only augmentation).
        """
        num_batches = self.batches_per_epoch(batch_size) if batch_size > 0 else 0
        if batch_size < 1 or num_batches == 0:
            raise ValueError(f"batch_size={batch_size}: expected 1..{self.num_images} (the data set has "
                             f"{self.num_images} images)")
        if seed < 0 or epoch < 0 or not 0 <= skip_batches <= num_batches:
            raise ValueError(f"seed={seed}, epoch={epoch}, skip_batches={skip_batches}: expected seed >= 0, "
                             f"epoch >= 0 and 0 <= skip_batches <= {num_batches} (batches per epoch)")
        order = self.epoch_order(seed, epoch)

        def load(batch_index: np.int64) -> tuple[np.ndarray, np.ndarray, bool]:
            start = int(batch_index) * batch_size
            flip_seed = (seed, epoch, int(batch_index)) if augment else None
            return self.load_batch(order[start:start + batch_size], flip_seed)

        def load_tensors(batch_index: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
            images, labels, usable = tf.numpy_function(load, [batch_index], (tf.uint8, tf.int64, tf.bool),
                                                       name="load_batch")
            images.set_shape((batch_size, *self.image_size, 3))
            labels.set_shape((batch_size,))
            usable.set_shape(())
            return images, labels, usable

        batches = tf.data.Dataset.range(skip_batches, num_batches)
        batches = batches.map(load_tensors, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        batches = batches.filter(lambda images, labels, usable: usable)
        batches = batches.map(lambda images, labels, usable: (normalize(images, self.channel_order), labels),
                              num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        return batches.prefetch(tf.data.AUTOTUNE)


def open_train_data(source: str, image_size: Sequence[int] = (112, 112), channel_order: str = "BGR") -> TrainData:
    """Opens a training source (see `detect_format`); labels and class count come from its layout or metadata.

    Args:
        source: a folder of identity folders, a `train.rec` (with `train.idx` and `property` beside it, or the folder
            holding them), or TFRecord files (a file, a folder of `*.tfrecord*` shards or a glob).
        image_size: (height, width) of the batches; images of another size are resized.
        channel_order: "BGR" (the seed and its checkpoints) or "RGB".
    """
    image_size = (int(image_size[0]), int(image_size[1]))
    format, path = detect_format(source)
    class_names = None
    if format == "folder":
        images = FolderImages(path)
        class_names = images.class_names
        num_classes = len(class_names)
    elif format == "recordio":
        images = RecordIOImages(path)
        num_classes = images.num_classes_hint or count_classes(images)
    else:
        images = TFRecordImages(path)
        info = images.info or {}
        class_names = info.get("class_names")
        num_classes = info.get("num_classes") or count_classes(images)
    data = TrainData(images, format, num_classes, class_names, image_size, channel_order)
    log.info("training data %s (%s): %d images, %d classes", source, format, data.num_images, num_classes)
    return data
