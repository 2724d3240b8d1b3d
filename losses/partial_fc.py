"""Partial FC: the class centres sharded over the replicas of a tf.distribute strategy, with an exact softmax.

Replica g of N owns the contiguous classes shard_ranges(C, N)[g] as a plain variable [rows_g, D] (one row per class
centre) on its own device, with its optimiser slots; no device holds, and nothing builds, the whole matrix. A step
on each replica (inside strategy.run, or with no strategy for N = 1):

    sample = head.sample(labels, iteration)        # the rows of this shard the update uses
    with tf.GradientTape() as tape:
        rows = head.rows(sample)                   # [k, D], differentiated as a tensor
        out = head.loss(embeddings, labels, rows, sample, global_batch)
    grads = tape.gradient(out["loss"], backbone_variables + [rows])
    head.apply(sample, grads[-1], learning_rate, iteration)

Every replica all-gathers the embeddings and labels of the global batch and computes their logits against its
sampled rows; the cross-entropy is exact across the shards: the row maxima are all-gathered and the sums of
exp(z - max) and of the target logits all-reduced (insightface arcface_torch's partial_fc_v2). With sample_rate < 1
each shard keeps every class of the global batch (positives) and random other rows up to int(sample_rate * rows),
drawn statelessly from (seed, iteration, shard), so that a resumed run samples what an uninterrupted one does.
"""

from __future__ import annotations

import logging
import math
from typing import NamedTuple, Sequence

import numpy as np
import tensorflow as tf

from losses import face_losses
from losses.margins import resolve_margins

log = logging.getLogger(__name__)

OPTIMIZERS = ("sgd", "adamw")
# training.optim.make_optimizer's AdamW constants (torch's), which the sparse update reproduces.
ADAM_BETA_1, ADAM_BETA_2, ADAM_EPSILON = 0.9, 0.999, 1e-8
# Keras' truncated normal (2 standard deviations) divides by this to keep the requested standard deviation.
TRUNCATED_NORMAL_STDDEV_FACTOR = 0.87962566103423978
# Folded into a shard's seed for its sampling stream (its initial values use the unfolded seed).
SAMPLING_STREAM = 1


def shard_ranges(num_classes: int, num_shards: int) -> list[tuple[int, int]]:
    """Contiguous [start, end) class ranges; the first num_classes % num_shards shards get one class more."""
    if num_shards < 1 or num_classes < num_shards:
        raise ValueError(f"partial_fc: {num_classes} classes cannot be split into {num_shards} non-empty shards "
                         "(num_classes must be at least the number of replicas)")
    base, extra = divmod(num_classes, num_shards)
    ranges, start = [], 0
    for shard in range(num_shards):
        end = start + base + (1 if shard < extra else 0)
        ranges.append((start, end))
        start = end
    return ranges


def reshard(parts: Sequence[np.ndarray], num_shards: int) -> list[np.ndarray]:
    """[rows_i, ...] parts of one tensor (shards in order) re-split into num_shards parts by shard_ranges, each
    target part copied from the slices of the source parts it overlaps (the whole tensor is never concatenated)."""
    if not parts:
        raise ValueError("reshard: no parts given")
    trailing = {tuple(part.shape[1:]) for part in parts}
    if len(trailing) != 1:
        raise ValueError(f"reshard: the parts differ in their trailing shape: {sorted(trailing)}")
    starts = np.cumsum([0] + [part.shape[0] for part in parts])
    result = []
    for start, end in shard_ranges(int(starts[-1]), num_shards):
        pieces = [part[max(start - lo, 0):min(end, hi) - lo]
                  for part, lo, hi in zip(parts, starts[:-1], starts[1:]) if lo < end and hi > start]
        result.append(np.concatenate(pieces, axis=0))
    return result


class Sample(NamedTuple):
    """The rows of this replica's shard that one update uses."""
    index: tf.Tensor         # [k] int32: sorted row ids within the shard
    num_positive: tf.Tensor  # int32 scalar: how many of them are classes of the global batch


class PartialFC(tf.Module):
    """The class centres of `num_classes` identities sharded over `num_shards` replicas, their margin softmax and
    their sparse optimiser (momentum SGD or AdamW, Keras' formulas).

    Args:
        num_classes, embedding_size: C and D.
        loss, margins, easy_margin, interclass_filtering_threshold: as losses.margin_head.MarginHead.
        sample_rate: in (0, 1]: the share of each shard's rows an update samples (positives always).
        seed: of the initial values and of the sampling.
        devices: this worker's replica devices (strategy.extended.worker_devices; (None,) = default placement):
            one shard is created on each, shards first_shard .. first_shard + len(devices) - 1 of num_shards
            (default len(devices)). Construct it outside strategy.scope(): the shards are plain variables.
        optimizer: "sgd" (m = momentum m - lr g; w += m; the L2 of the rows belongs in the caller's loss) or "adamw"
            (decoupled decay weight_decay, then Adam with training.optim.make_optimizer's constants).
    """

    def __init__(self, num_classes: int, embedding_size: int, *, loss: str = "arcface",
                 margins: dict[str, float] | None = None, sample_rate: float = 1.0, seed: int = 0,
                 easy_margin: bool = False, interclass_filtering_threshold: float = 0.0,
                 devices: Sequence[str | None] = (None,), first_shard: int = 0, num_shards: int | None = None,
                 optimizer: str = "sgd", momentum: float = 0.9, weight_decay: float = 0.0,
                 name: str = "partial_fc") -> None:
        super().__init__(name=name)
        margins = resolve_margins(loss, margins, easy_margin, interclass_filtering_threshold)
        if not 0.0 < sample_rate <= 1.0:
            raise ValueError(f"sample_rate={sample_rate} must be in (0, 1] (1 = every class centre)")
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer: expected one of {', '.join(OPTIMIZERS)} with partial_fc, "
                             f"received {optimizer!r}")
        if momentum < 0 or weight_decay < 0:
            raise ValueError(f"momentum={momentum} and weight_decay={weight_decay} must be >= 0")
        devices = list(devices)
        num_shards = len(devices) if num_shards is None else int(num_shards)
        if not devices or first_shard < 0 or first_shard + len(devices) > num_shards:
            raise ValueError(f"partial_fc: shards {first_shard}..{first_shard + len(devices) - 1} (one per device) "
                             f"do not lie in 0..{num_shards - 1}")
        self.num_classes, self.embedding_size = int(num_classes), int(embedding_size)
        self.loss_name = loss
        self.margins = margins
        self.easy_margin, self.interclass_filtering_threshold = bool(easy_margin), float(interclass_filtering_threshold)
        self.sample_rate, self.seed = float(sample_rate), int(seed)
        self.optimizer, self.momentum, self.weight_decay = optimizer, float(momentum), float(weight_decay)
        self.first_shard, self.num_shards = int(first_shard), num_shards
        self.ranges = shard_ranges(self.num_classes, num_shards)[first_shard:first_shard + len(devices)]
        self.devices = devices
        # Saved with the shards, so that a resume on another replica count is refused before restoring anything.
        self.layout = tf.Variable([self.first_shard, len(devices), num_shards, self.num_classes], dtype=tf.int64,
                                  trainable=False, name=f"{name}/layout")
        slot_names = ("momentum",) if optimizer == "sgd" else ("m", "v")
        self.shards: list[tf.Variable] = []
        self.slots: dict[str, list[tf.Variable]] = {slot: [] for slot in slot_names}
        for local, (device, (start, end)) in enumerate(zip(devices, self.ranges)):
            shard = first_shard + local
            with tf.device(device):
                self.shards.append(tf.Variable(self._initial_rows(shard, end - start), name=f"{name}/shard_{shard}"))
                for slot in slot_names:
                    self.slots[slot].append(tf.Variable(tf.zeros((end - start, self.embedding_size)),
                                                        trainable=False, name=f"{name}/{slot}_{shard}"))

    def _initial_rows(self, shard: int, rows: int) -> tf.Tensor:
        """Rows of keras' GlorotNormal for the full [D, C] head (truncated at 2 sd), drawn from (seed, shard)."""
        stddev = math.sqrt(2.0 / (self.embedding_size + self.num_classes)) / TRUNCATED_NORMAL_STDDEV_FACTOR
        return tf.random.stateless_truncated_normal((rows, self.embedding_size), seed=self._shard_seed(shard),
                                                    stddev=stddev)

    def _shard_seed(self, shard: int) -> tf.Tensor:
        return tf.constant([self.seed, shard], dtype=tf.int64)

    # --- inside a replica function ------------------------------------------------------------------------------

    def _local_shard(self) -> tuple[int, tf.distribute.ReplicaContext | None]:
        """(this replica's index into self.shards, its replica context when there are several replicas)."""
        context = tf.distribute.get_replica_context()
        if context is None:
            raise ValueError("partial_fc: call sample/loss/apply inside strategy.run (a replica context)")
        if context.num_replicas_in_sync != self.num_shards:
            raise ValueError(f"partial_fc: built for {self.num_shards} shards but the strategy has "
                             f"{context.num_replicas_in_sync} replicas")
        replica = tf.get_static_value(context.replica_id_in_sync_group)
        if replica is None:
            raise ValueError("partial_fc: the replica id is not known while tracing; use MirroredStrategy or "
                             "MultiWorkerMirroredStrategy")
        local = int(replica) - self.first_shard
        if not 0 <= local < len(self.shards):
            raise ValueError(f"partial_fc: replica {int(replica)} has no shard on this worker "
                             f"(shards {self.first_shard}..{self.first_shard + len(self.shards) - 1})")
        return local, (context if self.num_shards > 1 else None)

    # The collectives take their destination from the value's device: tf.identity places it on this replica's
    # device (an input tensor of the replica function has none under MultiWorkerMirroredStrategy).
    @staticmethod
    def _gather(context: tf.distribute.ReplicaContext | None, value: tf.Tensor) -> tf.Tensor:
        return value if context is None else context.all_gather(tf.identity(value), axis=0)

    @staticmethod
    def _sum(context: tf.distribute.ReplicaContext | None, value: tf.Tensor) -> tf.Tensor:
        return value if context is None else context.all_reduce(tf.distribute.ReduceOp.SUM, tf.identity(value))

    def sample(self, labels: tf.Tensor, iteration: tf.Tensor) -> Sample:
        """The rows of this replica's shard for one update whose labels (this replica's, all its micro-batches)
        are `labels`: every class of the global batch in the shard, and random others up to
        int(sample_rate * rows); all rows when sample_rate is 1."""
        local, context = self._local_shard()
        start, end = self.ranges[local]
        rows = end - start
        labels = self._gather(context, tf.cast(tf.reshape(labels, [-1]), tf.int32))
        in_shard = tf.logical_and(labels >= start, labels < end)
        hits = tf.scatter_nd(tf.expand_dims(tf.boolean_mask(labels, in_shard) - start, 1),
                             tf.ones_like(tf.boolean_mask(labels, in_shard)), [rows])
        positive = hits > 0
        num_positive = tf.reduce_sum(tf.cast(positive, tf.int32))
        if self.sample_rate == 1.0:
            return Sample(tf.range(rows, dtype=tf.int32), num_positive)
        seed = tf.random.experimental.stateless_fold_in(
            tf.random.experimental.stateless_fold_in(self._shard_seed(self.first_shard + local), SAMPLING_STREAM),
            tf.cast(iteration, tf.int64))
        # Random scores in [0, 1), 2 for the positives: the top k are the positives, then random negatives.
        scores = tf.where(positive, 2.0, tf.random.stateless_uniform([rows], seed=seed))
        k = tf.maximum(int(self.sample_rate * rows), num_positive)
        index = tf.sort(tf.math.top_k(scores, k=k, sorted=False).indices)
        return Sample(index, num_positive)

    def rows(self, sample: Sample) -> tf.Tensor:
        """The sampled class centres [k, D] of this replica's shard; create it inside the GradientTape and
        differentiate with respect to it."""
        local, _ = self._local_shard()
        return tf.gather(self.shards[local], sample.index)

    def _logits(self, embeddings: tf.Tensor, labels: tf.Tensor, weights: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """(margin logits, plain logits) of embeddings against weights [D, k] from one matmul; labels -1 take no
        margin."""
        if self.loss_name == "softmax":
            plain = face_losses.softmax_logits(embeddings, None, weights)
            return plain, plain
        cos = face_losses.cosine(embeddings, weights)
        logits = face_losses.loss_logits(self.loss_name, cos, labels, self.margins, self.easy_margin,
                                         self.interclass_filtering_threshold)
        return logits, self.margins["s"] * cos

    def loss(self, embeddings: tf.Tensor, labels: tf.Tensor, rows: tf.Tensor, sample: Sample,
             global_batch: int) -> dict[str, tf.Tensor]:
        """The exact softmax cross-entropy of the global (micro-)batch over every shard, from this replica's
        embeddings [b, D] and labels [b]; see the module docstring.

        Returns "loss": sum of the gathered rows' cross-entropies / global_batch, the same on every replica, whose
        gradient is exact for this replica's `rows` and embeddings (add it undivided to each replica's objective);
        "correct" / "correct_plain": gathered rows whose margin / plain target logit is >= every logit (the same on
        every replica); "sampled": k of this replica.
        """
        local, context = self._local_shard()
        start, end = self.ranges[local]
        embeddings = self._gather(context, tf.cast(embeddings, tf.float32))
        labels = self._gather(context, tf.cast(tf.reshape(labels, [-1]), tf.int32))
        owned = tf.logical_and(labels >= start, labels < end)
        # Position of each owned label among the sampled rows (every positive is sampled); -1 elsewhere.
        position = tf.searchsorted(sample.index, tf.where(owned, labels - start, 0))
        local_labels = tf.where(owned, tf.cast(position, tf.int32), -1)
        target = tf.one_hot(local_labels, tf.shape(sample.index)[0], dtype=tf.float32)
        logits, plain = self._logits(embeddings, local_labels, tf.transpose(rows))
        fixed, plain = tf.stop_gradient(logits), tf.stop_gradient(plain)

        local_max = tf.stack([tf.reduce_max(fixed, axis=1), tf.reduce_max(plain, axis=1)])
        if context is None:
            row_max, plain_max = tf.unstack(local_max)
        else:
            gathered = tf.reshape(self._gather(context, local_max), [self.num_shards, 2, -1])
            row_max, plain_max = tf.unstack(tf.reduce_max(gathered, axis=0))
        exp = tf.exp(fixed - row_max[:, None])
        exp_sum, target_logit, plain_target = tf.unstack(self._sum(context, tf.stack([
            tf.reduce_sum(exp, axis=1), tf.reduce_sum(fixed * target, axis=1), tf.reduce_sum(plain * target, axis=1)])))
        total = tf.reduce_sum(tf.math.log(exp_sum) + row_max - target_logit) / global_batch
        softmax_minus_target = (exp / exp_sum[:, None] - target) / global_batch

        @tf.custom_gradient
        def cross_entropy(z: tf.Tensor):
            # The all-reduced sums are constants here: no collective in the backward, no gradient counted N times.
            return tf.identity(total), lambda upstream: upstream * softmax_minus_target

        return {"loss": cross_entropy(logits),
                "correct": tf.reduce_sum(tf.cast(target_logit >= row_max, tf.float32)),
                "correct_plain": tf.reduce_sum(tf.cast(plain_target >= plain_max, tf.float32)),
                "sampled": tf.cast(tf.shape(sample.index)[0], tf.float32)}

    def apply(self, sample: Sample, rows_grad: tf.Tensor, learning_rate: tf.Tensor, iteration: tf.Tensor) -> None:
        """Update the sampled rows of this replica's shard and their slots (Keras 3's SGD / AdamW formulas at
        update count `iteration`); the other rows and slots are not touched."""
        local, _ = self._local_shard()
        shard, index = self.shards[local], tf.expand_dims(sample.index, 1)
        lr = tf.cast(learning_rate, tf.float32)
        grad = tf.convert_to_tensor(rows_grad, tf.float32)
        weights = tf.gather(shard, sample.index)
        if self.optimizer == "sgd":
            momentum = self.slots["momentum"][local]
            velocity = tf.gather(momentum, sample.index) * self.momentum - grad * lr
            momentum.scatter_nd_update(index, velocity)
            shard.scatter_nd_update(index, weights + velocity)
            return
        weights = weights - weights * tf.cast(self.weight_decay, tf.float32) * lr
        step = tf.cast(iteration + 1, tf.float32)
        alpha = lr * tf.sqrt(1 - tf.pow(ADAM_BETA_2, step)) / (1 - tf.pow(ADAM_BETA_1, step))
        m_slot, v_slot = self.slots["m"][local], self.slots["v"][local]
        m = tf.gather(m_slot, sample.index)
        v = tf.gather(v_slot, sample.index)
        m = m + (grad - m) * (1 - ADAM_BETA_1)
        v = v + (tf.square(grad) - v) * (1 - ADAM_BETA_2)
        m_slot.scatter_nd_update(index, m)
        v_slot.scatter_nd_update(index, v)
        shard.scatter_nd_update(index, weights - (m * alpha) / (tf.sqrt(v) + ADAM_EPSILON))

    # --- outside the replica functions --------------------------------------------------------------------------

    @property
    def weights(self) -> list[tf.Variable]:
        """The shards and every slot: what a checkpoint must hold."""
        return self.shards + [variable for slot in self.slots.values() for variable in slot]

    def layout_dict(self) -> dict[str, int]:
        """This worker's place in the split: first_shard, local_shards, num_shards, num_classes."""
        return {"first_shard": self.first_shard, "local_shards": len(self.shards), "num_shards": self.num_shards,
                "num_classes": self.num_classes}

    def replica_bytes(self) -> list[int]:
        """Bytes of each local shard with its slots."""
        per_row = self.embedding_size * 4 * (1 + len(self.slots))
        return [(end - start) * per_row for start, end in self.ranges]

    def full_weights(self) -> np.ndarray:
        """The class weights [D, C] (MarginHead's layout); needs every shard on this worker."""
        if len(self.shards) != self.num_shards:
            raise ValueError(f"partial_fc: full_weights needs all {self.num_shards} shards; this worker holds "
                             f"{len(self.shards)}")
        return np.concatenate([shard.numpy() for shard in self.shards], axis=0).T

    def assign_full(self, weights: np.ndarray) -> None:
        """Set this worker's shards from class weights [D, C] (MarginHead's layout); the slots are kept."""
        weights = np.asarray(weights)
        if weights.shape != (self.embedding_size, self.num_classes):
            raise ValueError(f"partial_fc: class weights of shape {(self.embedding_size, self.num_classes)} "
                             f"([embedding_size, num_classes]) expected; received {weights.shape}")
        for shard, (start, end) in zip(self.shards, self.ranges):
            shard.assign(weights[:, start:end].T.astype(np.float32))
