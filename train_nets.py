"""Trains a face recogniser with a margin loss on one device (or any tf.distribute strategy).

    python train_nets.py --train_dataset_dir=./datasets/my_faces --net_depth=50 --batch_size=32

Edit `Args` below or override any field with --key=value. A run writes into `ckpt_path`: args.json, checkpoints
(network, head, optimizer, step, data position; the last `saver_maxkeep` kept), best/ (the best validated checkpoint
and its embedding-only export); TensorBoard summaries into `summary_path`; a text log into `log_file_path`.
Started again with the same Args, a run continues from its latest checkpoint.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from config import Config, setup_logging

log = logging.getLogger("train_nets")


class Args(Config):
    # --- network (nets/) ---
    net_depth: int = 50  # IR-ResNet depth: 18, 34, 50 (LResNet50E-IR, model D), 100, 152, 200
    unit_type: str = "ir"  # "ir" or "se_ir"
    norm: str = "bn"  # "bn" batch norm, "gn" group norm, "brn" batch renorm
    net_width: int = 1  # 1 = model D; 4 = the seed's 4x-wide L_Resnet_E_IR.py (models A-C)
    backbone: str = ""  # another backbone by registry name (nets.get_backbone); "" = the IR-ResNet above
    dropout_rate: float = 0.4  # fraction dropped in the output block (the seed dropped 0.6: keep_prob 0.4)
    embedding_size: int = 512  # embedding dimension
    sync_bn: bool = False  # batch-norm statistics over all replicas (multi-GPU)
    # --- margin head (losses/) ---
    loss: str = "arcface"  # "arcface", "cosface", "combined" or "softmax"
    margin_s: float | None = None  # scale s; None = the loss's default (64 arcface/combined, 30 cosface)
    margin_m: float | None = None  # arcface/cosface margin m; None = default (0.5 arcface, 0.4 cosface)
    margin_m1: float = 1.0  # combined margin: s*(cos(m1*theta + m2) - m3)
    margin_m2: float = 0.3  # combined margin m2 (additive angular)
    margin_m3: float = 0.2  # combined margin m3 (additive cosine)
    num_output: int = 0  # number of classes; 0 = from the training data (the seed hard-coded 85164 for MS1M)
    # --- data (data/) ---
    train_dataset_dir: str = "./datasets/train"  # identity folders, a train.rec, or TFRecord file(s)/folder/glob
    image_size: list[int] = [112, 112]  # height, width; the network is built for it
    channel_order: str = "BGR"  # the seed's BGR; recorded so evaluation uses the same
    batch_size: int = 32  # global batch (split over the replicas)
    epoch: int = 100000  # passes over the training data
    max_steps: int = 0  # stop after this many steps; 0 = no limit
    # --- optimisation ---
    lr_values: list[float] = [0.001, 0.0005, 0.0003, 0.0001]  # piecewise-constant learning rates
    lr_steps: list[int] = [40000, 60000, 80000]  # boundaries between lr_values
    lr_steps_scaled: bool = True  # multiply lr_steps by int(512 / batch_size), as the seed did
    momentum: float = 0.9  # SGD momentum
    weight_decay: float = 5e-4  # L2 on conv/dense kernels, class weights, norm gammas, PReLU alphas
    grad_accum_steps: int = 1  # micro-batches per update: batch_size images in batch_size/grad_accum_steps chunks
    mixed_precision: str = "float32"  # "float32", "mixed_float16" (with loss scaling) or "mixed_bfloat16"
    jit_compile: bool = False  # XLA for the forward/backward pass (faster on GPUs, slower on this CPU)
    seed: int = 313  # initialisation, shuffling and augmentation
    # --- validation (eval/) ---
    eval_datasets: list[str] = []  # .bin sets in eval_db_path, e.g. ["lfw", "cfp_fp", "agedb_30"]
    eval_db_path: str = "./datasets/faces_ms1m_112x112"  # folder of the .bin sets
    eval_dataset: str = ""  # a custom aligned folder to validate on (with eval_pair)
    eval_pair: str = ""  # its pairs.txt (generate_pairs.py)
    validate_interval: int = 2000  # steps between validations (0 = never)
    # --- output ---
    ckpt_path: str = "./output/ckpt"  # checkpoints, args.json, best/
    summary_path: str = "./output/summary"  # TensorBoard
    log_file_path: str = "./output/logs"  # text log
    saver_maxkeep: int = 10  # checkpoints kept
    ckpt_interval: int = 10000  # steps between checkpoints (also saved at the end)
    summary_interval: int = 300  # steps between TensorBoard summaries
    show_info_interval: int = 20  # steps between console/log lines
    # --- starting point ---
    restore_path: str = ""  # fine-tune: a checkpoint (ours or the seed's TF1) whose backbone starts the run
    restore_head: bool = False  # also restore the class weights from restore_path (same classes)


def validate_args(args: Args) -> None:
    """Checks the fields that would otherwise fail deep inside the run; ValueError naming the key."""
    if args.batch_size <= 0 or args.batch_size % args.grad_accum_steps:
        raise ValueError(f"Args: batch_size={args.batch_size} must be a positive multiple of "
                         f"grad_accum_steps={args.grad_accum_steps}")
    if args.mixed_precision not in ("float32", "mixed_float16", "mixed_bfloat16"):
        raise ValueError(f"Args: mixed_precision={args.mixed_precision!r}; expected float32, mixed_float16 or "
                         "mixed_bfloat16")
    if len(args.image_size) != 2:
        raise ValueError(f"Args: image_size={args.image_size} must be [height, width]")
    if bool(args.eval_dataset) != bool(args.eval_pair):
        raise ValueError("Args: eval_dataset and eval_pair go together (a folder and its pairs.txt)")


def train(args: Args, strategy: tf.distribute.Strategy | None = None) -> dict:
    """Runs (or resumes) the training that `args` describes; returns the final step, losses and paths."""
    validate_args(args)
    strategy = strategy or tf.distribute.get_strategy()
    previous_policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(args.mixed_precision)
    log_handler = _add_log_file(args.log_file_path)
    try:
        return _train(args, strategy)
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)
        logging.getLogger().removeHandler(log_handler)
        log_handler.close()


def _add_log_file(folder: str) -> logging.Handler:
    Path(folder).mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(Path(folder) / time.strftime("train_%Y-%m-%d-%H-%M.log"))
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)
    return handler


def _train(args: Args, strategy: tf.distribute.Strategy) -> dict:
    from data.train_data import open_train_data
    from training import checkpoints, validation
    from training.build import build_embedding_model, build_head
    from training.optim import decayed_variables, lr_boundaries, piecewise_schedule
    from training.step import make_train_step

    # --- set-up: seed, replicas, output folders ---
    keras.utils.set_random_seed(args.seed)
    replicas = strategy.num_replicas_in_sync
    global_batch = args.batch_size - args.batch_size % (replicas * args.grad_accum_steps)
    if global_batch != args.batch_size:
        log.warning("batch_size %d is not a multiple of %d replicas x %d micro-batches: using %d", args.batch_size,
                    replicas, args.grad_accum_steps, global_batch)
    if global_batch == 0:
        raise ValueError(f"Args: batch_size={args.batch_size} is smaller than {replicas} replicas x "
                         f"{args.grad_accum_steps} micro-batches")
    ckpt_dir, summary_dir = (Path(args.ckpt_path), Path(args.summary_path))
    worker = _non_chief_worker(strategy)
    if worker is not None:
        # Every worker must take part in saving; only the chief writes where users look.
        ckpt_dir, summary_dir = ckpt_dir / worker, summary_dir / worker
    args.save(ckpt_dir / checkpoints.ARGS_FILE)

    # --- data ---
    data = open_train_data(args.train_dataset_dir, image_size=tuple(args.image_size),
                           channel_order=args.channel_order)
    num_classes = args.num_output or data.num_classes
    if num_classes < data.num_classes:
        raise ValueError(f"Args: num_output={args.num_output} but the training data has {data.num_classes} classes")
    data.save_class_list(ckpt_dir / "classes.txt")
    steps_per_epoch = data.num_images // global_batch
    if steps_per_epoch == 0:
        raise ValueError(f"{args.train_dataset_dir}: {data.num_images} images, fewer than one batch of {global_batch}")
    validation_sets = validation.load_validation_sets(args)
    log.info("training data %s: %d images of %d classes (%s), %d steps per epoch, %d replica(s)",
             args.train_dataset_dir, data.num_images, num_classes, data.format, steps_per_epoch, replicas)

    # --- network, head, optimiser, checkpoint ---
    with strategy.scope():
        model = build_embedding_model(args)
        head = build_head(args, num_classes)
        head.build((None, args.embedding_size))
        boundaries = lr_boundaries(args.lr_steps, args.batch_size, args.lr_steps_scaled)
        schedule = piecewise_schedule(args.lr_values, boundaries)
        optimizer = keras.optimizers.SGD(learning_rate=schedule, momentum=args.momentum)
        if args.mixed_precision == "mixed_float16":
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        variables = model.trainable_variables + head.trainable_variables
        optimizer.build(variables)
    progress = checkpoints.Progress()  # plain host variables, read by the Python loop
    # Keras keeps the dropout RNG state outside the object graph that tf.train.Checkpoint follows: save it
    # explicitly so that a resumed run draws the same masks as an uninterrupted one.
    random_states = [v for v in model.non_trainable_variables if "seed_generator" in v.path]
    checkpoint = tf.train.Checkpoint(model=model, head=head, optimizer=optimizer, progress=progress,
                                     random_states=random_states)
    manager = tf.train.CheckpointManager(checkpoint, str(ckpt_dir), max_to_keep=args.saver_maxkeep,
                                         checkpoint_name=checkpoints.CHECKPOINT_NAME, step_counter=progress.step)
    best_manager = tf.train.CheckpointManager(checkpoint, str(ckpt_dir / checkpoints.BEST_DIR), max_to_keep=1,
                                              checkpoint_name=checkpoints.BEST_CHECKPOINT_NAME)
    if manager.latest_checkpoint:
        checkpoint.restore(manager.latest_checkpoint).assert_existing_objects_matched()
        log.info("resumed from %s at step %d (epoch %d, batch %d)", manager.latest_checkpoint,
                 int(progress.step), int(progress.epoch), int(progress.batch_in_epoch))
    elif args.restore_path:
        checkpoints.restore_for_fine_tuning(model, head, args.restore_path, args.restore_head)
    log.info("lr %s with boundaries %s; %d weights decayed by %g", args.lr_values, boundaries,
             len(decayed_variables(variables)), args.weight_decay)

    # --- the loop ---
    train_step = make_train_step(args, strategy, model, head, optimizer, global_batch)
    writer = tf.summary.create_file_writer(str(summary_dir))
    total_steps = args.epoch * steps_per_epoch
    if args.max_steps:
        total_steps = min(total_steps, args.max_steps)
    step = int(progress.step)
    metrics: dict[str, float] = {}
    window_start, window_step = time.perf_counter(), step
    bar = tqdm(total=total_steps, initial=step, unit="step", dynamic_ncols=True, desc="train")
    with logging_redirect_tqdm(), writer.as_default():
        while step < total_steps:
            epoch, skip = int(progress.epoch), int(progress.batch_in_epoch)
            batches = data.dataset(global_batch, epoch=epoch, seed=args.seed, skip_batches=skip)
            if replicas > 1:
                batches = strategy.experimental_distribute_dataset(batches)
            for images, labels in batches:
                metrics = {k: float(v) for k, v in train_step(images, labels).items()}
                step += 1
                progress.step.assign(step)
                progress.batch_in_epoch.assign_add(1)
                if not math.isfinite(metrics["total_loss"]):
                    raise FloatingPointError(
                        f"loss is {metrics['total_loss']} at step {step}; last good checkpoint: "
                        f"{manager.latest_checkpoint or 'none saved yet'}. Lower the learning rate or check the data.")
                metrics["learning_rate"] = float(schedule(optimizer.iterations))
                bar.update(1)
                if step % args.show_info_interval == 0 or step == total_steps:
                    now = time.perf_counter()
                    metrics["samples_per_sec"] = (step - window_step) * global_batch / max(now - window_start, 1e-9)
                    window_start, window_step = now, step
                    _show(bar, epoch, step, metrics)
                if step % args.summary_interval == 0:
                    _write_summaries(step, metrics, model, head)
                if args.ckpt_interval and step % args.ckpt_interval == 0:
                    log.info("saved %s", manager.save(checkpoint_number=step))
                if args.validate_interval and validation_sets and step % args.validate_interval == 0:
                    _validate(args, step, model, validation_sets, progress, best_manager, ckpt_dir)
                if step >= total_steps:
                    break
            else:
                progress.epoch.assign_add(1)
                progress.batch_in_epoch.assign(0)
        bar.close()
        if manager.latest_checkpoint is None or not manager.latest_checkpoint.endswith(f"-{step}"):
            log.info("saved %s", manager.save(checkpoint_number=step))
        if validation_sets and args.validate_interval and step % args.validate_interval:
            _validate(args, step, model, validation_sets, progress, best_manager, ckpt_dir)
    if data.num_skipped:
        log.warning("%d unreadable training images were skipped (listed above)", data.num_skipped)
    return {"step": step, **metrics, "checkpoint": manager.latest_checkpoint,
            "best_accuracy": float(progress.best_accuracy), "best_checkpoint": best_manager.latest_checkpoint}


def _non_chief_worker(strategy: tf.distribute.Strategy) -> str | None:
    """'worker_<id>' for a non-chief worker of a multi-worker strategy, None for the chief or a single machine."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return None
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    is_chief = resolver.task_type == "chief" or (not has_chief and resolver.task_type == "worker"
                                                  and resolver.task_id == 0)
    return None if is_chief else f"{resolver.task_type}_{resolver.task_id}"


def _show(bar: tqdm, epoch: int, step: int, m: dict[str, float]) -> None:
    bar.set_postfix(loss=f"{m['total_loss']:.3f}", ce=f"{m['inference_loss']:.3f}", wd=f"{m['wd_loss']:.3f}",
                    acc=f"{m['accuracy']:.3f}", acc_plain=f"{m['accuracy_plain']:.3f}", lr=f"{m['learning_rate']:.2g}",
                    img_s=f"{m['samples_per_sec']:.1f}", refresh=False)
    log.info("epoch %d, total_step %d, total loss %.3f, inference loss %.3f, weight decay loss %.3f, training accuracy "
             "%.4f (plain logits %.4f), lr %.2g, %.1f samples/sec", epoch, step, m["total_loss"], m["inference_loss"],
             m["wd_loss"], m["accuracy"], m["accuracy_plain"], m["learning_rate"], m["samples_per_sec"])


def _write_summaries(step: int, metrics: dict[str, float], model: keras.Model, head: keras.layers.Layer) -> None:
    for key, value in metrics.items():
        tf.summary.scalar(key, value, step=step)
    for variable in model.trainable_variables + head.trainable_variables:
        tf.summary.histogram(variable.path, variable.value, step=step)


def _validate(args: Args, step: int, model: keras.Model, validation_sets: list, progress, best_manager,
              ckpt_dir: Path) -> None:
    from training import checkpoints, validation

    accuracies = validation.validate(args, step, model, validation_sets)
    for name, accuracy in accuracies.items():
        tf.summary.scalar(f"validation/{name}", accuracy, step=step)
    first = next(iter(accuracies.values()))
    if first > float(progress.best_accuracy):
        progress.best_accuracy.assign(first)
        saved = best_manager.save(checkpoint_number=step)
        model.save(ckpt_dir / checkpoints.BEST_DIR / checkpoints.EMBEDDING_EXPORT)
        log.info("###### best accuracy %.5f on %s at step %d: %s", first, next(iter(accuracies)), step, saved)


def main(args: Args) -> None:
    summary = train(args)
    log.info("done at step %d; latest checkpoint %s", summary["step"], summary["checkpoint"])


if __name__ == "__main__":
    setup_logging()
    main(Args.from_cli(sys.argv[1:]))
