"""The 10-fold pairs verification protocol of InsightFace_TF / facenet, in numpy.

Conventions (the seed's, kept exactly so numbers stay comparable with published ones):

* ``embeddings`` is [2P, D]; pair k is rows 2k and 2k+1; rows are already L2-normalised, so the squared L2 distance
  ``sum((e1 - e2) ** 2)`` lies in [0, 4]. A pair is predicted "same" when ``distance < threshold`` (strict).
* Folds are ``KFold(num_folds, shuffle=False)``: contiguous blocks of pairs, the first ``P % num_folds`` folds one
  pair longer. With the LFW layout (each fold = its matched lines, then its mismatched lines) they are the official
  sets.
* Accuracy: for each fold, the threshold of ``arange(0, 4, 0.01)`` with the best accuracy on the other (training)
  folds, the first one on ties, is applied to the fold. TPR/FPR are the per-threshold means over the test folds.
* VAL@FAR: for each fold, the training-folds FAR at each threshold of ``arange(0, 4, 0.001)``; the threshold where it
  reaches ``far_target`` (1e-3) is interpolated linearly as the seed's ``interp1d(far, thresholds, kind="slinear")``
  did on the SciPy of its time (<= 1.8): a degree-1 B-spline on the raw, repeated FAR values, which joins the LAST
  threshold of the run of equal FAR at or below the target to the FIRST threshold of the run above it. ``np.interp``
  on the raw arrays gives exactly that (current SciPy refuses the repeated values). 0 when no training FAR reaches
  the target. VAL and FAR are then measured on the test fold. A rate whose denominator is empty (a fold without
  matched or without mismatched pairs) counts as 0, the fork's guard. When the training folds of some fold hold
  fewer than ``1 / far_target`` mismatched pairs, the smallest non-zero training FAR (one false accept) already
  exceeds the target: VAL@FAR is computed as the seed did, but flagged ``val_measurable = False`` with a warning.
* AUC is the trapezoidal area under the mean ROC; EER is where that polyline crosses TPR = 1 - FPR (facenet).

Every count is exact: distances are sorted once and ``searchsorted(..., side="left")`` counts ``distance < threshold``
for all thresholds at once, so 6,000 pairs take milliseconds instead of the seed's loop over 4,400 thresholds.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)

ACCURACY_THRESHOLDS = np.arange(0, 4, 0.01)
VAL_THRESHOLDS = np.arange(0, 4, 0.001)
FAR_TARGET = 1e-3


@dataclass
class VerificationResult:
    """Everything the protocol measures on one set of pairs (arrays are numpy, one entry per pair/fold/threshold).

    Attributes:
        distances: [P] squared L2 distance of each pair.
        issame: [P] ground truth.
        fold_of_pair: [P] index of the fold each pair is tested in.
        thresholds: [T] the accuracy threshold grid.
        tpr, fpr: [T] the mean ROC over the test folds.
        accuracy: [F] test accuracy of each fold at its best training threshold.
        best_thresholds: [F] that threshold.
        train_accuracy: [F] the training-folds accuracy it reached.
        val, val_std, far: mean VAL, its std and mean FAR over folds at `far_target`.
        val_per_fold, far_per_fold, val_thresholds: [F] per-fold VAL, FAR and interpolated threshold.
        val_training_negatives: [F] mismatched pairs in the training folds of each fold, where FAR is located.
        auc: area under the mean ROC. eer: equal error rate (nan when the ROC never crosses TPR = 1 - FPR).
    """

    distances: np.ndarray
    issame: np.ndarray
    fold_of_pair: np.ndarray
    thresholds: np.ndarray
    tpr: np.ndarray
    fpr: np.ndarray
    accuracy: np.ndarray
    best_thresholds: np.ndarray
    train_accuracy: np.ndarray
    far_target: float
    val: float
    val_std: float
    far: float
    val_per_fold: np.ndarray
    far_per_fold: np.ndarray
    val_thresholds: np.ndarray
    val_training_negatives: np.ndarray
    auc: float
    eer: float

    @property
    def accuracy_mean(self) -> float:
        return float(np.mean(self.accuracy))

    @property
    def accuracy_std(self) -> float:
        return float(np.std(self.accuracy))

    @property
    def val_negatives_needed(self) -> int:
        """Training mismatched pairs needed for one false accept to be a FAR of at most far_target."""
        return math.ceil(1.0 / self.far_target - 1e-9)  # 1e-9: a quotient such as 1 / 1e-3 may round up

    @property
    def val_measurable(self) -> bool:
        """Whether every fold's training FAR can sit at or just below far_target (see the module docstring)."""
        return bool(np.min(self.val_training_negatives) >= self.val_negatives_needed)

    @property
    def predicted_same(self) -> np.ndarray:
        """[P] decision for each pair with the threshold chosen for its test fold."""
        return self.distances < self.best_thresholds[self.fold_of_pair]


def pair_distances(embeddings: np.ndarray) -> np.ndarray:
    """Squared L2 distance between rows 2k and 2k+1, computed in the embeddings' dtype as the seed did."""
    embeddings = np.asarray(embeddings)
    if embeddings.ndim != 2 or embeddings.shape[0] % 2:
        raise ValueError(f"embeddings must be [2P, D] with pair k = rows 2k, 2k+1; received shape {embeddings.shape}")
    return np.sum(np.square(embeddings[0::2] - embeddings[1::2]), axis=1)


def fold_slices(num_pairs: int, num_folds: int) -> list[slice]:
    """The test folds of KFold(num_folds, shuffle=False): contiguous, the first num_pairs % num_folds one longer."""
    if num_folds < 2 or num_pairs < num_folds:
        raise ValueError(f"need at least 2 folds and one pair per fold; received {num_pairs} pairs, "
                         f"{num_folds} folds")
    sizes = np.full(num_folds, num_pairs // num_folds)
    sizes[: num_pairs % num_folds] += 1
    ends = np.cumsum(sizes)
    return [slice(int(end - size), int(end)) for size, end in zip(sizes, ends)]


def _rate(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, 0 where the denominator is 0 (a fold without pairs of that class)."""
    numerator, denominator = np.broadcast_arrays(np.asarray(numerator, float), np.asarray(denominator, float))
    return np.divide(numerator, denominator, out=np.zeros_like(numerator), where=denominator != 0)


@dataclass
class _FoldCounts:
    """Per fold and threshold, how many matched (`same`) and mismatched (`diff`) pairs have distance < threshold."""

    same_below: np.ndarray  # [F, T]
    diff_below: np.ndarray  # [F, T]
    n_same: np.ndarray  # [F]
    n_diff: np.ndarray  # [F]

    @classmethod
    def count(cls, distances: np.ndarray, issame: np.ndarray, folds: list[slice],
              thresholds: np.ndarray) -> "_FoldCounts":
        # float64 comparisons, as numpy 2 does for `float32_array < np.float64(threshold)` in the seed's loop.
        distances = distances.astype(np.float64)

        def below(values: np.ndarray) -> np.ndarray:
            return np.searchsorted(np.sort(values), thresholds, side="left")

        same_below = np.stack([below(distances[f][issame[f]]) for f in folds])
        diff_below = np.stack([below(distances[f][~issame[f]]) for f in folds])
        n_same = np.array([np.count_nonzero(issame[f]) for f in folds])
        n_diff = np.array([np.count_nonzero(~issame[f]) for f in folds])
        return cls(same_below, diff_below, n_same, n_diff)

    def training(self) -> "_FoldCounts":
        """The counts over all folds but each one (row f = the training folds of test fold f)."""
        return _FoldCounts(self.same_below.sum(0) - self.same_below, self.diff_below.sum(0) - self.diff_below,
                           self.n_same.sum() - self.n_same, self.n_diff.sum() - self.n_diff)

    def accuracy(self) -> np.ndarray:
        """[F, T] (TP + TN) / n."""
        n = (self.n_same + self.n_diff)[:, None]
        true_negatives = self.n_diff[:, None] - self.diff_below
        return (self.same_below + true_negatives) / n

    def true_positive_rate(self) -> np.ndarray:
        return _rate(self.same_below, self.n_same[:, None])

    def false_positive_rate(self) -> np.ndarray:
        return _rate(self.diff_below, self.n_diff[:, None])


def _threshold_at_far(far_train: np.ndarray, thresholds: np.ndarray, far_target: float) -> float:
    """The threshold where the (non-decreasing) training FAR reaches far_target; 0 when it never does.

    np.interp on the raw arrays finds the last FAR <= far_target and the next one above, as the seed-era
    slinear B-spline did on repeated FAR values (see the module docstring)."""
    if np.max(far_train) < far_target:
        return 0.0
    return float(np.interp(far_target, far_train, thresholds))


def distance_to_cosine(distance: np.ndarray | float) -> np.ndarray | float:
    """Cosine similarity of two unit vectors from their squared L2 distance: |a - b|^2 = 2 - 2 cos, so cos = 1 - d/2.

    A pair predicted "same" by ``distance < threshold`` is one with ``cosine > distance_to_cosine(threshold)``."""
    return 1.0 - np.asarray(distance, dtype=np.float64) / 2.0


def area_under_curve(fpr: np.ndarray, tpr: np.ndarray) -> float:
    """Trapezoidal area under the ROC polyline (points in threshold order, as sklearn.metrics.auc)."""
    return float(np.trapezoid(tpr, fpr))


def equal_error_rate(fpr: np.ndarray, tpr: np.ndarray) -> float:
    """FPR where the ROC polyline (points in threshold order) crosses TPR = 1 - FPR; nan if it never does."""
    fpr = np.asarray(fpr, float)
    gap = 1.0 - fpr - np.asarray(tpr, float)  # non-increasing along the curve
    crossed = np.flatnonzero(gap <= 0)
    if crossed.size == 0:
        return float("nan")
    i = crossed[0]
    if i == 0:
        return float(fpr[0])
    # gap is affine along a segment, so the crossing is at the fraction of the segment where it reaches 0.
    fraction = gap[i - 1] / (gap[i - 1] - gap[i])
    return float(fpr[i - 1] + fraction * (fpr[i] - fpr[i - 1]))


def _check_inputs(distances: np.ndarray, issame: np.ndarray) -> None:
    if issame.ndim != 1 or issame.shape[0] != distances.shape[0]:
        raise ValueError(f"actual_issame must hold one bool per pair: {distances.shape[0]} pairs, "
                         f"received shape {issame.shape}")
    if not np.all(np.isfinite(distances)):
        bad = np.flatnonzero(~np.isfinite(distances))
        raise ValueError(f"{bad.size} pair distances are not finite (first pairs {bad[:5].tolist()}): "
                         "the embeddings hold NaN or Inf")


def _warn_single_class_folds(counts: _FoldCounts) -> None:
    lacking = [f for f in range(len(counts.n_same)) if counts.n_same[f] == 0 or counts.n_diff[f] == 0]
    if lacking:
        log.warning("folds %s hold a single class (matched %s, mismatched %s per fold): their accuracy is a TPR "
                       "or TNR. List each fold's matched pairs then its mismatched pairs (generate_pairs.py does).",
                       lacking, counts.n_same.tolist(), counts.n_diff.tolist())


def _warn_if_val_unmeasurable(result: VerificationResult) -> None:
    if not result.val_measurable:
        log.warning("VAL@FAR=%g cannot be measured: the training folds hold %d mismatched pairs (fewest over "
                       "folds), fewer than the %d that FAR %g needs, so one false accept already exceeds it; VAL is "
                       "computed as the seed did but is not a VAL at that FAR. Use a set with more mismatched pairs.",
                       result.far_target, np.min(result.val_training_negatives), result.val_negatives_needed,
                       result.far_target)


def verify_distances(distances: np.ndarray, actual_issame: np.ndarray, num_folds: int = 10,
                     far_target: float = FAR_TARGET) -> VerificationResult:
    """Runs the protocol on pair distances (squared L2 of L2-normalised embeddings, see the module docstring).

    Args:
        distances: [P] distance of each pair.
        actual_issame: [P] bool, True for a matched pair.
        num_folds: number of contiguous folds.
        far_target: the FAR at which VAL is measured.
    """
    distances = np.asarray(distances)
    issame = np.asarray(actual_issame).astype(bool)
    _check_inputs(distances, issame)
    folds = fold_slices(distances.shape[0], num_folds)
    fold_of_pair = np.repeat(np.arange(num_folds), [f.stop - f.start for f in folds])

    roc = _FoldCounts.count(distances, issame, folds, ACCURACY_THRESHOLDS)
    _warn_single_class_folds(roc)
    train_accuracy = roc.training().accuracy()
    best_index = np.argmax(train_accuracy, axis=1)  # the first (smallest) threshold on ties
    fold_rows = np.arange(num_folds)
    test_accuracy = roc.accuracy()[fold_rows, best_index]
    for fold, index in enumerate(best_index):
        log.debug("fold %d: best_threshold_index %d, train accuracy %.5f", fold, index,
                     train_accuracy[fold, index])
    tpr = np.mean(roc.true_positive_rate(), 0)
    fpr = np.mean(roc.false_positive_rate(), 0)

    val_counts = _FoldCounts.count(distances, issame, folds, VAL_THRESHOLDS)
    val_training = val_counts.training()
    far_train = val_training.false_positive_rate()
    val_thresholds = np.array([_threshold_at_far(far_train[f], VAL_THRESHOLDS, far_target)
                               for f in range(num_folds)])
    below = distances.astype(np.float64) < val_thresholds[fold_of_pair]
    val_per_fold = _rate([np.count_nonzero(below[f] & issame[f]) for f in folds], val_counts.n_same)
    far_per_fold = _rate([np.count_nonzero(below[f] & ~issame[f]) for f in folds], val_counts.n_diff)

    result = VerificationResult(
        distances=distances, issame=issame, fold_of_pair=fold_of_pair, thresholds=ACCURACY_THRESHOLDS, tpr=tpr,
        fpr=fpr, accuracy=test_accuracy, best_thresholds=ACCURACY_THRESHOLDS[best_index],
        train_accuracy=train_accuracy[fold_rows, best_index], far_target=far_target,
        val=float(np.mean(val_per_fold)), val_std=float(np.std(val_per_fold)), far=float(np.mean(far_per_fold)),
        val_per_fold=val_per_fold, far_per_fold=far_per_fold, val_thresholds=val_thresholds,
        val_training_negatives=val_training.n_diff, auc=area_under_curve(fpr, tpr), eer=equal_error_rate(fpr, tpr))
    _warn_if_val_unmeasurable(result)
    return result


def verify(embeddings: np.ndarray, actual_issame: np.ndarray, num_folds: int = 10,
           far_target: float = FAR_TARGET) -> VerificationResult:
    """Runs the protocol on [2P, D] L2-normalised embeddings (pair k = rows 2k, 2k+1); returns every measurement."""
    embeddings = np.asarray(embeddings)
    distances = pair_distances(embeddings)
    squared_norms = np.einsum("ij,ij->i", embeddings, embeddings)
    if squared_norms.size and np.max(np.abs(squared_norms - 1.0)) > 2e-3:
        log.warning("embeddings are not L2-normalised (row norms %.4g..%.4g): the thresholds 0..4 assume unit rows",
                       np.sqrt(squared_norms.min()), np.sqrt(squared_norms.max()))
    return verify_distances(distances, actual_issame, num_folds, far_target)


def evaluate(embeddings: np.ndarray, actual_issame: np.ndarray, num_folds: int = 10):
    """The seed's entry point: returns ``tpr, fpr, accuracy, val, val_std, far`` (accuracy = the per-fold array).

    Args:
        embeddings: [2P, D] L2-normalised embeddings, pair k = rows 2k and 2k+1.
        actual_issame: [P] bool.
        num_folds: number of contiguous folds (10).
    """
    result = verify(embeddings, actual_issame, num_folds)
    return result.tpr, result.fpr, result.accuracy, result.val, result.val_std, result.far
