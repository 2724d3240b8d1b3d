"""Validation during training: the eval/ protocol (eval.sets) run with a Keras model on sets already in memory."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import keras
import numpy as np
import tensorflow as tf

from eval.sets import VerificationSet, run_verification


def embedding_function(model: keras.Model) -> Callable[[np.ndarray], np.ndarray]:
    """A compiled inference call of `model` (moving BN statistics, no dropout) returning numpy embeddings."""
    infer = tf.function(lambda batch: model(batch, training=False))
    return lambda batch: infer(tf.convert_to_tensor(batch, tf.float32)).numpy()


def validate(model: keras.Model, sets: Sequence[VerificationSet], *, step: int, batch_size: int,
             channel_order: str) -> dict[str, dict]:
    """Runs the 10-fold protocol on every set (eval.sets.load_verification_sets) with images normalised in
    `channel_order`, `batch_size` at a time; returns {set name: its report (eval.sets.result_report)}."""
    embed = embedding_function(model)
    return {vset.name: run_verification(embed, vset, batch_size=batch_size, preprocessing=channel_order, step=step)
            for vset in sets}
