"""Trains a face recogniser with a margin loss on one device (or any tf.distribute strategy).

    python train_nets.py --train_dataset_dir=./datasets/my_faces --net_depth=50 --batch_size=32

Edit `Args` below or override any field with --key=value. A run writes into `ckpt_path`: args.json, checkpoints
(network, head, optimizer, step, data position; the last `saver_maxkeep` kept), best/ (the best validated checkpoint
and its embedding-only export); TensorBoard summaries into `summary_path`; a text log into `log_file_path`.
Started again with the same Args, a run continues from its latest checkpoint.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

# config first: run as a script, it quiets TensorFlow's start-up log, which must happen before TensorFlow loads.
from config import (Choices, Config, ImageSize, Length, NonNegativeInt, OptionalPath, PositiveFloat, PositiveInt, Range,
                    RequiredPath, registered_backbones, run_script)
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from common.logs import add_log_file

if TYPE_CHECKING:
    import keras
    import tensorflow as tf

    from data.augment import Augmentation
    from losses.partial_fc import PartialFC
    from training.checkpoints import ResumePoint

log = logging.getLogger("train_nets")


class Args(Config):
    RENAMED = {"eval_datasets": "eval_bins"}  # earlier names, still accepted

    # --- network (nets/) ---
    # IR-ResNet depth: 18, 34, 50 (LResNet50E-IR, model D), 100, 152, 200
    net_depth: Annotated[int, Choices(18, 34, 50, 100, 152, 200)] = 50
    unit_type: Annotated[str, Choices("ir", "se_ir")] = "ir"  # "ir" or "se_ir"
    norm: Annotated[str, Choices("bn", "gn", "brn")] = "bn"  # "bn" batch norm, "gn" group norm, "brn" batch renorm
    net_width: Annotated[int, Choices(1, 4)] = 1  # 1 = model D; 4 = the seed's 4x-wide L_Resnet_E_IR.py (models A-C)
    # another backbone by registry name (nets.get_backbone); "" = the IR-ResNet above
    backbone: Annotated[str, Choices("", names=registered_backbones, ignore_case=True)] = ""
    # fraction dropped in the output block (the seed dropped 0.6: keep_prob 0.4)
    dropout_rate: Annotated[float, Range(0, 1, high_open=True)] = 0.4
    embedding_size: PositiveInt = 512  # embedding dimension
    sync_bn: bool = False  # batch-norm statistics over all replicas (multi-GPU)
    # every norm's variance epsilon; None = the seed's (2e-5 for "bn"); insightface's released models: 1e-5
    norm_epsilon: Annotated[float, Range(0, low_open=True)] | None = None
    # IR-ResNet: a conv 1x1/2 + norm shortcut in every strided unit (insightface arcface_torch's iresnet); False = seed's
    projection_shortcut: bool = False
    # --- margin head (losses/) ---
    # "arcface", "cosface", "combined" or "softmax"
    loss: Annotated[str, Choices("arcface", "cosface", "combined", "softmax")] = "arcface"
    # scale s; None = the loss's default (64 arcface/combined, 30 cosface)
    margin_s: Annotated[float, Range(0, low_open=True)] | None = None
    # arcface/cosface margin m; None = default (0.5 arcface, 0.4 cosface)
    margin_m: Annotated[float, Range(0)] | None = None
    # combined margin s*(cos(m1*theta + m2) - m3): m1 (multiplicative angular); None = default (1.0)
    margin_m1: PositiveFloat | None = None
    margin_m2: Annotated[float, Range(0)] | None = None  # combined margin m2 (additive angular); None = default (0.3)
    margin_m3: Annotated[float, Range(0)] | None = None  # combined margin m3 (additive cosine); None = default (0.2)
    # arcface/combined: the margin only where cos(theta) > 0, plain cos(theta) elsewhere (arcface_torch's easy
    # margin; replaces the seed's fallback past pi - m); refused for cosface/softmax
    easy_margin: bool = False
    # negatives whose cosine exceeds this get logit 0 and no gradient (arcface_torch's interclass filtering); 0 = off
    interclass_filtering_threshold: Annotated[float, Range(0, 1, high_open=True)] = 0.0
    num_output: NonNegativeInt = 0  # number of classes; 0 = from the training data (the seed hard-coded 85164 for MS1M)
    # Partial FC (arcface_torch's): the class weights sharded over the replicas, each a contiguous range of classes
    # with its optimizer state, and the softmax computed across them; for 100k to millions of identities
    partial_fc: bool = False
    # with partial_fc: the fraction of each shard's classes in each step (the batch's classes always are); 1 = all
    sample_rate: Annotated[float, Range(0, 1, low_open=True)] = 1.0
    # --- data (data/) ---
    # identity folders, a train.rec, or TFRecord file(s)/folder/glob
    train_dataset_dir: RequiredPath = "./datasets/train"
    image_size: ImageSize = [112, 112]  # height, width (one N: N x N); the network is built for it
    channel_order: Annotated[str, Choices("BGR", "RGB")] = "BGR"  # the seed's BGR; recorded so evaluation uses the same
    batch_size: PositiveInt = 32  # global batch (split over the replicas)
    epoch: PositiveInt = 100000  # passes over the training data
    max_steps: NonNegativeInt = 0  # stop after this many steps; 0 = no limit
    # --- augmentation (data/augment.py), beyond the seed's flip; each a probability per image, 0 = off ---
    # probability of a random resized crop: a region of aug_crop_area and aug_crop_aspect, resized to image_size
    aug_crop_prob: Annotated[float, Range(0, 1)] = 0.0
    # the crop's area as a fraction of the image's, [low, high] (uniform)
    aug_crop_area: Annotated[list[float], Range(0, 1, low_open=True), Length(2, 2)] = [0.5, 1.0]
    # the crop's aspect ratio width/height, [low, high] (log-uniform)
    aug_crop_aspect: Annotated[list[float], Range(0, low_open=True), Length(2, 2)] = [0.75, 1.3333]
    # probability of the colour jitter: brightness, contrast, saturation, factors in [1 - strength, 1 + strength]
    aug_colour_prob: Annotated[float, Range(0, 1)] = 0.0
    aug_brightness: Annotated[float, Range(0, 1)] = 0.2  # brightness strength of the colour jitter; 0 = none
    aug_contrast: Annotated[float, Range(0, 1)] = 0.2  # contrast strength of the colour jitter; 0 = none
    aug_saturation: Annotated[float, Range(0, 1)] = 0.2  # saturation strength of the colour jitter; 0 = none
    aug_grey_prob: Annotated[float, Range(0, 1)] = 0.0  # probability of greyscale (BT.601 luma)
    aug_blur_prob: Annotated[float, Range(0, 1)] = 0.0  # probability of a Gaussian blur
    # the blur's sigma in pixels, [low, high] (uniform)
    aug_blur_sigma: Annotated[list[float], Range(0, low_open=True), Length(2, 2)] = [0.5, 1.5]
    aug_cutout_prob: Annotated[float, Range(0, 1)] = 0.0  # probability of a cutout (one rectangle filled)
    # the cutout's side as a fraction of each image side
    aug_cutout_size: Annotated[float, Range(0, 1, low_open=True)] = 0.3
    # the cutout's fill: "grey" (128, 0 once normalised) or "noise" (uniform random bytes)
    aug_cutout_fill: Annotated[str, Choices("grey", "noise")] = "grey"
    # --- optimisation ---
    # piecewise-constant learning rates ("piecewise"); poly/cosine decay from lr_values[0] (the others unused)
    lr_values: Annotated[list[float], Range(0, low_open=True), Length(1)] = [0.001, 0.0005, 0.0003, 0.0001]
    lr_steps: Annotated[list[int], Range(1)] = [40000, 60000, 80000]  # boundaries between lr_values
    lr_steps_scaled: bool = True  # multiply lr_steps by int(512 / batch_size), as the seed did
    lr_steps_as_seed_ran: bool = False  # halve the boundaries: the iterations where the seed's runs really dropped
    # "piecewise": the seed's lr_values between lr_steps; "poly" (power 1, arcface_torch) or "cosine": from the peak
    # lr_values[0] after warm-up down to 0 at the run's last step (epoch x steps per epoch, or max_steps if smaller)
    lr_schedule: Annotated[str, Choices("piecewise", "poly", "cosine")] = "piecewise"
    # updates of linear warm-up from 0 to lr_values[0] (update t at lr_values[0] x t / warmup_steps) before any
    # schedule (piecewise: before its first value, boundaries unchanged); 0 = none
    warmup_steps: NonNegativeInt = 0
    # "sgd": momentum SGD, weight_decay as the seed's L2 in the loss; "adamw": AdamW (betas 0.9/0.999, eps 1e-8),
    # weight_decay as its decoupled factor (arcface_torch: 0.1 with lr 1e-3), no L2 in the loss
    optimizer: Annotated[str, Choices("sgd", "adamw")] = "sgd"
    momentum: Annotated[float, Range(0, 1)] = 0.9  # SGD momentum
    # on conv/dense kernels, class weights, norm gammas, PReLU alphas: sgd's L2 (seed 5e-4), adamw's decoupled factor
    weight_decay: Annotated[float, Range(0)] = 5e-4
    # largest global norm of the backbone's gradient per update (the head's is not clipped); 0 = off (arcface_torch: 5)
    clip_grad_norm: Annotated[float, Range(0)] = 0.0
    # cross-entropy target 1 - eps + eps/C on the label, eps/C on the other classes, over the margin logits; 0 = off
    label_smoothing: Annotated[float, Range(0, 1, high_open=True)] = 0.0
    # micro-batches per update: batch_size images in batch_size/grad_accum_steps chunks
    grad_accum_steps: PositiveInt = 1
    # "float32", "mixed_float16" (with loss scaling) or "mixed_bfloat16"
    mixed_precision: Annotated[str, Choices("float32", "mixed_float16", "mixed_bfloat16")] = "float32"
    jit_compile: bool = False  # XLA for the forward/backward pass (faster on GPUs, slower on this CPU)
    seed: Annotated[int, Range(0, 2**32 - 1)] = 313  # initialisation, shuffling and augmentation
    # --- validation (eval/) ---
    eval_bins: list[RequiredPath] = []  # .bin sets in eval_db_path, e.g. ["lfw", "cfp_fp", "agedb_30"]
    eval_db_path: RequiredPath = "./datasets/faces_ms1m_112x112"  # folder of the .bin sets
    eval_dataset: OptionalPath = ""  # a custom aligned folder to validate on (with eval_pair)
    eval_pair: OptionalPath = ""  # its pairs.txt (generate_pairs.py)
    validate_interval: NonNegativeInt = 2000  # steps between validations (0 = never)
    # --- output ---
    ckpt_path: RequiredPath = "./output/ckpt"  # checkpoints, args.json, best/
    summary_path: RequiredPath = "./output/summary"  # TensorBoard
    log_file_path: RequiredPath = "./output/logs"  # text log
    saver_maxkeep: PositiveInt = 10  # checkpoints kept
    ckpt_interval: NonNegativeInt = 10000  # steps between checkpoints (also saved at the end; 0 = only then)
    summary_interval: PositiveInt = 300  # steps between TensorBoard summaries
    show_info_interval: PositiveInt = 20  # steps between console/log lines
    # --- starting point ---
    # fine-tune: a checkpoint (ours or the seed's TF1) or insightface's released model (ONNX, backbone.pth, MXNet)
    # whose backbone starts the run
    restore_path: OptionalPath = ""
    restore_head: bool = False  # also restore the class weights from restore_path (same classes)

    def head_margins(self) -> dict[str, float]:
        """The margins the head of this run really uses: the loss's defaults for those left at None, none of those
        the loss does not take (losses.margins_in_use)."""
        from losses.margins import margins_in_use

        return margins_in_use(self.loss, s=self.margin_s, m=self.margin_m, m1=self.margin_m1, m2=self.margin_m2,
                              m3=self.margin_m3)

    def augmentation(self) -> Augmentation:
        """The training augmentation of the aug_ fields (data.augment); ValueError naming a field out of order."""
        from data.augment import Augmentation

        return Augmentation.from_args(self.to_dict())


def validate_args(args: Args) -> None:
    """Checks what the field rules of Args cannot (one field against another); ValueError naming the keys."""
    from eval.sets import check_custom_set
    from losses.margins import check_margin_options
    from training.step import check_partial_fc_options

    check_margin_options(args.loss, args.easy_margin, args.interclass_filtering_threshold)
    if args.sample_rate < 1.0 and not args.partial_fc:
        raise ValueError(f"Args: sample_rate={args.sample_rate} samples the classes of a Partial FC head: set "
                         "partial_fc=true, or leave sample_rate=1.0")
    if args.partial_fc:
        check_partial_fc_options(args.jit_compile, args.label_smoothing)
    if args.batch_size % args.grad_accum_steps:
        raise ValueError(f"Args: batch_size={args.batch_size} must be a multiple of "
                         f"grad_accum_steps={args.grad_accum_steps}")
    check_custom_set(args.eval_dataset, args.eval_pair)
    args.augmentation()  # [low, high] pairs in order


def train(args: Args, strategy: tf.distribute.Strategy | None = None) -> dict:
    """Runs (or resumes) the training that `args` describes; returns the final step, losses and paths."""
    import keras
    import tensorflow as tf

    validate_args(args)
    strategy = strategy or tf.distribute.get_strategy()
    previous_policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(args.mixed_precision)
    log_handler = add_log_file(args.log_file_path, "train")
    try:
        return _train(args, strategy)
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)
        logging.getLogger().removeHandler(log_handler)
        log_handler.close()


def _train(args: Args, strategy: tf.distribute.Strategy) -> dict:
    import keras
    import tensorflow as tf

    from data.train_data import open_train_data
    from eval.sets import load_verification_sets
    from training import checkpoints
    from training.optim import decayed_variables, lr_boundaries, make_schedule
    from training.step import distributed_batches, make_train_step

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
    # Before anything is written: a run's args.json must keep describing its checkpoints, and the Args a released
    # model's network (None unless restore_path is one).
    checkpoints.check_resumed_args(args, ckpt_dir)
    released = checkpoints.check_released_model(args)

    # --- data ---
    data = open_train_data(args.train_dataset_dir, image_size=tuple(args.image_size),
                           channel_order=args.channel_order)
    augmentation = args.augmentation()
    if augmentation.enabled:
        log.info("augmentation beyond the flip: %s", augmentation)
    num_classes = args.num_output or data.num_classes
    if num_classes < data.num_classes:
        raise ValueError(f"Args: num_output={args.num_output} but the training data has {data.num_classes} classes")
    checkpoints.write_class_list(data, ckpt_dir)
    steps_per_epoch = data.num_images // global_batch
    if steps_per_epoch == 0:
        raise ValueError(f"{args.train_dataset_dir}: {data.num_images} images, fewer than one batch of {global_batch}")
    total_steps = args.epoch * steps_per_epoch
    if args.max_steps:
        total_steps = min(total_steps, args.max_steps)
    resume = _find_resume_point(args, ckpt_dir)
    validation_sets = load_verification_sets(args.eval_bins, args.eval_db_path, args.eval_dataset, args.eval_pair,
                                             image_size=args.image_size)
    log.info("training data %s: %d images of %d classes (%s), %d steps per epoch, %d replica(s)",
             args.train_dataset_dir, data.num_images, num_classes, data.format, steps_per_epoch, replicas)

    # --- network, head, optimiser, checkpoint ---
    boundaries = lr_boundaries(args.lr_steps, args.batch_size, args.lr_steps_scaled, args.lr_steps_as_seed_ran)
    schedule = make_schedule(args.lr_schedule, args.lr_values, boundaries, args.warmup_steps, total_steps)
    model, head, optimizer = build_training_objects(args, num_classes, strategy, schedule)
    # Decayed: the optimiser's decayed_variables, and a Partial FC head's shards (its own AdamW, or L2 in the step).
    optimised = model.trainable_variables + ([] if args.partial_fc else head.trainable_variables)
    decayed = len(decayed_variables(optimised)) + (len(head.shards) if args.partial_fc else 0)
    progress = checkpoints.Progress()  # plain host variables, read by the Python loop
    checkpoint = run_checkpoint(model, head, optimizer, progress)
    manager = tf.train.CheckpointManager(checkpoint, str(ckpt_dir), max_to_keep=args.saver_maxkeep,
                                         checkpoint_name=checkpoints.CHECKPOINT_NAME, step_counter=progress.step)
    best_manager = tf.train.CheckpointManager(checkpoint, str(ckpt_dir / checkpoints.BEST_DIR), max_to_keep=1,
                                              checkpoint_name=checkpoints.BEST_CHECKPOINT_NAME)
    saved_variables = model.weights + head.weights + optimizer.variables  # what save_checkpoint checks
    last_good = resume.latest  # the newest checkpoint that reads back and whose weights are usable
    if resume.latest:
        checkpoints.check_head_layout(resume.latest, head)
        checkpoints.restore_run(checkpoint, resume.latest)
        log.info("resumed from %s at step %d (epoch %d, batch %d)", resume.latest,
                 int(progress.step), int(progress.epoch), int(progress.batch_in_epoch))
    elif args.restore_path:
        checkpoints.restore_for_fine_tuning(model, head, args.restore_path, args.restore_head, released)
    args.save(ckpt_dir / checkpoints.ARGS_FILE)  # only now: a restore that fails leaves the run's args.json as it was
    if args.lr_schedule == "piecewise":
        log.info("lr %s with boundaries %s, warm-up %d steps", args.lr_values, boundaries, args.warmup_steps)
    else:
        log.info("lr %s: %g after %d warm-up steps to 0 at step %d", args.lr_schedule, args.lr_values[0],
                 args.warmup_steps, total_steps)
    log.info("%s; %d weights decayed by %g (%s)", args.optimizer, decayed,
             args.weight_decay, "decoupled" if args.optimizer == "adamw" else "L2 in the loss")

    if args.partial_fc:
        log.info("Partial FC: %s classes in %d shards; this worker's shards %s hold %s MB each (weights and optimizer "
                 "state); sample_rate %g", f"{num_classes:,}", strategy.num_replicas_in_sync,
                 [f"{start}-{end - 1}" for start, end in head.ranges],
                 [round(size / 2**20, 1) for size in head.replica_bytes()], args.sample_rate)

    # --- the loop ---
    l2_in_loss = args.weight_decay if args.optimizer == "sgd" else 0.0  # adamw decays in its update instead
    train_step = make_train_step(strategy, model, head, optimizer, global_batch, weight_decay=l2_in_loss,
                                 grad_accum_steps=args.grad_accum_steps, jit_compile=args.jit_compile,
                                 clip_grad_norm=args.clip_grad_norm, label_smoothing=args.label_smoothing)
    writer = tf.summary.create_file_writer(str(summary_dir))
    step = int(progress.step)
    metrics: dict[str, float] = {}
    bar = tqdm(total=total_steps, initial=step, unit="step", dynamic_ncols=True, desc="train")
    rate = _SampleRate(step, bar)
    with logging_redirect_tqdm(), writer.as_default():
        while step < total_steps:
            epoch, skip = int(progress.epoch), int(progress.batch_in_epoch)
            # Each worker reads only its part of every global batch (called at once: epoch and skip are this epoch's).
            batches = distributed_batches(strategy, lambda shard: data.dataset(
                global_batch, epoch=epoch, seed=args.seed, skip_batches=skip, augmentation=augmentation, shard=shard),
                global_batch)
            for images, labels in batches:
                metrics = {k: float(v) for k, v in train_step(images, labels).items()}
                step += 1
                progress.step.assign(step)
                progress.batch_in_epoch.assign_add(1)
                if not math.isfinite(metrics["total_loss"]):
                    raise FloatingPointError(
                        f"loss is {metrics['total_loss']} at step {step}; last good checkpoint: "
                        f"{last_good or 'none saved yet'}. Lower the learning rate or check the data.")
                # The rate of the update just applied: the optimiser read it at its count before incrementing it.
                metrics["learning_rate"] = float(schedule(optimizer.iterations - 1))
                bar.update(1)
                show = step % args.show_info_interval == 0 or step == total_steps
                summarize = step % args.summary_interval == 0
                if show or summarize:  # samples/s over the steps since the last line or summary
                    metrics["samples_per_sec"] = rate.read(step, global_batch)
                if show:
                    _show(bar, epoch, step, metrics)
                if summarize:
                    _write_summaries(step, metrics, model, head)
                if args.ckpt_interval and step % args.ckpt_interval == 0:
                    with rate.paused():
                        last_good = _save(manager, checkpoints.CHECKPOINT_NAME, step, saved_variables, last_good)
                if args.validate_interval and validation_sets and step % args.validate_interval == 0:
                    with rate.paused():
                        _validate(args, step, model, validation_sets, progress, best_manager, ckpt_dir,
                                  saved_variables)
                if step >= total_steps:
                    break
            else:
                progress.epoch.assign_add(1)
                progress.batch_in_epoch.assign(0)
        bar.close()
        if last_good is None or checkpoints.checkpoint_step(last_good) != step:
            last_good = _save(manager, checkpoints.CHECKPOINT_NAME, step, saved_variables, last_good)
        if validation_sets and args.validate_interval and step % args.validate_interval:
            _validate(args, step, model, validation_sets, progress, best_manager, ckpt_dir, saved_variables)
    if data.num_skipped:
        log.warning("%d unreadable training images were skipped (listed above)", data.num_skipped)
    return {"step": step, **metrics, "checkpoint": last_good,
            "best_accuracy": float(progress.best_accuracy), "best_checkpoint": best_manager.latest_checkpoint}


class _SampleRate:
    """Samples/s over the training steps since the last reading. Saving and validation are paused time, left out of
    it and out of the bar's rate and ETA, so that the console shows the training speed."""

    def __init__(self, step: int, bar: tqdm) -> None:
        self.bar = bar
        self.start, self.step = time.perf_counter(), step

    def read(self, step: int, samples_per_step: int) -> float:
        now = time.perf_counter()
        samples_per_sec = (step - self.step) * samples_per_step / max(now - self.start, 1e-9)
        self.start, self.step = now, step
        return samples_per_sec

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.start += time.perf_counter() - started
            self.bar.unpause()  # tqdm restarts its clock from its last print: the pause is not in its rate


def build_training_objects(args: Args, num_classes: int, strategy: tf.distribute.Strategy,
                           schedule: keras.optimizers.schedules.LearningRateSchedule, head: PartialFC | None = None,
                           ) -> tuple[keras.Model, keras.layers.Layer | PartialFC, keras.optimizers.Optimizer]:
    """The network, head and built optimiser of a run (what its checkpoints hold, with run_checkpoint), under the
    mixed-precision policy already set. `head`: a Partial FC head made by make_partial_fc_head (default: made here
    when args.partial_fc)."""
    import keras

    from losses import make_head
    from nets.spec import NetworkSpec
    from training.optim import make_optimizer

    # A Partial FC head's shards are plain variables, one on each replica's device: made outside the strategy's
    # scope, which would mirror them.
    if head is None and args.partial_fc:
        head = make_partial_fc_head(args, num_classes, strategy)
    with strategy.scope():
        model = NetworkSpec.from_mapping(args.to_dict()).build()
        if head is None:
            head = make_head(args.loss, num_classes, **args.head_margins(), seed=args.seed,
                             easy_margin=args.easy_margin,
                             interclass_filtering_threshold=args.interclass_filtering_threshold)
            head.build((None, args.embedding_size))
        # The optimiser's variables: a Partial FC head updates its own shards (PartialFC.apply).
        variables = model.trainable_variables + ([] if args.partial_fc else head.trainable_variables)
        optimizer = make_optimizer(args.optimizer, schedule, variables, momentum=args.momentum,
                                   weight_decay=args.weight_decay)
        if args.mixed_precision == "mixed_float16":
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        optimizer.build(variables)
    return model, head, optimizer


def run_checkpoint(model: keras.Model, head: keras.layers.Layer | PartialFC, optimizer: keras.optimizers.Optimizer,
                   progress: tf.Module) -> tf.train.Checkpoint:
    """What every checkpoint of a run holds. Keras keeps the dropout RNG state outside the object graph that
    tf.train.Checkpoint follows: it is saved explicitly so that a resumed run draws the masks of an uninterrupted one."""
    import tensorflow as tf

    from training.step import random_state_variables

    return tf.train.Checkpoint(model=model, head=head, optimizer=optimizer, progress=progress,
                               random_states=random_state_variables(model))


def make_partial_fc_head(args: Args, num_classes: int, strategy: tf.distribute.Strategy,
                         num_shards: int | None = None) -> PartialFC:
    """The Partial FC head of `args` with one shard on each of this worker's replica devices, created (and to be
    called) outside the strategy's scope; every replica's shard is the one of its global replica id. `num_shards`:
    instead, that many shards all on the default device (to read or write a checkpoint, not to train)."""
    import tensorflow as tf

    from losses.partial_fc import PartialFC

    if num_shards is not None:
        devices, replica_ids, total = [None] * num_shards, list(range(num_shards)), num_shards
    else:
        try:
            devices = list(strategy.extended.worker_devices)
        except RuntimeError:  # the default strategy (one device, no tf.distribute) has no device list
            devices = [None]
        replica_ids = [int(i) for i in strategy.experimental_local_results(
            strategy.run(lambda: tf.distribute.get_replica_context().replica_id_in_sync_group))]
        total = strategy.num_replicas_in_sync
    if replica_ids != list(range(replica_ids[0], replica_ids[0] + len(devices))):
        raise RuntimeError(f"Partial FC needs this worker's replicas numbered in a row; tf.distribute gave {replica_ids}")
    l2_in_loss = args.optimizer == "sgd"  # adamw decays in its update instead (as make_optimizer)
    return PartialFC(num_classes, args.embedding_size, loss=args.loss, margins=args.head_margins(),
                     sample_rate=args.sample_rate, seed=args.seed, easy_margin=args.easy_margin,
                     interclass_filtering_threshold=args.interclass_filtering_threshold, devices=devices,
                     first_shard=replica_ids[0], num_shards=total, optimizer=args.optimizer,
                     momentum=args.momentum, weight_decay=0.0 if l2_in_loss else args.weight_decay)


def _find_resume_point(args: Args, ckpt_dir: Path) -> ResumePoint:
    """The checkpoint to resume from, found from the files (training.checkpoints.find_resume_point), after removing
    the temp folders of interrupted saves; newer checkpoints that cannot be read back are set aside, kept."""
    from training import checkpoints

    checkpoints.clean_temp_folders(ckpt_dir, checkpoints.CHECKPOINT_NAME)
    checkpoints.clean_temp_folders(ckpt_dir / checkpoints.BEST_DIR, checkpoints.BEST_CHECKPOINT_NAME)
    resume = checkpoints.find_resume_point(ckpt_dir)
    checkpoints.set_aside_unreadable(resume, ckpt_dir)
    checkpoints.repair_state_file(resume, ckpt_dir, args.saver_maxkeep)
    return resume


def _save(manager: tf.train.CheckpointManager, name: str, step: int, variables: list, last_good: str | None) -> str:
    from training import checkpoints

    saved = checkpoints.save_checkpoint(manager, name, step, variables, last_good)
    log.info("saved %s", saved)
    return saved


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
    sampled = f", {m['sampled_classes']:.0f} classes sampled" if "sampled_classes" in m else ""
    log.info("epoch %d, total_step %d, total loss %.3f, inference loss %.3f, weight decay loss %.3f, training accuracy "
             "%.4f (plain logits %.4f), lr %.2g, %.1f samples/sec%s", epoch, step, m["total_loss"], m["inference_loss"],
             m["wd_loss"], m["accuracy"], m["accuracy_plain"], m["learning_rate"], m["samples_per_sec"], sampled)


def _write_summaries(step: int, metrics: dict[str, float], model: keras.Model, head: keras.layers.Layer) -> None:
    import tensorflow as tf

    for key, value in metrics.items():
        tf.summary.scalar(key, value, step=step)
    for variable in model.trainable_variables + list(head.trainable_variables):
        tf.summary.histogram(getattr(variable, "path", variable.name), tf.convert_to_tensor(variable), step=step)


# TensorBoard tag (validation/<set>/<tag>) of each report number logged at every validation.
VALIDATION_SCALARS = {"accuracy_mean": "accuracy", "val": "val_at_far", "auc": "auc", "eer": "eer", "xnorm": "xnorm"}


def _validate(args: Args, step: int, model: keras.Model, validation_sets: list, progress, best_manager,
              ckpt_dir: Path, saved_variables: list) -> None:
    import tensorflow as tf

    from deploy.preprocessing import save_keras
    from training import checkpoints, validation

    reports = validation.validate(model, validation_sets, step=step, batch_size=args.batch_size,
                                  channel_order=args.channel_order)
    for name, report in reports.items():
        for key, tag in VALIDATION_SCALARS.items():
            if report[key] is not None:  # EER is None when the ROC never crosses TPR = 1 - FPR
                tf.summary.scalar(f"validation/{name}/{tag}", report[key], step=step)
    first_name, first_report = next(iter(reports.items()))
    first = first_report["accuracy_mean"]
    if first > float(progress.best_accuracy):
        progress.best_accuracy.assign(first)
        saved = checkpoints.save_checkpoint(best_manager, checkpoints.BEST_CHECKPOINT_NAME, step, saved_variables,
                                            best_manager.latest_checkpoint)
        save_keras(model, ckpt_dir / checkpoints.BEST_DIR / checkpoints.EMBEDDING_EXPORT)  # loads without nets/
        log.info("###### best accuracy %.5f on %s at step %d: %s", first, first_name, step, saved)


def main(args: Args) -> None:
    summary = train(args)
    log.info("done at step %d; latest checkpoint %s", summary["step"], summary["checkpoint"])


def cli() -> NoReturn:
    """The `insightface-train` console script: this script's command line, from any folder."""
    run_script(Args, main)


if __name__ == "__main__":
    cli()
