"""Input-pipeline throughput: folder, RecordIO and TFRecords -> normalised 112x112 batches; `.bin` load time.

    .venv/bin/python bench/bench_input_pipeline.py
    .venv/bin/python bench/bench_input_pipeline.py --num_identities=200 --images_per_identity=50 --batch_size=256

Builds a synthetic data set (data/synthetic.py) in `work_dir` once, packs it as a `.rec`, TFRecord shards and a
`.bin` of `bin_pairs` pairs, then times one full epoch per format (decode, resize check, flip, normalise, batch) after
a warm-up epoch, and `load_bin`; then one RecordIO epoch per augmentation of data/augment.py at probability 1 (and
all of them at once), in the same run, as a ratio to the flip-only epoch. Logs the tables and writes
bench/results/input_pipeline.json. The numbers depend on what else runs on the machine: the JSON records the CPU
count and the load average before and after.
"""

from __future__ import annotations

import logging
import os
import platform
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

# config first: run as a script, it quiets TensorFlow's start-up log, which must happen before TensorFlow loads.
from config import Config, PositiveInt, Range, RequiredPath, run_script
from data.augment import Augmentation
from data.bin_dataset import load_bin, write_bin
from data.image_folders import FolderImages
from data.recordio import write_recordio
from data.synthetic import generate
from timing import write_results

if TYPE_CHECKING:  # TensorFlow is imported where it is used, so that --help and a bad value do not load it
    from data.train_data import TrainData

log = logging.getLogger("bench_input_pipeline")
RESULTS = Path(__file__).resolve().parent / "results"


class Args(Config):
    work_dir: RequiredPath = str(RESULTS / "input_pipeline_data")  # where the generated data sets are kept between runs
    num_identities: Annotated[int, Range(2)] = 100  # synthetic identities
    images_per_identity: PositiveInt = 60  # images per identity (100 x 60 = 6,000 images)
    batch_size: PositiveInt = 128  # training batch size
    bin_pairs: PositiveInt = 6000  # pairs of the .bin (12,000 images, LFW's size)
    output_json: RequiredPath = str(RESULTS / "input_pipeline.json")  # results file
    augmentations: bool = True  # also time one RecordIO epoch per augmentation (each at probability 1)


# Each augmentation at probability 1 (the others off), then everything at once; "off" is the flip-only pipeline.
AUGMENTATIONS = {
    "off": Augmentation(),
    "crop": Augmentation(crop_prob=1.0),
    "colour": Augmentation(colour_prob=1.0),
    "grey": Augmentation(grey_prob=1.0),
    "blur": Augmentation(blur_prob=1.0),
    "cutout grey": Augmentation(cutout_prob=1.0),
    "cutout noise": Augmentation(cutout_prob=1.0, cutout_fill="noise"),
    "all": Augmentation(crop_prob=1.0, colour_prob=1.0, grey_prob=1.0, blur_prob=1.0, cutout_prob=1.0),
}


def prepare(args: Args) -> dict[str, Path]:
    """Generates the data sets once (kept in work_dir); returns {format: path}."""
    from data.tfrecords import write_tfrecords

    work = Path(args.work_dir)
    folder = generate(work / "folder", args.num_identities, args.images_per_identity, seed=0)
    images = FolderImages(folder)
    samples = [images.read(position) for position in range(len(images))]
    rec = work / "recordio" / "train.rec"
    if not rec.is_file():
        write_recordio(rec, ((label, image) for image, label in samples), len(images.class_names))
    tfrecords = work / "tfrecords"
    if not (tfrecords / "dataset_info.json").is_file():
        write_tfrecords(samples, tfrecords, len(samples), len(images.class_names), images.class_names,
                        images_per_shard=2000)
    bin_path = work / "pairs.bin"
    if not bin_path.is_file():
        encoded = [samples[index % len(samples)][0] for index in range(2 * args.bin_pairs)]
        write_bin(bin_path, encoded, [index % 2 == 0 for index in range(args.bin_pairs)])
    return {"folder": folder, "recordio": rec, "tfrecord": tfrecords, "bin": bin_path}


def time_epoch(source: Path, batch_size: int) -> dict[str, float]:
    """Images per second of one epoch, after a warm-up epoch (file cache and tf.data autotuning), and the CPU time
    the process spent per image (all threads): on a shared machine, 1 / that is the rate per free core."""
    from data.train_data import open_train_data

    data = open_train_data(str(source))
    for _ in data.dataset(batch_size, epoch=0, seed=0):
        pass
    return time_warm_epoch(data, batch_size, Augmentation())


def time_warm_epoch(data: TrainData, batch_size: int, augmentation: Augmentation) -> dict[str, float]:
    """The figures of `time_epoch` for epoch 1 of `data` (already warm) with `augmentation`."""
    start, cpu_start = time.perf_counter(), time.process_time()
    count = 0
    for images, _ in data.dataset(batch_size, epoch=1, seed=0, augmentation=augmentation):
        count += int(images.shape[0])
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    return {"images": count, "seconds": round(seconds, 3), "images_per_second": round(count / seconds, 1),
            "cpu_microseconds_per_image": round(cpu_seconds / count * 1e6, 1),
            "images_per_cpu_second": round(count / cpu_seconds, 1)}


def time_augmentations(source: Path, batch_size: int) -> dict[str, dict[str, float]]:
    """`time_warm_epoch` of each of AUGMENTATIONS on one warm data set, with its ratio to the flip-only epoch."""
    from data.train_data import open_train_data

    data = open_train_data(str(source))
    for _ in data.dataset(batch_size, epoch=0, seed=0):
        pass
    results = {name: time_warm_epoch(data, batch_size, augmentation) for name, augmentation in AUGMENTATIONS.items()}
    for row in results.values():
        row["ratio_to_off"] = round(row["images_per_second"] / results["off"]["images_per_second"], 3)
        row["cpu_ratio_to_off"] = round(row["images_per_cpu_second"] / results["off"]["images_per_cpu_second"], 3)
    return results


def log_augmentations(results: dict[str, dict[str, float]]) -> None:
    log.info("%-13s %10s %8s %14s %16s %10s", "augmentation", "images/s", "ratio", "CPU us/image",
             "images/CPU-second", "CPU ratio")
    for name, row in results.items():
        log.info("%-13s %10.1f %8.3f %14.1f %16.1f %10.3f", name, row["images_per_second"], row["ratio_to_off"],
                 row["cpu_microseconds_per_image"], row["images_per_cpu_second"], row["cpu_ratio_to_off"])


def time_bin(path: Path) -> dict[str, float]:
    start = time.perf_counter()
    images, issame = load_bin(path)
    seconds = time.perf_counter() - start
    return {"images": len(images), "seconds": round(seconds, 3), "megabytes": round(images.nbytes / 2**20, 1)}


def main(args: Args) -> None:
    import tensorflow as tf

    paths = prepare(args)
    load_before = os.getloadavg()
    results = {fmt: time_epoch(paths[fmt], args.batch_size) for fmt in ("folder", "recordio", "tfrecord")}
    results["bin"] = time_bin(paths["bin"])
    if args.augmentations:
        results["augmentation"] = time_augmentations(paths["recordio"], args.batch_size)
    load_after = os.getloadavg()
    log.info("%-9s %8s %9s %10s %14s %16s", "format", "images", "seconds", "images/s", "CPU us/image",
             "images/CPU-second")
    for fmt in ("folder", "recordio", "tfrecord"):
        row = results[fmt]
        log.info("%-9s %8d %9.2f %10.1f %14.1f %16.1f", fmt, row["images"], row["seconds"], row["images_per_second"],
                 row["cpu_microseconds_per_image"], row["images_per_cpu_second"])
    log.info("%-9s %8d %9.2f %12s  (load_bin, %.0f MB uint8)", "bin", results["bin"]["images"],
             results["bin"]["seconds"], "-", results["bin"]["megabytes"])
    log.info("conditions: %d CPUs, load average %.2f before / %.2f after (1 min), batch %d",
             os.cpu_count(), load_before[0], load_after[0], args.batch_size)
    if args.augmentations:
        log_augmentations(results["augmentation"])
    report = {"results": results, "batch_size": args.batch_size, "image_size": [112, 112],
              "cpu_count": os.cpu_count(), "load_average_before": load_before, "load_average_after": load_after,
              "tensorflow": tf.__version__, "python": platform.python_version(), "args": args.to_dict()}
    write_results(args.output_json, report)


if __name__ == "__main__":
    run_script(Args, main)
