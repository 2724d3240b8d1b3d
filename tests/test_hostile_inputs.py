"""Fault injection on the data and align side (issue #17): each test writes a hostile input with its own writer
(struct/zlib PNG headers, PIL's EXIF writer, hand-framed RecordIO records, bytes file names, self-referencing links)
and asserts the outcome: an ImageDecodeError / ValueError naming the input, or a skip that is counted and named, with
nothing written over."""

from __future__ import annotations

import io
import logging
import os
import pickle
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps

import data.bin_dataset as bin_dataset
import data.image_io as image_io
import data.train_data as train_data
from align.align_dataset_mtcnn import Args as AlignArgs, align_dataset
from align.detector import Face
from data.image_io import ImageDecodeError, decode_rgb, read_rgb
from data.recordio import RecordIOImages
from data.tfrecords import TFRecordImages, write_tfrecords
from data.train_data import DataUnreadableError, open_train_data
from test_data_recordio import header_payload, write_rec

REPO = Path(__file__).resolve().parents[1]
SIZE = 8
TEMPLATE_112 = np.array([[38.29, 51.70], [73.53, 51.50], [56.03, 71.74], [41.55, 92.37], [70.73, 92.20]])


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_declaring(width: int, height: int, rows: bytes = b"") -> bytes:
    """A grey 8-bit PNG whose IHDR declares width x height; its IDAT holds `rows` (zlib), nothing when empty."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", rows or zlib.compress(b"\0"))
            + png_chunk(b"IEND", b""))


def png_bomb(side: int) -> bytes:
    """A complete, valid grey PNG of side x side black pixels, compressed row by row (small in memory and on disk)."""
    compressor = zlib.compressobj(9)
    row = b"\0" * (side + 1)  # filter byte + pixels
    rows = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    return png_declaring(side, side, rows)


def encode(rgb: np.ndarray, extension: str = ".png") -> bytes:
    ok, data = cv2.imencode(extension, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    return data.tobytes()


def jpeg_with_orientation(rgb: np.ndarray, orientation: int) -> bytes:
    """A JPEG whose EXIF orientation tag PIL writes (pixels stored as given)."""
    image = Image.fromarray(rgb)
    exif = image.getexif()
    exif[0x0112] = orientation
    stream = io.BytesIO()
    image.save(stream, "JPEG", quality=95, exif=exif.tobytes())
    return stream.getvalue()


def asymmetric_image(height: int, width: int) -> np.ndarray:
    """Blocks in different corners and colours: every flip and rotation of it differs."""
    rgb = np.full((height, width, 3), 40, np.uint8)
    rgb[: height // 3, : width // 4] = (250, 250, 250)
    rgb[-height // 3:, -width // 3:] = (200, 30, 30)
    rgb[: height // 4, -width // 5:] = (30, 200, 30)
    return rgb


# --- the numpy reader ------------------------------------------------------------------------------------------------

def test_empty_and_oversized_files_raise_our_error_naming_the_file(tmp_path):
    cases = {"empty.jpg": b"", "huge_header.png": png_declaring(1 << 15, 1 << 15), "junk.png": b"GIF89a junk",
             "truncated.jpg": encode(asymmetric_image(32, 32), ".jpg")[:40]}
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ImageDecodeError, match=name):
            read_rgb(tmp_path / name)
    with pytest.raises(ImageDecodeError, match="1,073,741,824 pixels, over the limit"):
        read_rgb(tmp_path / "huge_header.png")


def webp_declaring(width: int, height: int) -> bytes:
    """A lossless WebP (VP8L) header declaring width x height, with no pixel data behind it."""
    bits = (width - 1) | (height - 1) << 14
    chunk = b"VP8L" + struct.pack("<I", 5) + b"\x2f" + struct.pack("<I", bits) + b"\x00"
    return b"RIFF" + struct.pack("<I", 4 + len(chunk)) + b"WEBP" + chunk


@pytest.mark.parametrize("suffix", [".webp", ".tiff"])
def test_other_formats_opencv_reads_decode_and_keep_the_pixel_limit(suffix):
    """WebP and TIFF photos (an aligner's input) decode as PIL decodes them; their header size is checked too."""
    picture = asymmetric_image(40, 50)
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, format=suffix[1:].upper(), lossless=True)
    reference = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))
    np.testing.assert_array_equal(decode_rgb(buffer.getvalue(), f"photo{suffix}"), reference)
    with pytest.raises(ImageDecodeError, match=rf"photo{suffix}: the header declares 50x40 = 2,000 pixels"):
        decode_rgb(buffer.getvalue(), f"photo{suffix}", max_pixels=1999)


def test_a_webp_header_declaring_a_bomb_is_refused_before_it_is_decoded():
    # 121 megapixels: over our limit, under PIL's own bomb limit (~179 megapixels); 256 megapixels: over both.
    with pytest.raises(ImageDecodeError, match="bomb.webp: the header declares 11000x11000"):
        decode_rgb(webp_declaring(11_000, 11_000), "bomb.webp")
    with pytest.raises(ImageDecodeError, match="bomb.webp: .*decompression bomb"):
        decode_rgb(webp_declaring(16_000, 16_000), "bomb.webp")


def test_a_decompression_bomb_is_refused_before_it_is_decoded():
    bomb = png_bomb(10_050)  # 101 megapixels in ~100 kB: over the default limit of 100 megapixels
    assert len(bomb) < 200_000 and 10_050 ** 2 > image_io.MAX_IMAGE_PIXELS
    start = time.perf_counter()
    with pytest.raises(ImageDecodeError, match="decompression bomb"):
        decode_rgb(bomb, "bomb.png")
    assert time.perf_counter() - start < 0.25  # decoding it takes ~0.5 s and 300 MB


def test_the_pixel_limit_is_overridable(monkeypatch):
    picture = encode(asymmetric_image(40, 50))
    assert decode_rgb(picture).shape == (40, 50, 3)
    monkeypatch.setattr(image_io, "MAX_IMAGE_PIXELS", 1999)
    with pytest.raises(ImageDecodeError, match="50x40 = 2,000 pixels, over the limit of 1,999"):
        decode_rgb(picture)
    script = "import data.image_io as i, data.bin_dataset as b; print(i.MAX_IMAGE_PIXELS, b.MAX_BIN_PIXELS)"
    environment = {**os.environ, "INSIGHTFACE_TF_MAX_IMAGE_PIXELS": "1234", "INSIGHTFACE_TF_MAX_BIN_PIXELS": "5678"}
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=environment, capture_output=True,
                            text=True, timeout=60)
    assert result.stdout.split() == ["1234", "5678"], result.stderr


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_as_pil_does(orientation):
    encoded = jpeg_with_orientation(asymmetric_image(24, 40), orientation)
    expected = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(encoded))).convert("RGB")).astype(int)
    got = decode_rgb(encoded).astype(int)
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() <= 2


# --- training data: folders ------------------------------------------------------------------------------------------

def test_training_skips_counts_and_names_bad_files_and_symlink_loops(tmp_path, caplog):
    root = tmp_path / "faces"
    for person in ("ann", "bob"):
        for k in range(4):
            (root / person).mkdir(parents=True, exist_ok=True)
            (root / person / f"{k}.png").write_bytes(encode(np.full((SIZE, SIZE, 3), 20 * k, np.uint8)))
    (root / "ann" / "empty.jpg").write_bytes(b"")
    (root / "ann" / "bomb.png").write_bytes(png_declaring(1 << 15, 1 << 15))
    (root / "ann" / "cut.jpg").write_bytes(encode(asymmetric_image(16, 16), ".jpg")[:50])
    os.symlink("loop.png", root / "bob" / "loop.png")  # a link to itself: stat() fails with ELOOP
    os.symlink("carl", root / "carl")
    with caplog.at_level(logging.WARNING):
        data = open_train_data(str(root), image_size=(SIZE, SIZE))
    assert "loop.png" in caplog.text and "carl" in caplog.text
    assert data.num_classes == 2 and data.num_images == 11
    batches = list(data.dataset(11, epoch=0, seed=0))
    assert len(batches) == 1 and sorted(set(batches[0][1].numpy().tolist())) == [0, 1]
    assert data.num_skipped == 3
    assert {Path(name).name for name in data.skipped} == {"empty.jpg", "bomb.png", "cut.jpg"}


def test_an_all_unreadable_folder_stops_with_the_count_instead_of_looping(tmp_path):
    for person in ("ann", "bob"):
        (tmp_path / "junk" / person).mkdir(parents=True)
        for k in range(3):
            (tmp_path / "junk" / person / f"{k}.jpg").write_bytes(os.urandom(64))
    data = open_train_data(str(tmp_path / "junk"), image_size=(SIZE, SIZE))
    assert list(data.dataset(2, epoch=0, seed=0)) == []  # the epoch yields nothing: a training loop would spin
    with pytest.raises(DataUnreadableError, match=r"junk.*no readable batch.*6 distinct unreadable images of 6"):
        data.dataset(2, epoch=1, seed=0)


def test_a_mostly_unreadable_set_stops_past_the_documented_fraction(tmp_path, monkeypatch):
    monkeypatch.setattr(train_data, "MIN_READS_FOR_FRACTION", 8)
    for person in ("ann", "bob"):
        (tmp_path / "bad" / person).mkdir(parents=True)
        (tmp_path / "bad" / person / "good.png").write_bytes(encode(np.full((SIZE, SIZE, 3), 9, np.uint8)))
        for k in range(5):
            (tmp_path / "bad" / person / f"{k}.jpg").write_bytes(b"")
    data = open_train_data(str(tmp_path / "bad"), image_size=(SIZE, SIZE))
    list(data.dataset(4, epoch=0, seed=0))  # every batch of 4 is likely to hold a readable image
    with pytest.raises(DataUnreadableError, match=r"of the \d+ images read were unreadable \(over 50%\)"):
        data.dataset(4, epoch=1, seed=0)


def test_a_one_identity_set_is_refused(tmp_path):
    (tmp_path / "solo" / "ann").mkdir(parents=True)
    (tmp_path / "solo" / "ann" / "a.png").write_bytes(encode(np.zeros((SIZE, SIZE, 3), np.uint8)))
    with pytest.raises(ValueError, match=r"solo: 1 class; a margin loss .* needs at least 2"):
        open_train_data(str(tmp_path / "solo"), image_size=(SIZE, SIZE))


def test_training_images_are_upright_by_their_exif_orientation(tmp_path):
    stored = asymmetric_image(16, 16)
    for person in ("ann", "bob"):
        (tmp_path / "exif" / person).mkdir(parents=True)
        (tmp_path / "exif" / person / "a.jpg").write_bytes(jpeg_with_orientation(stored, 6))
    encoded = (tmp_path / "exif" / "ann" / "a.jpg").read_bytes()
    upright = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(encoded))).convert("RGB")).astype(np.float64)
    data = open_train_data(str(tmp_path / "exif"), image_size=(16, 16), channel_order="RGB")
    images = next(iter(data.dataset(2, epoch=0, seed=0, augment=False)))[0].numpy()
    for image in images:
        assert np.abs(image * 128 + 127.5 - upright).max() <= 2.5


def test_a_folder_name_that_is_not_utf8_is_refused_before_anything_is_written(tmp_path):
    root = os.fsencode(tmp_path / "names")
    for name in (b"ann", b"caf\xe9"):
        os.makedirs(os.path.join(root, name))
        with open(os.path.join(root, name, b"a.png"), "wb") as stream:
            stream.write(encode(np.zeros((SIZE, SIZE, 3), np.uint8)))
    with pytest.raises(ValueError, match=r"caf\\xe9.*not valid UTF-8"):
        open_train_data(str(tmp_path / "names"), image_size=(SIZE, SIZE))


def test_a_class_list_that_cannot_be_written_keeps_the_previous_file(tmp_path):
    for person in ("ann", "bob"):
        (tmp_path / "two" / person).mkdir(parents=True)
        (tmp_path / "two" / person / "a.png").write_bytes(encode(np.zeros((SIZE, SIZE, 3), np.uint8)))
    data = open_train_data(str(tmp_path / "two"), image_size=(SIZE, SIZE))
    classes = tmp_path / "run" / "classes.txt"
    classes.parent.mkdir()
    classes.write_text("ann\nbob\n")
    data.class_names = ["ann", "b\udce9b"]  # a lone surrogate, as json.loads gives for "\udce9"
    with pytest.raises(ValueError, match="not valid UTF-8"):
        data.save_class_list(classes)
    assert classes.read_text() == "ann\nbob\n" and sorted(os.listdir(classes.parent)) == ["classes.txt"]


# --- training data: RecordIO labels ----------------------------------------------------------------------------------

def picture(k: int) -> bytes:
    return encode(np.full((SIZE, SIZE, 3), 10 * k, np.uint8))


def test_bad_recordio_labels_are_skipped_counted_and_named(tmp_path):
    labels = [0.0, 1.0, 2.0, 3.0, float("inf"), float("-inf"), float("nan"), 2.5, -1.0, 1.0]
    offsets = write_rec(tmp_path / "train.rec", [header_payload(label, picture(k)) for k, label in enumerate(labels)])
    (tmp_path / "property").write_text("4,8,8\n")
    data = open_train_data(str(tmp_path / "train.rec"), image_size=(SIZE, SIZE))
    batches = list(data.dataset(len(labels), epoch=0, seed=0))  # an inf label stopped this with OverflowError
    assert len(batches) == 1 and set(batches[0][1].numpy().tolist()) <= {0, 1, 2, 3}
    assert data.num_skipped == 5
    for record in range(4, 9):
        assert any(f"record {record} at offset {offsets[record]}" in name for name in data.skipped)
    assert all("expected a whole number >= 0" in reason for reason in data.skipped.values())


def test_a_sparse_label_is_refused_naming_its_record_instead_of_a_huge_head(tmp_path):
    labels = [0.0, 1.0, 2.0, 3.0] * 2 + [2e6]
    offsets = write_rec(tmp_path / "train.rec", [header_payload(label, picture(k)) for k, label in enumerate(labels)])
    with pytest.raises(ValueError, match=rf"record 8 at offset {offsets[8]}\) has label 2000000: a 2,000,001-class "
                                         rf"head for at most 5 identities.*relabel"):
        open_train_data(str(tmp_path / "train.rec"), image_size=(SIZE, SIZE))


def test_a_fractional_label_is_not_truncated_into_a_class(tmp_path, caplog):
    labels = [0.0, 1.0, 0.0, 1.0, 2.5]
    write_rec(tmp_path / "train.rec", [header_payload(label, picture(k)) for k, label in enumerate(labels)])
    with caplog.at_level(logging.WARNING):
        data = open_train_data(str(tmp_path / "train.rec"), image_size=(SIZE, SIZE))
    assert data.num_classes == 2  # int(2.5) made a third class
    assert "label 2.5" in caplog.text and "record 4" in caplog.text


def test_a_meta_header_with_an_infinite_range_is_refused_naming_record_0(tmp_path):
    payloads = [header_payload([float("inf"), 5.0], b""), header_payload(0.0, picture(0))]
    write_rec(tmp_path / "train.rec", payloads)
    with pytest.raises(ValueError, match=r"train.rec \(record at offset 0\): meta header.* inf"):
        RecordIOImages(tmp_path / "train.rec")


@pytest.mark.parametrize("content, expected", [("0\t0\n1\t-36\n", "line 2: negative offset -36"),
                                               ("0\t0\n-1\t36\n", "line 2: negative key -1")])
def test_a_negative_index_entry_is_refused_naming_its_line(tmp_path, content, expected):
    write_rec(tmp_path / "train.rec", [header_payload(0.0, picture(0)), header_payload(1.0, picture(1))])
    (tmp_path / "train.idx").write_text(content)
    with pytest.raises(ValueError, match=expected):
        RecordIOImages(tmp_path / "train.rec")


def test_a_property_file_of_zero_classes_is_refused(tmp_path):
    write_rec(tmp_path / "train.rec", [header_payload(0.0, picture(0)), header_payload(1.0, picture(1))])
    (tmp_path / "property").write_text("0,112,112\n")
    with pytest.raises(ValueError, match="property: expected 'num_classes,height,width' of positive integers"):
        RecordIOImages(tmp_path / "train.rec")


# --- TFRecords -------------------------------------------------------------------------------------------------------

def test_an_empty_tfrecord_shard_is_reported_naming_it(tmp_path, caplog):
    samples = [(picture(k), k % 2) for k in range(4)]
    shards = write_tfrecords(samples, tmp_path, num_images=4, num_classes=2, images_per_shard=2)
    shards[1].write_bytes(b"")  # what a writer killed before its first record leaves
    with caplog.at_level(logging.WARNING):
        images = TFRecordImages(tmp_path)
    assert len(images) == 2
    assert f"{shards[1]}: an empty TFRecord shard" in caplog.text
    assert "declares num_images=4" in caplog.text and "hold 2 records" in caplog.text


# --- .bin verification sets ------------------------------------------------------------------------------------------

def write_pickled_bin(path: Path, images: list[bytes]) -> Path:
    """A .bin as InsightFace's Python 3 tools write it (pickle of (list of bytes, list of bools)), with pickle."""
    path.write_bytes(pickle.dumps((images, [True] * (len(images) // 2)), protocol=4))
    return path


def test_a_bin_declaring_too_many_pixels_in_total_is_refused_before_decoding(tmp_path, monkeypatch):
    path = write_pickled_bin(tmp_path / "big.bin", [encode(asymmetric_image(50, 50))] * 4)
    assert bin_dataset.load_bin(path, None)[0].shape == (4, 50, 50, 3)
    monkeypatch.setattr(bin_dataset, "MAX_BIN_PIXELS", 9_999)
    with pytest.raises(ValueError, match=r"big.bin: its 4 images declare 10,000 pixels together, over the limit"):
        bin_dataset.load_bin(path)


@pytest.mark.parametrize("bad, expected", [(b"", "image 1: not a decodable image: empty"),
                                           (png_declaring(1 << 15, 1 << 15), "image 1: the header declares 32768x")])
def test_a_bad_image_in_a_bin_is_named_by_index(tmp_path, bad, expected):
    good = encode(asymmetric_image(20, 20))
    path = write_pickled_bin(tmp_path / "bad.bin", [good, bad, good, good])
    with pytest.raises(ImageDecodeError, match=expected):
        bin_dataset.load_bin(path)


# --- export calibration and alignment: skip and count ----------------------------------------------------------------

def test_export_calibration_skips_an_empty_file(tmp_path):
    from export import sample_images

    (tmp_path / "0.png").write_bytes(b"")
    (tmp_path / "1.png").write_bytes(encode(asymmetric_image(16, 16)))
    assert sample_images(str(tmp_path), 2, (16, 16)).shape == (1, 16, 16, 3)


def test_pairs_evaluation_leaves_out_the_pair_of_an_empty_image(tmp_path):
    from eval.pairs import ResolvedPairs, read_pair_files

    good, empty = tmp_path / "good.png", tmp_path / "empty.png"
    good.write_bytes(encode(asymmetric_image(16, 16)))
    empty.write_bytes(b"")
    resolved = ResolvedPairs(pairs=["pair 0", "pair 1"], paths=[good, good, good, empty],
                             issame=np.array([True, False]), num_skipped=0)
    usable, loaded = read_pair_files(resolved, read_rgb)
    assert usable == [0] and list(loaded) == [good]


class TemplateFaceDetector:
    """Stands in for MTCNN: one face whose landmarks are the ArcFace template (images are 112 x 112)."""

    def detect(self, rgb):
        return [Face(box=np.array([20.0, 20.0, 90.0, 100.0]), score=0.99, landmarks=TEMPLATE_112.copy())]


def test_the_aligner_lists_bad_files_and_keeps_every_box_line(tmp_path):
    source = os.fsencode(tmp_path / "in")
    face = encode(asymmetric_image(112, 112))
    files = {b"ok/a.png": face, b"ok/empty.jpg": b"", b"ok/bomb.png": png_declaring(1 << 15, 1 << 15),
             b"caf\xe9/b\xff.png": face}
    for name, content in files.items():
        os.makedirs(os.path.dirname(os.path.join(source, name)), exist_ok=True)
        with open(os.path.join(source, name), "wb") as stream:
            stream.write(content)
    os.symlink(b"loop.jpg", os.path.join(source, b"ok", b"loop.jpg"))
    args = AlignArgs(input_dir=str(tmp_path / "in"), output_dir=str(tmp_path / "out"))
    summary = align_dataset(args, TemplateFaceDetector())
    assert (summary.total, summary.aligned, summary.unreadable) == (5, 2, 3)
    boxes = (tmp_path / "out" / "bounding_boxes.txt").read_bytes().splitlines()
    assert sorted(os.path.basename(line.split(b" ")[0]) for line in boxes) == [b"a.png", b"b\xff.png"]
    assert os.path.exists(os.path.join(os.fsencode(tmp_path / "out"), b"caf\xe9", b"b\xff.png"))
    failed = (tmp_path / "out" / "failed_images.txt").read_text(errors="replace")
    for name in ("empty.jpg", "bomb.png", "loop.jpg"):
        assert name in failed
    assert "symbolic links" in failed and "over the limit" in failed


# --- the training command on a junk folder ---------------------------------------------------------------------------

def test_training_on_a_junk_folder_ends_in_one_line_instead_of_hanging(tmp_path):
    for person in ("ann", "bob"):
        (tmp_path / "junk" / person).mkdir(parents=True)
        for k in range(8):
            (tmp_path / "junk" / person / f"{k}.jpg").write_bytes(os.urandom(100))
    argv = ["train_nets.py", f"--train_dataset_dir={tmp_path / 'junk'}", "--net_depth=18", "--image_size=[32,32]",
            "--batch_size=8", "--validate_interval=0", f"--ckpt_path={tmp_path}/ckpt",
            f"--summary_path={tmp_path}/summary", f"--log_file_path={tmp_path}/logs"]
    result = subprocess.run([sys.executable, *argv], cwd=REPO, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert f"training data {tmp_path / 'junk'}: a whole pass over the data" in result.stderr
    assert "16 distinct unreadable images of 16" in result.stderr
