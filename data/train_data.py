"""Training input: an identity-folder tree, an MXNet `train.rec` or TFRecords -> one tf.data pipeline.

    data = open_train_data("faces_emore/train.rec")        # or a folder of identity folders, or "*.tfrecord"
    for epoch in range(num_epochs):
        for images, labels in data.dataset(batch_size=32, epoch=epoch, seed=0):
            ...                                             # images float32 [32,112,112,3] normalised, labels int64

Each epoch is one pass over a permutation of the WHOLE index fixed by (seed, epoch) (the seed shuffled a 10k buffer
over records ordered by identity, which barely mixes them), in batches of `batch_size` (the last partial batch is
dropped). The random left-right flip, and the other augmentation (data.augment) when asked for, is fixed by
(seed, epoch, batch), so `dataset(..., skip_batches=k)` yields exactly the batches k, k+1, ... of the uninterrupted
epoch: resuming a run mid-epoch sees the same data. Skipped batches are never read.

A batch is read and decoded by a numpy function (OpenCV decodes with the GIL released; tf.data runs several batches
in parallel), which lets an unreadable, corrupt or truncated image be skipped instead of stopping the run: it is
logged once with its file (and record offset), counted in `num_skipped`, and its slot in the batch is filled with
another image of the same batch, so batches keep their size and position. A data set that is mostly unreadable stops
the run instead (`DataUnreadableError`, naming the data and the count): when a whole pass yields no batch, or when
more than MAX_SKIPPED_FRACTION of the images read so far (at least MIN_READS_FOR_FRACTION) were unreadable, the rest
of the epoch is not read and the next `dataset(...)` call raises.

A training set must have at least 2 identities (a margin loss over one class is 0 from the start), and its class ids
must not be so sparse that the head would mostly hold classes without images (`check_class_density`).
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

from common.files import write_replacing
from data.augment import Augmentation
from data.image_folders import FolderImages, is_utf8
from data.image_io import decode_to_size
from data.preprocess import check_channel_order, normalize
from data.recordio import RecordIOImages
from data.tfrecords import TFRecordImages

log = logging.getLogger(__name__)

# Stop a run whose data is mostly unreadable: more than this fraction of the reads failed ...
MAX_SKIPPED_FRACTION = 0.5
# ... once at least this many images were read (a few bad images early in a run must not stop it).
MIN_READS_FOR_FRACTION = 1000
# Refuse a class count over this multiple of the identities that have images: the head (embedding_size x classes
# weights, with their optimizer slots, in every checkpoint) would be mostly classes that never occur.
MAX_CLASS_SPARSITY = 2.0


# tf.data's autotuning model made tearing down a finished epoch's iterator stall for 0.7-10 s (more on a loaded
# machine) at every epoch's end: on ORL's 9-batch epochs, up to a third of a run. Without it, AUTOTUNE parallelism
# is min(16, schedulable cores) and the prefetch buffer still adapts; the stall is gone (docs/data.md).
EPOCH_OPTIONS = tf.data.Options()
EPOCH_OPTIONS.autotune.enabled = False


class DataUnreadableError(ValueError):
    """The training data is mostly or wholly unreadable; the message names it and counts the skipped images."""


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


def check_class_density(num_classes: int, identities: int, source: str) -> None:
    """Refuses `num_classes` below 2 (a margin loss needs two classes) or over MAX_CLASS_SPARSITY x `identities` (the
    number, or an upper bound, of the identities that have images); ValueError naming `source`."""
    if num_classes < 2:
        raise ValueError(f"{source}: {num_classes} class; a margin loss (ArcFace, CosFace, ...) needs at least 2 "
                         f"identities, with a single class its loss is 0 and its accuracy 1 from the first step")
    if num_classes > MAX_CLASS_SPARSITY * identities:
        raise ValueError(f"{source}: a {num_classes:,}-class head for at most {identities:,} identities with images; "
                         f"relabel the identities 0..N-1 (e.g. rewrite the .rec with data.recordio.write_recordio) "
                         f"or fix the class count in its metadata (limit: {MAX_CLASS_SPARSITY:g}x the identities)")


def count_classes(images: ImageSource) -> int:
    """1 + the largest label, read from every sample (only when no metadata gives the class count).

    A sample that is unreadable or whose label is not a whole number >= 0 is skipped with a warning naming it; class
    ids too sparse for a head (see `check_class_density`) raise ValueError naming the record of the largest label.
    """
    log.warning("no class count in the data set's metadata: reading every record's label")
    labels = np.full(len(images), -1, dtype=np.int64)
    for position in tqdm(range(len(images)), desc="counting classes", unit="img"):
        try:
            label = images.read(position)[1]
            if label < 0:
                raise ValueError(f"{images.describe(position)}: label {label}; expected a whole number >= 0")
            labels[position] = label
        except (ValueError, OSError) as err:
            log.warning("skipping an unreadable sample while counting classes: %s", err)
    if labels.max(initial=-1) < 0:
        raise ValueError(f"{images.describe(0)}: no readable labelled sample in the data set")
    largest = int(np.argmax(labels))
    check_class_density(int(labels[largest]) + 1, len(np.unique(labels[labels >= 0])),
                        f"{images.describe(largest)} has label {labels[largest]}")
    return int(labels[largest]) + 1


class TrainData:
    """A training data set: its size and classes, and `dataset(...)` giving one epoch of normalised batches."""

    def __init__(self, images: ImageSource, source_format: str, num_classes: int, class_names: Sequence[str] | None,
                 image_size: tuple[int, int], channel_order: str, source: str = "<training data>") -> None:
        check_channel_order(channel_order)
        if len(images) == 0:
            raise ValueError(f"{source}: the training data set holds no images")
        # Without class names, every image could be its own identity: the image count bounds the identities.
        check_class_density(num_classes, len(class_names) if class_names is not None else len(images), source)
        self.source = source
        self.images = images
        self.format = source_format
        self.num_classes = num_classes
        self.class_names = list(class_names) if class_names is not None else None
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.channel_order = channel_order
        self.skipped: dict[str, str] = {}
        self._skipped_lock = threading.Lock()
        self._reads = self._failed_reads = 0
        self._failure: str | None = None  # set when the data turned out mostly unreadable; raised by dataset()
        self._last_pass: dict[str, int] | None = None  # batches, batches_left, usable of the latest dataset(...)

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
        bad = next((name for name in names if not is_utf8(name)), None)
        if bad is not None:
            raise ValueError(f"{path}: class name {bad!r} is not valid UTF-8 text; rename it in the data set")
        # Through a temporary file: a failed write never leaves a truncated list where a run's list was.
        return write_replacing(path, "".join(f"{name}\n" for name in names))

    def _check_last_pass(self) -> None:
        """Raises DataUnreadableError when the data was found mostly unreadable, or when the previous `dataset(...)`
        was read to its end without yielding a batch (an epoch loop would otherwise never end)."""
        with self._skipped_lock:
            last = self._last_pass
            if self._failure is None and last and last["batches"] and not last["batches_left"] and not last["usable"]:
                self._failure = f"a whole pass over the data ({last['batches']} batches) yielded no readable batch"
        if self._failure is not None:
            raise self._unreadable_error()

    def batches_per_epoch(self, batch_size: int) -> int:
        return self.num_images // batch_size

    def epoch_order(self, seed: int, epoch: int) -> np.ndarray:
        """The permutation of all sample positions for (seed, epoch)."""
        return np.random.default_rng([seed, epoch]).permutation(self.num_images)

    def _count_reads(self, reads: int, failed: int) -> None:
        """Adds a batch's reads; past MAX_SKIPPED_FRACTION of failures, marks the data as unreadable."""
        with self._skipped_lock:
            self._reads += reads
            self._failed_reads += failed
            too_many = (self._reads >= MIN_READS_FOR_FRACTION
                        and self._failed_reads > MAX_SKIPPED_FRACTION * self._reads)
            if too_many and self._failure is None:
                self._failure = (f"{self._failed_reads} of the {self._reads} images read were unreadable (over "
                                 f"{MAX_SKIPPED_FRACTION:.0%})")

    def _unreadable_error(self) -> DataUnreadableError:
        first = next(iter(self.skipped.items()), ("", ""))
        return DataUnreadableError(
            f"training data {self.source}: {self._failure}; {self.num_skipped} distinct unreadable images of "
            f"{self.num_images} (first: {first[1]}); fix or remove them")

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

    def load_batch(self, positions: np.ndarray, flip_seed: Sequence[int] | None,
                   augmentation: Augmentation | None = None,
                   rows: slice = slice(None)) -> tuple[np.ndarray, np.ndarray, bool]:
        """Reads and decodes the samples at `positions[rows]`: (RGB uint8 [B,H,W,3], int64 labels [B], usable).

        Unreadable samples are replaced by readable ones of the same rows; `usable` is False when none is readable.
        With `flip_seed`, each image is flipped left-right with probability 1/2 drawn from that seed, after
        `augmentation` (if any) drew from the same generator (the draw order is data.augment's). The draws are those
        of the whole batch `positions`, so each row of a part (a worker's shard) is flipped and augmented as in the
        whole batch.
        """
        whole_batch = len(positions)
        positions = positions[rows]
        height, width = self.image_size
        images = np.empty((len(positions), height, width, 3), dtype=np.uint8)
        labels = np.empty(len(positions), dtype=np.int64)
        readable = np.zeros(len(positions), dtype=bool)
        if self._failure is not None:  # the data is mostly unreadable: the rest of the epoch is not read
            return images, labels, False
        for row, position in enumerate(positions):
            try:
                images[row], labels[row] = self._read_sample(int(position))
                readable[row] = True
            except (ValueError, OSError) as err:  # image_io turns every decode failure into a ValueError
                self._report_bad(int(position), err)
        self._count_reads(len(positions), int(len(positions) - readable.sum()))
        good_rows = np.flatnonzero(readable)
        if len(good_rows) == 0:
            return images, labels, False
        bad_rows = np.flatnonzero(~readable)
        replacements = good_rows[np.arange(len(bad_rows)) % len(good_rows)]
        images[bad_rows], labels[bad_rows] = images[replacements], labels[replacements]
        if flip_seed is not None:
            rng = np.random.default_rng(list(flip_seed))
            flips = (rng.random(whole_batch) < 0.5)[rows]  # drawn first: the flips of the flip-only pipeline
            if augmentation is not None and augmentation.enabled:
                images = self._augment_rows(images, augmentation, rng, whole_batch, rows)
            for row in np.flatnonzero(flips):
                cv2.flip(images[row], 1, dst=images[row])  # 20x faster than numpy's reversed-stride copy
        return images, labels, True

    @staticmethod
    def _augment_rows(images: np.ndarray, augmentation: Augmentation, rng: np.random.Generator, whole_batch: int,
                      rows: slice) -> np.ndarray:
        """`images` (rows `rows` of a batch of `whole_batch`) augmented with the draws of the whole batch.

        data.augment draws per batch (one block of uniforms for all rows, then the cutout noise image by image), so a
        part is augmented inside a whole-batch buffer whose other rows are blank: exact, at the cost of augmenting
        the blank rows (the decoding, the larger cost, is still done only for the part)."""
        if len(images) == whole_batch:
            augmentation.apply(images, rng)
            return images
        buffer = np.zeros((whole_batch, *images.shape[1:]), dtype=images.dtype)
        buffer[rows] = images
        augmentation.apply(buffer, rng)
        return np.ascontiguousarray(buffer[rows])

    def dataset(self, batch_size: int, epoch: int, seed: int, skip_batches: int = 0,
                augment: bool = True, augmentation: Augmentation | None = None,
                shard: tuple[int, int] = (0, 1)) -> tf.data.Dataset:
        """One epoch of `(images float32 [batch_size, H, W, 3] normalised in channel_order, labels int64 [batch_size])`.

        Args:
            batch_size: images per batch; the last partial batch of the epoch is dropped.
            epoch: epoch number (>= 0); with `seed` it fixes the order and the flips.
            seed: run seed (>= 0).
            skip_batches: batches of this epoch already consumed (resume); they are not read.
            augment: random left-right flip (the seed's only augmentation); False also leaves out `augmentation`.
            augmentation: the other random operations (data.augment), fixed like the flips by (seed, epoch, batch).
            shard: (index, count): only rows [index * B / count, (index + 1) * B / count) of each batch of B =
                `batch_size` are read and yielded, flipped and augmented as in the whole batch: worker `index` of
                `count` reads its own part of the global batch, and the parts of all workers, concatenated in index
                order, are the unsharded batch. An unreadable image is replaced by another of the same part; a part
                that is wholly unreadable takes images of the other parts (every worker skips the batch only when none
                of it reads, as one process does).
        """
        num_batches = self.batches_per_epoch(batch_size) if batch_size > 0 else 0
        if batch_size < 1 or num_batches == 0:
            raise ValueError(f"batch_size={batch_size}: expected 1..{self.num_images} (the data set has "
                             f"{self.num_images} images)")
        index, count = shard
        if not (count >= 1 and 0 <= index < count and batch_size % count == 0):
            raise ValueError(f"shard={shard}: expected (index, count) with 0 <= index < count and count dividing "
                             f"batch_size={batch_size}")
        part = batch_size // count
        rows = slice(index * part, (index + 1) * part)
        if seed < 0 or epoch < 0 or not 0 <= skip_batches <= num_batches:
            raise ValueError(f"seed={seed}, epoch={epoch}, skip_batches={skip_batches}: expected seed >= 0, "
                             f"epoch >= 0 and 0 <= skip_batches <= {num_batches} (batches per epoch)")
        self._check_last_pass()
        order = self.epoch_order(seed, epoch)
        this_pass = {"batches": num_batches - skip_batches, "batches_left": num_batches - skip_batches, "usable": 0}
        self._last_pass = this_pass

        def load(batch_index: np.int64) -> tuple[np.ndarray, np.ndarray, bool]:
            start = int(batch_index) * batch_size
            flip_seed = (seed, epoch, int(batch_index)) if augment else None
            positions = order[start:start + batch_size]
            batch = self.load_batch(positions, flip_seed, augmentation, rows)
            if count > 1 and not batch[2]:
                # Every image of this part is unreadable. Skipping it here alone would leave this worker's stream a
                # batch short of the others' (and the workers waiting on each other): the whole batch decides, as on
                # every worker: skipped when none of it reads, else this part takes the other parts' images.
                images, labels, usable = self.load_batch(positions, flip_seed, augmentation)
                batch = images[rows], labels[rows], usable
            with self._skipped_lock:
                this_pass["batches_left"] -= 1
                this_pass["usable"] += int(batch[2])
            return batch

        def load_tensors(batch_index: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
            images, labels, usable = tf.numpy_function(load, [batch_index], (tf.uint8, tf.int64, tf.bool),
                                                       name="load_batch")
            images.set_shape((part, *self.image_size, 3))
            labels.set_shape((part,))
            usable.set_shape(())
            return images, labels, usable

        batches = tf.data.Dataset.range(skip_batches, num_batches)
        batches = batches.map(load_tensors, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        batches = batches.filter(lambda images, labels, usable: usable)
        batches = batches.map(lambda images, labels, usable: (normalize(images, self.channel_order), labels),
                              num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        return batches.prefetch(tf.data.AUTOTUNE).with_options(EPOCH_OPTIONS)


def open_train_data(source: str, image_size: Sequence[int] = (112, 112), channel_order: str = "BGR") -> TrainData:
    """Opens a training source (see `detect_format`); labels and class count come from its layout or metadata.

    Args:
        source: a folder of identity folders, a `train.rec` (with `train.idx` and `property` beside it, or the folder
            holding them), or TFRecord files (a file, a folder of `*.tfrecord*` shards or a glob).
        image_size: (height, width) of the batches; images of another size are resized.
        channel_order: "BGR" (the seed and its checkpoints) or "RGB".
    """
    image_size = (int(image_size[0]), int(image_size[1]))
    source_format, path = detect_format(source)
    class_names = None
    if source_format == "folder":
        images = FolderImages(path)
        class_names = images.class_names
        num_classes = len(class_names)
    elif source_format == "recordio":
        images = RecordIOImages(path)
        num_classes = images.num_classes_hint or count_classes(images)
    else:
        images = TFRecordImages(path)
        info = images.info or {}
        class_names = info.get("class_names")
        num_classes = info.get("num_classes") or count_classes(images)
    data = TrainData(images, source_format, num_classes, class_names, image_size, channel_order, source=str(source))
    log.info("training data %s (%s): %d images, %d classes", source, source_format, data.num_images, num_classes)
    return data
