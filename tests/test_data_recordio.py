"""data.recordio: the pure-Python MXNet RecordIO reader against records written by a minimal writer in this file,
and against mxnet 1.9.1 itself (writing and reading, in a side venv)."""

from __future__ import annotations

import struct
from pathlib import Path

import cv2
import numpy as np
import pytest

from data.image_io import decode_rgb
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


# --- against mxnet 1.9.1 itself (a side venv: tests/side_venv.py, tests/mxnet_writer.py) ---------------------------

def smooth_image(seed: int, height: int, width: int, channels: int) -> np.ndarray:
    """Blurred noise, so that JPEG keeps some structure to decode."""
    noise = np.random.default_rng(seed).integers(0, 256, (height // 4 + 1, width // 4 + 1, channels), dtype=np.uint8)
    image = cv2.resize(noise, (width, height), interpolation=cv2.INTER_LINEAR)
    return image if channels > 1 else image[:, :, None]


def jpeg_with_magic_comment(image: np.ndarray) -> bytes:
    """A JPEG whose COM segment (ignored by decoders) holds the RecordIO magic at image offsets 8 and 16: 4-aligned
    in any payload (the IRHeader and label arrays are whole words), so a writer must split the record in 3 parts."""
    jpeg = cv2.imencode(".jpg", image)[1].tobytes()
    comment = b"xx" + MAGIC_BYTES + b"abcd" + MAGIC_BYTES + b"end."
    return jpeg[:2] + b"\xff\xfe" + struct.pack(">H", len(comment) + 2) + comment + jpeg[2:]


def mxnet_samples() -> list[tuple[float | list[float], bytes]]:
    """(label as mxnet gets it, encoded image), grouped by identity 0, 0, 1, 2, 2: colour and grey JPEG/PNG, one
    image whose record mxnet splits, one label array (flag 2, InsightFace's pack_label) and odd payload lengths."""
    return [(0.0, cv2.imencode(".jpg", smooth_image(1, 24, 20, 3))[1].tobytes()),
            ([0.0, 55.0], jpeg_with_magic_comment(smooth_image(2, 16, 24, 3))),
            (1.0, cv2.imencode(".png", smooth_image(3, 13, 11, 3))[1].tobytes()),
            (2.0, cv2.imencode(".png", smooth_image(4, 9, 15, 1))[1].tobytes()),
            ([2.0, 0.5, 7.0], cv2.imencode(".jpg", smooth_image(5, 17, 17, 1))[1].tobytes())]


def _padded_length(length: int) -> int:
    return length + (-length % 4)


def part_flags(rec: Path, offset: int) -> list[int]:
    """The continuation flags of the record starting at `offset`, read from the framing directly."""
    data, flags = rec.read_bytes(), []
    while not flags or flags[-1] not in (0, 3):
        _, lrecord = struct.unpack_from("<II", data, offset)
        flags.append(lrecord >> 29)
        offset += 8 + _padded_length(lrecord & ((1 << 29) - 1))
    return flags


@pytest.fixture(scope="module")
def mxnet_rec(tmp_path_factory, mxnet_files) -> dict:
    """mx.rec written by mxnet from mxnet_samples(), ours.rec written by write_recordio, and what mxnet read/decoded."""
    folder = tmp_path_factory.mktemp("mxnet_rec")
    samples = mxnet_samples()
    for number, (_, body) in enumerate(samples):
        (folder / f"image{number}").write_bytes(body)
    ours = folder / "ours" / "train.rec"
    ours_samples = [(0, MULTIPART_BODY), (0, samples[1][1]), (1, b"abc" + MAGIC_BYTES), (2, fake_image(9, 41))]
    write_recordio(ours, ours_samples, num_classes=3)
    spec = {"images": [{"file": str(folder / f"image{number}"), "label": label}
                       for number, (label, _) in enumerate(samples)],
            "identities": [[1, 3], [3, 4], [4, 6]], "ours": str(ours)}
    result = mxnet_files("rec", spec, folder)
    return {"folder": folder, "samples": samples, "ours": ours, "ours_samples": ours_samples, **result}


def test_reads_what_mxnet_wrote(mxnet_rec):
    rec = mxnet_rec["folder"] / "mx.rec"
    expected = [(int(label[0] if isinstance(label, list) else label), body) for label, body in mxnet_rec["samples"]]
    assert list(read_recordio(rec)) == expected
    assert RecordIOImages(rec).num_classes_hint == 3
    offsets = {int(key): int(offset) for key, offset in
               (line.split("\t") for line in rec.with_suffix(".idx").read_text().splitlines())}
    assert part_flags(rec, offsets[2]) == [1, 2, 3]  # mxnet itself split the record holding the magic
    assert min(offsets, key=offsets.get) == 1  # record 0 written last: the reader goes by key, not by position


def test_decodes_the_pixels_mxnet_decodes(mxnet_rec):
    for number, ((label, body), (shape, pixels)) in enumerate(zip(mxnet_rec["samples"], mxnet_rec["decoded"])):
        reference = np.frombuffer(pixels, dtype=np.uint8).reshape(shape)
        np.testing.assert_array_equal(decode_rgb(body, f"image {number}"), reference, err_msg=f"image {number}")


def test_mxnet_reads_what_we_wrote(mxnet_rec):
    by_key, samples = mxnet_rec["ours"]["by_key"], mxnet_rec["ours_samples"]
    end_image, end_identity = len(samples) + 1, len(samples) + 1 + 3
    assert by_key[0][:2] == (2, [end_image, end_identity])
    for key, (label, body) in enumerate(samples, start=1):
        flag, labels, _, _, mx_body = by_key[key]
        assert (flag, labels, mx_body) == (0, [float(label)], body), f"record {key}"
    assert [by_key[key][1] for key in range(end_image, end_identity)] == [[1, 3], [3, 4], [4, 5]]
    assert sorted(by_key) == list(range(end_identity))
    assert mxnet_rec["ours"]["sequential_count"] == end_identity  # no stray framing between the records


def test_index_lacking_announced_images_is_an_error(insightface_rec):
    rec, _, _ = insightface_rec
    lines = rec.with_suffix(".idx").read_text().splitlines()
    rec.with_suffix(".idx").write_text("\n".join(line for line in lines if not line.startswith("3\t")) + "\n")
    with pytest.raises(ValueError, match="lacks 1 of them .first: key 3"):
        list(read_recordio(rec))
