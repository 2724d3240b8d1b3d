"""One training step under a tf.distribute strategy: forward, margin loss, weight decay, backward, update.

Each replica computes its loss as (sum of its cross-entropies) / (global batch) + weight decay / replicas, so that the
gradients, summed over replicas by the optimiser's all-reduce, are those of the mean loss over the global batch plus
the weight decay once. Each replica draws its own dropout masks (see _replica_dropout_forward). Gradient
accumulation splits each replica's batch into `grad_accum_steps` micro-batches whose gradients are summed before the
single update. Clipping (clip_grad_norm) scales the backbone's part of that update, summed over the micro-batches and
the replicas and unscaled from the loss scale, to a global norm; the head's part is never clipped.
"""

from __future__ import annotations

from typing import Callable

import keras
import tensorflow as tf

from training.optim import decayed_variables, weight_decay_loss


def make_train_step(strategy: tf.distribute.Strategy, model: keras.Model, head: keras.layers.Layer,
                    optimizer: keras.optimizers.Optimizer, global_batch: int, *, weight_decay: float,
                    grad_accum_steps: int = 1, jit_compile: bool = False, clip_grad_norm: float = 0.0,
                    label_smoothing: float = 0.0) -> Callable[[tf.Tensor, tf.Tensor], dict]:
    """A tf.function (images, labels) -> dict of scalar metrics, summed over replicas, that updates the weights.

    Args:
        strategy: the tf.distribute strategy that built the model, head and optimiser.
        global_batch: images per step over all replicas (the loss is their mean).
        weight_decay: factor of the L2 penalty on decayed_variables (training.optim).
        grad_accum_steps: micro-batches each replica's batch is split into before the one update.
        jit_compile: compile the forward/backward pass with XLA.
        clip_grad_norm: the largest global norm of the backbone's gradient (model's variables); 0 = no clipping.
        label_smoothing: eps of the smoothed cross-entropy (smoothed_cross_entropy); 0 = the plain one.
    The loss is scaled when `optimizer` is a keras.optimizers.LossScaleOptimizer (mixed_float16).
    """
    replicas = strategy.num_replicas_in_sync
    variables = model.trainable_variables + head.trainable_variables
    decayed = decayed_variables(variables)
    scale_loss = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)

    backbone_count = len(model.trainable_variables)

    def clip_backbone(grads: list[tf.Tensor]) -> list[tf.Tensor]:
        """The backbone's gradients, clipped as their sum over the replicas, in the loss scale's units (the optimiser
        divides by the scale), each replica's share: the optimiser's all-reduce sums the shares to the clipped sum."""
        if replicas > 1:
            grads = tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, grads)
        limit = clip_grad_norm * optimizer.dynamic_scale if scale_loss else clip_grad_norm
        clipped, _ = tf.clip_by_global_norm(grads, limit)
        return [g / replicas for g in clipped] if replicas > 1 else clipped

    forward = _replica_dropout_forward(model) if replicas > 1 else lambda images: model(images, training=True)

    def micro_step(images: tf.Tensor, labels: tf.Tensor):
        with tf.GradientTape() as tape:
            embeddings = forward(images)
            logits = head(embeddings, labels)
            cross_entropy = smoothed_cross_entropy(labels, logits, label_smoothing)
            inference_loss = tf.reduce_sum(cross_entropy) / global_batch
            wd_loss = weight_decay_loss(decayed, weight_decay) / (replicas * grad_accum_steps)
            loss = inference_loss + wd_loss
            scaled = optimizer.scale_loss(loss) if scale_loss else loss
        grads = tape.gradient(scaled, variables)
        labels = tf.cast(labels, tf.int64)
        correct = tf.reduce_sum(tf.cast(tf.argmax(logits, axis=-1) == labels, tf.float32))
        correct_plain = tf.reduce_sum(tf.cast(tf.argmax(head.plain_logits(embeddings), axis=-1) == labels, tf.float32))
        return grads, {"inference_loss": inference_loss, "wd_loss": wd_loss, "correct": correct,
                       "correct_plain": correct_plain}

    # A nested tf.function only for XLA: synchronised BN all-reduces inside the step, which a nested function forbids.
    compiled_micro_step = tf.function(micro_step, jit_compile=True) if jit_compile else micro_step

    def replica_step(images: tf.Tensor, labels: tf.Tensor) -> dict:
        grads, totals = None, None
        for chunk_images, chunk_labels in zip(tf.split(images, grad_accum_steps), tf.split(labels, grad_accum_steps)):
            chunk_grads, chunk_metrics = compiled_micro_step(chunk_images, chunk_labels)
            if grads is None:
                grads, totals = chunk_grads, chunk_metrics
            else:
                grads = [g + c for g, c in zip(grads, chunk_grads)]
                totals = {k: totals[k] + chunk_metrics[k] for k in totals}
        if clip_grad_norm:
            grads = clip_backbone(grads[:backbone_count]) + grads[backbone_count:]
        optimizer.apply_gradients(zip(grads, variables))
        return totals

    @tf.function
    def train_step(images: tf.Tensor, labels: tf.Tensor) -> dict:
        per_replica = strategy.run(replica_step, args=(images, labels))
        totals = {k: strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None) for k, v in per_replica.items()}
        return {
            "inference_loss": totals["inference_loss"],
            "wd_loss": totals["wd_loss"],
            "total_loss": totals["inference_loss"] + totals["wd_loss"],
            "accuracy": totals["correct"] / global_batch,
            "accuracy_plain": totals["correct_plain"] / global_batch,
        }

    return train_step


def smoothed_cross_entropy(labels: tf.Tensor, logits: tf.Tensor, eps: float) -> tf.Tensor:
    """Each row's cross-entropy against 1 - eps + eps / C on its label and eps / C on every other class.

    That is logsumexp(z) - (1 - eps) z_label - eps mean(z), without the (batch, C) one-hot matrix; eps = 0 is the
    plain sparse cross-entropy.
    """
    plain = keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)
    if not eps:
        return plain
    # plain = logsumexp - z_label, so the smoothed loss is plain + eps (z_label - mean z).
    label_logits = tf.gather(logits, tf.cast(labels, tf.int32), axis=1, batch_dims=1)
    return plain + eps * (label_logits - tf.reduce_mean(logits, axis=-1))


def random_state_variables(model: keras.Model) -> list:
    """The model's random-generator states (Keras seed generators, e.g. of its dropout layers)."""
    return [v for v in model.non_trainable_variables if "seed_generator" in v.path]


def _replica_dropout_forward(model: keras.Model) -> Callable[[tf.Tensor], tf.Tensor]:
    """model(images, training=True) in which each replica draws other random numbers than the others.

    The seed-generator states are mirrored, so every replica would read the same state and draw one dropout mask for
    the whole global batch. The forward pass runs in a StatelessScope that gives each replica its state with the
    replica id folded in; the real states then advance by what the pass drew, equally on every replica, so a resumed
    run draws what an uninterrupted one does. The scope defers the pass's other assignments (batch-norm statistics):
    they are applied after it.
    """
    states = random_state_variables(model)
    state_ids = {id(v) for v in states}

    def forward(images: tf.Tensor) -> tf.Tensor:
        replica_id = tf.distribute.get_replica_context().replica_id_in_sync_group
        folded = [tf.cast(tf.random.experimental.stateless_fold_in(v.value, replica_id), v.dtype) for v in states]
        with keras.StatelessScope(state_mapping=list(zip(states, folded))) as scope:
            embeddings = model(images, training=True)
        for variable, start in zip(states, folded):
            variable.assign(variable.value + (scope.get_current_value(variable) - start))
        for variable in model.non_trainable_variables:
            new_value = scope.get_current_value(variable)
            if id(variable) not in state_ids and new_value is not None:
                variable.assign(new_value)
        return embeddings

    return forward
