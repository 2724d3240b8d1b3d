"""1:N identification on embeddings, in numpy: a gallery / probe split per identity, ranks and the CMC curve, and
open-set TPIR at FPIR with identities left out of the gallery.

Conventions (stated once here; identify.py and faces.search follow them):

* Scores are cosine similarities of L2-normalised embeddings (higher = more alike). A probe's score for a gallery
  identity is its best score over that identity's gallery images (`identity_scores`), as a search lists them.
* A mated probe (its identity is in the gallery) has rank 1 + the number of OTHER gallery identities scoring at least
  as high as its own: ties count against it, so a network that maps every face to one vector gets rank-1 = 0, not 1.
  CMC(k) is the fraction of mated probes of rank <= k; rank-1 accuracy is CMC(1).
* Open set: the probes of identities left out of the gallery are non-mated. For a target FPIR f over N non-mated
  probes, the threshold t is the (floor(f N) + 1)-th highest of their top-1 scores, so that at most floor(f N) of them
  score strictly above t (the FPIR reached; fewer on ties). TPIR(f) is the fraction of mated probes of rank 1 whose
  score is strictly above t. When N < 1 / f even one non-mated probe above t exceeds the target: t is the highest
  non-mated score (FPIR 0) and the point is flagged `measurable: False`, as VAL@FAR is in eval.verification.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

log = logging.getLogger(__name__)

FPIR_TARGETS = (1e-2, 1e-1)
MAX_RANK = 20  # length of the CMC curve reported


@dataclass(frozen=True)
class GalleryProbeSplit:
    """Row indices into one set of embeddings: the gallery, the probes, and the identities left out of the gallery
    (whose images are all non-mated probes)."""

    gallery: np.ndarray
    probes: np.ndarray
    left_out_identities: list[str]


def split_gallery_probes(labels: Sequence[str], gallery_per_identity: int = 1, left_out_fraction: float = 0.0,
                         seed: int = 0) -> GalleryProbeSplit:
    """Splits images per identity: `gallery_per_identity` images of each identity (drawn with `seed`) into the
    gallery, the others into the probes; `left_out_fraction` of the identities (drawn with `seed`) put no image in the
    gallery, giving the open-set (non-mated) probes. The same labels and seed give the same split.

    An identity with no more than `gallery_per_identity` images gives no probe, only gallery entries (distractors).
    """
    labels = np.asarray(labels).astype(str)
    if gallery_per_identity < 1:
        raise ValueError(f"gallery_per_identity must be >= 1, received {gallery_per_identity}")
    if not 0.0 <= left_out_fraction < 1.0:
        raise ValueError(f"left_out_fraction must lie in [0, 1), received {left_out_fraction}")
    rng = np.random.default_rng(seed)
    identities = np.unique(labels)
    left_out = set(rng.choice(identities, int(round(left_out_fraction * len(identities))), replace=False).tolist())
    if left_out_fraction > 0 and not left_out:
        log.warning("left_out_fraction %g of %d identities leaves none out: no open-set probes", left_out_fraction,
                    len(identities))
    if len(left_out) == len(identities):
        raise ValueError(f"left_out_fraction {left_out_fraction} leaves all {len(identities)} identities out of the "
                         "gallery")
    gallery, probes = [], []
    for identity in identities:
        rows = np.flatnonzero(labels == identity)
        if identity in left_out:
            probes.extend(rows)
            continue
        rows = rng.permutation(rows)
        gallery.extend(rows[:gallery_per_identity])
        probes.extend(rows[gallery_per_identity:])
    return GalleryProbeSplit(np.sort(np.asarray(gallery, dtype=np.int64)), np.sort(np.asarray(probes, dtype=np.int64)),
                             sorted(left_out))


def identity_scores(probes: np.ndarray, gallery: np.ndarray,
                    gallery_labels: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(gallery identities [I] sorted, scores [P, I]): each probe's best cosine similarity over each identity's gallery
    images. Rows of `probes` [P, D] and `gallery` [G, D] must be L2-normalised."""
    probes, gallery = np.asarray(probes, np.float64), np.asarray(gallery, np.float64)
    if probes.ndim != 2 or gallery.ndim != 2 or probes.shape[1] != gallery.shape[1]:
        raise ValueError(f"probes [P, D] and gallery [G, D] must share D; received {probes.shape} and {gallery.shape}")
    if len(gallery_labels) != len(gallery) or len(gallery) == 0:
        raise ValueError(f"{len(gallery_labels)} gallery labels for {len(gallery)} gallery embeddings (need >= 1)")
    identities, column = np.unique(np.asarray(gallery_labels).astype(str), return_inverse=True)
    scores = np.full((len(identities), len(probes)), -np.inf)
    np.maximum.at(scores, column, gallery @ probes.T)  # row i: the best over the gallery images of identity i
    return identities, scores.T


@dataclass
class IdentificationResult:
    """What the 1:N protocol measures; per-probe arrays follow `mated_probes` / `non_mated_probes` (row indices).

    Attributes:
        gallery_identities: [I] sorted identity names of the gallery.
        mated_probes, ranks: [M] rows of the probes whose identity is in the gallery, and the rank of that identity.
        mated_top1_identities, mated_top1_scores: [M] the best-scoring gallery identity of each, and its score.
        non_mated_probes, non_mated_top1_scores: [N] rows of the probes of left-out identities, their top-1 score.
        cmc: [MAX_RANK] fraction of mated probes of rank <= k, k = 1, 2, ...
        open_set: per FPIR target: {fpir_target, threshold, fpir, tpir, measurable} (empty when N = 0).
    """

    gallery_identities: np.ndarray
    num_gallery_images: int
    mated_probes: np.ndarray
    ranks: np.ndarray
    mated_top1_identities: np.ndarray
    mated_top1_scores: np.ndarray
    non_mated_probes: np.ndarray
    non_mated_top1_scores: np.ndarray
    cmc: np.ndarray
    open_set: list[dict[str, Any]]

    def rank_accuracy(self, rank: int) -> float:
        """Fraction of mated probes whose identity ranks within the first `rank` (CMC(rank))."""
        return float(np.mean(self.ranks <= rank))


def threshold_at_fpir(non_mated_scores: np.ndarray, fpir_target: float) -> tuple[float, bool]:
    """(t, measurable): the (floor(f N) + 1)-th highest non-mated top-1 score (see the module docstring), and whether
    N >= 1 / f, i.e. whether one false positive fits within the target."""
    if not 0.0 < fpir_target < 1.0:
        raise ValueError(f"FPIR target must lie in (0, 1), received {fpir_target}")
    descending = np.sort(np.asarray(non_mated_scores, np.float64))[::-1]
    # 1e-9: 0.1 * 10 must count as 1 false positive allowed, not 0.999...; at most N - 1 for a t to exist.
    allowed = min(math.floor(fpir_target * len(descending) + 1e-9), len(descending) - 1)
    return float(descending[allowed]), allowed >= 1


def _open_set(ranks: np.ndarray, mated_scores: np.ndarray, non_mated_scores: np.ndarray,
              fpir_targets: Sequence[float]) -> list[dict[str, Any]]:
    points = []
    for target in fpir_targets:
        threshold, measurable = threshold_at_fpir(non_mated_scores, target)
        points.append({"fpir_target": float(target), "threshold": threshold,
                       "fpir": float(np.mean(non_mated_scores > threshold)),
                       "tpir": float(np.mean((ranks == 1) & (mated_scores > threshold))), "measurable": measurable})
        if not measurable:
            log.warning("TPIR at FPIR %g not measurable: %d non-mated probes, fewer than the %d one false positive "
                        "needs", target, len(non_mated_scores), math.ceil(1 / target))
    return points


def evaluate_identification(embeddings: np.ndarray, labels: Sequence[str], split: GalleryProbeSplit,
                            fpir_targets: Sequence[float] = FPIR_TARGETS,
                            max_rank: int = MAX_RANK) -> IdentificationResult:
    """Runs the protocol of the module docstring on L2-normalised `embeddings` [N, D] with identity `labels` [N]."""
    embeddings, labels = np.asarray(embeddings), np.asarray(labels).astype(str)
    if len(embeddings) != len(labels):
        raise ValueError(f"{len(labels)} labels for {len(embeddings)} embeddings")
    identities, scores = identity_scores(embeddings[split.probes], embeddings[split.gallery], labels[split.gallery])
    probe_labels = labels[split.probes]
    mated = np.isin(probe_labels, identities)
    if not mated.any():
        raise ValueError("no mated probe: every probe's identity is missing from the gallery (each identity needs "
                         "more images than gallery_per_identity)")
    mated_scores = scores[mated]
    own = mated_scores[np.arange(len(mated_scores)), np.searchsorted(identities, probe_labels[mated])]
    ranks = np.sum(mated_scores >= own[:, None], axis=1)  # own identity included: the count of others + 1
    non_mated_top1 = scores[~mated].max(axis=1)
    return IdentificationResult(
        gallery_identities=identities, num_gallery_images=len(split.gallery), mated_probes=split.probes[mated],
        ranks=ranks, mated_top1_identities=identities[np.argmax(mated_scores, axis=1)],
        mated_top1_scores=mated_scores.max(axis=1), non_mated_probes=split.probes[~mated],
        non_mated_top1_scores=non_mated_top1,
        cmc=np.array([np.mean(ranks <= k) for k in range(1, max_rank + 1)]),
        open_set=_open_set(ranks, own, non_mated_top1, fpir_targets) if len(non_mated_top1) else [])


def identification_report(result: IdentificationResult, name: str, paths: Sequence[str] | None = None,
                          labels: Sequence[str] | None = None) -> dict[str, Any]:
    """A JSON-ready dict of `result` (eval.report.write_json_report writes it): summary numbers, the CMC, the open-set
    points, and each probe's rank / top-1 (with its file and identity when `paths` / `labels` are given)."""

    def probes(rows: np.ndarray) -> dict[str, list]:
        listed: dict[str, list] = {"rows": rows.tolist()}
        if paths is not None:
            listed["paths"] = [paths[row] for row in rows]
        if labels is not None:
            listed["identities"] = [str(labels[row]) for row in rows]
        return listed

    return {
        "name": name, "num_gallery_identities": int(len(result.gallery_identities)),
        "num_gallery_images": result.num_gallery_images, "num_mated_probes": int(len(result.mated_probes)),
        "num_non_mated_probes": int(len(result.non_mated_probes)),
        "rank_1": result.rank_accuracy(1), "rank_5": result.rank_accuracy(5),
        "cmc": {"ranks": list(range(1, len(result.cmc) + 1)), "identification_rate": result.cmc.tolist()},
        "open_set": result.open_set,
        "mated_probes": {**probes(result.mated_probes), "rank": result.ranks.tolist(),
                         "top1_identity": result.mated_top1_identities.tolist(),
                         "top1_score": result.mated_top1_scores.tolist()},
        "non_mated_probes": {**probes(result.non_mated_probes),
                             "top1_score": result.non_mated_top1_scores.tolist()},
    }
