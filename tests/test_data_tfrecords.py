"""data.tfrecords and data.mx2tfrecords: the seed's TFRecord schema written, indexed and read back.

TensorFlow's own reader (tf.data.TFRecordDataset + tf.io.parse_single_example) is the independent reference.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from data import mx2tfrecords
from data.tfrecords import INFO_FILE, TFRecordImages, write_tfrecords
from data.train_data import open_train_data
from test_data_recordio import MULTIPART_BODY, header_payload, write_rec
from test_data_train import SIZE, collect, encode, marked_image, read_marks

SCHEMA = {"image_raw": tf.io.FixedLenFeature([], tf.string), "label": tf.io.FixedLenFeature([], tf.int64)}


def tf_read(files: list[Path]) -> list[tuple[bytes, int]]:
    records = tf.data.TFRecordDataset([str(path) for path in files])
    parsed = [tf.io.parse_single_example(record, SCHEMA) for record in records]
    return [(example["image_raw"].numpy(), int(example["label"])) for example in parsed]


@pytest.fixture(scope="module")
def samples() -> list[tuple[bytes, int]]:
    return [(encode(marked_image(i, i % 4)), i % 4) for i in range(23)]


@pytest.fixture(scope="module")
def shards(tmp_path_factory, samples) -> Path:
    folder = tmp_path_factory.mktemp("tfrecords")
    write_tfrecords(samples, folder, len(samples), 4, ["a", "b", "c", "d"], images_per_shard=10)
    return folder


def test_writer_uses_the_seed_schema(shards, samples):
    files = sorted(shards.glob("*.tfrecord"))
    assert [path.name for path in files] == [f"train-0000{k}-of-00003.tfrecord" for k in range(3)]
    assert tf_read(files) == samples
    info = json.loads((shards / INFO_FILE).read_text())
    assert info["num_images"] == 23 and info["num_classes"] == 4 and info["class_names"] == ["a", "b", "c", "d"]


@pytest.mark.parametrize("source", ["folder", "glob", "file"])
def test_training_reads_every_record_once(shards, samples, source):
    text = {"folder": str(shards), "glob": str(shards / "train-*.tfrecord"),
            "file": str(shards / "train-00000-of-00003.tfrecord")}[source]
    data = open_train_data(text, image_size=(SIZE, SIZE))
    expected = 10 if source == "file" else 23
    assert data.format == "tfrecord" and data.num_images == expected and data.num_classes == 4
    assert data.class_names == ["a", "b", "c", "d"]
    images, labels = collect(data, batch_size=expected, epoch=0, seed=0, augment=False)
    index, codes, _ = read_marks(images)
    assert sorted(index.tolist()) == list(range(expected))
    np.testing.assert_array_equal(labels, [samples[i][1] for i in index])
    np.testing.assert_array_equal(codes, labels)


def test_seed_single_file_without_sidecar_counts_classes(tmp_path):
    path = tmp_path / "tran.tfrecords"
    with tf.io.TFRecordWriter(str(path)) as writer:  # written by TensorFlow, as the seed did
        for i in range(6):
            feature = {"image_raw": tf.train.Feature(bytes_list=tf.train.BytesList(value=[encode(marked_image(i, 0))])),
                       "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[i % 3 + 2]))}
            writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
    data = open_train_data(str(path), image_size=(SIZE, SIZE))
    assert data.num_images == 6 and data.num_classes == 5 and data.class_names is None  # 1 + largest label
    assert data.save_class_list(tmp_path / "classes.txt").read_text().split() == ["0", "1", "2", "3", "4"]


def test_damaged_framing_names_the_offset(shards, tmp_path):
    data = (shards / "train-00001-of-00003.tfrecord").read_bytes()
    offsets = TFRecordImages(shards / "train-00001-of-00003.tfrecord").offsets - 12
    truncated = tmp_path / "cut.tfrecord"
    truncated.write_bytes(data[:offsets[4] + 30])
    with pytest.raises(ValueError, match=rf"truncated.*offset {offsets[4]}\b"):
        TFRecordImages(truncated)
    damaged = bytearray(data)
    damaged[offsets[6]] ^= 0x40  # the length field no longer matches its checksum
    corrupt = tmp_path / "bad.tfrecord"
    corrupt.write_bytes(bytes(damaged))
    with pytest.raises(ValueError, match=rf"checksum at offset {offsets[6]}\b"):
        TFRecordImages(corrupt)


def test_mx2tfrecords_converts_a_rec(tmp_path):
    images = [(0, encode(marked_image(0, 0))), (0, MULTIPART_BODY), (1, encode(marked_image(2, 1)))]
    meta = header_payload([4.0, 6.0], b"")
    identities = [header_payload([1.0, 3.0], b""), header_payload([3.0, 4.0], b"")]
    rec = tmp_path / "faces" / "train.rec"
    rec.parent.mkdir()
    write_rec(rec, [meta, *[header_payload(float(label), body) for label, body in images], *identities])
    args = mx2tfrecords.Args.from_cli([f"--bin_path={rec}", f"--tfrecords_file_path={tmp_path / 'out'}",
                                       "--images_per_shard=2"])
    mx2tfrecords.main(args)
    files = sorted((tmp_path / "out").glob("*.tfrecord"))
    assert len(files) == 2
    assert tf_read(files) == [(body, label) for label, body in images]
    assert json.loads((tmp_path / "out" / INFO_FILE).read_text())["num_classes"] == 2


def test_mx2tfrecords_converts_a_folder(tmp_path):
    for name, count in (("zed", 2), ("amy", 1)):
        (tmp_path / "in" / name).mkdir(parents=True)
        for k in range(count):
            (tmp_path / "in" / name / f"{k}.png").write_bytes(encode(marked_image(k, 0)))
    mx2tfrecords.main(mx2tfrecords.Args(bin_path=str(tmp_path / "in"), tfrecords_file_path=str(tmp_path / "out")))
    records = tf_read(sorted((tmp_path / "out").glob("*.tfrecord")))
    expected = [((tmp_path / "in" / name / f"{k}.png").read_bytes(), label)
                for name, label, count in (("amy", 0, 1), ("zed", 1, 2)) for k in range(count)]
    assert records == expected
    assert json.loads((tmp_path / "out" / INFO_FILE).read_text())["class_names"] == ["amy", "zed"]
