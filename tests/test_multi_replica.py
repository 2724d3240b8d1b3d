"""The multi-replica path is exact: BN moving statistics are the mean over replicas, and sharded input equals the
unsharded batch. (The 2-worker runs are in test_training.py.)"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from data import synthetic
from data.train_data import open_train_data

REPO = Path(__file__).resolve().parents[1]

# One step on 2 logical devices of a tiny network whose first layer is the norm, so that the norm's input is the image
# batch itself; returns the moving statistics of both replicas' copies and of a saved checkpoint, and for group norm
# the weights after the step on 2 replicas and on 1 device.
ONE_STEP = textwrap.dedent("""
    import sys, json, numpy as np, tensorflow as tf, keras
    sys.path.insert(0, {repo!r})
    from train_nets_mgpu_new import make_strategy
    from nets.norms import make_norm
    from losses import make_head
    from training.step import make_train_step

    strategy = make_strategy(2)
    rng = np.random.default_rng(0)
    images = rng.normal(size=(8, 4, 4, 3)).astype("float32")
    images[4:] = images[4:] * 3 + 2  # replica 1's share: other statistics than replica 0's
    labels = rng.integers(0, 6, 8)

    def one_step(strategy, norm):
        with strategy.scope():
            inputs = keras.Input((4, 4, 3))
            x = make_norm(norm, "norm", seed=0) if norm == "bn" else keras.layers.GroupNormalization(3, name="norm")
            dense = keras.layers.Dense(8, kernel_initializer=keras.initializers.GlorotUniform(seed=0), name="embedding")
            x = dense(keras.layers.Flatten()(x(inputs)))
            model = keras.Model(inputs, x)
            head = make_head("cosface", 6, seed=0)
            head.build((None, 8))
            optimizer = keras.optimizers.SGD(0.1, momentum=0.9)
            optimizer.build(model.trainable_variables + head.trainable_variables)
        step = make_train_step(strategy, model, head, optimizer, 8, weight_decay=5e-4)
        batch = tf.data.Dataset.from_tensors((images, labels))
        if strategy.num_replicas_in_sync > 1:
            batch = strategy.experimental_distribute_dataset(batch)
        for x, y in batch:
            step(x, y)
        return model

    bn = one_step(strategy, "bn").get_layer("norm")
    prefix = tf.train.Checkpoint(mean=bn.moving_mean, variance=bn.moving_variance).save({tmp!r} + "/bn")
    reader = tf.train.load_checkpoint(prefix)
    saved = {{name: reader.get_tensor(name + "/.ATTRIBUTES/VARIABLE_VALUE").tolist() for name in ("mean", "variance")}}
    copies = {{name: [c.numpy().tolist() for c in v.value.values]
              for name, v in (("mean", bn.moving_mean), ("variance", bn.moving_variance))}}
    gn2, gn1 = one_step(strategy, "gn"), one_step(tf.distribute.get_strategy(), "gn")
    worst = max(float(np.max(np.abs(a - b) / (1e-5 * np.abs(b) + 1e-6)))
                for a, b in zip(gn2.get_weights(), gn1.get_weights()))
    print(json.dumps({{"saved": saved, "copies": copies, "gn_non_trainable": len(gn2.non_trainable_variables),
                      "gn_worst": worst, "images": images.tolist()}}))
""")


def test_bn_moving_statistics_are_the_mean_over_replicas_and_group_norm_is_unchanged(tmp_path):
    result = subprocess.run([sys.executable, "-c", ONE_STEP.format(repo=str(REPO), tmp=str(tmp_path))],
                            capture_output=True, text=True, timeout=300,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    images = np.asarray(report["images"], dtype=np.float64)
    shares = images[:4], images[4:]  # the rows each replica is given
    # moving = 0.9 * moving + 0.1 * mean over replicas of the replica's batch statistic (biased variance)
    expected = {"mean": 0.1 * np.mean([s.mean(axis=(0, 1, 2)) for s in shares], axis=0),
                "variance": 0.9 + 0.1 * np.mean([s.var(axis=(0, 1, 2)) for s in shares], axis=0)}
    for name, value in expected.items():
        np.testing.assert_allclose(report["saved"][name], value, rtol=1e-5, atol=1e-6, err_msg=name)
        for copy in report["copies"][name]:
            np.testing.assert_allclose(copy, value, rtol=1e-5, atol=1e-6, err_msg=f"{name} of a replica")
    # Group norm has no statistics to average: 2 replicas update the weights as one device on the whole batch.
    assert report["gn_non_trainable"] == 0
    assert report["gn_worst"] <= 1.0


class CountingImages:
    """An image source that records which positions were read."""

    def __init__(self, images) -> None:
        self.inner, self.read_positions = images, []

    def __len__(self) -> int:
        return len(self.inner)

    def read(self, position: int) -> tuple[bytes, int]:
        self.read_positions.append(position)
        return self.inner.read(position)

    def describe(self, position: int) -> str:
        return self.inner.describe(position)


@pytest.fixture(scope="module")
def small_faces(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("faces")
    synthetic.generate(root, num_identities=4, images_per_identity=6, seed=0, image_size=16)
    return root


@pytest.mark.parametrize("augment", ["flip", "augmentation"])
def test_worker_shards_concatenate_to_the_unsharded_batches_and_read_only_their_rows(small_faces, augment):
    from data.augment import Augmentation

    augmentation = Augmentation(crop_prob=0.5, colour_prob=0.5, cutout_prob=0.5) if augment == "augmentation" else None
    data = open_train_data(str(small_faces), image_size=(16, 16))
    order = data.epoch_order(seed=5, epoch=1)
    whole = list(data.dataset(8, epoch=1, seed=5, skip_batches=1, augmentation=augmentation).as_numpy_iterator())
    shards, reads = [], []
    for worker in range(2):
        data.images = CountingImages(data.images.inner if isinstance(data.images, CountingImages) else data.images)
        shards.append(list(data.dataset(8, epoch=1, seed=5, skip_batches=1, augmentation=augmentation,
                                        shard=(worker, 2)).as_numpy_iterator()))
        reads.append(sorted(data.images.read_positions))
    assert len(whole) == len(shards[0]) == len(shards[1]) == 2  # 24 images: 3 batches of 8, the first skipped
    for batch, first, second in zip(whole, *shards):
        assert first[0].shape == (4, 16, 16, 3)
        np.testing.assert_array_equal(np.concatenate([first[0], second[0]]), batch[0])
        np.testing.assert_array_equal(np.concatenate([first[1], second[1]]), batch[1])
    # Worker w reads rows [4w, 4w + 4) of batches 1 and 2 of the epoch's order, and nothing else.
    for worker in range(2):
        expected = sorted(int(p) for b in (1, 2) for p in order[8 * b + 4 * worker:8 * b + 4 * worker + 4])
        assert reads[worker] == expected


def test_a_wholly_unreadable_part_takes_the_other_parts_images_and_keeps_the_workers_in_step(small_faces, tmp_path):
    """Worker 0's part of the first batch is all garbage: it must still yield that batch (else its stream runs a
    batch short of worker 1's and the workers wait on each other), with images of worker 1's part. No flips: a
    replacement image is flipped as the row it fills."""
    faces = shutil.copytree(small_faces, tmp_path / "faces")
    data = open_train_data(str(faces), image_size=(16, 16))
    order = data.epoch_order(seed=5, epoch=0)
    clean = list(data.dataset(8, epoch=0, seed=5, augment=False, shard=(1, 2)).as_numpy_iterator())
    for position in order[:4]:  # worker 0's rows of batch 0
        Path(data.images.describe(int(position))).write_bytes(b"not an image")
    data = open_train_data(str(faces), image_size=(16, 16))
    worker_0, worker_1 = (list(data.dataset(8, epoch=0, seed=5, augment=False, shard=(worker, 2)).as_numpy_iterator())
                          for worker in range(2))
    assert len(worker_0) == len(worker_1) == len(clean) == 3
    for batch, expected in zip(worker_1, clean):  # worker 1 reads as before
        np.testing.assert_array_equal(batch[0], expected[0])
    for image, label in zip(*worker_0[0]):  # each of worker 0's rows is one of worker 1's images of that batch
        assert any(np.array_equal(image, other) and label == other_label for other, other_label in zip(*clean[0]))


def test_a_shard_that_does_not_divide_the_batch_is_refused(small_faces):
    data = open_train_data(str(small_faces), image_size=(16, 16))
    with pytest.raises(ValueError, match="shard"):
        data.dataset(8, epoch=0, seed=0, shard=(0, 3))
    with pytest.raises(ValueError, match="shard"):
        data.dataset(8, epoch=0, seed=0, shard=(2, 2))


def _train_two_workers(argv: list[str], out: Path) -> None:
    """Runs train_nets_mgpu_new.py as 2 CPU workers on 127.0.0.1 (TF_CONFIG) writing under `out`."""
    from test_training import _free_ports, _out_args

    cluster = {"worker": [f"127.0.0.1:{port}" for port in _free_ports(2)]}
    processes = [subprocess.Popen(
        [sys.executable, "train_nets_mgpu_new.py", *argv, "--num_gpus=1", "--multi_worker=true", *_out_args(out)],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2",
             "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})})
        for index in range(2)]
    try:
        errors = [process.communicate(timeout=300)[1] for process in processes]
    finally:
        for process in processes:
            process.kill()
    for process, stderr in zip(processes, errors):
        assert process.returncode == 0, stderr[-3000:]


@pytest.mark.slow
def test_a_resumed_two_worker_run_ends_as_one_uninterrupted_process(tmp_path):
    """2 workers stopped after step 2 of a 5-batch epoch and restarted for steps 3-4 (each worker skips the 2 batches
    of its stream) end where one process of 2 replicas running the 4 steps at once does: same data, order, flips."""
    from test_training import (STEP3_MOMENTUM_TOLERANCE, TINY, _out_args, _relative_difference, _run_script,
                                     _saved_values)

    faces = tmp_path / "faces"
    synthetic.generate(faces, num_identities=5, images_per_identity=8, seed=0, image_size=32)
    common = [*TINY, f"--train_dataset_dir={faces}", "--norm=bn", "--sync_bn=true", "--dropout_rate=0",
              "--ckpt_interval=2", "--lr_values=[0.01]", "--lr_steps=[]"]
    _train_two_workers([*common, "--max_steps=2"], tmp_path / "workers")
    _train_two_workers([*common, "--max_steps=4"], tmp_path / "workers")
    single = _run_script("train_nets_mgpu_new.py", [*common, "--num_gpus=2", "--max_steps=4",
                                                    *_out_args(tmp_path / "single")])
    assert single.returncode == 0, single.stderr[-3000:]
    chief = _saved_values(str(tmp_path / "workers" / "ckpt" / "InsightFace_iter-4"))
    other = _saved_values(str(tmp_path / "workers" / "ckpt" / "worker_1" / "InsightFace_iter-4"))
    alone = _saved_values(str(tmp_path / "single" / "ckpt" / "InsightFace_iter-4"))
    assert chief.keys() == other.keys() == alone.keys()
    for name in chief:
        np.testing.assert_array_equal(chief[name], other[name], err_msg=name)
    floats = [name for name in chief if chief[name].dtype.kind == "f" and chief[name].ndim]
    # ArcFace at s=64 amplifies float summation-order rounding over steps (see test_training.py's 2-worker test).
    assert _relative_difference(chief, alone, floats) < STEP3_MOMENTUM_TOLERANCE
