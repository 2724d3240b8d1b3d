"""Export benchmark: file size, difference from Keras and CPU inference speed of every export format.

    .venv/bin/python bench/bench_export.py [--backbone=resnet50_ir] [--batch_size=8] [--repeats=5]

Exports a randomly initialised backbone (nets.registry; BN statistics set on the benchmark batch) with the built-in
preprocessing (uint8 RGB in, L2-normalised embedding out) in every format of deploy.formats, then times each file in
its own runtime on one batch (median of `repeats` runs after a warm-up). The int8 calibration uses the same batch.
Prints a table and writes bench/results/export.json. "keras (in memory)" calls the model eagerly.
"""

from __future__ import annotations

import logging
import platform
import tempfile
from pathlib import Path
from typing import Annotated

import numpy as np

from config import (Choices, Config, Length, NonNegativeInt, PositiveInt, Range, RequiredPath, registered_backbones,
                    run_script)
from timing import median_seconds, write_results

REPO = Path(__file__).resolve().parents[1]
log = logging.getLogger("bench_export")


class Args(Config):
    # a nets.registry name
    backbone: Annotated[str, Choices(names=registered_backbones, ignore_case=True)] = "resnet50_ir"
    image_size: Annotated[int, Range(16)] = 112  # input height and width
    batch_size: PositiveInt = 8  # images per timed call
    repeats: PositiveInt = 5  # timed calls per format (the median is reported)
    formats: Annotated[list[str], Choices("saved_model", "keras", "onnx", "tflite", "tflite_fp16", "tflite_int8"),
                       Length(1)] = ["saved_model", "keras", "onnx", "tflite", "tflite_fp16", "tflite_int8"]
    bn_calibration_passes: NonNegativeInt = 30  # training-mode passes that set the BN statistics before exporting
    output_json: RequiredPath = str(REPO / "bench" / "results" / "export.json")


def main(args: Args) -> dict:
    from deploy import formats
    from deploy.preprocessing import with_preprocessing
    from nets import get_backbone

    from data.preprocess import normalize

    network = get_backbone(args.backbone, image_size=args.image_size, seed=0)
    images = np.random.default_rng(0).integers(0, 256, (args.batch_size, args.image_size, args.image_size, 3),
                                               dtype=np.uint8)
    # A fresh network's BN statistics (mean 0, variance 1) let activations vanish or explode in inference, which
    # float16 cannot hold; training-mode passes move them to the batch's statistics, as a trained network has.
    for _ in range(args.bn_calibration_passes):
        network(normalize(images), training=True)
    deployed = with_preprocessing(network)
    rows = [{"format": "keras (in memory)", "bytes": 4 * network.count_params(), "max_relative_difference": 0.0,
             "images_per_second": args.batch_size / median_seconds(lambda: deployed(images, training=False),
                                                                   args.repeats)}]
    with tempfile.TemporaryDirectory() as folder:
        for result in formats.export_model(deployed, folder, args.formats, images):
            infer = formats.load_runner(result.format, result.path)
            rows.append({"format": result.format, "bytes": result.bytes,
                         "max_relative_difference": result.max_relative_difference,
                         "images_per_second": args.batch_size / median_seconds(lambda: infer(images), args.repeats)})
    log.info("%s at %dx%d, batch %d, %s", args.backbone, args.image_size, args.image_size, args.batch_size,
                platform.processor() or platform.machine())
    log.info("%-18s %14s %22s %12s", "format", "bytes", "max rel. difference", "img/s")
    for row in rows:
        log.info("%-18s %14d %22.2e %12.1f", row["format"], row["bytes"], row["max_relative_difference"],
                    row["images_per_second"])
    report = {"args": args.to_dict(), "machine": platform.platform(), "weights": network.count_params(),
              "results": rows}
    write_results(args.output_json, report)
    return report


if __name__ == "__main__":
    run_script(Args, main)
