"""data.train_data: labels, bad images, normalisation, whole-index shuffling and exact resume of the tf.data pipeline.

Images are tiny lossless PNGs whose pixels carry what the test needs to check: colour (R, G, B) = (index % 256,
index // 256, label code), and a white first column that tells whether the image came out flipped.
"""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import pytest

from data.train_data import detect_format, open_train_data
from test_data_recordio import header_payload, write_rec

SIZE = 8


def marked_image(index: int, label_code: int, size: tuple[int, int] = (SIZE, SIZE)) -> np.ndarray:
    """RGB uint8 image with colour (index % 256, index // 256, label_code) and a white first column."""
    image = np.empty((*size, 3), dtype=np.uint8)
    image[:] = (index % 256, index // 256, label_code)
    image[:, 0] = 255
    return image


def encode(rgb: np.ndarray, extension: str = ".png") -> bytes:
    ok, data = cv2.imencode(extension, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    return data.tobytes()


def read_marks(images: np.ndarray, channel_order: str = "BGR") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(index, label code, flipped) of each normalised output image, inverting (x - 127.5) / 128 in float64."""
    pixels = np.rint(np.asarray(images, dtype=np.float64) * 128 + 127.5).astype(int)
    if channel_order == "BGR":
        pixels = pixels[..., ::-1]
    middle = pixels[:, SIZE // 2, SIZE // 2]
    flipped = (pixels[:, :, -1] == 255).all(axis=(1, 2)) & ~(pixels[:, :, 0] == 255).all(axis=(1, 2))
    return middle[:, 0] + 256 * middle[:, 1], middle[:, 2], flipped


def collect(data, batch_size: int, epoch: int, seed: int, **kwargs) -> tuple[np.ndarray, np.ndarray]:
    batches = list(data.dataset(batch_size, epoch=epoch, seed=seed, **kwargs))
    images = np.concatenate([b[0].numpy() for b in batches]) if batches else np.empty((0, SIZE, SIZE, 3))
    labels = np.concatenate([b[1].numpy() for b in batches]) if batches else np.empty(0, dtype=np.int64)
    return images, labels


# --- folder of identity folders --------------------------------------------------------------------------------------

@pytest.fixture
def identity_tree(tmp_path: Path) -> Path:
    """Identities 'bob', 'Alice', 'carol' (sorted: Alice=0, bob=1, carol=2) in PNG/BMP/JPEG, grey, RGBA, odd size;
    plus things to ignore: an empty folder, a hidden one, non-image files, a nested folder."""
    root = tmp_path / "faces"
    expected_labels = {"Alice": 0, "bob": 1, "carol": 2}
    index = 0
    for name, label in expected_labels.items():
        folder = root / name
        folder.mkdir(parents=True)
        code = 60 * label + 30  # spaced so that JPEG rounding cannot move it to another label
        for extension in (".png", ".bmp", ".PNG"):
            (folder / f"img{index}{extension}").write_bytes(encode(marked_image(index, code), extension.lower()))
            index += 1
        (folder / f"photo{index}.jpg").write_bytes(encode(np.full((SIZE, SIZE, 3), code, np.uint8), ".jpg"))
        index += 1
    grey = np.full((SIZE, SIZE), 60 * 1 + 30, dtype=np.uint8)
    (root / "bob" / "grey.png").write_bytes(cv2.imencode(".png", grey)[1].tobytes())
    rgba = np.dstack([marked_image(index, 60 * 2 + 30)[..., ::-1], np.full((SIZE, SIZE), 7, np.uint8)])
    (root / "carol" / "rgba.png").write_bytes(cv2.imencode(".png", rgba)[1].tobytes())  # BGRA for OpenCV
    (root / "Alice" / "large.png").write_bytes(encode(np.full((20, 30, 3), 30, np.uint8)))
    (root / "empty").mkdir()
    (root / ".hidden").mkdir()
    (root / ".hidden" / "x.png").write_bytes(encode(marked_image(0, 0)))
    (root / "notes.txt").write_text("not an identity")
    (root / "bob" / "readme.txt").write_text("not an image")
    (root / "bob" / "nested").mkdir()
    (root / "bob" / "nested" / "deep.png").write_bytes(encode(marked_image(0, 0)))
    return root


def test_folder_labels_are_sorted_folder_indices(identity_tree, tmp_path):
    data = open_train_data(str(identity_tree), image_size=(SIZE, SIZE), channel_order="RGB")
    assert data.format == "folder"
    assert data.class_names == ["Alice", "bob", "carol"] and data.num_classes == 3
    assert data.num_images == 3 * 4 + 3  # 4 per identity + grey + rgba + large
    images, labels = collect(data, batch_size=5, epoch=0, seed=0, augment=False)
    assert images.shape == (15, SIZE, SIZE, 3) and images.dtype == np.float32 and labels.dtype == np.int64
    _, codes, _ = read_marks(images, "RGB")
    np.testing.assert_array_equal(np.rint((codes - 30) / 60).astype(int), labels)
    assert data.num_skipped == 0
    classes = data.save_class_list(tmp_path / "run" / "classes.txt")
    assert classes.read_text().splitlines() == ["Alice", "bob", "carol"]


def test_corrupt_images_are_skipped_reported_and_replaced(identity_tree, caplog):
    truncated = identity_tree / "bob" / "truncated.jpg"
    truncated.write_bytes(encode(np.full((SIZE, SIZE, 3), 90, np.uint8), ".jpg")[:60])
    fake = identity_tree / "carol" / "fake.png"
    fake.write_text("this is text")
    data = open_train_data(str(identity_tree), image_size=(SIZE, SIZE), channel_order="RGB")
    assert data.num_images == 17
    with caplog.at_level(logging.WARNING, logger="data.train_data"):
        for epoch in range(2):
            images, labels = collect(data, batch_size=17, epoch=epoch, seed=1, augment=False)
            assert images.shape[0] == 17  # the batch keeps its size
            _, codes, _ = read_marks(images, "RGB")
            np.testing.assert_array_equal(np.rint((codes - 30) / 60).astype(int), labels)
    assert data.num_skipped == 2 and set(data.skipped) == {str(truncated), str(fake)}
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert sum(str(truncated) in message for message in warnings) == 1  # reported once, not once per epoch
    assert sum(str(fake) in message for message in warnings) == 1


def test_normalisation_is_the_seed_formula(tmp_path):
    rgb = np.zeros((SIZE, SIZE, 3), dtype=np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 10, 128, 250
    rgb[0, 0] = (0, 255, 3)
    for person in ("person", "other"):  # two identities: a training set of one is refused
        (tmp_path / "one" / person).mkdir(parents=True)
        (tmp_path / "one" / person / "a.png").write_bytes(encode(rgb))
    for order, expected_channels in (("BGR", rgb[..., ::-1]), ("RGB", rgb)):
        data = open_train_data(str(tmp_path / "one"), image_size=(SIZE, SIZE), channel_order=order)
        images, _ = collect(data, batch_size=1, epoch=0, seed=0, augment=False)
        np.testing.assert_allclose(images[0], (expected_channels.astype(np.float64) - 127.5) / 128.0, atol=1e-7)


# --- RecordIO: whole-index shuffle, exact resume, bad records --------------------------------------------------------

NUM_IDS, PER_ID = 20, 20


@pytest.fixture(scope="module")
def identity_ordered_rec(tmp_path_factory) -> Path:
    """400 images written identity by identity (like InsightFace's sets), label = index // 20, InsightFace layout."""
    root = tmp_path_factory.mktemp("rec")
    count = NUM_IDS * PER_ID
    images = [header_payload(float(i // PER_ID), encode(marked_image(i, i // PER_ID))) for i in range(count)]
    identities = [header_payload([1.0 + k * PER_ID, 1.0 + (k + 1) * PER_ID], b"") for k in range(NUM_IDS)]
    meta = header_payload([count + 1.0, count + 1.0 + NUM_IDS], b"")
    rec = root / "train.rec"
    write_rec(rec, [meta, *images, *identities])
    (root / "property").write_text(f"{NUM_IDS},{SIZE},{SIZE}\n")
    return rec


@pytest.fixture(scope="module")
def rec_data(identity_ordered_rec):
    return open_train_data(str(identity_ordered_rec.parent), image_size=(SIZE, SIZE))


def test_recordio_epoch_is_a_permutation_of_the_whole_index(rec_data):
    assert rec_data.format == "recordio" and rec_data.num_classes == NUM_IDS and rec_data.num_images == 400
    images, labels = collect(rec_data, batch_size=20, epoch=0, seed=0, augment=False)
    index, codes, _ = read_marks(images)
    np.testing.assert_array_equal(codes, labels)
    np.testing.assert_array_equal(labels, index // PER_ID)
    assert sorted(index.tolist()) == list(range(400))  # every image once
    # Identity-ordered records are mixed over the whole index: the position in the epoch is uncorrelated with the
    # position in the file (a 10k shuffle buffer over millions of records would keep them almost in file order).
    rank_correlation = np.corrcoef(np.arange(400), index)[0, 1]
    assert abs(rank_correlation) < 0.2, rank_correlation
    assert len(set(labels[:20].tolist())) >= 10  # the first batch already spans many identities
    again, _ = collect(rec_data, batch_size=20, epoch=0, seed=0, augment=False)
    other_epoch, _ = collect(rec_data, batch_size=20, epoch=1, seed=0, augment=False)
    np.testing.assert_array_equal(read_marks(again)[0], index)
    assert (read_marks(other_epoch)[0] != index).mean() > 0.9


def test_resume_sees_exactly_the_same_batches_and_skips_before_reading(rec_data):
    full_images, full_labels = collect(rec_data, batch_size=32, epoch=3, seed=7)
    flipped = read_marks(full_images)[2]
    assert 0.3 < flipped.mean() < 0.7  # the random flip happens, about half the time
    reads = []
    original_read = rec_data.images.read

    def counting_read(position: int):
        reads.append(position)
        return original_read(position)

    rec_data.images.read = counting_read
    try:
        resumed_images, resumed_labels = collect(rec_data, batch_size=32, epoch=3, seed=7, skip_batches=5)
    finally:
        del rec_data.images.read
    assert len(reads) == (400 // 32 - 5) * 32  # skipped batches are never read
    np.testing.assert_array_equal(resumed_images, full_images[5 * 32:])
    np.testing.assert_array_equal(resumed_labels, full_labels[5 * 32:])
    empty_images, _ = collect(rec_data, batch_size=32, epoch=3, seed=7, skip_batches=400 // 32)
    assert len(empty_images) == 0


def test_no_flip_without_augment(rec_data):
    images, _ = collect(rec_data, batch_size=50, epoch=0, seed=0, augment=False)
    assert not read_marks(images)[2].any()


def test_bad_records_are_skipped_with_their_offset(tmp_path, caplog):
    payloads = [header_payload(float(i % 3), encode(marked_image(i, i % 3))) for i in range(12)]
    payloads[4] = header_payload(1.0, b"\xff\xd8 not really a jpeg")
    payloads[7] = header_payload(9.0, encode(marked_image(7, 1)))  # label outside the 3 classes of `property`
    rec = tmp_path / "train.rec"
    offsets = write_rec(rec, payloads)
    (tmp_path / "property").write_text("3,8,8\n")
    data = open_train_data(str(rec), image_size=(SIZE, SIZE))
    with caplog.at_level(logging.WARNING, logger="data.train_data"):
        images, labels = collect(data, batch_size=12, epoch=0, seed=0, augment=False)
    index, codes, _ = read_marks(images)
    assert len(labels) == 12 and not {4, 7} & set(index.tolist())
    np.testing.assert_array_equal(codes, labels)
    assert data.num_skipped == 2
    text = "\n".join(record.getMessage() for record in caplog.records)
    assert f"offset {offsets[4]}" in text and f"offset {offsets[7]}" in text and "label 9 outside [0, 3)" in text


def test_bad_arguments_and_sources(rec_data, tmp_path):
    with pytest.raises(ValueError, match="batch_size"):
        rec_data.dataset(401, epoch=0, seed=0)
    with pytest.raises(ValueError, match="skip_batches"):
        rec_data.dataset(100, epoch=0, seed=0, skip_batches=5)
    with pytest.raises(ValueError, match="channel_order"):
        open_train_data(str(rec_data.images.file.path), channel_order="BRG")
    with pytest.raises(FileNotFoundError):
        detect_format(tmp_path / "missing")
    (tmp_path / "list.txt").write_text("x")
    with pytest.raises(ValueError, match="unknown file type"):
        detect_format(tmp_path / "list.txt")
    (tmp_path / "no_identities").mkdir()
    with pytest.raises(ValueError, match="no identity folder"):
        open_train_data(str(tmp_path / "no_identities"))


def test_an_epoch_runs_without_the_autotuning_model(rec_data):
    """tf.data's autotuning model made tearing down each finished epoch's iterator stall for 0.7-10 s during training
    (measured on ORL's 9-batch epochs: gaps at every epoch end with it, none over 0.11 s in three runs without it)."""
    batches = rec_data.dataset(batch_size=8, epoch=0, seed=0)
    assert batches.options().autotune.enabled is False
    assert sum(1 for _ in batches) == rec_data.batches_per_epoch(8)
