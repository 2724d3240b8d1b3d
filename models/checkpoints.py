"""Reading TensorFlow checkpoints: which prefix a path means, which kind it is, and its embedding weights.

A checkpoint is a prefix with `<prefix>.index` and `<prefix>.data-*` files beside it: one of ours (a TF2
object-based `tf.train.Checkpoint`, with the run's args.json beside it or one folder up for best/) or one of the
seed's (a TF1 name-based `Saver` checkpoint, read by nets.seed_checkpoint). Training (resume, fine-tuning) and
loading (models.loading) both read them through here.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator
from pathlib import Path

import keras
import tensorflow as tf

ARGS_FILE = "args.json"  # a run's resolved train_nets.Args, beside its checkpoints
STATE_FILE = "checkpoint"  # TensorFlow's record of a folder's latest checkpoint
_CHECKPOINT_FILE = re.compile(r"\.index|\.data-\d+-of-\d+")


def resolve_checkpoint(path: str | Path) -> str:
    """The checkpoint prefix that `path` means: a prefix, one of its .index/.data-* files, a folder (the latest
    checkpoint its `checkpoint` state file names, else the one checkpoint it holds).

    FileNotFoundError when there is none, or when a folder without a state file holds several (they are listed).
    """
    path = Path(path)
    if _CHECKPOINT_FILE.fullmatch(path.suffix):
        path = path.with_suffix("")
    if path.is_dir():
        return _folder_checkpoint(path)
    if not Path(f"{path}.index").is_file():
        raise FileNotFoundError(f"checkpoint {path} not found: no TF checkpoint at {path} (expected {path}.index and "
                                f"{path}.data-*; pass the prefix, e.g. .../InsightFace_iter-10000 or the seed's "
                                f".../InsightFace_iter_best_710000.ckpt, or a run folder)")
    return str(path)


def _folder_checkpoint(folder: Path) -> str:
    latest = tf.train.latest_checkpoint(str(folder))
    if latest:
        return latest
    prefixes = sorted(str(index.with_suffix("")) for index in folder.glob("*.index"))
    if len(prefixes) == 1:
        return prefixes[0]
    if not prefixes:
        raise FileNotFoundError(f"no checkpoint in folder {folder} (no *.index file)")
    raise FileNotFoundError(f"{folder} is a folder with {len(prefixes)} checkpoints and no '{STATE_FILE}' file naming "
                            f"the latest: pass the prefix of one (the .index file name without '.index'): "
                            f"{', '.join(prefixes)}")


def looks_like_checkpoint(path: str | Path) -> bool:
    """True when `path` is a folder, a checkpoint's .index/.data-* file or a prefix with an .index beside it: what
    resolve_checkpoint is asked about (it may still find none there)."""
    path = Path(path)
    return path.is_dir() or bool(_CHECKPOINT_FILE.fullmatch(path.suffix)) or Path(f"{path}.index").is_file()


@contextlib.contextmanager
def reading(prefix: str) -> Iterator[None]:
    """Turns TensorFlow's errors on reading checkpoint `prefix` (an OpError, or an IndexError for a short data file)
    into one ValueError naming its files."""
    try:
        yield
    except (tf.errors.OpError, IndexError) as err:
        message = " ".join((err.message if isinstance(err, tf.errors.OpError) else str(err)).split())[:300]
        raise ValueError(f"checkpoint {prefix} (its .index and .data-* files) cannot be read: {message}") from err


def is_object_checkpoint(prefix: str) -> bool:
    """True for a TF2 object-based checkpoint (ours), False for a TF1 name-based one (the seed's Saver)."""
    with reading(prefix):
        return any(name == "_CHECKPOINTABLE_OBJECT_GRAPH" for name, _ in tf.train.list_variables(prefix))


def find_args_json(path: str | Path) -> Path:
    """args.json of a checkpoint prefix or a file of a run: beside it, or one folder up (for best/)."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    for candidate in (folder / ARGS_FILE, folder.parent / ARGS_FILE):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"no {ARGS_FILE} beside checkpoint {path} (looked in {folder} and {folder.parent})")


def read_args_json(path: str | Path) -> dict:
    """The values of an args.json; ValueError naming the file when it is not a JSON object."""
    try:
        values = json.loads(Path(path).read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(values, dict):
        raise ValueError(f"{path}: expected a JSON object of Args fields, found {type(values).__name__}")
    return values


def restore_embedding_weights(model: keras.Model, prefix: str) -> None:
    """Reads the network weights of one of our training checkpoints into `model` (head and optimizer ignored)."""
    with reading(prefix):
        status = tf.train.Checkpoint(model=model).read(prefix)
    status.expect_partial()
    try:
        status.assert_existing_objects_matched()
    except AssertionError as err:
        raise ValueError(f"checkpoint {prefix} does not match the network built from its {ARGS_FILE}: {err}") from err
