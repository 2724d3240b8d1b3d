"""Training checkpoints: what they hold, where they live, and loading the embedding network back from one.

A run's `ckpt_path` holds `args.json` (the resolved train_nets.Args), `InsightFace_iter-<step>.{index,data-*}` written
by a `tf.train.CheckpointManager` (network, head, optimizer, step, data position) and `best/`, the best validated
checkpoint plus `best/embedding.keras`, the embedding network alone. TensorFlow writes the checkpoint files first and
then atomically replaces the `checkpoint` state file, so a crash during a save leaves the previous checkpoint as the
latest one.
"""

from __future__ import annotations

import logging
from pathlib import Path

import keras
import tensorflow as tf

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "InsightFace_iter"
BEST_DIR = "best"
BEST_CHECKPOINT_NAME = "InsightFace_iter_best"
EMBEDDING_EXPORT = "embedding.keras"
ARGS_FILE = "args.json"


class Progress(tf.Module):
    """The loop's position, saved with each checkpoint: step, epoch, batches done in that epoch, best accuracy."""

    def __init__(self) -> None:
        super().__init__(name="progress")
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        self.batch_in_epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="batch_in_epoch")
        self.best_accuracy = tf.Variable(-1.0, dtype=tf.float64, trainable=False, name="best_accuracy")


def find_args_json(checkpoint: str | Path) -> Path:
    """args.json of a checkpoint prefix: beside it, or one folder up (for best/)."""
    prefix = Path(checkpoint)
    folder = prefix if prefix.is_dir() else prefix.parent
    for candidate in (folder / ARGS_FILE, folder.parent / ARGS_FILE):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"no {ARGS_FILE} beside checkpoint {checkpoint} (looked in {folder} and {folder.parent})")


def resolve_checkpoint(path: str | Path) -> str:
    """A checkpoint prefix from a prefix or a folder (its latest checkpoint); FileNotFoundError when there is none."""
    path = Path(path)
    if path.is_dir():
        latest = tf.train.latest_checkpoint(str(path))
        if latest is None:
            raise FileNotFoundError(f"no checkpoint in folder {path}")
        return latest
    if not Path(f"{path}.index").is_file():
        raise FileNotFoundError(f"checkpoint {path} not found (no {path}.index)")
    return str(path)


def is_object_checkpoint(prefix: str) -> bool:
    """True for a TF2 object-based checkpoint (ours), False for a TF1 name-based one (the seed's Saver)."""
    return any(name == "_CHECKPOINTABLE_OBJECT_GRAPH" for name, _ in tf.train.list_variables(prefix))


def restore_embedding_weights(model: keras.Model, prefix: str) -> None:
    """Reads the network weights of one of our training checkpoints into `model` (head and optimizer ignored)."""
    status = tf.train.Checkpoint(model=model).read(prefix)
    status.expect_partial()
    try:
        status.assert_existing_objects_matched()
    except AssertionError as err:
        raise ValueError(f"checkpoint {prefix} does not match the network built from its args.json: {err}") from err


def load_embedding_model(path: str | Path) -> keras.Model:
    """The embedding network of a `.keras` file, one of our checkpoints (prefix or run folder) or a seed TF1 checkpoint."""
    path = Path(path)
    if path.suffix == ".keras":
        return keras.saving.load_model(path, compile=False)
    prefix = resolve_checkpoint(path)
    if not is_object_checkpoint(prefix):
        from nets import seed_checkpoint

        return seed_checkpoint.load(prefix)[0]
    import train_nets
    from training.build import build_embedding_model

    args = train_nets.Args.load(find_args_json(prefix), strict=False)
    model = build_embedding_model(args)
    restore_embedding_weights(model, prefix)
    log.info("restored %s from %s", model.name, prefix)
    return model


def restore_for_fine_tuning(model: keras.Model, head: keras.layers.Layer, path: str | Path, with_head: bool) -> None:
    """Starts a run from another run's backbone (ours or the seed's TF1 checkpoint), optionally its class weights."""
    prefix = resolve_checkpoint(path)
    if is_object_checkpoint(prefix):
        restore_embedding_weights(model, prefix)
        if with_head:
            tf.train.Checkpoint(head=head).read(prefix).expect_partial().assert_existing_objects_matched()
        log.info("fine-tuning from %s (%s)", prefix, "backbone and class weights" if with_head else "backbone")
        return
    from nets import seed_checkpoint

    class_weights = seed_checkpoint.restore_weights(model, prefix)
    if with_head and not seed_checkpoint.restore_class_weights(head, class_weights):
        raise ValueError(f"restore_head: the class weights of {prefix} do not fit the head "
                         f"{tuple(head.embedding_weights.shape)} (see the log)")
    log.info("fine-tuning from the seed checkpoint %s", prefix)
