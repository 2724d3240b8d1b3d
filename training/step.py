"""One training step under a tf.distribute strategy: forward, margin loss, weight decay, backward, update.

Each replica computes its loss as (sum of its cross-entropies) / (global batch) + weight decay / replicas, so that the
gradients, summed over replicas by the optimiser's all-reduce, are those of the mean loss over the global batch plus
the weight decay once. Each replica draws its own dropout masks (see _replica_dropout_forward). Gradient
accumulation splits each replica's batch into `grad_accum_steps` micro-batches whose gradients are summed before the
single update. Clipping (clip_grad_norm) scales the backbone's part of that update, summed over the micro-batches and
the replicas and unscaled from the loss scale, to a global norm; the head's part is never clipped.

With a PartialFC head (losses.partial_fc) each replica adds the whole global batch's cross-entropy, computed across the
replicas' shards, to its loss undivided: its gradient on each replica is already exact for that replica's shard rows
and its own embeddings, so the backbone's gradients, summed by the all-reduce, are those of the mean loss again.
"""

from __future__ import annotations

from typing import Callable

import keras
import tensorflow as tf

from losses.partial_fc import PartialFC, Sample
from training.optim import decayed_variables, weight_decay_loss



def make_train_step(strategy: tf.distribute.Strategy, model: keras.Model, head: keras.layers.Layer | PartialFC,
                    optimizer: keras.optimizers.Optimizer, global_batch: int, *, weight_decay: float,
                    grad_accum_steps: int = 1, jit_compile: bool = False, clip_grad_norm: float = 0.0,
                    label_smoothing: float = 0.0) -> Callable[[tf.Tensor, tf.Tensor], dict]:
    """A tf.function (images, labels) -> dict of scalar metrics, summed over replicas, that updates the weights.

    Args:
        strategy: the tf.distribute strategy that built the model, head and optimiser.
        head: the full margin head (a MarginHead, updated by `optimizer`) or a PartialFC, whose shards each replica
            samples and updates itself (PartialFC.apply) at the optimiser's learning rate and update count.
        global_batch: images per step over all replicas (the loss is their mean).
        weight_decay: factor of the L2 penalty on decayed_variables (training.optim) and on a PartialFC's sampled rows.
        grad_accum_steps: micro-batches each replica's batch is split into before the one update.
        jit_compile: compile the forward/backward pass with XLA (not with a PartialFC: its sample size varies).
        clip_grad_norm: the largest global norm of the backbone's gradient (model's variables); 0 = no clipping.
        label_smoothing: eps of the smoothed cross-entropy (smoothed_cross_entropy); 0 = the plain one.
    The loss is scaled when `optimizer` is a keras.optimizers.LossScaleOptimizer (mixed_float16).
    """
    partial_fc = isinstance(head, PartialFC)
    if partial_fc:
        check_partial_fc_options(jit_compile, label_smoothing)
    replicas = strategy.num_replicas_in_sync
    backbone = model.trainable_variables
    # A PartialFC's shards are no optimiser's variables: each replica updates its own (PartialFC.apply).
    variables = backbone if partial_fc else backbone + head.trainable_variables
    decayed = decayed_variables(variables)
    scale_loss = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
    inner_optimizer = optimizer.inner_optimizer if scale_loss else optimizer

    def clip_backbone(grads: list[tf.Tensor]) -> list[tf.Tensor]:
        """The backbone's gradients, clipped as their sum over the replicas, in the loss scale's units (the optimiser
        divides by the scale), each replica's share: the optimiser's all-reduce sums the shares to the clipped sum."""
        if replicas > 1:
            grads = tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, grads)
        limit = clip_grad_norm * optimizer.dynamic_scale if scale_loss else clip_grad_norm
        clipped, _ = tf.clip_by_global_norm(grads, limit)
        return [g / replicas for g in clipped] if replicas > 1 else clipped

    forward = _replica_dropout_forward(model) if replicas > 1 else lambda images: model(images, training=True)
    # Batch-norm moving statistics (every non-trainable variable but the random states): a mirrored Keras variable
    # (aggregation "none") assigned in a replica changes that replica's copy only, and checkpoints and validation
    # would read replica 0's. After each step every copy takes their mean over all replicas (of every worker):
    # momentum * moving + (1 - momentum) * batch statistics is linear, so that is the update by the mean of the
    # replicas' statistics, as the seed's towers' one shared set moved on average. With sync_bn they are equal.
    random_states = {id(v) for v in random_state_variables(model)}
    moving_statistics = [v for v in model.non_trainable_variables if id(v) not in random_states]

    def average_moving_statistics() -> None:
        # tf.identity: a value on this replica's device (a multi-worker all-reduce refuses one without a device).
        means = tf.distribute.get_replica_context().all_reduce(
            tf.distribute.ReduceOp.MEAN, [tf.identity(v.value) for v in moving_statistics])
        for variable, mean in zip(moving_statistics, means):
            variable.assign(mean)

    def full_head_loss(embeddings: tf.Tensor, labels: tf.Tensor, sample: None) -> tuple[tf.Tensor, dict, list]:
        """Cross-entropy of this replica's rows / global batch; metrics of those rows; no extra gradient target."""
        del sample
        logits = head(embeddings, labels)
        cross_entropy = tf.reduce_sum(smoothed_cross_entropy(labels, logits, label_smoothing)) / global_batch
        labels = tf.cast(labels, tf.int64)
        correct = tf.reduce_sum(tf.cast(tf.argmax(logits, axis=-1) == labels, tf.float32))
        correct_plain = tf.reduce_sum(tf.cast(tf.argmax(head.plain_logits(embeddings), axis=-1) == labels, tf.float32))
        return cross_entropy, {"inference_loss": cross_entropy, "correct": correct, "correct_plain": correct_plain}, []

    def partial_fc_loss(embeddings: tf.Tensor, labels: tf.Tensor, sample: Sample) -> tuple[tf.Tensor, dict, list]:
        """The global batch's cross-entropy (the same on every replica, each replica's gradient exact for its rows and
        embeddings), reported as 1/replicas shares; the L2 of the sampled rows, which belong to this replica alone."""
        rows = head.rows(sample)
        out = head.loss(embeddings, labels, rows, sample, global_batch)
        rows_decay = weight_decay_loss([rows], weight_decay) / grad_accum_steps
        metrics = {"inference_loss": out["loss"] / replicas, "correct": out["correct"] / replicas,
                   "correct_plain": out["correct_plain"] / replicas, "rows_decay": rows_decay}
        return out["loss"] + rows_decay, metrics, [rows]

    head_loss = partial_fc_loss if partial_fc else full_head_loss

    def micro_step(images: tf.Tensor, labels: tf.Tensor, sample: Sample | None = None):
        with tf.GradientTape() as tape:
            embeddings = forward(images)
            loss, metrics, extra_targets = head_loss(embeddings, labels, sample)
            wd_loss = weight_decay_loss(decayed, weight_decay) / (replicas * grad_accum_steps)
            loss = loss + wd_loss
            scaled = optimizer.scale_loss(loss) if scale_loss else loss
        grads = tape.gradient(scaled, variables + extra_targets)
        metrics["wd_loss"] = wd_loss + metrics.pop("rows_decay", 0.0)
        return grads, metrics

    # A nested tf.function only for XLA: synchronised BN all-reduces inside the step, which a nested function forbids.
    compiled_micro_step = tf.function(micro_step, jit_compile=True) if jit_compile else micro_step

    def replica_step(images: tf.Tensor, labels: tf.Tensor) -> dict:
        # One sample of a PartialFC's classes for the whole update: every micro-batch's gradient is on the same rows.
        sample = head.sample(labels, optimizer.iterations) if partial_fc else None
        grads, totals = None, None
        for chunk_images, chunk_labels in zip(tf.split(images, grad_accum_steps), tf.split(labels, grad_accum_steps)):
            chunk_grads, chunk_metrics = compiled_micro_step(chunk_images, chunk_labels, sample)
            if grads is None:
                grads, totals = chunk_grads, chunk_metrics
            else:
                grads = [g + c for g, c in zip(grads, chunk_grads)]
                totals = {k: totals[k] + chunk_metrics[k] for k in totals}
        head_grads = grads[len(variables):]
        grads = grads[:len(variables)]
        if clip_grad_norm:
            grads = clip_backbone(grads[:len(backbone)]) + grads[len(backbone):]
        if partial_fc:
            grads = apply_partial_fc(sample, head_grads[0], grads)
            totals["sampled_classes"] = tf.cast(tf.size(sample.index), tf.float32)
        optimizer.apply_gradients(zip(grads, variables))
        if replicas > 1 and moving_statistics:
            average_moving_statistics()
        return totals

    def apply_partial_fc(sample: Sample, rows_grad: tf.Tensor, grads: list[tf.Tensor]) -> list[tf.Tensor]:
        """Updates this replica's sampled rows at the rate and update count the optimiser is about to apply; returns
        the backbone's gradients. Under mixed_float16 the rows' gradient is unscaled, and the update is skipped on
        every replica when any gradient of any replica is not finite: the backbone's gradients are then made NaN, so
        that the loss-scale optimiser (which checks the first replica's) skips its update and lowers the scale too."""
        learning_rate, iteration = inner_optimizer.learning_rate, tf.identity(optimizer.iterations)
        if not scale_loss:
            head.apply(sample, rows_grad, learning_rate, iteration)
            return grads
        rows_grad = rows_grad / tf.cast(optimizer.dynamic_scale, rows_grad.dtype)
        finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g in [rows_grad, *grads]])
        if replicas > 1:
            finite = tf.distribute.get_replica_context().all_reduce(
                tf.distribute.ReduceOp.MIN, tf.cast(finite, tf.float32)) > 0.5
        tf.cond(finite, lambda: head.apply(sample, rows_grad, learning_rate, iteration), lambda: None)
        not_finite = tf.where(finite, 0.0, float("nan"))
        return [g + tf.cast(not_finite, g.dtype) for g in grads]

    @tf.function
    def train_step(images: tf.Tensor, labels: tf.Tensor) -> dict:
        per_replica = strategy.run(replica_step, args=(images, labels))
        totals = {k: strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None) for k, v in per_replica.items()}
        metrics = {
            "inference_loss": totals["inference_loss"],
            "wd_loss": totals["wd_loss"],
            "total_loss": totals["inference_loss"] + totals["wd_loss"],
            "accuracy": totals["correct"] / global_batch,
            "accuracy_plain": totals["correct_plain"] / global_batch,
        }
        if partial_fc:
            metrics["sampled_classes"] = totals["sampled_classes"]
        return metrics

    return train_step


def check_partial_fc_options(jit_compile: bool, label_smoothing: float) -> None:
    """ValueError naming the Args keys a Partial FC step cannot take."""
    if jit_compile or label_smoothing:
        raise ValueError("Args: partial_fc=true cannot take jit_compile=true (its sampled class count changes every "
                         "step) or label_smoothing > 0 (its classes are spread over the replicas): turn those off")


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
    run draws what an uninterrupted one does. The scope defers the pass's other assignments (batch-norm moving
    statistics): they are applied after it, to this replica's copy (make_train_step then averages the copies).
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


def distributed_batches(strategy: tf.distribute.Strategy, epoch_part: Callable[[tuple[int, int]], tf.data.Dataset],
                        global_batch: int) -> tf.data.Dataset | tf.distribute.DistributedDataset:
    """One epoch of global batches for `strategy`, each worker reading only its part.

    `epoch_part((index, count))` is the epoch's dataset of rows [index * B / count, (index + 1) * B / count) of every
    global batch of B = `global_batch` (TrainData.dataset's `shard`). Worker w of W is given part (w, W), split in
    order among its replicas: global replica w * local + r gets the same rows as in a one-process run, so the batch
    composition is a single process's whatever the worker count.
    """
    if strategy.num_replicas_in_sync == 1:
        return epoch_part((0, 1))

    def worker_part(context: tf.distribute.InputContext) -> tf.data.Dataset:
        part = epoch_part((context.input_pipeline_id, context.num_input_pipelines))
        per_replica = context.get_per_replica_batch_size(global_batch)
        local_replicas = strategy.num_replicas_in_sync // context.num_input_pipelines
        if local_replicas == 1:
            return part
        # The strategy deals a worker's elements to its replicas in turn: one element per replica, in replica order.
        return part.flat_map(lambda images, labels: tf.data.Dataset.from_tensor_slices(
            (tf.reshape(images, [local_replicas, per_replica, *images.shape[1:]]),
             tf.reshape(labels, [local_replicas, per_replica]))))

    return strategy.distribute_datasets_from_function(worker_part)
