"""TFRecords in the seed's schema: one `tf.train.Example` per image with `image_raw` (the encoded image bytes,
untouched) and `label` (int64).

The writer shards the images (`train-00000-of-00008.tfrecord` ...) and writes `dataset_info.json` beside them
(num_classes, num_images, class names when known). The reader indexes the records of every file by their framing
(uint64 length, its masked CRC-32C, data, data CRC) so that training can shuffle over the whole index and read any
record directly; the length CRC is checked while indexing, the data CRC is not (a damaged record then fails to parse
or decode and is skipped by the training pipeline).

Missing data is never silent: a shard without records (left by an interrupted writer) and a record count that differs
from the `num_images` of `dataset_info.json` are logged as warnings naming the shard or the file.
"""

from __future__ import annotations

import glob
import json
import logging
import math
import os
import struct
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import tensorflow as tf
from google.protobuf.message import DecodeError
from tqdm import tqdm

log = logging.getLogger(__name__)

IMAGE_FEATURE = "image_raw"
LABEL_FEATURE = "label"
INFO_FILE = "dataset_info.json"
_LENGTH_HEADER = struct.Struct("<QI")
_CRC_SIZE = 4


def _crc32c_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC32C_TABLE = _crc32c_table()


def masked_crc32c(data: bytes) -> int:
    """TFRecord's masked CRC-32C (Castagnoli). Pure Python: used only on the 8-byte length fields."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC32C_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    crc ^= 0xFFFFFFFF
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def make_example(image_bytes: bytes, label: int) -> bytes:
    """One serialized `tf.train.Example` in the seed's schema."""
    feature = {
        IMAGE_FEATURE: tf.train.Feature(bytes_list=tf.train.BytesList(value=[image_bytes])),
        LABEL_FEATURE: tf.train.Feature(int64_list=tf.train.Int64List(value=[int(label)])),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def parse_example(serialized: bytes, source: str = "<record>") -> tuple[bytes, int]:
    """(image bytes, label) of a serialized Example; ValueError naming `source` when it is not in the schema."""
    try:
        features = tf.train.Example.FromString(serialized).features.feature
        return features[IMAGE_FEATURE].bytes_list.value[0], int(features[LABEL_FEATURE].int64_list.value[0])
    except (DecodeError, IndexError) as err:  # a missing feature reads as an empty value list
        raise ValueError(f"{source}: not a tf.train.Example with '{IMAGE_FEATURE}' bytes and an int64 "
                         f"'{LABEL_FEATURE}' ({type(err).__name__}: {err})") from None


def write_tfrecords(samples: Iterable[tuple[bytes, int]], output_dir: str | Path, num_images: int, num_classes: int,
                    class_names: Sequence[str] | None = None, images_per_shard: int = 100_000,
                    prefix: str = "train") -> list[Path]:
    """Writes (encoded image, label) samples into ceil(num_images / images_per_shard) shards + `dataset_info.json`.

    Returns the shard paths. `num_images` must be the number of samples the iterable yields.
    """
    if images_per_shard < 1 or num_images < 1:
        raise ValueError(f"write_tfrecords: images_per_shard={images_per_shard} and num_images={num_images} must be "
                         f"positive")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    num_shards = math.ceil(num_images / images_per_shard)
    shards = [output_dir / f"{prefix}-{k:05d}-of-{num_shards:05d}.tfrecord" for k in range(num_shards)]
    written = 0
    writer = None
    for image, label in tqdm(samples, total=num_images, desc="tfrecords", unit="img"):
        if not 0 <= label < num_classes:
            raise ValueError(f"write_tfrecords: label {label} of image {written} outside [0, {num_classes})")
        if written % images_per_shard == 0:
            if writer is not None:
                writer.close()
            if written // images_per_shard >= num_shards:
                raise ValueError(f"write_tfrecords: more samples than num_images={num_images}")
            writer = tf.io.TFRecordWriter(str(shards[written // images_per_shard]))
        writer.write(make_example(image, label))
        written += 1
    if writer is not None:
        writer.close()
    if written != num_images:
        raise ValueError(f"write_tfrecords: got {written} samples, expected num_images={num_images}")
    info = {"format": "tfrecord", "features": {IMAGE_FEATURE: "encoded image bytes", LABEL_FEATURE: "int64"},
            "num_images": num_images, "num_classes": num_classes,
            "class_names": list(class_names) if class_names is not None else None,
            "shards": [shard.name for shard in shards]}
    (output_dir / INFO_FILE).write_text(json.dumps(info, indent=1) + "\n")
    return shards


def resolve_tfrecord_files(source: str | Path) -> list[Path]:
    """The TFRecord files of a file, a folder (every `*.tfrecord*` file in it) or a glob pattern, sorted."""
    text = str(source)
    if any(char in text for char in "*?["):
        files = [Path(name) for name in sorted(glob.glob(text)) if os.path.isfile(name)]
    elif Path(text).is_dir():
        files = sorted(path for path in Path(text).iterdir() if ".tfrecord" in path.name and path.is_file())
    elif Path(text).is_file():
        files = [Path(text)]
    else:
        raise FileNotFoundError(f"TFRecord source not found: {text}")
    if not files:
        raise FileNotFoundError(f"no TFRecord files in {text} (expected names containing '.tfrecord')")
    return files


def read_info(files: Sequence[Path]) -> dict | None:
    """The `dataset_info.json` written beside the shards, or None."""
    path = files[0].parent / INFO_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None


def index_records(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(data offsets, data lengths) of every record of one TFRecord file; ValueError naming the offset when the
    framing is corrupt or the file is truncated."""
    offsets, lengths = [], []
    size = path.stat().st_size
    with open(path, "rb") as stream:
        fd = stream.fileno()
        offset = 0
        while offset < size:
            header = os.pread(fd, _LENGTH_HEADER.size, offset)
            if len(header) != _LENGTH_HEADER.size:
                raise ValueError(f"{path}: truncated TFRecord file: incomplete record header at offset {offset}")
            length, length_crc = _LENGTH_HEADER.unpack(header)
            if masked_crc32c(header[:8]) != length_crc:
                raise ValueError(f"{path}: corrupt TFRecord file: bad length checksum at offset {offset}")
            end = offset + _LENGTH_HEADER.size + length + _CRC_SIZE
            if end > size:
                raise ValueError(f"{path}: truncated TFRecord file: the record at offset {offset} needs {length} "
                                 f"bytes, the file ends first")
            offsets.append(offset + _LENGTH_HEADER.size)
            lengths.append(length)
            offset = end
    return np.asarray(offsets, dtype=np.int64), np.asarray(lengths, dtype=np.int64)


class TFRecordImages:
    """The records of TFRecord files by position: `len`, `read(i)`, `describe(i)`, plus `info` (the sidecar or None).

    Reads with `os.pread`, so it is safe from several tf.data threads.
    """

    def __init__(self, source: str | Path) -> None:
        self.files = resolve_tfrecord_files(source)
        self.info = read_info(self.files)
        file_ids, offsets, lengths = [], [], []
        for file_id, path in enumerate(tqdm(self.files, desc="indexing tfrecords", unit="file", leave=False)):
            file_offsets, file_lengths = index_records(path)
            if len(file_offsets) == 0:
                log.warning("%s: an empty TFRecord shard (0 records; an interrupted writer?): its images are missing",
                            path)
            file_ids.append(np.full(len(file_offsets), file_id, dtype=np.int32))
            offsets.append(file_offsets)
            lengths.append(file_lengths)
        self.file_ids = np.concatenate(file_ids)
        self.offsets = np.concatenate(offsets)
        self.lengths = np.concatenate(lengths)
        if len(self.offsets) == 0:
            raise ValueError(f"{source}: the TFRecord files hold no records")
        declared = (self.info or {}).get("num_images")
        if isinstance(declared, int) and declared != len(self.offsets):
            log.warning("%s declares num_images=%d, the %d TFRecord files of %s hold %d records: shards missing, "
                        "empty or added?", self.files[0].parent / INFO_FILE, declared, len(self.files), source,
                        len(self.offsets))
        self._fds = [os.open(path, os.O_RDONLY) for path in self.files]

    def __del__(self) -> None:
        for fd in getattr(self, "_fds", []):
            os.close(fd)

    def __len__(self) -> int:
        return len(self.offsets)

    def describe(self, position: int) -> str:
        record_offset = self.offsets[position] - _LENGTH_HEADER.size
        return f"{self.files[self.file_ids[position]]} (record at offset {record_offset})"

    def read(self, position: int) -> tuple[bytes, int]:
        """(encoded image, label) of the `position`-th record."""
        length = int(self.lengths[position])
        data = os.pread(self._fds[self.file_ids[position]], length, int(self.offsets[position]))
        if len(data) != length:
            raise ValueError(f"{self.describe(position)}: the file is shorter than when it was indexed")
        return parse_example(data, self.describe(position))
