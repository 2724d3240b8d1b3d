"""Exports the embedding network alone (no class weights) for deployment: SavedModel, .keras, ONNX, TFLite.

    python export.py --input_model=output/ckpt/best/embedding.keras --output_dir=output/export
    python export.py --input_model=pretrained/model_d/InsightFace_iter_best_710000.ckpt --formats=onnx,tflite

The input is a `.keras` file, a checkpoint of the seed (TF1 / TensorLayer, models A-D; nets.seed_checkpoint) or one
of our training checkpoints (prefix or run folder). Each exported file is run back on check images and compared with
the Keras model; `export_report.json` in the output folder lists sizes and differences (deploy.formats).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, NoReturn

import numpy as np

from config import Choices, Config, ImageSize, Length, PositiveInt, RequiredPath, run_script

log = logging.getLogger("export")


class Args(Config):
    # A .keras file, a seed TF1 checkpoint prefix (the path given to Saver.restore) or one of our training
    # checkpoints (prefix, or a run folder for its latest checkpoint).
    input_model: RequiredPath = "./output/ckpt/best/embedding.keras"
    output_dir: RequiredPath = "./output/export"  # the exported files and export_report.json
    # Any of saved_model, keras, onnx, tflite (float32), tflite_fp16, tflite_int8.
    formats: Annotated[list[str], Choices("saved_model", "keras", "onnx", "tflite", "tflite_fp16", "tflite_int8"),
                       Length(1)] = ["saved_model", "keras", "onnx", "tflite"]
    with_preprocessing: bool = True  # uint8 RGB images in, L2-normalised embeddings out (else: normalised input)
    # [height, width] (one N: N x N) of the faces deployers will feed, resized inside the model to the network's
    # input size; None: the network's own input size (recorded in export_metadata.json). Needs with_preprocessing.
    input_size: ImageSize | None = None
    # "BGR" or "RGB": the order the network was trained with; None: the one recorded with the model (the run's
    # args.json, or the preprocessing inside an export), else the seed's BGR.
    channel_order: Annotated[str, Choices("BGR", "RGB")] | None = None
    # Folder of face images (searched recursively) for the int8 calibration and the checks; None: random images.
    calibration_dir: RequiredPath | None = None
    num_check_images: PositiveInt = 8  # images run through Keras and every exported file for the comparison
    num_calibration_images: PositiveInt = 100  # images for the int8 calibration (from calibration_dir)


def sample_images(folder: str | None, count: int, image_size: tuple[int, int], seed: int = 0) -> np.ndarray:
    """`count` RGB uint8 images of `image_size`: the first ones of `folder` (sorted), or random pixels."""
    if folder is None:
        return np.random.default_rng(seed).integers(0, 256, (count, *image_size, 3), dtype=np.uint8)
    from data.image_io import IMAGE_EXTENSIONS, read_rgb

    paths = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not paths:
        raise FileNotFoundError(f"calibration_dir {folder}: no images ({', '.join(IMAGE_EXTENSIONS)})")
    images, skipped = [], 0
    for path in paths:
        if len(images) == count:
            break
        try:
            images.append(read_rgb(path, image_size))
        except ValueError as error:
            skipped += 1
            log.warning("skipped %s", error)
    if skipped:
        log.warning("%d unreadable images skipped in %s", skipped, folder)
    if not images:
        raise ValueError(f"calibration_dir {folder}: none of its {len(paths)} images could be read")
    return np.stack(images)


def _deployable(model, args: Args, channel_order: str):
    """The model to export: the network wrapped with its preprocessing, or an already wrapped model as it is."""
    from deploy.preprocessing import deployment_info, with_preprocessing

    info = deployment_info(model)
    if info is None:
        if args.with_preprocessing:
            return with_preprocessing(model, channel_order, args.input_size)
        if args.input_size is not None:
            raise ValueError(f"input_size={args.input_size} needs with_preprocessing=true (the resize is part of it)")
        return model
    if not info["l2_normalized"]:
        # An imported recogniser (nets.load_pretrained: its own numbers, the raw embedding): deployed, like every
        # export, as its network behind the same numbers and an L2 normalisation.
        if not args.with_preprocessing:
            return info["network"]
        return with_preprocessing(info["network"], channel_order, args.input_size, mean=info["mean"],
                                  scale=info["scale"])
    # An export of ours (e.g. output/export/embedding.keras): wrapping it again would map every face to one point.
    if not args.with_preprocessing:
        raise ValueError(f"input_model {args.input_model} already carries the preprocessing (uint8 RGB input); "
                         f"with_preprocessing=false needs the training network (e.g. output/ckpt/best/embedding.keras)")
    if args.input_size is not None and list(args.input_size) != info["input_size"]:
        raise ValueError(f"input_model {args.input_model} already carries the preprocessing for input size "
                         f"{info['input_size']}; input_size={args.input_size} needs the training network")
    if args.channel_order is not None and args.channel_order != info["channel_order"]:
        raise ValueError(f"input_model {args.input_model} already carries the preprocessing for channel order "
                         f"{info['channel_order']}; channel_order={args.channel_order} needs the training network")
    log.info("%s already carries the preprocessing (%s, input %s): exported as it is", args.input_model,
             info["channel_order"], info["input_size"])
    return model


def main(args: Args) -> list:
    from common.preprocessing import normalize
    from deploy import formats
    from deploy.preprocessing import deployment_info
    from models import load_embedding_model  # .keras, seed TF1 (nets.seed_checkpoint) or ours

    loaded = load_embedding_model(args.input_model, args.channel_order)
    channel_order = loaded.channel_order
    model = _deployable(loaded.model, args, channel_order)
    image_size = tuple(model.input_shape[1:3])
    check_images = sample_images(args.calibration_dir, args.num_check_images, image_size)
    calibration = (sample_images(args.calibration_dir, args.num_calibration_images, image_size, seed=1)
                   if "tflite_int8" in args.formats else None)
    if deployment_info(model) is None:  # the network alone: fed as evaluation feeds it
        check_images = normalize(check_images, loaded.preprocessing)
        calibration = None if calibration is None else normalize(calibration, loaded.preprocessing)
    log.info("exporting %s (%d weights, input %s) to %s: %s", model.name, model.count_params(), model.input_shape,
             args.output_dir, ", ".join(args.formats))
    results = formats.export_model(model, args.output_dir, args.formats, check_images, calibration)
    args.save(Path(args.output_dir) / "export_args.json")
    return results


def cli() -> NoReturn:
    """The `insightface-export` console script: this script's command line, from any folder."""
    run_script(Args, main)


if __name__ == "__main__":
    cli()
