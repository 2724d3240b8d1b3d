"""MXNet RecordIO (`train.rec` + `train.idx` + `property`, InsightFace's training format) in pure Python.

mxnet is not needed (it does not install beside numpy 2). The format, as dmlc-core writes it:

* a record is a little-endian uint32 magic `0xced7230a`, a uint32 `lrecord` (upper 3 bits: continuation flag,
  lower 29 bits: length) and the payload zero-padded to 4 bytes. A payload that contains the magic at a 4-byte
  aligned position is split there into parts flagged 1 (first), 2 (middle), 3 (last); the magic itself is the
  separator and is put back when the parts are joined.
* `train.idx` has one `key<TAB>offset` line per logical record.
* a payload is an IRHeader (`struct "IfQQ"`: flag, label, id, id2) followed, when flag > 0, by `flag` float32
  labels (the header's own label is then unused), then the encoded image.
* InsightFace's layout: record 0 is a meta header with label [A, B]; records 1..A-1 are images (label = identity);
  records A..B-1 describe identities (label = [first image, end image)). Without that header every record is an image.
* `property` (beside the .rec) reads `num_classes,height,width`.

Labels are float32 in the file: a label that is not a finite, whole, non-negative number (inf, NaN, 3.5, -1) raises
ValueError naming the record, rather than being truncated.
"""

from __future__ import annotations

import logging
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

log = logging.getLogger(__name__)

MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", MAGIC)
_RECORD_HEADER = struct.Struct("<II")
_IR_HEADER = struct.Struct("<IfQQ")
_LENGTH_MASK = (1 << 29) - 1
_WHOLE, _FIRST, _MIDDLE, _LAST = 0, 1, 2, 3


@dataclass(frozen=True)
class IRHeader:
    """The image-record header: `labels` holds the scalar label, or the label array when flag > 0."""

    flag: int
    labels: tuple[float, ...]
    id: int
    id2: int


def _padded(length: int) -> int:
    return (length + 3) & ~3


class RecordIOFile:
    """Random access to the logical records of one `.rec` file (thread-safe: reads with `os.pread`)."""

    def __init__(self, rec_path: str | Path) -> None:
        self.path = Path(rec_path)
        if not self.path.is_file():
            raise FileNotFoundError(f"RecordIO file not found: {self.path}")
        self._fd = os.open(self.path, os.O_RDONLY)
        self.size = os.fstat(self._fd).st_size

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> "RecordIOFile":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()

    def _read_exactly(self, offset: int, length: int, record_offset: int) -> bytes:
        data = os.pread(self._fd, length, offset)
        if len(data) != length:
            raise ValueError(f"{self.path}: truncated RecordIO file: the record at offset {record_offset} needs "
                             f"{length} bytes from offset {offset}, the file ends after {len(data)}")
        return data

    def _read_part(self, offset: int) -> tuple[int, int, int]:
        """Returns (continuation flag, payload length, offset of the payload) of the physical record at `offset`."""
        magic, lrecord = _RECORD_HEADER.unpack(self._read_exactly(offset, _RECORD_HEADER.size, offset))
        if magic != MAGIC:
            raise ValueError(f"{self.path}: corrupt RecordIO file: expected magic 0x{MAGIC:08x} at offset {offset}, "
                             f"found 0x{magic:08x}")
        return lrecord >> 29, lrecord & _LENGTH_MASK, offset + _RECORD_HEADER.size

    def read(self, offset: int) -> tuple[bytes, int]:
        """Returns (payload of the logical record starting at `offset`, offset of the next record)."""
        flag, length, start = self._read_part(offset)
        if flag not in (_WHOLE, _FIRST):
            raise ValueError(f"{self.path}: corrupt RecordIO file: the record at offset {offset} continues another "
                             f"one (flag {flag}); the .idx does not match this .rec")
        parts = [self._read_exactly(start, length, offset)]
        next_offset = start + _padded(length)
        while flag in (_FIRST, _MIDDLE):
            part_offset = next_offset
            flag, length, start = self._read_part(part_offset)
            if flag not in (_MIDDLE, _LAST):
                raise ValueError(f"{self.path}: corrupt RecordIO file: the multi-part record at offset {offset} "
                                 f"is followed by flag {flag} at offset {part_offset} instead of a continuation")
            parts.append(self._read_exactly(start, length, part_offset))
            next_offset = start + _padded(length)
        return _MAGIC_BYTES.join(parts), next_offset

    def scan_offsets(self) -> list[int]:
        """Offsets of every logical record, in file order (reads only the 8-byte headers)."""
        offsets = []
        offset = 0
        while offset < self.size:
            flag, length, start = self._read_part(offset)
            if flag in (_WHOLE, _FIRST):
                offsets.append(offset)
            if start + length > self.size:
                raise ValueError(f"{self.path}: truncated RecordIO file: the record at offset {offset} needs "
                                 f"{length} bytes, the file ends after {self.size - start}")
            offset = start + _padded(length)
        return offsets


def unpack(payload: bytes, source: str = "<record>") -> tuple[IRHeader, bytes]:
    """Splits a record payload into its IRHeader and the bytes after it (the encoded image)."""
    if len(payload) < _IR_HEADER.size:
        raise ValueError(f"{source}: record of {len(payload)} bytes is shorter than the {_IR_HEADER.size}-byte "
                         f"IRHeader")
    flag, label, id1, id2 = _IR_HEADER.unpack_from(payload)
    body = payload[_IR_HEADER.size:]
    if flag == 0:
        return IRHeader(flag, (label,), id1, id2), body
    if len(body) < 4 * flag:
        raise ValueError(f"{source}: IRHeader announces {flag} labels, the record holds only {len(body)} more bytes")
    labels = tuple(float(x) for x in np.frombuffer(body, dtype="<f4", count=flag))
    return IRHeader(flag, labels, id1, id2), body[4 * flag:]


def pack(labels: float | Sequence[float], image_bytes: bytes, id1: int = 0) -> bytes:
    """Builds a record payload: IRHeader (label array when `labels` is a sequence) + the encoded image."""
    if isinstance(labels, (int, float)):
        return _IR_HEADER.pack(0, float(labels), id1, 0) + image_bytes
    array = np.asarray(labels, dtype="<f4")
    return _IR_HEADER.pack(array.size, 0.0, id1, 0) + array.tobytes() + image_bytes


def read_index(idx_path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(keys, offsets) of the lines `key<TAB>offset` of a `.idx` file, in file order; ValueError naming the row of
    a bad line."""
    if Path(idx_path).stat().st_size == 0:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    try:
        table = np.loadtxt(idx_path, dtype=np.int64, delimiter="\t", ndmin=2)  # 7x faster than a Python loop
    except ValueError as err:
        raise ValueError(f"{idx_path}: expected lines 'key<TAB>offset': {err}") from None
    if table.shape[1] != 2:
        raise ValueError(f"{idx_path}: expected 2 columns 'key<TAB>offset', found {table.shape[1]}")
    negative = np.flatnonzero(table < 0)
    if len(negative):
        row, column = divmod(int(negative[0]), 2)
        raise ValueError(f"{idx_path}: line {row + 1}: negative {('key', 'offset')[column]} {table[row, column]}; "
                         f"expected lines 'key<TAB>offset' of non-negative integers")
    return table[:, 0], table[:, 1]


def read_property(rec_path: str | Path) -> tuple[int, int, int] | None:
    """(num_classes, height, width) from the `property` file beside a .rec, or None when there is none."""
    path = Path(rec_path).with_name("property")
    if not path.is_file():
        return None
    text = path.read_text(errors="replace").strip()
    try:
        num_classes, height, width = (int(field) for field in text.split(","))
    except ValueError:
        num_classes = height = width = 0
    if min(num_classes, height, width) <= 0:
        raise ValueError(f"{path}: expected 'num_classes,height,width' of positive integers, got {text[:80]!r}")
    return num_classes, height, width


def whole_label(value: float, source: str, what: str = "label") -> int:
    """`value` as an int when it is a finite, whole, non-negative number; ValueError naming `source` otherwise."""
    if not (np.isfinite(value) and value >= 0 and float(value).is_integer()):
        raise ValueError(f"{source}: {what} {value!r}; expected a whole number >= 0 (an identity number)")
    return int(value)


def label_of(header: IRHeader, source: str = "<record>") -> int:
    """The identity of an image record: its scalar label, or the first entry of a label array; ValueError naming
    `source` when it is not a whole number >= 0."""
    return whole_label(header.labels[0], source)


class RecordIOImages:
    """The image records of a `.rec` (with its `.idx` when present), by position: `len`, `read(i)`, `describe(i)`.

    Also exposes `num_classes_hint`: from `property`, else from the identity range [A, B) of record 0, else None.
    """

    def __init__(self, rec_path: str | Path, idx_path: str | Path | None = None) -> None:
        self.file = RecordIOFile(rec_path)
        idx_path = Path(idx_path) if idx_path else self.file.path.with_suffix(".idx")
        if idx_path.is_file():
            keys, offsets = read_index(idx_path)
        else:
            log.warning("%s: no index %s beside it; scanning the record headers (slow for big files)",
                        self.file.path, idx_path)
            offsets = np.asarray(self.file.scan_offsets(), dtype=np.int64)
            keys = np.arange(len(offsets), dtype=np.int64)
        self.keys, self.offsets, identity_range = self._image_records(keys, offsets)
        prop = read_property(self.file.path)
        if prop is not None:
            self.num_classes_hint: int | None = prop[0]
        elif identity_range is not None:
            self.num_classes_hint = identity_range[1] - identity_range[0]
        else:
            self.num_classes_hint = None

    def _image_records(self, keys: np.ndarray,
                       offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray, tuple[int, int] | None]:
        """(keys, offsets) of the image records and the identity-record range [A, B) when record 0 is a meta header
        (InsightFace's rule: record 0 with a label array)."""
        if len(keys) == 0:
            raise ValueError(f"{self.file.path}: the RecordIO file holds no records")
        first = int(np.argmin(keys))
        header, _ = unpack(self.file.read(int(offsets[first]))[0], self.describe_offset(int(offsets[first])))
        if keys[first] != 0 or header.flag == 0:
            return keys, offsets, None
        if len(header.labels) < 2:
            raise ValueError(f"{self.file.path}: record 0 is a meta header with {len(header.labels)} labels; "
                             f"expected [first identity record, end]")
        where = self.describe_offset(int(offsets[first]))
        end_image = whole_label(header.labels[0], where, "meta header: end of the image records")
        end_identity = whole_label(header.labels[1], where, "meta header: end of the identity records")
        if not 1 <= end_image <= end_identity:
            raise ValueError(f"{where}: meta header [{end_image}, {end_identity}): expected 1 <= end of the image "
                             f"records <= end of the identity records")
        wanted = np.arange(1, end_image, dtype=np.int64)
        order = np.argsort(keys, kind="stable")
        where = np.minimum(np.searchsorted(keys[order], wanted), len(keys) - 1)
        missing = wanted[keys[order][where] != wanted]
        if len(missing):
            raise ValueError(f"{self.file.path}: record 0 announces images 1..{end_image - 1}, the index lacks "
                             f"{len(missing)} of them (first: key {missing[0]})")
        return wanted, offsets[order][where], (end_image, end_identity)

    def __len__(self) -> int:
        return len(self.offsets)

    def describe_offset(self, offset: int) -> str:
        return f"{self.file.path} (record at offset {offset})"

    def describe(self, position: int) -> str:
        return f"{self.file.path} (record {self.keys[position]} at offset {self.offsets[position]})"

    def read(self, position: int) -> tuple[bytes, int]:
        """(encoded image, label) of the `position`-th image record."""
        payload, _ = self.file.read(int(self.offsets[position]))
        header, image = unpack(payload, self.describe(position))
        return image, label_of(header, self.describe(position))


def read_recordio(rec_path: str | Path) -> Iterator[tuple[int, bytes]]:
    """Yields (label, encoded image bytes) for every image record of a `.rec`, using the `.idx` beside it if present.

    Identity records and the meta header (InsightFace layout) are not yielded. A truncated or corrupt file raises a
    ValueError naming the offset.
    """
    images = RecordIOImages(rec_path)
    try:
        for position in range(len(images)):
            image, label = images.read(position)
            yield label, image
    finally:
        images.file.close()


def _write_record(stream, payload: bytes) -> None:
    """Writes one logical record, split into continuation parts where the magic occurs at an aligned position."""
    starts = [0]
    ends = []
    for position in range(0, len(payload) - 3, 4):
        if payload[position:position + 4] == _MAGIC_BYTES:
            ends.append(position)
            starts.append(position + 4)
    ends.append(len(payload))
    last = len(starts) - 1
    for number, (start, end) in enumerate(zip(starts, ends)):
        if last == 0:
            flag = _WHOLE
        else:
            flag = _FIRST if number == 0 else (_LAST if number == last else _MIDDLE)
        stream.write(_RECORD_HEADER.pack(MAGIC, (flag << 29) | (end - start)))
        stream.write(payload[start:end])
    stream.write(b"\0" * (_padded(len(payload) - starts[-1]) - (len(payload) - starts[-1])))


def write_recordio(rec_path: str | Path, samples: Iterable[tuple[int, bytes]], num_classes: int,
                   image_size: tuple[int, int] = (112, 112)) -> int:
    """Writes (label, encoded image) samples as an InsightFace `.rec` + `.idx` + `property`; returns the image count.

    Samples must come grouped by label (all images of identity 0, then 1, ...), as InsightFace's identity records
    describe contiguous ranges. Labels must lie in [0, num_classes).
    """
    rec_path = Path(rec_path)
    rec_path.parent.mkdir(parents=True, exist_ok=True)
    ranges: dict[int, list[int]] = {}
    offsets: list[tuple[int, int]] = []
    with open(rec_path, "wb") as stream:
        placeholder = pack([0.0, 0.0], b"")
        offsets.append((0, 0))
        _write_record(stream, placeholder)
        key = 1
        for label, image in samples:
            if not 0 <= label < num_classes:
                raise ValueError(f"write_recordio: label {label} outside [0, {num_classes})")
            if label in ranges and ranges[label][1] != key:
                raise ValueError(f"write_recordio: samples of label {label} are not contiguous (key {key})")
            ranges.setdefault(label, [key, key])[1] = key + 1
            offsets.append((key, stream.tell()))
            _write_record(stream, pack(float(label), image))
            key += 1
        end_image = key
        for label in sorted(ranges):
            offsets.append((key, stream.tell()))
            _write_record(stream, pack([float(value) for value in ranges[label]], b""))
            key += 1
        stream.seek(0)
        # The meta header has the same size as the placeholder, so rewriting it in place keeps every offset valid.
        _write_record(stream, pack([float(end_image), float(key)], b""))
    rec_path.with_suffix(".idx").write_text("".join(f"{k}\t{offset}\n" for k, offset in offsets))
    rec_path.with_name("property").write_text(f"{num_classes},{image_size[0]},{image_size[1]}\n")
    return end_image - 1
