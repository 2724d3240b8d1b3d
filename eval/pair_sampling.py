"""Drawing verification pairs from identity folders: distinct, identity-balanced, deterministic, folded as LFW.

Each pair is drawn first in a balanced way (matched: the identities with 2+ images in turn, in a freshly shuffled
order each round; mismatched: every identity in turn against a random other one), with a few retries when the draw
repeats an earlier pair; if those retries fail, it is drawn uniformly over all candidate pairs, which repeats an
earlier pair with probability at most 1/2 because this path only runs while under half of the candidates are taken.
When more than half of the candidates are wanted, all of them are listed and a random subset is taken instead.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from data.image_folders import is_utf8, printable_path
from eval.pairs import Pair

log = logging.getLogger(__name__)

BALANCED_TRIES = 8
# A candidate pair as two (identity index, image index) keys, the smaller first, so (a, b) and (b, a) coincide.
Candidate = tuple[tuple[int, int], tuple[int, int]]


@dataclass
class Identity:
    name: str
    files: list[str]


def _check_name(name: str, path: Path) -> None:
    if name != name.strip() or any(c in name for c in "\t\r\n"):
        raise ValueError(f"{printable_path(path)}: the name {name!r} holds a tab/newline or surrounding spaces, which "
                         "a tab-separated pairs file cannot represent; rename it")
    if not is_utf8(name):
        # Refused before anything is written, as training refuses such class names: a pairs file is UTF-8 text.
        raise ValueError(f"{printable_path(path)}: the name is not valid UTF-8, which a pairs file (UTF-8 text) "
                         "cannot hold; rename it")


def scan_identities(data_dir: str | Path, image_extensions: Sequence[str]) -> list[Identity]:
    """Identity folders of `data_dir` (sorted) with their image files (sorted); hidden entries are ignored.

    Raises FileNotFoundError for a missing folder and ValueError for a name the pairs format cannot carry.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"dataset folder not found: {data_dir}")
    extensions = {ext.lower() for ext in image_extensions}
    if not extensions or any(not ext.startswith(".") for ext in extensions):
        raise ValueError(f"image_extensions must be suffixes such as '.png', received {list(image_extensions)}")
    identities, other_files, empty_folders = [], 0, 0
    for folder in sorted(p for p in data_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        _check_name(folder.name, folder)
        entries = [p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")]
        files = sorted(p.name for p in entries if p.suffix.lower() in extensions)
        for name in files:
            _check_name(name, folder / name)
        other_files += len(entries) - len(files)
        if files:
            identities.append(Identity(folder.name, files))
        else:
            empty_folders += 1
    if other_files or empty_folders:
        log.info("%s: ignored %d files without an image extension %s and %d folders without images", data_dir,
                    other_files, sorted(extensions), empty_folders)
    return identities


class _RoundRobin:
    """Yields the given items in turn, in a new random order each round."""

    def __init__(self, items: Sequence[int], rng: np.random.Generator) -> None:
        self.items, self.rng, self.order = list(items), rng, []

    def next(self) -> int:
        if not self.order:
            self.order = [self.items[k] for k in self.rng.permutation(len(self.items))]
        return self.order.pop()


def _ordered(first: tuple[int, int], second: tuple[int, int]) -> Candidate:
    return (first, second) if first < second else (second, first)


class PairSampler:
    """Draws distinct matched and mismatched pairs of `identities` with a seeded generator."""

    def __init__(self, identities: Sequence[Identity], seed: int) -> None:
        self.identities = list(identities)
        self.sizes = np.array([len(identity.files) for identity in self.identities], dtype=np.int64)
        self.rng = np.random.default_rng(seed)
        self.owner = np.repeat(np.arange(len(self.sizes)), self.sizes)  # identity of each image, all images in a row
        self.first_image = np.cumsum(self.sizes) - self.sizes
        self.pairs_in = self.sizes * (self.sizes - 1) // 2  # matched candidates of each identity
        self.matched_capacity = int(self.pairs_in.sum())
        self.mismatched_capacity = int((self.sizes.sum() ** 2 - np.sum(self.sizes ** 2)) // 2)

    def _two_images_of(self, identity: int) -> Candidate:
        first = int(self.rng.integers(self.sizes[identity]))
        second = int(self.rng.integers(self.sizes[identity] - 1))
        second += second >= first  # a different image of the same identity: never a self-pair
        return _ordered((identity, first), (identity, second))

    def _image_of(self, identity: int) -> tuple[int, int]:
        return identity, int(self.rng.integers(self.sizes[identity]))

    def _sample(self, count: int, capacity: int, draw_balanced: Callable[[], Candidate],
                draw_uniform: Callable[[], Candidate],
                all_candidates: Callable[[], list[Candidate]]) -> list[Candidate]:
        if 2 * count > capacity:
            candidates = all_candidates()
            return [candidates[k] for k in self.rng.choice(len(candidates), size=count, replace=False)]
        chosen: dict[Candidate, None] = {}  # insertion-ordered set
        for _ in range(count):
            candidate = next((c for c in (draw_balanced() for _ in range(BALANCED_TRIES)) if c not in chosen), None)
            while candidate is None or candidate in chosen:
                candidate = draw_uniform()
            chosen[candidate] = None
        return list(chosen)

    def matched(self, count: int) -> list[Candidate]:
        """`count` distinct pairs of two different images of one identity."""
        eligible = np.flatnonzero(self.sizes >= 2)
        turn = _RoundRobin(eligible, self.rng)
        cumulative = np.cumsum(self.pairs_in)

        def uniform() -> Candidate:  # an identity with probability proportional to its number of pairs
            return self._two_images_of(int(np.searchsorted(cumulative, self.rng.integers(cumulative[-1]),
                                                            side="right")))

        def every_pair() -> list[Candidate]:
            return [((int(i), a), (int(i), b))
                    for i in eligible for a, b in itertools.combinations(range(self.sizes[i]), 2)]

        return self._sample(count, self.matched_capacity, lambda: self._two_images_of(turn.next()), uniform,
                            every_pair)

    def mismatched(self, count: int) -> list[Candidate]:
        """`count` distinct pairs of images of two different identities."""
        turn = _RoundRobin(range(len(self.sizes)), self.rng)

        def balanced() -> Candidate:
            identity = turn.next()
            other = int(self.rng.integers(len(self.sizes) - 1))
            other += other >= identity
            return _ordered(self._image_of(identity), self._image_of(other))

        def uniform() -> Candidate:  # two images drawn uniformly until their identities differ
            while True:
                first, second = self.rng.integers(len(self.owner), size=2)
                if self.owner[first] != self.owner[second]:
                    return _ordered(self._image_key(first), self._image_key(second))

        def every_pair() -> list[Candidate]:
            return [((i, a), (j, b)) for i, j in itertools.combinations(range(len(self.sizes)), 2)
                    for a in range(self.sizes[i]) for b in range(self.sizes[j])]

        return self._sample(count, self.mismatched_capacity, balanced, uniform, every_pair)

    def _image_key(self, image: int) -> tuple[int, int]:
        identity = int(self.owner[image])
        return identity, int(image - self.first_image[identity])

    def to_pair(self, candidate: Candidate) -> Pair:
        (i, a), (j, b) = candidate
        first, second = self.identities[i], self.identities[j]
        return Pair(first.name, first.files[a], second.name, second.files[b])


def sample_folds(identities: Sequence[Identity], num_folds: int, pairs_per_fold: int,
                 seed: int) -> tuple[list[Pair], int]:
    """Pairs in the LFW layout (per fold: matched, then mismatched) and the pairs per fold actually made.

    When the data holds fewer distinct pairs than asked, it logs a warning with the numbers and makes as many per
    fold as it can for every fold (folds stay balanced); ValueError when it cannot make one of each per fold.
    """
    if num_folds < 1 or pairs_per_fold < 1:
        raise ValueError(f"num_folds and pairs_per_fold must be >= 1, received {num_folds} and {pairs_per_fold}")
    sampler = PairSampler(identities, seed)
    possible = min(sampler.matched_capacity, sampler.mismatched_capacity) // num_folds
    numbers = (f"{len(sampler.sizes)} identities, {int(sampler.sizes.sum())} images: "
               f"{sampler.matched_capacity} distinct matched and {sampler.mismatched_capacity} distinct mismatched "
               "pairs")
    if possible == 0:
        raise ValueError(f"cannot make {num_folds} folds with one matched and one mismatched pair each from "
                         f"{numbers} (matched pairs need identities with 2+ images, mismatched ones 2+ identities)")
    per_fold = min(pairs_per_fold, possible)
    if per_fold < pairs_per_fold:
        log.warning("asked for %d folds x %d matched + %d mismatched pairs, but the data has %s: writing %d of "
                       "each per fold", num_folds, pairs_per_fold, pairs_per_fold, numbers, per_fold)
    matched = sampler.matched(num_folds * per_fold)
    mismatched = sampler.mismatched(num_folds * per_fold)
    pairs = []
    for fold in range(num_folds):
        block = slice(fold * per_fold, (fold + 1) * per_fold)
        pairs += [sampler.to_pair(c) for c in matched[block] + mismatched[block]]
    return pairs, per_fold
