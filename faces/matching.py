"""Comparing two faces (cosine similarity, the protocol's squared distance, the decision at a threshold) and searching
a probe in a gallery (top-k identities), on L2-normalised embeddings; numpy only.

Thresholds are those of the 10-fold protocol (eval.verification): squared L2 distances d of unit vectors, "same" when
d < threshold; d = 2 - 2 cos, so that is cos > eval.verification.distance_to_cosine(threshold).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from eval.identification import identity_scores
from eval.verification import distance_to_cosine, pair_distances
from faces.embeddings_file import FaceEmbeddings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Comparison:
    """Two faces compared: cosine similarity and squared distance; with a threshold (a squared distance, and the same
    as a cosine), the decision."""

    cosine: float
    distance: float
    threshold: float | None = None
    threshold_cosine: float | None = None
    same: bool | None = None


def compare_embeddings(first: np.ndarray, second: np.ndarray, threshold: float | None = None) -> Comparison:
    """Compares two L2-normalised embeddings [D]; "same" when their squared distance is below `threshold`."""
    distance = float(pair_distances(np.stack([np.asarray(first, np.float64), np.asarray(second, np.float64)]))[0])
    cosine = float(distance_to_cosine(distance))
    if threshold is None:
        return Comparison(cosine, distance)
    return Comparison(cosine, distance, float(threshold), float(distance_to_cosine(threshold)), distance < threshold)


@dataclass(frozen=True)
class ReportThreshold:
    """The threshold of one entry of an evaluation report (eval_ckpt_file.py's report.json) and how it was measured:
    the mean over folds of each fold's best threshold (chosen on the other folds), as a squared distance."""

    threshold: float
    name: str  # the set evaluated
    checkpoint: str | None  # the model evaluated
    flip: str | None
    channel_order: str | None

    @property
    def threshold_cosine(self) -> float:
        return float(distance_to_cosine(self.threshold))


def threshold_from_report(path: str | Path, name: str = "") -> ReportThreshold:
    """The threshold of the report entry for set `name` ("" when the report holds one set) in `path`, a report.json
    of eval_ckpt_file.py (a list of entries) or one entry's <set>.json. ValueError naming the entries when `name` does
    not pick exactly one."""
    content = json.loads(Path(path).read_text())
    entries = content if isinstance(content, list) else [content]
    if not all(isinstance(entry, dict) and "best_thresholds" in entry for entry in entries):
        raise ValueError(f"{path}: not an evaluation report (eval_ckpt_file.py's report.json): no best_thresholds")
    chosen = [entry for entry in entries if not name or entry.get("name") == name]
    if len(chosen) != 1:
        listed = ", ".join(f"{entry.get('name')} ({entry.get('checkpoint')})" for entry in entries)
        raise ValueError(f"{path}: {len(chosen)} entries for set {name or '(any)'}; it holds: {listed}. Name one set "
                         "(each entry is one set x checkpoint; evaluate the model alone for one threshold)")
    entry = chosen[0]
    return ReportThreshold(float(np.mean(entry["best_thresholds"])), str(entry.get("name")), entry.get("checkpoint"),
                           entry.get("flip"), entry.get("channel_order"))


@dataclass(frozen=True)
class Match:
    """A gallery identity found for a probe: its best cosine similarity and the gallery image that gave it."""

    identity: str
    score: float
    path: str


def search(probe: np.ndarray, gallery: FaceEmbeddings, top_k: int = 5) -> list[Match]:
    """The `top_k` gallery identities most similar to the L2-normalised `probe` [D], best first, each scored by its
    best gallery image (eval.identification.identity_scores)."""
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, received {top_k}")
    identities, scores = identity_scores(np.asarray(probe)[None], gallery.embeddings, gallery.labels)
    similarities = gallery.embeddings.astype(np.float64) @ np.asarray(probe, np.float64)
    labels = np.asarray(gallery.labels)
    matches = []
    for column in np.argsort(-scores[0], kind="stable")[:top_k]:
        rows = np.flatnonzero(labels == identities[column])
        best = rows[np.argmax(similarities[rows])]
        matches.append(Match(str(identities[column]), float(scores[0, column]), gallery.paths[best]))
    return matches
