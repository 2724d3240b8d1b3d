"""Multi-GPU and multi-machine training: the seed's tower loop, now `train_nets.train()` under tf.distribute.

    python train_nets_mgpu_new.py --num_gpus=4 --batch_size=256 --train_dataset_dir=...

Every replica runs the forward and backward pass on its share of the global batch (`batch_size`, rounded down to a
multiple of the replica count); gradients are all-reduced and one update is applied everywhere. Several machines:
set TF_CONFIG on each (see README) and `multi_worker=True`. `num_gpus` counts devices per machine; on a machine
without GPUs, that many logical CPU devices are made (how the tests run it).
"""

from __future__ import annotations

import json
import logging
import os
import sys

import tensorflow as tf

import train_nets
from config import setup_logging

log = logging.getLogger("train_nets_mgpu_new")


class Args(train_nets.Args):
    num_gpus: int = 2  # devices (replicas) per machine
    multi_worker: bool = False  # MultiWorkerMirroredStrategy from the TF_CONFIG environment variable
    batch_size: int = 64  # global batch over all replicas (the seed's multi-GPU default)
    net_depth: int = 100  # the seed's multi-GPU default
    ckpt_interval: int = 5000  # the seed's multi-GPU default


def make_strategy(num_gpus: int, multi_worker: bool = False) -> tf.distribute.Strategy:
    """MirroredStrategy over `num_gpus` devices (logical CPUs when there is no GPU), or the multi-worker strategy.

    Must run before TensorFlow initialises its devices (it configures logical CPUs when no GPU is present).
    """
    if num_gpus < 1:
        raise ValueError(f"Args: num_gpus={num_gpus} must be at least 1")
    gpus = tf.config.list_physical_devices("GPU")
    if len(gpus) < num_gpus:
        if gpus:
            raise ValueError(f"Args: num_gpus={num_gpus} but this machine has {len(gpus)} GPU(s)")
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * num_gpus)
        log.warning("no GPU: running %d replicas on logical CPU devices", num_gpus)
        devices = [f"/cpu:{i}" for i in range(num_gpus)]
    else:
        devices = [f"/gpu:{i}" for i in range(num_gpus)]
    if multi_worker:
        if "TF_CONFIG" not in os.environ:
            raise ValueError("Args: multi_worker=True needs the TF_CONFIG environment variable (see README)")
        cluster = json.loads(os.environ["TF_CONFIG"])
        log.info("multi-worker: task %s of cluster %s", cluster.get("task"), cluster.get("cluster"))
        return tf.distribute.MultiWorkerMirroredStrategy()
    # Reduction over CPUs needs the generic all-reduce; NCCL is the fast path on GPUs.
    cross_device_ops = tf.distribute.NcclAllReduce() if devices[0].startswith("/gpu") else \
        tf.distribute.ReductionToOneDevice()
    return tf.distribute.MirroredStrategy(devices, cross_device_ops=cross_device_ops)


def main(args: Args) -> None:
    strategy = make_strategy(args.num_gpus, args.multi_worker)
    log.info("%d replicas in sync", strategy.num_replicas_in_sync)
    summary = train_nets.train(args, strategy)
    log.info("done at step %d; latest checkpoint %s", summary["step"], summary["checkpoint"])


if __name__ == "__main__":
    setup_logging()
    main(Args.from_cli(sys.argv[1:]))
