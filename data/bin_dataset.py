"""InsightFace `.bin` verification sets (lfw, cfp_ff, cfp_fp, agedb_30, ...): a pickle of (encoded images, issame).

Images 2k and 2k+1 form pair k; `issame[k]` tells whether they show one person. Files written by Python 2 hold the
images as `str`, read here as bytes (`encoding="bytes"`).

A pickle can run any function while it loads, so `.bin` files are read with a restricted unpickler: it builds
only what such a file holds (tuples, lists, bytes, bools, ints, and numpy arrays of those) and refuses, before
anything runs, every other class or callable a file asks for. Images stay uint8 (12,000 LFW images at 112x112 take
0.45 GB; the seed built two float64 arrays of 3.6 GB each); the evaluator flips them on the fly, and keeps an
image that several pairs share once (load_bin_distinct).

A small `.bin` can declare huge images (PNG compresses a blank 10^8-pixel image to 100 kB): before anything is
decoded, every image header is read and the file is refused when one image is over data.image_io.MAX_IMAGE_PIXELS or
all of them together over MAX_BIN_PIXELS.
"""

from __future__ import annotations

import io
import logging
import os
import pickle
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Hashable, Sequence

import numpy as np

from common.files import replacing
from data.image_io import check_header, decode_rgb, decode_to_size

log = logging.getLogger(__name__)

_DECODE_THREADS = min(8, os.cpu_count() or 1)  # OpenCV decodes with the GIL released
MAX_BIN_PIXELS_ENV = "INSIGHTFACE_TF_MAX_BIN_PIXELS"
# Largest total of width x height over the images of one .bin: 500 megapixels, 1.5 GB of RGB at the stored size
# (LFW, 12,000 images of 112x112, declares 150 megapixels). Override with INSIGHTFACE_TF_MAX_BIN_PIXELS, or by
# assigning data.bin_dataset.MAX_BIN_PIXELS.
MAX_BIN_PIXELS = int(os.environ.get(MAX_BIN_PIXELS_ENV, 500_000_000))


class UnsafePickleError(ValueError):
    """A `.bin` asked for a class or function that a verification set never holds; nothing of it was run."""


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """What `_codecs.encode` does in Python-3 pickles of bytes (protocol 2), restricted to that one use."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise UnsafePickleError(f"refused _codecs.encode({type(text).__name__}, {encoding!r}): only the latin-1 "
                                f"encoding of a bytes object is allowed")
    return text.encode("latin1")


def _allowed_globals() -> dict[tuple[str, str], Any]:
    """The only names a `.bin` may ask for: pure constructors of bytes and numpy arrays, none with side effects."""
    from numpy._core import multiarray

    allowed: dict[tuple[str, str], Any] = {("_codecs", "encode"): _latin1_encode}
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "_reconstruct")] = multiarray._reconstruct
        allowed[(module, "scalar")] = multiarray.scalar
    allowed[("numpy", "ndarray")] = np.ndarray
    allowed[("numpy", "dtype")] = np.dtype
    return allowed


class _BinUnpickler(pickle.Unpickler):
    def __init__(self, stream: io.BufferedIOBase, path: Path) -> None:
        super().__init__(stream, encoding="bytes")
        self.path = path
        self.allowed = _allowed_globals()

    def find_class(self, module: str, name: str) -> Any:
        module_text = module.decode() if isinstance(module, bytes) else module
        name_text = name.decode() if isinstance(name, bytes) else name
        try:
            return self.allowed[(module_text, name_text)]
        except KeyError:
            raise UnsafePickleError(
                f"{self.path}: refused to load {module_text}.{name_text}: a .bin verification set holds only "
                f"encoded images and booleans, so this file is not one (it could run code); nothing was executed"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"{self.path}: refused a persistent id {pid!r}; not a .bin verification set")


def _as_bytes(item: Any, path: Path, index: int) -> bytes:
    if isinstance(item, (bytes, bytearray)):
        return bytes(item)
    if isinstance(item, np.ndarray) and item.dtype == np.uint8:
        return item.tobytes()
    raise ValueError(f"{path}: image {index} is a {type(item).__name__}, expected encoded image bytes")


def _as_bool(item: Any, path: Path, index: int) -> bool:
    if isinstance(item, (bool, np.bool_)) or (isinstance(item, (int, np.integer)) and item in (0, 1)):
        return bool(item)
    raise ValueError(f"{path}: issame entry {index} is {item!r}, expected a boolean")


def read_bin(path: str | Path) -> tuple[list[bytes], np.ndarray]:
    """The encoded images and the issame flags of a `.bin`, without decoding; refuses a hostile file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f".bin verification set not found: {path}")
    with open(path, "rb") as stream:
        try:
            content = _BinUnpickler(stream, path).load()
        except UnsafePickleError:
            raise
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
                MemoryError) as err:
            raise ValueError(f"{path}: not a readable .bin verification set ({type(err).__name__}: {err})") from None
    if not isinstance(content, (tuple, list)) or len(content) != 2:
        raise ValueError(f"{path}: expected a pickle of (images, issame), got a {type(content).__name__}")
    images, issame = content
    if not isinstance(images, (list, tuple, np.ndarray)) or not isinstance(issame, (list, tuple, np.ndarray)):
        raise ValueError(f"{path}: expected (list of images, list of booleans), got ({type(images).__name__}, "
                         f"{type(issame).__name__})")
    if len(images) != 2 * len(issame):
        raise ValueError(f"{path}: {len(images)} images for {len(issame)} pairs; expected 2 images per pair")
    copies: dict[int, bytes] = {}  # a pickle may reference one bytearray many times: copy it once
    encoded = []
    for index, item in enumerate(images):
        if id(item) not in copies:
            copies[id(item)] = _as_bytes(item, path, index)
        encoded.append(copies[id(item)])
    flags = np.array([_as_bool(item, path, index) for index, item in enumerate(issame)], dtype=bool)
    return encoded, flags


def check_declared_size(encoded: Sequence[bytes], path: Path) -> None:
    """Reads every image header (nothing is decoded); ImageDecodeError naming the image when one is unreadable or over
    MAX_IMAGE_PIXELS, ValueError when together they declare more than MAX_BIN_PIXELS."""
    total = 0
    for index, image in enumerate(encoded):
        _, width, height, _ = check_header(image, f"{path} image {index}")
        total += width * height
    if total > MAX_BIN_PIXELS:
        raise ValueError(f"{path}: its {len(encoded)} images declare {total:,} pixels together, over the limit of "
                         f"{MAX_BIN_PIXELS:,} for one .bin (a decompression bomb?); raise {MAX_BIN_PIXELS_ENV} to "
                         f"load it")


def distinct_rows(keys: Sequence[Hashable]) -> tuple[list[int], np.ndarray]:
    """Groups equal keys: the positions of each distinct key's first occurrence, and for every key the index of its
    group among those (int64 [len(keys)]), so that keys[firsts[rows[i]]] == keys[i]."""
    row_of: dict[Hashable, int] = {}
    firsts: list[int] = []
    rows = np.empty(len(keys), dtype=np.int64)
    for position, key in enumerate(keys):
        if key not in row_of:
            row_of[key] = len(firsts)
            firsts.append(position)
        rows[position] = row_of[key]
    return firsts, rows


def load_bin_distinct(path: str | Path, image_size: Sequence[int] | None = (112, 112)
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Loads a `.bin` verification set, decoding each distinct image once.

    A `.bin` stores the two images of every pair, so an image in 20 pairs is stored 20 times; identical encoded
    bytes are the same image (exact, and far cheaper than comparing pixels), kept once.

    Args:
        path: the `.bin` file.
        image_size: (height, width) every image is resized to (bilinear) when it differs; None keeps the stored
            size, which must then be the same for all images.

    Returns:
        (images, pair_rows, issame): the distinct images, RGB uint8 [N, H, W, 3] in order of first appearance;
        int64 [P, 2], pair k = images[pair_rows[k, 0]] and images[pair_rows[k, 1]]; bool [P].

    Raises:
        UnsafePickleError (a ValueError): the file asks for a class or function a `.bin` never holds; nothing of
            it was run.
        ValueError: the file is not a `.bin`, or an image cannot be decoded (named by its index in the file).
    """
    path = Path(path)
    encoded, issame = read_bin(path)
    if not encoded:
        raise ValueError(f"{path}: the .bin holds no pairs")
    check_declared_size(encoded, path)  # what the file declares, repeats included: refused before any decoding
    firsts, rows = distinct_rows(encoded)
    target = tuple(int(side) for side in image_size) if image_size is not None else None

    def decode(index: int) -> np.ndarray:
        return decode_to_size(encoded[index], f"{path} image {index}", target)

    with ThreadPoolExecutor(_DECODE_THREADS) as pool:
        first = decode(firsts[0])
        images = np.empty((len(firsts), *first.shape), dtype=np.uint8)
        images[0] = first
        for row, image in enumerate(pool.map(decode, firsts[1:]), start=1):
            if image.shape != first.shape:
                raise ValueError(f"{path}: image {firsts[row]} is {image.shape[:2]}, image 0 is {first.shape[:2]}; "
                                 f"pass image_size to resize them")
            images[row] = image
    log.info("%s: %d pairs (%d same), %d distinct of %d images, %s", path, len(issame), int(issame.sum()),
             len(firsts), len(encoded), images.shape[1:3])
    return images, rows.reshape(-1, 2), issame


def load_bin(path: str | Path, image_size: Sequence[int] | None = (112, 112)) -> tuple[np.ndarray, np.ndarray]:
    """Loads a `.bin` verification set in its stored layout (load_bin_distinct, then every pair's two images).

    Returns:
        (images, issame): RGB uint8 [2P, H, W, 3] with pair k = images 2k and 2k+1, and bool [P].
    """
    images, pair_rows, issame = load_bin_distinct(path, image_size)
    return images[pair_rows.reshape(-1)], issame


def write_bin(path: str | Path, encoded_images: list[bytes], issame: Sequence[bool]) -> Path:
    """Writes a `.bin` verification set that InsightFace's loaders and `load_bin` read: pickle of
    (list of encoded images, list of bools), images 2k and 2k+1 forming pair k.

    Every image is decoded once first, so a file that cannot be evaluated is never written (ValueError naming the
    image index). The file is replaced atomically.
    """
    path = Path(path)
    if len(encoded_images) != 2 * len(issame) or not issame:
        raise ValueError(f"write_bin: {len(encoded_images)} images for {len(issame)} pairs; expected 2 images per "
                         f"pair and at least one pair")
    images = [_as_bytes(item, path, index) for index, item in enumerate(encoded_images)]
    flags = [_as_bool(item, path, index) for index, item in enumerate(issame)]
    with ThreadPoolExecutor(_DECODE_THREADS) as pool:
        list(pool.map(lambda index: decode_rgb(images[index], f"write_bin image {index}"), range(len(images))))
    with replacing(path) as temporary, open(temporary, "wb") as stream:
        pickle.dump((images, flags), stream, protocol=4)
    return path
