"""A verification set (image pairs + ground truth) and one protocol run on it, for training validation and eval.

Sets come from an InsightFace `.bin` file (lfw, cfp_fp, agedb_30, ...) or from an identity folder with a pairs file.
`run_verification` embeds the images (with their mirrors), runs the 10-fold protocol and logs the seed's lines
``[<name>][<step>]XNorm: ...`` and ``[<name>][<step>]Accuracy-Flip: ...+-...`` plus VAL@FAR, AUC and EER.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from common.preprocessing import Preprocessing, as_preprocessing
from common.sizes import image_size_pair
from data.bin_dataset import load_bin
from data.image_io import read_rgb
from eval.embeddings import EmbedFn, compute_embeddings
from eval.pairs import load_pair_images
from eval.verification import VerificationResult, distance_to_cosine, verify

log = logging.getLogger(__name__)

DEFAULT_NUM_FOLDS = 10
HARDEST_LISTED = 10  # hardest false matches / non-matches listed in a report


@dataclass
class VerificationSet:
    """Pairs of images: images[2k], images[2k+1] form pair k, issame[k] says whether they show one identity.

    Attributes:
        name: label used in logs and reports (e.g. "lfw").
        images: uint8 RGB [2P, H, W, 3].
        issame: bool [P].
        paths: the 2P source files, when the set was read from files.
        num_folds: folds announced by the pairs file header (None: the protocol's 10).
    """

    name: str
    images: np.ndarray
    issame: np.ndarray
    paths: list[str] | None = None
    num_folds: int | None = None

    def __post_init__(self) -> None:
        self.issame = np.asarray(self.issame).astype(bool)
        images = self.images
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"{self.name}: images must be uint8 RGB [2P, H, W, 3], received {images.dtype} "
                             f"{images.shape}")
        if self.issame.ndim != 1 or images.shape[0] != 2 * self.issame.shape[0]:
            raise ValueError(f"{self.name}: {images.shape[0]} images for {self.issame.shape[0]} pairs; expected 2 "
                             "images per pair")
        if self.paths is not None and len(self.paths) != images.shape[0]:
            raise ValueError(f"{self.name}: {len(self.paths)} paths for {images.shape[0]} images")

    @property
    def num_pairs(self) -> int:
        return int(self.issame.shape[0])


def load_bin_set(path: str | Path, image_size: int | Sequence[int] = (112, 112),
                 name: str | None = None) -> VerificationSet:
    """Reads an InsightFace `.bin` set (encoded images + issame) with data.bin_dataset.load_bin.

    Args:
        path: the `.bin` file.
        image_size: (height, width) the images are resized to (bilinear) when they differ; one N is N x N.
        name: label in logs and reports (default: the file name without extension, e.g. "lfw").
    """
    path = Path(path)
    images, issame = load_bin(path, image_size_pair(image_size))
    return VerificationSet(name or path.stem, images, issame)


def load_pairs_set(data_dir: str | Path, pairs_path: str | Path, image_size: int | Sequence[int] = (112, 112),
                   name: str | None = None, skip_missing: bool = False) -> VerificationSet:
    """Reads the images of a pairs file (see eval.pairs) from an identity folder.

    Args:
        data_dir: one folder per identity.
        pairs_path: the pairs file (LFW numbered or explicit file names).
        image_size: (height, width) every image is resized to (bilinear) when it differs; one N is N x N.
        name: label in logs and reports (default: the pairs file name without extension).
        skip_missing: leave out and count pairs with a missing image instead of raising FileNotFoundError.
            Unreadable images always leave their pairs out, counted and logged.
    """
    size = image_size_pair(image_size)
    pairs = load_pair_images(pairs_path, data_dir, lambda path: read_rgb(path, size), skip_missing)
    if pairs.num_folds is not None and pairs.num_pairs < pairs.num_folds:
        raise ValueError(f"{pairs_path}: its header announces {pairs.num_folds} folds, but only {pairs.num_pairs} "
                         f"pairs have two readable images under {data_dir}, fewer than one per fold")
    return VerificationSet(name or Path(pairs_path).stem, np.stack(pairs.images), pairs.issame,
                           [str(p) for p in pairs.paths], pairs.num_folds)


def check_custom_set(data_dir: str | Path, pairs_path: str | Path) -> None:
    """ValueError unless a custom set is given whole (a folder and its pairs file) or not at all."""
    if bool(data_dir) != bool(pairs_path):
        raise ValueError("Args: eval_dataset and eval_pair go together (a folder and its pairs.txt)")


def load_verification_sets(bin_names: Sequence[str], bin_folder: str | Path, data_dir: str | Path,
                           pairs_path: str | Path, image_size: int | Sequence[int],
                           skip_missing: bool = False) -> list[VerificationSet]:
    """The sets that training validation and eval_ckpt_file.py evaluate, read at `image_size`: `<name>.bin` in
    `bin_folder` for each of `bin_names`, then the custom set of `data_dir` + `pairs_path` when given (see
    check_custom_set; skip_missing as in load_pairs_set). An empty list when none is named."""
    check_custom_set(data_dir, pairs_path)
    sets = [load_bin_set(Path(bin_folder) / f"{name}.bin", image_size=image_size, name=name) for name in bin_names]
    if data_dir:
        sets.append(load_pairs_set(data_dir, pairs_path, image_size=image_size, skip_missing=skip_missing))
    return sets


def _hardest(result: VerificationResult, paths: list[str] | None, same: bool) -> list[dict[str, Any]]:
    """The most wrongly placed pairs of one class: matched pairs farthest apart, mismatched pairs closest."""
    indices = np.flatnonzero(result.issame == same)
    order = indices[np.argsort(-result.distances[indices] if same else result.distances[indices], kind="stable")]
    listed = []
    for k in order[:HARDEST_LISTED]:
        threshold = float(result.best_thresholds[result.fold_of_pair[k]])
        entry = {"pair": int(k), "images": [int(2 * k), int(2 * k + 1)], "distance": float(result.distances[k]),
                 "cosine": float(distance_to_cosine(result.distances[k])), "threshold": threshold,
                 "threshold_cosine": float(distance_to_cosine(threshold)),
                 "error": bool(result.predicted_same[k] != same)}
        if paths is not None:
            entry["paths"] = [paths[2 * k], paths[2 * k + 1]]
        listed.append(entry)
    return listed


def result_report(result: VerificationResult, name: str, step: int | str | None = None, xnorm: float | None = None,
                  paths: list[str] | None = None) -> dict[str, Any]:
    """A JSON-ready dict of a protocol result: summary numbers, per-fold values, ROC, distances, hardest pairs.

    Thresholds are squared L2 distances of the compared (e.g. flip-summed) L2-normalised embeddings; each also comes
    as the equivalent cosine similarity (`*_cosine`, cos = 1 - d/2, "same" when the cosine is above it)."""
    predicted = result.predicted_same
    return {
        "name": name, "step": step, "num_pairs": int(result.issame.size), "num_folds": int(result.accuracy.size),
        "xnorm": xnorm,
        "accuracy_mean": result.accuracy_mean, "accuracy_std": result.accuracy_std,
        "accuracy_per_fold": result.accuracy.tolist(), "best_thresholds": result.best_thresholds.tolist(),
        "best_thresholds_cosine": distance_to_cosine(result.best_thresholds).tolist(),
        "train_accuracy_per_fold": result.train_accuracy.tolist(),
        "far_target": result.far_target, "val": result.val, "val_std": result.val_std, "far": result.far,
        "val_per_fold": result.val_per_fold.tolist(), "far_per_fold": result.far_per_fold.tolist(),
        "val_thresholds": result.val_thresholds.tolist(),
        "val_thresholds_cosine": distance_to_cosine(result.val_thresholds).tolist(),
        "val_measurable": result.val_measurable, "val_negatives_needed": result.val_negatives_needed,
        "val_training_negatives": result.val_training_negatives.tolist(),
        "auc": result.auc, "eer": None if np.isnan(result.eer) else result.eer,
        "false_matches": int(np.count_nonzero(predicted & ~result.issame)),
        "false_non_matches": int(np.count_nonzero(~predicted & result.issame)),
        "roc": {"thresholds": result.thresholds.tolist(),
                "thresholds_cosine": distance_to_cosine(result.thresholds).tolist(), "tpr": result.tpr.tolist(),
                "fpr": result.fpr.tolist()},
        "distances": result.distances.astype(float).tolist(), "issame": result.issame.tolist(),
        "hardest_false_matches": _hardest(result, paths, same=False),
        "hardest_false_non_matches": _hardest(result, paths, same=True),
    }


def run_verification(embed_fn: EmbedFn, vset: VerificationSet, batch_size: int,
                     preprocessing: Preprocessing | str = "BGR", flip: str = "sum", num_folds: int | None = None,
                     step: int | str | None = None, embeds_pixels: bool = False) -> dict[str, Any]:
    """Embeds `vset`, runs the protocol, logs the seed's lines and returns the report dict (see `result_report`).

    Args:
        embed_fn: float32 normalised batch -> [b, D] embeddings (see eval.embeddings.compute_embeddings).
        vset: the pairs.
        batch_size: images per embed_fn call.
        preprocessing: the network's input convention, or its channel order ("BGR" or "RGB") with the seed's numbers
            (eval.embeddings.compute_embeddings).
        flip: "sum" (the seed's Accuracy-Flip), "none" or "concat".
        num_folds: folds of the protocol; None: the pairs file's header, else 10.
        step: training step or checkpoint index shown in the log lines.
        embeds_pixels: embed_fn takes the uint8 RGB batches and applies `preprocessing` itself
            (models.EmbeddingModel.embed_function); `preprocessing` is then what the report says.
    """
    num_folds = num_folds or vset.num_folds or DEFAULT_NUM_FOLDS
    embeddings, xnorm = compute_embeddings(embed_fn, vset.images, batch_size, None if embeds_pixels else preprocessing,
                                           flip, description=f"{vset.name} embeddings")
    result = verify(embeddings, vset.issame, num_folds)
    tag = f"[{vset.name}][{step}]"
    log.info("%sXNorm: %f", tag, xnorm)
    label = "Accuracy" if flip == "none" else "Accuracy-Flip"
    log.info("%s%s: %1.5f+-%1.5f", tag, label, result.accuracy_mean, result.accuracy_std)
    log.info("%sVAL@FAR=%g: %1.5f+-%1.5f (FAR %1.5f)%s", tag, result.far_target, result.val, result.val_std,
                result.far, "" if result.val_measurable else " not measurable: too few mismatched pairs")
    log.info("%sAUC: %1.5f EER: %1.5f", tag, result.auc, result.eer)
    report = result_report(result, vset.name, step, xnorm, vset.paths)
    preprocessing = as_preprocessing(preprocessing)
    report.update(flip=flip, channel_order=preprocessing.channel_order,
                  normalisation={"mean": preprocessing.mean, "scale": preprocessing.scale})
    return report
