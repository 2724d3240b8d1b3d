"""Pairs files: read LFW's pairs.txt and the fork's explicit-file-name variant, resolve image paths, write the layout.

Formats (detected per line, both may be mixed in one file):

* Header (optional): the first non-empty line when it holds 1 or 2 integers, ``folds\\tpairs_per_fold`` in LFW.
  Without a header every line is a pair (the seed's readers dropped the first line, a real pair, of the fork's files).
* Matched pair: ``name  image1  image2``; mismatched pair: ``name1  image1  name2  image2``.
* An image field of digits only is an LFW image number: file ``<name>/<name>_%04d.<ext>`` with the first existing
  extension of .jpg .jpeg .png .bmp. Any other image field is an explicit file name inside ``<name>/`` (the fork's
  format, and what generate_pairs.py writes, extensions included).
* Fields are separated by tabs when the line holds a tab (names may then contain spaces), else by whitespace.

The LFW layout, which the 10-fold protocol relies on: the header, then for each fold `pairs_per_fold` matched lines
followed by `pairs_per_fold` mismatched lines, so contiguous folds each hold both classes.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path, PureWindowsPath
from typing import Callable, Generic, Sequence, TypeVar

import numpy as np
from tqdm import tqdm

from common.files import write_replacing
from data.image_folders import is_utf8
from data.image_io import IMAGE_EXTENSIONS

log = logging.getLogger(__name__)

MAX_LISTED_PATHS = 5  # how many missing paths an error message shows
Loaded = TypeVar("Loaded")


@dataclass(frozen=True)
class Pair:
    """One line of a pairs file; an image is an LFW number (int) or an explicit file name (str)."""

    name1: str
    image1: int | str
    name2: str
    image2: int | str

    @property
    def issame(self) -> bool:
        return self.name1 == self.name2

    def key(self) -> frozenset:
        """Identifies the pair regardless of the order of its two images."""
        return frozenset([(self.name1, self.image1), (self.name2, self.image2)])


@dataclass
class PairsFile:
    """The pairs of a file and its header (None when it has none)."""

    pairs: list[Pair]
    num_folds: int | None = None
    pairs_per_fold: int | None = None
    path: Path | None = None

    @property
    def issame(self) -> np.ndarray:
        return np.array([pair.issame for pair in self.pairs], dtype=bool)


@dataclass
class ResolvedPairs:
    """Image paths of the pairs that were found: paths[2k], paths[2k+1] = pair k of `pairs`."""

    pairs: list[Pair]
    paths: list[Path]
    issame: np.ndarray
    num_skipped: int


def _image_field(text: str) -> int | str:
    return int(text) if text.isascii() and text.isdigit() else text


def _split_fields(line: str) -> list[str]:
    """The fields of a line; none for a blank one, even when it holds a tab (an editor's leftover)."""
    if not line.strip():
        return []
    return [field.strip() for field in line.split("\t")] if "\t" in line else line.split()


def _check_inside(field: str) -> None:
    """A name or file name of a pairs file names something inside the dataset folder: refuses an absolute path and a
    '..' step, so that no pairs file makes evaluation read (and report on) files elsewhere."""
    as_windows = PureWindowsPath(field)  # splits at "/" and "\\" alike; its anchor is "/", "\\" or a drive "C:"
    if as_windows.anchor or ".." in as_windows.parts:
        raise ValueError(f"{field!r} points outside the dataset folder (an absolute path or a '..' step); pairs "
                         "files name identity folders and files inside it")


def _parse_pair(fields: list[str]) -> Pair:
    """A Pair from 3 or 4 fields; ValueError saying what is wrong otherwise."""
    if any(not field for field in fields):
        raise ValueError("empty field")
    for field in fields:
        _check_inside(field)
    if len(fields) == 3:
        name, first, second = fields
        return Pair(name, _image_field(first), name, _image_field(second))
    if len(fields) == 4:
        name1, first, name2, second = fields
        if name1 == name2:
            raise ValueError(f"a mismatched (4-field) line names the same identity {name1!r} twice")
        return Pair(name1, _image_field(first), name2, _image_field(second))
    raise ValueError(f"expected 3 fields (name, image1, image2) or 4 fields (name1, image1, name2, image2), "
                     f"found {len(fields)}")


def _header(fields: list[str]) -> tuple[int, int] | None:
    """(num_folds, pairs_per_fold) when the fields are a header: 'folds pairs' (View 2) or 'pairs' (View 1)."""
    if not 1 <= len(fields) <= 2 or not all(f.isascii() and f.isdigit() for f in fields):
        return None
    return (int(fields[0]), int(fields[1])) if len(fields) == 2 else (1, int(fields[0]))


def read_pairs(path: str | Path) -> PairsFile:
    """Reads a pairs file (see the module docstring). Malformed lines raise ValueError with file:line and the line."""
    path = Path(path)
    try:
        content = path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"pairs file not found: {path}") from None
    try:
        lines = content.decode("utf-8-sig").splitlines()  # -sig: a BOM from Windows editors
    except UnicodeDecodeError as err:
        line = content.count(b"\n", 0, err.start) + 1
        raise ValueError(f"{path}:{line}: not UTF-8 text (byte {content[err.start]:#04x}); a pairs file is a UTF-8 "
                         "text file") from None
    result = PairsFile(pairs=[], path=path)
    line_numbers: list[int] = []
    for number, line in enumerate(lines, start=1):
        fields = _split_fields(line)
        if not fields:
            continue
        header = _header(fields) if not result.pairs and result.num_folds is None else None
        if header is not None:
            result.num_folds, result.pairs_per_fold = header
            header_line = number
            continue
        try:
            result.pairs.append(_parse_pair(fields))
        except ValueError as err:
            raise ValueError(f"{path}:{number}: {err}: {line!r}") from None
        line_numbers.append(number)
    if not result.pairs:
        raise ValueError(f"{path}: no pairs found (expected lines 'name image1 image2' or "
                         "'name1 image1 name2 image2')")
    if result.num_folds is not None and result.num_folds > len(result.pairs):
        raise ValueError(f"{path}:{header_line}: the header announces {result.num_folds} folds, but the file holds "
                         f"{len(result.pairs)} pairs, fewer than one per fold")
    _warn_about_content(result, line_numbers)
    return result


def _warn_about_content(pairs_file: PairsFile, line_numbers: list[int]) -> None:
    """Logs a header that disagrees with the line count, repeated pairs and self-pairs (allowed, but suspicious)."""
    path, pairs = pairs_file.path, pairs_file.pairs
    if pairs_file.num_folds is not None:
        expected = pairs_file.num_folds * 2 * pairs_file.pairs_per_fold
        if expected != len(pairs):
            log.warning("%s: the header announces %d folds x 2 x %d = %d pairs, the file holds %d", path,
                           pairs_file.num_folds, pairs_file.pairs_per_fold, expected, len(pairs))
    first_line: dict[frozenset, int] = {}
    repeated: list[tuple[int, int]] = []  # (line, the earlier line it repeats)
    for pair, number in zip(pairs, line_numbers):
        earlier = first_line.setdefault(pair.key(), number)
        if earlier != number:
            repeated.append((number, earlier))
    if repeated:
        log.warning("%s: %d pairs repeat an earlier line (e.g. line %d repeats line %d)", path, len(repeated),
                       *repeated[0])
    self_pairs = [n for p, n in zip(pairs, line_numbers) if p.issame and p.image1 == p.image2]
    if self_pairs:
        log.warning("%s: %d pairs compare an image with itself (lines %s)", path, len(self_pairs),
                       self_pairs[:MAX_LISTED_PATHS])


def _candidate_paths(data_dir: Path, name: str, image: int | str) -> list[Path]:
    if isinstance(image, int):
        return [data_dir / name / f"{name}_{image:04d}{ext}" for ext in IMAGE_EXTENSIONS]
    return [data_dir / name / image]


def _describe_missing(data_dir: Path, name: str, image: int | str) -> str:
    if isinstance(image, int):
        extensions = "|".join(ext.lstrip(".") for ext in IMAGE_EXTENSIONS)
        return str(data_dir / name / f"{name}_{image:04d}.({extensions})")
    return str(data_dir / name / image)


def resolve_pair_paths(pairs: Sequence[Pair], data_dir: str | Path, skip_missing: bool = False) -> ResolvedPairs:
    """Finds the image files of `pairs` under `data_dir` (one folder per identity).

    Args:
        pairs: the pairs, e.g. `read_pairs(path).pairs`.
        data_dir: the dataset folder.
        skip_missing: False: any missing image raises FileNotFoundError with the count and the first paths.
            True: pairs with a missing image are left out, counted and logged (facenet's behaviour).
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"dataset folder not found: {data_dir}")
    found: dict[tuple[str, int | str], Path | None] = {}

    def locate(name: str, image: int | str) -> Path | None:
        if (name, image) not in found:
            for field in (name, image) if isinstance(image, str) else (name,):
                _check_inside(field)
            found[(name, image)] = next((p for p in _candidate_paths(data_dir, name, image) if p.is_file()), None)
        return found[(name, image)]

    kept: list[Pair] = []
    paths: list[Path] = []
    missing: list[str] = []
    for pair in pairs:
        first, second = locate(pair.name1, pair.image1), locate(pair.name2, pair.image2)
        if first is None or second is None:
            missing += [_describe_missing(data_dir, name, image)
                        for name, image, p in ((pair.name1, pair.image1, first), (pair.name2, pair.image2, second))
                        if p is None]
            continue
        kept.append(pair)
        paths += [first, second]
    num_skipped = len(pairs) - len(kept)
    if missing:
        distinct = list(dict.fromkeys(missing))
        summary = (f"{len(distinct)} images of {num_skipped} of {len(pairs)} pairs are missing under {data_dir}, "
                   f"e.g. {distinct[:MAX_LISTED_PATHS]}")
        if not skip_missing:
            raise FileNotFoundError(summary + " (set skip_missing to leave those pairs out)")
        log.warning("%s; skipped those pairs: the folds of the file no longer line up with its header", summary)
    return ResolvedPairs(kept, paths, np.array([p.issame for p in kept], dtype=bool), num_skipped)


def _check_writable_text(field: str, what: str) -> None:
    if not field or field != field.strip() or any(c in field for c in "\t\r\n") or not is_utf8(field):
        raise ValueError(f"{what}: {field!r} is empty, has surrounding spaces, holds a tab/newline or is not UTF-8, "
                         "which the tab-separated UTF-8 format cannot represent")
    _check_inside(field)


def _check_writable_image(field: int | str, what: str) -> None:
    """An image field: an LFW number, or a file name that must not look like one (names are never read as numbers,
    so all-digit identity names such as CASIA-WebFace's 0000045 need no such check)."""
    if isinstance(field, int):
        if field < 0:
            raise ValueError(f"{what}: image numbers must be >= 0, received {field}")
        return
    _check_writable_text(field, what)
    if field.isascii() and field.isdigit():
        raise ValueError(f"{what}: {field!r} is all digits and would be read back as an LFW image number")


def _format_line(pair: Pair) -> str:
    fields = [pair.name1, pair.image1, pair.image2] if pair.issame else [pair.name1, pair.image1, pair.name2,
                                                                          pair.image2]
    return "\t".join(str(field) for field in fields)


def write_pairs(path: str | Path, pairs: Sequence[Pair], num_folds: int, pairs_per_fold: int) -> Path:
    """Writes pairs in the LFW layout: header, then per fold `pairs_per_fold` matched and `pairs_per_fold` mismatched.

    The file is replaced, never appended to. ValueError when `pairs` do not follow the layout or hold a field that
    the format cannot carry (a tab, an all-digit file name).
    """
    path = Path(path)
    if len(pairs) != num_folds * 2 * pairs_per_fold:
        raise ValueError(f"{num_folds} folds x 2 x {pairs_per_fold} pairs need {num_folds * 2 * pairs_per_fold} "
                         f"pairs, received {len(pairs)}")
    for index, pair in enumerate(pairs):
        fold_position = index % (2 * pairs_per_fold)
        if pair.issame != (fold_position < pairs_per_fold):
            raise ValueError(f"pair {index} ({pair}) breaks the LFW layout: each fold lists {pairs_per_fold} "
                             "matched pairs, then as many mismatched pairs")
        for name in (pair.name1, pair.name2):
            _check_writable_text(name, f"pair {index}")
        for image in (pair.image1, pair.image2):
            _check_writable_image(image, f"pair {index}")
        if pair.issame and pair.image1 == pair.image2:
            raise ValueError(f"pair {index} ({pair}) compares an image with itself")
    counts = Counter(pair.key() for pair in pairs)
    if len(counts) != len(pairs):
        raise ValueError(f"{len(pairs) - len(counts)} pairs are repeated")
    return write_replacing(path, "\n".join([f"{num_folds}\t{pairs_per_fold}", *map(_format_line, pairs)]) + "\n")


def read_pair_files(resolved: ResolvedPairs, read: Callable[[Path], Loaded],
                    description: str = "reading images") -> tuple[list[int], dict[Path, Loaded]]:
    """Reads each distinct file of `resolved` once (images recur across pairs) with `read`.

    A file `read` rejects (OSError/ValueError) leaves its pairs out: they are counted and logged, never fatal.
    Returns the indices of the pairs whose two files were read, and path -> what `read` returned.
    """
    loaded: dict[Path, Loaded] = {}
    unreadable: list[str] = []
    for path in tqdm(list(dict.fromkeys(resolved.paths)), desc=description, unit="image", leave=False):
        try:
            loaded[path] = read(path)
        except (OSError, ValueError) as err:
            unreadable.append(f"{path} ({err})")
    usable = [k for k in range(len(resolved.pairs))
              if resolved.paths[2 * k] in loaded and resolved.paths[2 * k + 1] in loaded]
    if unreadable:
        log.warning("%d images could not be read, e.g. %s; left out the %d pairs using them", len(unreadable),
                       unreadable[:MAX_LISTED_PATHS], len(resolved.pairs) - len(usable))
    return usable, loaded


@dataclass
class PairImages(Generic[Loaded]):
    """The pairs of a pairs file whose two images were found and read, in the order of the file: pair k is the files
    paths[2k] and paths[2k+1], read as images[2k] and images[2k+1].

    Attributes:
        paths: the 2P image files.
        images: what the reader returned for each of them.
        issame: bool [P].
        num_folds: folds the file's header announces; None without a header or for a View-1 header of one set.
        num_listed: pairs the file lists, those left out included.
    """

    paths: list[Path]
    images: list[Loaded]
    issame: np.ndarray
    num_folds: int | None
    num_listed: int

    @property
    def num_pairs(self) -> int:
        return int(self.issame.shape[0])


def load_pair_images(pairs_path: str | Path, data_dir: str | Path, read: Callable[[Path], Loaded],
                     skip_missing: bool = False, description: str = "reading images") -> PairImages[Loaded]:
    """Reads a pairs file, finds its images under `data_dir` (resolve_pair_paths) and reads each once with `read`
    (read_pair_files); pairs with an unreadable image are left out and counted. ValueError when no pair is left."""
    pairs_file = read_pairs(pairs_path)
    resolved = resolve_pair_paths(pairs_file.pairs, data_dir, skip_missing)
    usable, loaded = read_pair_files(resolved, read, description)
    if not usable:
        raise ValueError(f"{pairs_path}: no pair has two readable images under {data_dir}")
    paths = [resolved.paths[2 * k + side] for k in usable for side in (0, 1)]
    # A View-1 style header ("1100": one set) announces no folds to cross-validate over.
    num_folds = pairs_file.num_folds if (pairs_file.num_folds or 0) >= 2 else None
    return PairImages(paths, [loaded[path] for path in paths], resolved.issame[usable], num_folds,
                      len(pairs_file.pairs))
