"""data.recordio: the pure-Python MXNet RecordIO reader against records written by a minimal writer in this file."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from data.recordio import RecordIOImages, read_recordio, write_recordio

MAGIC = 0xCED7230A
MAGIC_BYTES = struct.pack("<I", MAGIC)


# --- an independent minimal writer/reader of the dmlc RecordIO framing and MXNet's IRHeader -----------------------

def header_payload(label: float | list[float], body: bytes) -> bytes:
    """IRHeader ('IfQQ': flag, label, id, id2) + label array when the label is a list + body."""
    if isinstance(label, list):
        return struct.pack("<IfQQ", len(label), 0.0, 0, 0) + struct.pack(f"<{len(label)}f", *label) + body
    return struct.pack("<IfQQ", 0, label, 0, 0) + body


def frame(payload: bytes) -> bytes:
    """One logical record, split where the magic sits at a 4-aligned position (the magic itself is dropped)."""
    cuts = [i for i in range(0, len(payload) - 3, 4) if payload[i:i + 4] == MAGIC_BYTES]
    pieces, start = [], 0
    for cut in cuts:
        pieces.append(payload[start:cut])
        start = cut + 4
    pieces.append(payload[start:])
    out = b""
    for number, piece in enumerate(pieces):
        if len(pieces) == 1:
            flag = 0
        else:
            flag = 1 if number == 0 else (3 if number == len(pieces) - 1 else 2)
        out += struct.pack("<II", MAGIC, (flag << 29) | len(piece)) + piece
    return out + b"\0" * (-len(pieces[-1]) % 4)


def write_rec(rec_path: Path, payloads: list[bytes], with_idx: bool = True) -> list[int]:
    """Writes payloads as records 0..n-1 (and the .idx); returns their offsets."""
    offsets, data = [], b""
    for payload in payloads:
        offsets.append(len(data))
        data += frame(payload)
    rec_path.write_bytes(data)
    if with_idx:
        rec_path.with_suffix(".idx").write_text("".join(f"{k}\t{o}\n" for k, o in enumerate(offsets)))
    return offsets


def read_rec_sequentially(rec_path: Path) -> list[bytes]:
    """Every logical record's payload, joining continuation parts with the magic."""
    data, offset, records, current = rec_path.read_bytes(), 0, [], None
    while offset < len(data):
        magic, lrecord = struct.unpack_from("<II", data, offset)
        assert magic == MAGIC
        flag, length = lrecord >> 29, lrecord & ((1 << 29) - 1)
        piece = data[offset + 8:offset + 8 + length]
        current = piece if flag in (0, 1) else current + MAGIC_BYTES + piece
        if flag in (0, 3):
            records.append(current)
        offset += 8 + length + (-length % 4)
    return records


# --- fixtures ------------------------------------------------------------------------------------------------------

def fake_image(seed: int, size: int = 37) -> bytes:
    """Random bytes standing for an encoded image (the reader never decodes them)."""
    return np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()


# The magic twice at aligned positions of the payload (24-byte header + body offsets 4 and 12) -> 3 parts.
MULTIPART_BODY = b"JPEG" + MAGIC_BYTES + b"abcd" + MAGIC_BYTES + b"tail!"


@pytest.fixture
def insightface_rec(tmp_path: Path) -> tuple[Path, list[tuple[int, bytes]], list[int]]:
    """InsightFace layout: record 0 = [A, B], images 1..A-1 (one multi-part, one with a label array), identities."""
    images = [(0, fake_image(1)), (0, MULTIPART_BODY), (1, fake_image(2, 40)), (2, fake_image(3, 3))]
    image_payloads = [header_payload(float(label), body) for label, body in images]
    image_payloads[2] = header_payload([1.0, 55.0], images[2][1])  # label array: the identity is its first entry
    identities = [header_payload([1.0, 3.0], b""), header_payload([3.0, 4.0], b""), header_payload([4.0, 5.0], b"")]
    meta = header_payload([5.0, 8.0], b"")
    rec = tmp_path / "train.rec"
    offsets = write_rec(rec, [meta, *image_payloads, *identities])
    return rec, images, offsets


def test_multipart_fixture_really_splits(insightface_rec):
    rec, _, offsets = insightface_rec
    flags = []
    data = rec.read_bytes()
    offset = offsets[2]
    while True:
        flag = struct.unpack_from("<II", data, offset)[1] >> 29
        flags.append(flag)
        if flag in (0, 3):
            break
        offset += 8 + (struct.unpack_from("<II", data, offset)[1] & ((1 << 29) - 1))
    assert flags == [1, 2, 3]


def test_reads_image_records_of_insightface_layout(insightface_rec):
    rec, images, _ = insightface_rec
    assert list(read_recordio(rec)) == images


def test_reads_without_idx_by_scanning(insightface_rec):
    rec, images, _ = insightface_rec
    rec.with_suffix(".idx").unlink()
    assert list(read_recordio(rec)) == images


def test_without_meta_header_every_record_is_an_image(tmp_path):
    images = [(3, fake_image(4)), (1, MULTIPART_BODY), (7, fake_image(5))]
    rec = tmp_path / "plain.rec"
    write_rec(rec, [header_payload(float(label), body) for label, body in images])
    assert list(read_recordio(rec)) == images


def test_class_count_from_property_else_identity_header(insightface_rec):
    rec, _, _ = insightface_rec
    assert RecordIOImages(rec).num_classes_hint == 3  # identity records 5..7
    rec.with_name("property").write_text("9,112,112\n")
    assert RecordIOImages(rec).num_classes_hint == 9


def test_truncated_file_names_the_offset(insightface_rec):
    rec, _, offsets = insightface_rec
    data = rec.read_bytes()
    rec.write_bytes(data[:offsets[3] + 20])  # cut inside the payload of record 3
    with pytest.raises(ValueError, match=rf"truncated.*offset {offsets[3]}\b"):
        list(read_recordio(rec))


def test_corrupt_magic_names_the_offset(insightface_rec):
    rec, _, offsets = insightface_rec
    data = bytearray(rec.read_bytes())
    data[offsets[4]:offsets[4] + 4] = b"\0\0\0\0"
    rec.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=rf"magic.*offset {offsets[4]}\b"):
        list(read_recordio(rec))


def test_idx_pointing_into_a_multipart_record_is_an_error(insightface_rec):
    rec, _, offsets = insightface_rec
    data = rec.read_bytes()
    second_part = offsets[2] + 8 + (struct.unpack_from("<II", data, offsets[2])[1] & ((1 << 29) - 1))
    lines = rec.with_suffix(".idx").read_text().splitlines()
    lines[2] = f"2\t{second_part}"
    rec.with_suffix(".idx").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=rf"offset {second_part}\b"):
        list(read_recordio(rec))


def test_bad_idx_line_is_named(insightface_rec):
    rec, _, _ = insightface_rec
    rec.with_suffix(".idx").write_text("0\t0\nnot a line\n")
    with pytest.raises(ValueError, match=r"train\.idx: .*row 2"):
        list(read_recordio(rec))


def test_writer_produces_insightface_layout(tmp_path):
    # The last body ends with the magic at an aligned position: its record ends with an empty last part.
    samples = [(0, fake_image(6)), (0, MULTIPART_BODY), (1, fake_image(7)), (2, MULTIPART_BODY + b"x"),
               (2, b"abcd" + MAGIC_BYTES)]
    rec = tmp_path / "out" / "train.rec"
    assert write_recordio(rec, samples, num_classes=3) == 5
    records = read_rec_sequentially(rec)
    flag, _, _, _ = struct.unpack_from("<IfQQ", records[0])
    assert flag == 2 and struct.unpack_from("<2f", records[0], 24) == (6.0, 9.0)
    for (label, body), record in zip(samples, records[1:6]):
        assert struct.unpack_from("<IfQQ", record)[:2] == (0, float(label)) and record[24:] == body
    ranges = [struct.unpack_from("<2f", record, 24) for record in records[6:]]
    assert ranges == [(1.0, 3.0), (3.0, 4.0), (4.0, 6.0)]
    index = [line.split("\t") for line in rec.with_suffix(".idx").read_text().splitlines()]
    assert [int(key) for key, _ in index] == list(range(9))
    assert rec.with_name("property").read_text().strip() == "3,112,112"
    assert list(read_recordio(rec)) == samples


def test_writer_rejects_interleaved_labels(tmp_path):
    with pytest.raises(ValueError, match="not contiguous"):
        write_recordio(tmp_path / "t.rec", [(0, b"a"), (1, b"b"), (0, b"c")], num_classes=2)


def test_cross_check_with_mxnet(tmp_path):
    mx = pytest.importorskip("mxnet")
    rec, idx = tmp_path / "mx.rec", tmp_path / "mx.idx"
    writer = mx.recordio.MXIndexedRecordIO(str(idx), str(rec), "w")
    samples = [(4, fake_image(8)), (2, MULTIPART_BODY)]
    for key, (label, body) in enumerate(samples):
        writer.write_idx(key, mx.recordio.pack(mx.recordio.IRHeader(0, float(label), key, 0), body))
    writer.close()
    assert list(read_recordio(rec)) == samples
    ours = tmp_path / "ours" / "train.rec"
    write_recordio(ours, [(0, b"abc" + MAGIC_BYTES), (1, fake_image(9))], num_classes=2)
    reader = mx.recordio.MXIndexedRecordIO(str(ours.with_suffix(".idx")), str(ours), "r")
    header, body = mx.recordio.unpack(reader.read_idx(1))
    assert header.label == 0.0 and body == b"abc" + MAGIC_BYTES


def test_index_lacking_announced_images_is_an_error(insightface_rec):
    rec, _, _ = insightface_rec
    lines = rec.with_suffix(".idx").read_text().splitlines()
    rec.with_suffix(".idx").write_text("\n".join(line for line in lines if not line.startswith("3\t")) + "\n")
    with pytest.raises(ValueError, match="lacks 1 of them .first: key 3"):
        list(read_recordio(rec))
