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
from typing import TYPE_CHECKING, Annotated, NoReturn

# config first: run as a script, it quiets TensorFlow's start-up log, which must happen before TensorFlow loads.
from config import Choices, NonNegativeInt, PositiveInt, run_script

import train_nets

if TYPE_CHECKING:
    import tensorflow as tf

log = logging.getLogger("train_nets_mgpu_new")


class Args(train_nets.Args):
    num_gpus: PositiveInt = 2  # devices (replicas) per machine
    multi_worker: bool = False  # MultiWorkerMirroredStrategy from the TF_CONFIG environment variable
    batch_size: PositiveInt = 64  # global batch over all replicas (the seed's multi-GPU default)
    net_depth: Annotated[int, Choices(18, 34, 50, 100, 152, 200)] = 100  # the seed's multi-GPU default
    ckpt_interval: NonNegativeInt = 5000  # the seed's multi-GPU default


def make_strategy(num_gpus: int, multi_worker: bool = False) -> tf.distribute.Strategy:
    """MirroredStrategy over `num_gpus` devices (logical CPUs when there is no GPU), or the multi-worker strategy.

    Must run before TensorFlow initialises its devices (it configures logical CPUs when no GPU is present).
    """
    import tensorflow as tf

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
        config = read_tf_config(os.environ["TF_CONFIG"])
        log.info("multi-worker: task %s of cluster %s", config["task"], config["cluster"])
        return tf.distribute.MultiWorkerMirroredStrategy()
    # Reduction over CPUs needs the generic all-reduce; NCCL is the fast path on GPUs.
    cross_device_ops = tf.distribute.NcclAllReduce() if devices[0].startswith("/gpu") else \
        tf.distribute.ReductionToOneDevice()
    return tf.distribute.MirroredStrategy(devices, cross_device_ops=cross_device_ops)


def read_tf_config(text: str) -> dict:
    """The TF_CONFIG environment variable, checked: ValueError naming it and what is wrong, before TensorFlow reads it.

    Expected: {"cluster": {"worker": ["host:port", ...], ...}, "task": {"type": "worker", "index": 0}}.
    """
    expected = 'expected {"cluster": {"worker": ["host:port", ...]}, "task": {"type": "worker", "index": 0}} (README)'
    try:
        config = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"TF_CONFIG is not JSON ({err}): {expected}") from None
    cluster = config.get("cluster") if isinstance(config, dict) else None
    task = config.get("task") if isinstance(config, dict) else None
    if not isinstance(cluster, dict) or not cluster or not all(
            isinstance(hosts, list) and hosts and all(isinstance(h, str) and ":" in h for h in hosts)
            for hosts in cluster.values()):
        raise ValueError(f"TF_CONFIG: bad or missing 'cluster' {cluster!r}: {expected}")
    if not isinstance(task, dict) or task.get("type") not in cluster:
        raise ValueError(f"TF_CONFIG: 'task' {task!r} must name a job of the cluster ({sorted(cluster)}): {expected}")
    index = task.get("index")
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(cluster[task["type"]]):
        raise ValueError(f"TF_CONFIG: task index {index!r} must be 0 to {len(cluster[task['type']]) - 1} for "
                         f"job {task['type']!r}: {expected}")
    return config


def main(args: Args) -> None:
    strategy = make_strategy(args.num_gpus, args.multi_worker)
    log.info("%d replicas in sync", strategy.num_replicas_in_sync)
    summary = train_nets.train(args, strategy)
    log.info("done at step %d; latest checkpoint %s", summary["step"], summary["checkpoint"])


def cli() -> NoReturn:
    """The `insightface-train-mgpu` console script: this script's command line, from any folder."""
    run_script(Args, main)


if __name__ == "__main__":
    cli()
