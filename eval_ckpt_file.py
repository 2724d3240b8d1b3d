"""Restores checkpoints and validates them with the 10-fold pairs protocol on a custom dataset and/or .bin sets.

    python eval_ckpt_file.py --ckpt_file=./output/ckpt/InsightFace_iter- --ckpt_index_list=[10000,20000] \
        --eval_dataset=./datasets/my_aligned_faces --eval_pair=./datasets/my_pairs.txt

Each checkpoint is rebuilt from the args.json saved beside it (so the network, image size and channel order are
the trained ones); a checkpoint of the seed (TF1/TensorLayer, models A-D), a `.keras` file, an export of export.py
(its saved_model/ folder, embedding.onnx or a .tflite, run by its own runtime) or one of insightface's
released models (ONNX, arcface_torch backbone.pth, MXNet model-0000.params, each fed with its own preprocessing)
works too: one loader for all, models.load_embedding_model. For every dataset and checkpoint it logs the seed's
`XNorm` and `Accuracy-Flip: mean+-std` lines plus VAL@FAR, AUC and EER, and writes into `output_dir`: report.json,
a ROC curve PNG and a PNG of the hardest false matches and non-matches.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

from config import (Choices, Config, ImageSizeOrNetwork, NonNegativeInt, OptionalPath, PositiveInt, RequiredPath,
                    run_script)

if TYPE_CHECKING:
    from eval.sets import VerificationSet

log = logging.getLogger("eval_ckpt_file")


class Args(Config):
    RENAMED = {"eval_datasets": "eval_bins", "nrof_folds": "num_folds"}  # earlier names, still accepted

    # checkpoint prefix (ckpt_index_list entries are appended), or with ckpt_index_list=[] any model file: a run folder,
    # a .keras file, an export of export.py (saved_model/, embedding.onnx, .tflite), an insightface release (.onnx,
    # backbone.pth, model-0000.params)
    ckpt_file: RequiredPath = "./output/ckpt/InsightFace_iter-"
    # appended to ckpt_file, e.g. ["10000", "20000"]; [] = ckpt_file is the checkpoint itself (so is a model file or
    # folder that is there when ckpt_file + index is not)
    ckpt_index_list: list[RequiredPath] = ["10000"]
    # custom aligned dataset: one folder per identity (align/align_dataset_mtcnn.py output)
    eval_dataset: OptionalPath = ""
    eval_pair: OptionalPath = ""  # its pairs.txt (generate_pairs.py; the LFW layout or the fork's tab format)
    eval_bins: list[RequiredPath] = []  # .bin sets in eval_db_path, e.g. ["lfw", "cfp_fp", "agedb_30"]
    eval_db_path: RequiredPath = "./datasets/faces_ms1m_112x112"  # folder of the .bin files
    batch_size: PositiveInt = 32  # images per forward pass
    image_size: ImageSizeOrNetwork = []  # [height, width] (one N: N x N); [] = the network's input size
    # "BGR"/"RGB"; None = the one recorded with the model (its run's args.json, an export's preprocessing), else
    # the seed's BGR
    channel_order: Annotated[str, Choices("BGR", "RGB")] | None = None
    # "sum" (the seed's Accuracy-Flip), "none", or "concat" (facenet)
    flip: Annotated[str, Choices("sum", "none", "concat")] = "sum"
    num_folds: NonNegativeInt = 0  # 0 = the pairs file's header (10 for LFW and .bin sets)
    skip_missing: bool = False  # skip (and count) pairs whose images are missing instead of stopping
    output_dir: RequiredPath = "./output/eval"  # report.json, ROC and hardest-pairs PNGs


def checkpoint_paths(args: Args) -> list[str]:
    """The checkpoints to evaluate: ckpt_file + each index (the seed's convention), or ckpt_file alone when the index
    list is empty, or when ckpt_file is a model by itself (a file or folder that is there, e.g. model.onnx or a run
    folder) and no ckpt_file + index is."""
    if not args.ckpt_index_list:
        return [args.ckpt_file]
    joined = [f"{args.ckpt_file}{index}" for index in args.ckpt_index_list]
    if Path(args.ckpt_file).exists() and not any(Path(path).exists() or Path(f"{path}.index").exists()
                                                  for path in joined):
        log.info("evaluating %s itself: ckpt_index_list %s names nothing beside it", args.ckpt_file,
                 args.ckpt_index_list)
        return [args.ckpt_file]
    return joined


def load_sets(args: Args, image_size: tuple[int, int]) -> list[VerificationSet]:
    """The verification sets of `args`, read at `image_size` (height, width)."""
    from eval.sets import load_verification_sets

    if not args.eval_dataset and not args.eval_bins:
        raise ValueError("Args: nothing to evaluate; set eval_dataset + eval_pair and/or eval_bins")
    return load_verification_sets(args.eval_bins, args.eval_db_path, args.eval_dataset, args.eval_pair,
                                  image_size=image_size, skip_missing=args.skip_missing)


def evaluate_checkpoints(args: Args) -> list[dict]:
    """Evaluates every checkpoint on every set; writes the reports; returns the report dicts."""
    from eval.report import plot_roc, save_report_files, write_json_report
    from eval.sets import run_verification
    from models import load_embedding_model

    output_dir = Path(args.output_dir)
    reports = []
    sets_by_size: dict[tuple[int, int], list] = {}  # checkpoints of one call may have different input sizes
    for checkpoint in checkpoint_paths(args):
        loaded = load_embedding_model(checkpoint, args.channel_order)
        image_size = tuple(args.image_size) if args.image_size else loaded.input_size
        if image_size not in sets_by_size:
            sets_by_size[image_size] = load_sets(args, image_size)
        sets = sets_by_size[image_size]
        # A Keras model: the network alone, fed as its preprocessing says (a model that carries its preprocessing
        # is not normalised twice, and the flip sum adds raw embeddings, as the seed's does); an export of
        # export.py: the file run by its runtime on the pixels (its outputs are L2-normalised: the sum adds those).
        embed = loaded.embed_function()
        index = Path(checkpoint).name
        for vset in sets:
            report = run_verification(embed, vset, batch_size=args.batch_size, preprocessing=loaded.preprocessing,
                                      flip=args.flip, num_folds=args.num_folds or None, step=index,
                                      embeds_pixels=True)
            report.update(checkpoint=checkpoint, image_size=list(image_size))
            report["files"] = {k: str(v) for k, v in save_report_files(output_dir / f"{vset.name}_{index}", vset,
                                                                       report).items()}
            reports.append(report)
    plot_roc(output_dir / "roc.png", reports)
    path = write_json_report(output_dir / "report.json", reports)
    for report in reports:
        log.info("%s on %s: Accuracy-Flip %.5f+-%.5f", report["checkpoint"], report["name"], report["accuracy_mean"],
                 report["accuracy_std"])
    log.info("report: %s (ROC curve %s)", path, output_dir / "roc.png")
    return reports


def main(args: Args) -> None:
    evaluate_checkpoints(args)


def cli() -> NoReturn:
    """The `insightface-eval` console script: this script's command line, from any folder."""
    run_script(Args, main)


if __name__ == "__main__":
    cli()
