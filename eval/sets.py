"""A verification set (image pairs + ground truth) and one protocol run on it, for training validation and eval.

Sets come from an InsightFace `.bin` file (lfw, cfp_fp, agedb_30, ...) or from an identity folder with a pairs file.
A set holds each distinct image once (a file of a pairs file, identical encoded bytes of a `.bin`) and, per pair,
the rows of its two images: LFW's 6,000 pairs hold 7,701 distinct images of 12,000, a small custom set can reuse each
image in 20 pairs. `run_verification` embeds each distinct image (with its mirror) once, takes the pairs' embeddings
by row, runs the 10-fold protocol and logs the seed's lines ``[<name>][<step>]XNorm: ...`` and
``[<name>][<step>]Accuracy-Flip: ...+-...`` plus VAL@FAR, AUC and EER: the numbers of embedding every pair's two
images, at a fraction of the embedding work.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from common.preprocessing import Preprocessing, as_preprocessing
from common.sizes import image_size_pair
from data.bin_dataset import distinct_rows, load_bin_distinct
from data.image_io import read_rgb
from eval.embeddings import EmbedFn, compute_embeddings
from eval.pairs import load_pair_images
from eval.verification import VerificationResult, distance_to_cosine, verify

log = logging.getLogger(__name__)

DEFAULT_NUM_FOLDS = 10
HARDEST_LISTED = 10  # hardest false matches / non-matches listed in a report


@dataclass
class VerificationSet:
    """Pairs of images, each image held once: pair k compares images[pair_rows[k, 0]] with images[pair_rows[k, 1]],
    issame[k] says whether they show one identity.

    Attributes:
        name: label used in logs and reports (e.g. "lfw").
        images: uint8 RGB [N, H, W, 3].
        issame: bool [P].
        paths: the N source files of `images`, when the set was read from files.
        num_folds: folds announced by the pairs file header (None: the protocol's 10).
        pair_rows: int [P, 2], rows of `images`; None: `images` are the 2P images of the pairs in order (pair k =
            rows 2k and 2k+1, the `.bin` layout).
    """

    name: str
    images: np.ndarray
    issame: np.ndarray
    paths: list[str] | None = None
    num_folds: int | None = None
    pair_rows: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.issame = np.asarray(self.issame).astype(bool)
        images = self.images
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"{self.name}: images must be uint8 RGB [N, H, W, 3], received {images.dtype} "
                             f"{images.shape}")
        if self.issame.ndim != 1:
            raise ValueError(f"{self.name}: issame must be one bool per pair, received shape {self.issame.shape}")
        if self.pair_rows is None:
            if images.shape[0] != 2 * self.num_pairs:
                raise ValueError(f"{self.name}: {images.shape[0]} images for {self.num_pairs} pairs; expected 2 "
                                 "images per pair, or pair_rows")
            self.pair_rows = np.arange(2 * self.num_pairs).reshape(-1, 2)
        self.pair_rows = np.asarray(self.pair_rows)
        rows = self.pair_rows
        if rows.shape != (self.num_pairs, 2) or rows.dtype.kind not in "iu" or (
                rows.size and not 0 <= rows.min() <= rows.max() < images.shape[0]):
            raise ValueError(f"{self.name}: pair_rows must be integer [{self.num_pairs}, 2] rows of the "
                             f"{images.shape[0]} images, received {rows.dtype} {rows.shape}")
        if self.paths is not None and len(self.paths) != images.shape[0]:
            raise ValueError(f"{self.name}: {len(self.paths)} paths for {images.shape[0]} images")

    @property
    def num_pairs(self) -> int:
        return int(self.issame.shape[0])

    @property
    def pair_paths(self) -> list[str] | None:
        """The two files of every pair, pair k at 2k and 2k+1 (None for a set not read from files)."""
        if self.paths is None:
            return None
        return [self.paths[row] for row in self.pair_rows.reshape(-1)]

    @property
    def pair_counts(self) -> np.ndarray:
        """[N] how many pair slots each image fills: its weight in the seed's XNorm over the 2P pair images."""
        return np.bincount(self.pair_rows.reshape(-1), minlength=self.images.shape[0])


def load_bin_set(path: str | Path, image_size: int | Sequence[int] = (112, 112),
                 name: str | None = None) -> VerificationSet:
    """Reads an InsightFace `.bin` set (encoded images + issame) with data.bin_dataset.load_bin_distinct: an image
    stored for several pairs (identical encoded bytes) is decoded and held once.

    Args:
        path: the `.bin` file.
        image_size: (height, width) the images are resized to (bilinear) when they differ; one N is N x N.
        name: label in logs and reports (default: the file name without extension, e.g. "lfw").
    """
    path = Path(path)
    images, pair_rows, issame = load_bin_distinct(path, image_size_pair(image_size))
    return VerificationSet(name or path.stem, images, issame, pair_rows=pair_rows)


def load_pairs_set(data_dir: str | Path, pairs_path: str | Path, image_size: int | Sequence[int] = (112, 112),
                   name: str | None = None, skip_missing: bool = False) -> VerificationSet:
    """Reads the images of a pairs file (see eval.pairs) from an identity folder, each file once.

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
    firsts, rows = distinct_rows(pairs.paths)
    return VerificationSet(name or Path(pairs_path).stem, np.stack([pairs.images[i] for i in firsts]), pairs.issame,
                           [str(pairs.paths[i]) for i in firsts], pairs.num_folds, rows.reshape(-1, 2))


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
    """The most wrongly placed pairs of one class: matched pairs farthest apart, mismatched pairs closest. `images`
    are the pair's positions 2k, 2k+1 in the file (a `.bin`'s image indices), `paths` its two files."""
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
    """Embeds each image of `vset` once, runs the protocol on its pairs, logs the seed's lines and returns the report
    dict (see `result_report`): the numbers of embedding the two images of every pair, XNorm included (weighted by
    VerificationSet.pair_counts, the seed's mean over the 2P pair images).

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
                                           flip, description=f"{vset.name} embeddings", weights=vset.pair_counts)
    result = verify(embeddings[vset.pair_rows.reshape(-1)], vset.issame, num_folds)
    tag = f"[{vset.name}][{step}]"
    log.info("%sXNorm: %f", tag, xnorm)
    label = "Accuracy" if flip == "none" else "Accuracy-Flip"
    log.info("%s%s: %1.5f+-%1.5f", tag, label, result.accuracy_mean, result.accuracy_std)
    log.info("%sVAL@FAR=%g: %1.5f+-%1.5f (FAR %1.5f)%s", tag, result.far_target, result.val, result.val_std,
                result.far, "" if result.val_measurable else " not measurable: too few mismatched pairs")
    log.info("%sAUC: %1.5f EER: %1.5f", tag, result.auc, result.eer)
    report = result_report(result, vset.name, step, xnorm, vset.pair_paths)
    preprocessing = as_preprocessing(preprocessing)
    report.update(flip=flip, channel_order=preprocessing.channel_order,
                  normalisation={"mean": preprocessing.mean, "scale": preprocessing.scale})
    return report
