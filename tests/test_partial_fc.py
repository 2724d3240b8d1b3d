"""losses.partial_fc: class centres sharded over replicas against the full MarginHead with Keras' optimisers, the
sampling of the rows, the placement of the shards and the refusals."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from losses import PartialFC, reshard, shard_ranges

REPO = Path(__file__).resolve().parents[1]

# One step of a tiny linear "backbone" (embeddings = x @ backbone) with either head, shared by the 2-replica script and
# the one-device test. The partial side runs inside strategy.run (or with no strategy); `it` is read before the
# backbone's optimiser counts the update.
STEPS = textwrap.dedent("""
    import numpy as np, tensorflow as tf, keras
    from losses import MarginHead, PartialFC, sparse_softmax_cross_entropy

    D, C, DIN, B, LR, L2 = 8, 13, 6, 8, 0.1, 5e-4
    rng = np.random.default_rng(0)
    X = rng.normal(size=(3, B, DIN)).astype("float32")
    Y = rng.integers(0, C, (3, B)).astype("int32")
    W0 = rng.normal(size=(DIN, D)).astype("float32")
    HEAD0 = rng.normal(size=(D, C)).astype("float32")
    # The classes of the first rows of step 0 get their embedding as centre: some rows are classified right.
    for row in range(4):
        HEAD0[:, Y[0, row]] = X[0, row] @ W0

    def make_optimizer(name, backbone):
        if name == "sgd":
            return keras.optimizers.SGD(LR, momentum=0.9)
        optimizer = keras.optimizers.AdamW(LR, weight_decay=0.1, beta_1=0.9, beta_2=0.999, epsilon=1e-8)
        optimizer.exclude_from_weight_decay(var_list=[backbone])
        return optimizer

    def full_run(loss, optimizer_name, steps, **options):
        head = MarginHead(C, loss=loss, **options)
        head.build((None, D))
        head.embedding_weights.assign(HEAD0)
        backbone = keras.Variable(W0)
        optimizer = make_optimizer(optimizer_name, backbone)
        variables = [backbone, head.embedding_weights]
        l2 = L2 if optimizer_name == "sgd" else 0.0

        @tf.function
        def step(x, y):
            with tf.GradientTape() as tape:
                embeddings = tf.matmul(x, backbone)
                logits = head(embeddings, y)
                ce = sparse_softmax_cross_entropy(logits, y)
                objective = ce + 0.5 * l2 * tf.reduce_sum(tf.square(head.embedding_weights))
            hits = [tf.reduce_sum(tf.cast(tf.argmax(z, axis=1, output_type=tf.int32) == y, tf.int32))
                    for z in (logits, head.plain_logits(embeddings))]
            with tf.control_dependencies(hits):  # the hits of the weights before the update
                optimizer.apply_gradients(zip(tape.gradient(objective, variables), variables))
            return ce, hits

        results = [step(X[i], Y[i]) for i in range(steps)]
        return ([float(ce) for ce, _ in results], [[int(h) for h in hits] for _, hits in results],
                backbone.numpy(), head.embedding_weights.numpy())

    def partial_run(strategy, loss, optimizer_name, steps, devices=(None,), **options):
        pfc = PartialFC(C, D, loss=loss, devices=devices, optimizer=optimizer_name, momentum=0.9, weight_decay=0.1,
                        **options)
        pfc.assign_full(HEAD0)
        with strategy.scope():
            backbone = keras.Variable(W0)
            optimizer = make_optimizer(optimizer_name, backbone)
            optimizer.build([backbone])
        l2 = L2 if optimizer_name == "sgd" else 0.0
        share = B // strategy.num_replicas_in_sync

        def replica_step(x, y):
            it = tf.identity(optimizer.iterations)
            sample = pfc.sample(y, it)
            with tf.GradientTape() as tape:
                rows = pfc.rows(sample)
                out = pfc.loss(tf.matmul(x, backbone), y, rows, sample, B)
                objective = out["loss"] + 0.5 * l2 * tf.reduce_sum(tf.square(rows))
            backbone_grad, rows_grad = tape.gradient(objective, [backbone, rows])
            pfc.apply(sample, rows_grad, LR, it)
            optimizer.apply_gradients([(backbone_grad, backbone)])
            return out["loss"], out["correct"], out["correct_plain"]

        @tf.function
        def step(x, y):
            return strategy.run(replica_step, (x, y))

        def replica_share(values, i):
            return strategy.experimental_distribute_values_from_function(
                lambda ctx: values[i][ctx.replica_id_in_sync_group * share:][:share])

        outputs = [[[float(v) for v in strategy.experimental_local_results(value)] for value in
                    step(replica_share(X, i), replica_share(Y, i))] for i in range(steps)]
        losses = [loss_value for loss_value, _, _ in outputs]
        hits = [[correct, plain] for _, correct, plain in outputs]
        return losses, hits, backbone.numpy(), pfc.full_weights(), pfc
""")

# (loss, optimizer, margin options): the options change the logits both heads take from face_losses.
# The last one has AdamW's two slots (test_shards_live_on_their_replica_devices reads its variables).
CASES = [("arcface", "sgd", {}), ("cosface", "sgd", {}), ("combined", "sgd", {}), ("softmax", "sgd", {}),
         ("arcface", "sgd", {"easy_margin": True, "interclass_filtering_threshold": 0.2}),
         ("cosface", "sgd", {"interclass_filtering_threshold": 0.2}), ("arcface", "adamw", {})]


def _case_name(loss: str, optimizer: str, options: dict) -> str:
    return "_".join([loss, optimizer, *options])

TWO_REPLICAS = STEPS + f"CASES = {CASES!r}\n" + textwrap.dedent("""
    import json
    from train_nets_mgpu_new import make_strategy
    strategy = make_strategy(2)
    devices = strategy.extended.worker_devices
    report = {"devices": list(devices)}

    for loss, optimizer_name, options in CASES:
        full_losses, full_hits, full_backbone, full_head = full_run(loss, optimizer_name, 3, **options)
        per_replica, hits, backbone, head, pfc = partial_run(strategy, loss, optimizer_name, 3, devices, **options)
        report["_".join([loss, optimizer_name, *options])] = {
            "full_losses": full_losses, "losses": per_replica, "full_hits": full_hits, "hits": hits,
            "backbone_diff": float(np.max(np.abs(backbone - full_backbone))),
            "head_diff": float(np.max(np.abs(head - full_head))),
            "head_moved": float(np.max(np.abs(full_head - HEAD0)))}
    report["shard_devices"] = [v.device for v in pfc.shards]
    report["slot_devices"] = [v.device for slot in pfc.slots.values() for v in slot]
    report["variable_shapes"] = [list(v.shape) for v in pfc.variables]
    report["shard_rows"] = [int(v.shape[0]) for v in pfc.shards]
    report["ranges"] = pfc.ranges

    # Sampling: 40 classes over 2 shards of 20 rows, rate 0.3 (6 rows).
    sampled = PartialFC(40, D, sample_rate=0.3, devices=devices, seed=5)
    def replica_sample(y, iteration, update):
        sample = sampled.sample(y, iteration)
        if update:
            rows = sampled.rows(sample)
            sampled.apply(sample, tf.ones_like(rows), 0.1, iteration)
        return sample.index, sample.num_positive
    sample_only = tf.function(lambda y, i: strategy.run(replica_sample, (y, i, False)))
    sample_and_update = tf.function(lambda y, i: strategy.run(replica_sample, (y, i, True)))
    def sample_step(y, iteration, update):
        values = strategy.experimental_distribute_values_from_function(
            lambda ctx: y[ctx.replica_id_in_sync_group * 4:][:4])
        run = sample_and_update if update else sample_only
        index, positive = run(values, tf.constant(iteration, tf.int64))
        return ([r.numpy().tolist() for r in strategy.experimental_local_results(index)],
                [int(r) for r in strategy.experimental_local_results(positive)])
    few = np.array([3, 3, 23, 7, 23, 27, 7, 3], "int32")      # local rows {3, 7} in both shards
    many = np.array([0, 1, 2, 3, 4, 5, 6, 21], "int32")       # shard 0: 7 positives > 6
    report["few_5"], report["few_positive"] = sample_step(few, 5, False)
    report["few_5_again"], _ = sample_step(few, 5, False)
    report["few_6"], _ = sample_step(few, 6, False)
    report["many"], report["many_positive"] = sample_step(many, 0, False)
    sample_step(few, 1, True)                                  # non-zero momentum on the rows sampled at 1
    before = [v.numpy() for v in sampled.shards + sampled.slots["momentum"]]
    report["update_index"], _ = sample_step(few, 2, True)
    after = [v.numpy() for v in sampled.shards + sampled.slots["momentum"]]
    report["unsampled_changed"] = [
        int(np.sum(np.any(b[np.setdiff1d(np.arange(20), idx)] != a[np.setdiff1d(np.arange(20), idx)], axis=1)))
        for b, a, idx in zip(before, after, report["update_index"] * 2)]
    report["sampled_changed"] = [int(np.sum(np.any(b[idx] != a[idx], axis=1)))
                                 for b, a, idx in zip(before, after, report["update_index"] * 2)]
    print(json.dumps(report))
""")


# Two worker processes of MultiWorkerMirroredStrategy, one CPU replica and one shard each (first_shard = the task):
# one SGD step against the full head on each worker's own copy of the data.
WORKER = textwrap.dedent("""
    import json, os
    import numpy as np, tensorflow as tf
    from losses import MarginHead, PartialFC, sparse_softmax_cross_entropy
    task = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    rng = np.random.default_rng(0)
    X, Y, H = rng.normal(size=(8, 8)).astype("float32"), rng.integers(0, 13, 8).astype("int32"), \
        rng.normal(size=(8, 13)).astype("float32")
    pfc = PartialFC(13, 8, devices=strategy.extended.worker_devices, first_shard=task, num_shards=2)
    pfc.assign_full(H)

    def replica(x, y):
        sample = pfc.sample(y, tf.constant(0, tf.int64))
        with tf.GradientTape() as tape:
            rows = pfc.rows(sample)
            out = pfc.loss(x, y, rows, sample, 8)
        pfc.apply(sample, tape.gradient(out["loss"], rows), 0.1, tf.constant(0, tf.int64))
        return out["loss"]

    def share(values):
        return strategy.experimental_distribute_values_from_function(
            lambda ctx: values[ctx.replica_id_in_sync_group * 4:][:4])
    loss = tf.function(lambda x, y: strategy.run(replica, (x, y)))(share(X), share(Y))
    head = MarginHead(13)
    head.build((None, 8))
    head.embedding_weights.assign(H)
    with tf.GradientTape() as tape:
        reference = sparse_softmax_cross_entropy(head(tf.constant(X), tf.constant(Y)), Y)
    start, end = pfc.ranges[0]
    expected = (H - 0.1 * tape.gradient(reference, head.embedding_weights).numpy())[:, start:end].T
    print(json.dumps({"loss": float(strategy.experimental_local_results(loss)[0]), "reference": float(reference),
                      "shard_diff": float(np.max(np.abs(pfc.shards[0].numpy() - expected))),
                      "range": pfc.ranges[0]}))
""")


def _arcface_loss64(x: np.ndarray, labels: np.ndarray, backbone: np.ndarray, head: np.ndarray,
                    s: float = 64.0, m: float = 0.5) -> float:
    """Mean ArcFace cross-entropy in float64: s*cos(theta + m) on the target (s*(cos - m sin m) past pi - m)."""
    e = x.astype(np.float64) @ backbone
    cos = (e / np.linalg.norm(e, axis=1, keepdims=True)) @ (head / np.linalg.norm(head, axis=0, keepdims=True))
    cos_t = cos[np.arange(len(labels)), labels]
    target = np.where(cos_t > math.cos(math.pi - m), np.cos(np.arccos(cos_t) + m), cos_t - m * math.sin(m))
    logits = s * cos
    logits[np.arange(len(labels)), labels] = s * target
    top = logits.max(axis=1)
    log_sum = top + np.log(np.exp(logits - top[:, None]).sum(axis=1))
    return float(np.mean(log_sum - s * target))


@pytest.fixture(scope="module")
def steps() -> dict:
    """STEPS' data and step functions in this process (one device)."""
    scope: dict = {}
    exec(STEPS, scope)  # noqa: S102  (the definitions the 2-replica script runs too)
    return scope


@pytest.fixture(scope="module")
def two_replicas() -> dict:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-c", TWO_REPLICAS], capture_output=True, text=True, timeout=600,
                            env=env, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("num_classes,num_shards", [(13, 2), (40, 3), (7, 7), (1000, 8), (5, 1)])
def test_shard_ranges_are_contiguous_and_balanced(num_classes: int, num_shards: int) -> None:
    ranges = shard_ranges(num_classes, num_shards)
    assert len(ranges) == num_shards
    assert ranges[0][0] == 0 and ranges[-1][1] == num_classes
    assert all(end == start for (_, end), (start, _) in zip(ranges, ranges[1:]))
    sizes = [end - start for start, end in ranges]
    assert max(sizes) - min(sizes) <= 1 and min(sizes) >= 1
    # The first C % N shards are the larger ones.
    assert sizes == sorted(sizes, reverse=True)


def test_reshard_moves_rows_between_shard_counts() -> None:
    full = np.arange(13 * 2).reshape(13, 2)
    three = reshard([full[:7], full[7:]], 3)
    assert [p.shape[0] for p in three] == [5, 4, 4]
    np.testing.assert_array_equal(np.concatenate(three), full)
    np.testing.assert_array_equal(np.concatenate(reshard(three, 2)), full)


@pytest.mark.parametrize("case", [_case_name(*case) for case in CASES])
def test_two_replicas_equal_the_full_head(two_replicas: dict, case: str) -> None:
    result = two_replicas[case]
    for full, per_replica in zip(result["full_losses"], result["losses"]):
        # The same value on both replicas, equal to the full head's mean cross-entropy.
        assert per_replica[0] == per_replica[1]
        assert per_replica[0] == pytest.approx(full, rel=1e-5)
    # Correct counts (margin and plain logits), the same on both replicas, are the full head's argmax hits.
    assert sum(sum(hits) for hits in result["full_hits"]) > 0, "no row is right: the counts would be vacuous"
    for full_hits, hits in zip(result["full_hits"], result["hits"]):
        assert [pair[0] for pair in hits] == [pair[1] for pair in hits] == full_hits
    assert result["head_moved"] > 1e-3, "the class weights did not train: the comparison would be vacuous"
    assert result["head_diff"] < 1e-5
    assert result["backbone_diff"] < 1e-5


def test_two_replica_loss_is_the_float64_arcface_cross_entropy(two_replicas: dict, steps: dict) -> None:
    reference = _arcface_loss64(steps["X"][0], steps["Y"][0], steps["W0"].astype(np.float64),
                                steps["HEAD0"].astype(np.float64))
    assert two_replicas["arcface_sgd"]["losses"][0][0] == pytest.approx(reference, rel=1e-5)


def test_shards_live_on_their_replica_devices(two_replicas: dict) -> None:
    devices = [tf.DeviceSpec.from_string(d) for d in two_replicas["devices"]]
    assert len(devices) == 2
    for shard_device, device in zip(two_replicas["shard_devices"], devices):
        placed = tf.DeviceSpec.from_string(shard_device)
        assert (placed.device_type, placed.device_index) == (device.device_type, device.device_index)
    slot_devices = [tf.DeviceSpec.from_string(d) for d in two_replicas["slot_devices"]]
    # The last case's AdamW slots, m then v, each a shard's shape on that shard's device.
    assert [s.device_index for s in slot_devices] == [d.device_index for d in devices] * 2
    assert two_replicas["ranges"] == [[0, 7], [7, 13]]
    assert two_replicas["shard_rows"] == [7, 6]
    for shape in two_replicas["variable_shapes"]:
        assert sorted(shape) != sorted([13, 8]), f"a variable holds the whole head: {shape}"


def test_sampling_keeps_positives_and_is_reproducible(two_replicas: dict) -> None:
    few_classes = [{3, 7}, {23, 27}]
    assert two_replicas["few_positive"] == [2, 2]
    for shard, (index, start) in enumerate(zip(two_replicas["few_5"], (0, 20))):
        assert len(index) == int(0.3 * 20) == 6
        assert index == sorted(set(index)) and 0 <= min(index) and max(index) < 20
        assert few_classes[shard] <= {start + i for i in index}
    assert two_replicas["few_5_again"] == two_replicas["few_5"]
    assert two_replicas["few_6"] != two_replicas["few_5"]
    # Both shards have the same local positives: only the shard id in the seed tells their negatives apart.
    assert two_replicas["few_5"][0] != two_replicas["few_5"][1], "both shards drew the same rows"
    # More positives than int(0.3 * rows): exactly the positives.
    assert two_replicas["many_positive"] == [7, 1]
    assert two_replicas["many"][0] == list(range(7))
    assert len(two_replicas["many"][1]) == 6 and 1 in two_replicas["many"][1]


def test_update_leaves_unsampled_rows_and_slots_bit_identical(two_replicas: dict) -> None:
    # shards 0, 1 then momentum 0, 1
    assert two_replicas["unsampled_changed"] == [0, 0, 0, 0]
    assert two_replicas["sampled_changed"] == [6, 6, 6, 6]


@pytest.mark.slow  # two TensorFlow worker processes: about 15 s
def test_two_workers_hold_one_shard_each_and_equal_the_full_head() -> None:
    ports = []
    for _ in range(2):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            ports.append(sock.getsockname()[1])
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    processes = [subprocess.Popen(
        [sys.executable, "-c", WORKER], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(REPO),
             "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})})
        for index in range(2)]
    outputs = [process.communicate(timeout=300) for process in processes]
    for process, (_, stderr) in zip(processes, outputs):
        assert process.returncode == 0, stderr[-3000:]
    reports = [json.loads(stdout.strip().splitlines()[-1]) for stdout, _ in outputs]
    assert [report["range"] for report in reports] == [[0, 7], [7, 13]]
    for report in reports:
        assert report["loss"] == pytest.approx(report["reference"], rel=1e-5)
        assert report["shard_diff"] < 1e-5


def test_one_device_equals_the_full_head(steps: dict) -> None:
    full_losses, full_hits, full_backbone, full_head = steps["full_run"]("arcface", "sgd", 1)
    per_replica, hits, backbone, head, _ = steps["partial_run"](tf.distribute.get_strategy(), "arcface", "sgd", 1)
    assert per_replica[0][0] == pytest.approx(full_losses[0], rel=1e-5)
    assert [pair[0] for pair in hits[0]] == full_hits[0]
    np.testing.assert_allclose(head, full_head, atol=1e-5)
    np.testing.assert_allclose(backbone, full_backbone, atol=1e-5)


def test_initial_values_follow_glorot_normal_per_shard() -> None:
    head = PartialFC(2000, 64, devices=(None, None), seed=1)
    first, second = (shard.numpy() for shard in head.shards)
    stddev = (2.0 / (64 + 2000)) ** 0.5
    for values in (first, second):
        assert values.std() == pytest.approx(stddev, rel=0.03)
        assert np.max(np.abs(values)) <= 2 * stddev / 0.87962566103423978 + 1e-6
    assert not np.allclose(first[:100], second[:100]), "the shards share their random stream"
    again = PartialFC(2000, 64, devices=(None, None), seed=1)
    np.testing.assert_array_equal(again.shards[1].numpy(), second)


@pytest.mark.parametrize("kwargs,key", [
    ({"sample_rate": 0.0}, "sample_rate"), ({"sample_rate": 1.5}, "sample_rate"),
    ({"optimizer": "adam"}, "optimizer"), ({"loss": "cosface", "easy_margin": True}, "easy_margin"),
    ({"loss": "triplet"}, "loss"), ({"margins": {"m2": 0.1}}, "margins"),
])
def test_bad_values_name_their_key(kwargs: dict, key: str) -> None:
    with pytest.raises(ValueError, match=key):
        PartialFC(13, 8, **kwargs)


def test_weights_and_bytes_count_every_shard_and_slot() -> None:
    head = PartialFC(13, 8, devices=(None, None), optimizer="adamw")
    assert [tuple(v.shape) for v in head.weights] == [(7, 8), (6, 8)] * 3
    assert [v.trainable for v in head.weights] == [True, True] + [False] * 4
    # a shard and its two AdamW slots, float32
    assert head.replica_bytes() == [7 * 8 * 4 * 3, 6 * 8 * 4 * 3]


def test_assign_full_refuses_a_wrong_shape() -> None:
    head = PartialFC(13, 8)
    with pytest.raises(ValueError, match="embedding_size, num_classes"):
        head.assign_full(np.zeros((13, 8)))
    assert head.full_weights().shape == (8, 13)
