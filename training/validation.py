"""Validation during training: the eval/ protocol on .bin sets and a custom folder + pairs file."""

from __future__ import annotations

import logging
from pathlib import Path

import keras
import tensorflow as tf

log = logging.getLogger(__name__)


def load_validation_sets(args) -> list:
    """The verification sets that `args` names (eval_datasets in eval_db_path, eval_dataset + eval_pair), in memory."""
    if not args.eval_datasets and not args.eval_dataset:
        return []
    from eval.sets import load_bin_set, load_pairs_set

    sets = []
    for name in args.eval_datasets:
        path = Path(args.eval_db_path) / f"{name}.bin"
        sets.append(load_bin_set(path, image_size=tuple(args.image_size), name=name))
    if args.eval_dataset:
        sets.append(load_pairs_set(args.eval_dataset, args.eval_pair, image_size=tuple(args.image_size)))
    return sets


def embedding_function(model: keras.Model):
    """A compiled inference call of `model` (moving BN statistics, no dropout) returning numpy embeddings."""
    infer = tf.function(lambda batch: model(batch, training=False))
    return lambda batch: infer(tf.convert_to_tensor(batch, tf.float32)).numpy()


def validate(args, step: int, model: keras.Model, sets: list) -> dict[str, dict]:
    """Runs the 10-fold protocol on every set; returns {set name: its report (eval.sets.result_report)}."""
    from eval.sets import run_verification

    embed = embedding_function(model)
    return {vset.name: run_verification(embed, vset, batch_size=args.batch_size, channel_order=args.channel_order,
                                        step=step)
            for vset in sets}
