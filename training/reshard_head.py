"""Re-shards a run's class weights for another number of replicas, or merges a Partial FC head into the full head.

    python -m training.reshard_head --ckpt_path=./output/ckpt --num_shards=1 --output_path=./output/ckpt_1gpu

A Partial FC run's checkpoints hold one shard of the class weights, with its optimizer state, per replica
(losses.partial_fc), so such a run resumes only on as many replicas. This writes a new run folder from the run's latest
checkpoint: its args.json, classes.txt and that checkpoint with the head split into `num_shards` shards, or merged
into the full head with num_shards=0 (args.json then says partial_fc=false); every other value (network, the
backbone's optimizer state, step, data position, random states) is copied unchanged. A full-head run can be split
the same way. Continue training with the run's Args and ckpt_path=output_path on num_shards replicas. The run folder
is only read; the output folder must not exist and appears only once complete.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from config import Config, NonNegativeInt, RequiredPath, run_script

if TYPE_CHECKING:
    import keras
    import numpy as np

log = logging.getLogger("training.reshard_head")

# The slot lists of the Keras optimizers of training.optim.make_optimizer, by the PartialFC slot each one is.
KERAS_SLOTS = {"sgd": {"momentum": "momentums"}, "adamw": {"m": "_momentums", "v": "_velocities"}}


class Args(Config):
    ckpt_path: RequiredPath = "./output/ckpt"  # the run folder: its args.json and latest checkpoint
    num_shards: NonNegativeInt = 1  # replicas of the run that continues it; 0 = merge into the full head
    output_path: RequiredPath = "./output/ckpt_resharded"  # the new run folder (must not exist)


def reshard_run(ckpt_path: str | Path, num_shards: int, output_path: str | Path) -> str:
    """Writes output_path as described above; returns its checkpoint prefix. ValueError / FileNotFoundError naming
    the Args key for a folder that is not a run, a multi-worker run, or an output folder that exists."""
    import keras

    import train_nets
    from training import checkpoints

    run_dir, out_dir = Path(ckpt_path), Path(output_path)
    if out_dir.exists():
        raise ValueError(f"Args: output_path={out_dir} exists: give a new folder (nothing in it is changed)")
    args_file = run_dir / checkpoints.ARGS_FILE
    if not args_file.is_file():
        raise FileNotFoundError(f"Args: ckpt_path={run_dir} has no {checkpoints.ARGS_FILE}: give a run folder "
                                "of train_nets.py or train_nets_mgpu_new.py")
    prefix = checkpoints.find_resume_point(run_dir).latest
    if prefix is None:
        raise FileNotFoundError(f"Args: ckpt_path={run_dir} holds no checkpoint that reads back")
    layout = checkpoints.head_layout(prefix)
    if layout is not None and layout["local_shards"] != layout["num_shards"]:
        raise ValueError(f"Args: ckpt_path={run_dir}: {prefix} holds one worker's shards of a multi-worker run "
                         f"({layout['local_shards']} of {layout['num_shards']}); it cannot be re-sharded alone")
    run_args = train_nets.Args.load(args_file, strict=False)
    num_classes = layout["num_classes"] if layout else checkpoints.full_head_classes(prefix)
    previous_policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(run_args.mixed_precision)
    try:
        source = _restored_objects(run_args, num_classes, layout["num_shards"] if layout else 0, prefix)
        target = _objects(run_args, num_classes, num_shards)
        _copy_state(source, target, run_args.optimizer)
        return _write_run(run_dir, out_dir, target, num_shards)
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)


def _objects(run_args, num_classes: int, num_shards: int) -> dict:
    """A run's network, head (num_shards Partial FC shards on this device, or the full head for 0), optimiser and
    progress, freshly initialised, on one device."""
    import tensorflow as tf

    import train_nets
    from training import checkpoints
    from training.optim import ConstantSchedule

    args = train_nets.Args(**{**run_args.to_dict(), "partial_fc": num_shards > 0})
    head = train_nets.make_partial_fc_head(args, num_classes, tf.distribute.get_strategy(),
                                           num_shards=num_shards) if num_shards else None
    # The learning rate is a function of the saved update count, not saved itself: any schedule restores.
    model, head, optimizer = train_nets.build_training_objects(args, num_classes, tf.distribute.get_strategy(),
                                                               ConstantSchedule(0.0), head=head)
    progress = checkpoints.Progress()
    return {"args": args, "model": model, "head": head, "optimizer": optimizer, "progress": progress,
            "checkpoint": train_nets.run_checkpoint(model, head, optimizer, progress)}


def _restored_objects(run_args, num_classes: int, num_shards: int, prefix: str) -> dict:
    from training import checkpoints

    objects = _objects(run_args, num_classes, num_shards)
    checkpoints.restore_run(objects["checkpoint"], prefix)
    return objects


def _head_rows(objects: dict, optimizer_name: str) -> dict[str, np.ndarray]:
    """The class weights ("weights") and each optimiser slot of the head as [C, D] arrays (one row per class)."""
    import numpy as np

    head = objects["head"]
    if hasattr(head, "shards"):
        rows = {"weights": np.concatenate([v.numpy() for v in head.shards])}
        rows.update({slot: np.concatenate([v.numpy() for v in parts]) for slot, parts in head.slots.items()})
        return rows
    weights = head.embedding_weights
    rows = {"weights": weights.numpy().T}
    rows.update({slot: _keras_slot(objects["optimizer"], name, weights).numpy().T
                 for slot, name in KERAS_SLOTS[optimizer_name].items()})
    return rows


def _set_head_rows(objects: dict, rows: dict[str, np.ndarray], optimizer_name: str) -> None:
    from losses.partial_fc import reshard

    head = objects["head"]
    if hasattr(head, "shards"):
        for name, parts in [("weights", head.shards), *head.slots.items()]:
            for variable, value in zip(parts, reshard([rows[name]], len(parts))):
                variable.assign(value)
        return
    head.embedding_weights.assign(rows["weights"].T)
    for slot, name in KERAS_SLOTS[optimizer_name].items():
        _keras_slot(objects["optimizer"], name, head.embedding_weights).assign(rows[slot].T)


def _keras_slot(optimizer: keras.optimizers.Optimizer, slot_list: str, variable) -> keras.Variable:
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    return getattr(inner, slot_list)[inner._get_variable_index(variable)]


def _copy_state(source: dict, target: dict, optimizer_name: str) -> None:
    """Everything of `source` into `target`: the network's weights and random states, the progress, the optimiser's
    update count, loss scale and backbone slots, and the head's rows with their slots."""
    from training.step import random_state_variables

    pairs = list(zip(source["model"].weights, target["model"].weights))
    pairs += list(zip(random_state_variables(source["model"]), random_state_variables(target["model"])))
    pairs += list(zip(source["progress"].variables, target["progress"].variables))
    source_optimizer, target_optimizer = source["optimizer"], target["optimizer"]
    pairs.append((source_optimizer.iterations, target_optimizer.iterations))
    if hasattr(source_optimizer, "dynamic_scale"):  # mixed_float16's loss scale and its growth counter
        pairs += [(source_optimizer.dynamic_scale, target_optimizer.dynamic_scale),
                  (source_optimizer.step_counter, target_optimizer.step_counter)]
    for old, new in zip(source["model"].trainable_variables, target["model"].trainable_variables):
        for name in KERAS_SLOTS[optimizer_name].values():
            pairs.append((_keras_slot(source_optimizer, name, old), _keras_slot(target_optimizer, name, new)))
    for old, new in pairs:
        new.assign(old)
    _set_head_rows(target, _head_rows(source, optimizer_name), optimizer_name)


def _write_run(run_dir: Path, out_dir: Path, target: dict, num_shards: int) -> str:
    """The new run folder, written beside it under a temporary name and moved into place once complete."""
    import tensorflow as tf

    from common.files import replacing
    from training import checkpoints

    run_json = json.loads((run_dir / checkpoints.ARGS_FILE).read_text())
    run_json["partial_fc"] = num_shards > 0
    with replacing(out_dir) as staged:
        staged.mkdir()
        step = int(target["progress"].step)
        manager = tf.train.CheckpointManager(target["checkpoint"], str(staged), max_to_keep=1,
                                             checkpoint_name=checkpoints.CHECKPOINT_NAME)
        manager.save(checkpoint_number=step)
        (staged / checkpoints.ARGS_FILE).write_text(json.dumps(run_json, indent=2, sort_keys=True) + "\n")
        if (run_dir / checkpoints.CLASSES_FILE).is_file():
            shutil.copy2(run_dir / checkpoints.CLASSES_FILE, staged / checkpoints.CLASSES_FILE)
    prefix = str(out_dir / f"{checkpoints.CHECKPOINT_NAME}-{step}")
    log.info("wrote %s: step %d, the class weights %s", prefix, step,
             f"in {num_shards} Partial FC shard(s)" if num_shards else "merged into the full head")
    return prefix


def main(args: Args) -> None:
    reshard_run(args.ckpt_path, args.num_shards, args.output_path)


def cli() -> NoReturn:
    run_script(Args, main)


if __name__ == "__main__":
    cli()
