"""Converts an MXNet `train.rec` (InsightFace's training sets) or a folder of identity folders to sharded TFRecords.

    python -m data.mx2tfrecords --bin_path=datasets/faces_ms1m_112x112/train.rec \
        --tfrecords_file_path=datasets/tfrecords
    python -m data.mx2tfrecords --bin_path=datasets/my_faces --tfrecords_file_path=datasets/my_faces_tfrecords

The seed's schema: one `tf.train.Example` per image, `image_raw` = the encoded image bytes as stored (not decoded,
not re-encoded), `label` = int64 identity. Shards are `train-00000-of-000NN.tfrecord`, beside `dataset_info.json`
(class count, image count, class names of a folder). Unlike the seed (one `tran.tfrecords` in identity order, mxnet
required), mxnet is not needed and the training reader shuffles over the whole index, so the order in the files does
not matter. Train on the result with `open_train_data("<tfrecords_file_path>")` (data/train_data.py).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterator

from config import Config, OptionalPath, PositiveInt, RequiredPath, run_script
from data.image_folders import FolderImages
from data.recordio import RecordIOImages

log = logging.getLogger(__name__)


class Args(Config):
    # a .rec (MXNet RecordIO) or a folder of identity folders
    bin_path: RequiredPath = "./datasets/faces_ms1m_112x112/train.rec"
    idx_path: OptionalPath = ""  # the .rec's index; "" = the .idx beside it
    tfrecords_file_path: RequiredPath = "./datasets/tfrecords"  # output folder for the shards and dataset_info.json
    images_per_shard: PositiveInt = 100_000  # images per TFRecord shard (~0.7 GB of 112x112 JPEGs)


def _samples(images: RecordIOImages | FolderImages) -> Iterator[tuple[bytes, int]]:
    for position in range(len(images)):
        yield images.read(position)


def convert(args: Args) -> list[Path]:
    """Writes the shards; returns their paths."""
    from data.tfrecords import write_tfrecords  # TensorFlow: imported here so that --help does not load it

    source = Path(args.bin_path)
    if source.is_dir():
        images: RecordIOImages | FolderImages = FolderImages(source)
        num_classes, class_names = len(images.class_names), images.class_names
    else:
        images = RecordIOImages(source, args.idx_path or None)
        class_names = None
        num_classes = images.num_classes_hint
        if num_classes is None:
            raise ValueError(f"{source}: no 'property' file beside it and no identity header in record 0, so the "
                             f"class count is unknown; write 'num_classes,112,112' to {source.with_name('property')}")
    log.info("%s: %d images, %d classes -> %s", source, len(images), num_classes, args.tfrecords_file_path)
    return write_tfrecords(_samples(images), args.tfrecords_file_path, len(images), num_classes, class_names,
                           args.images_per_shard)


def main(args: Args) -> None:
    shards = convert(args)
    log.info("wrote %d shards to %s", len(shards), args.tfrecords_file_path)


if __name__ == "__main__":
    run_script(Args, main)
