"""Training checkpoints: what they hold, where they live, resuming a run and starting one from another's weights.

A run's `ckpt_path` holds `args.json` (the resolved train_nets.Args), `InsightFace_iter-<step>.{index,data-*}` written
by a `tf.train.CheckpointManager` (network, head, optimizer, step, data position) and `best/`, the best validated
checkpoint plus `best/embedding.keras`, the embedding network alone. TensorFlow writes the checkpoint files first and
then atomically replaces the `checkpoint` state file, so a crash during a save leaves the previous checkpoint as the
latest one. A resume does not trust that state file alone: it takes the newest checkpoint whose files all read back
(`find_resume_point`); newer ones that do not read back are moved into `unreadable/` (`set_aside_unreadable`), and a
run never writes over checkpoint files it did not make (`save_checkpoint`).
"""

from __future__ import annotations

import logging
import math
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from common.files import replacing
from common.preprocessing import SEED_PREPROCESSING, Preprocessing
from common.sizes import image_size_pair

from models.checkpoints import (ARGS_FILE, is_object_checkpoint, reading, resolve_checkpoint,
                                restore_embedding_weights)
from nets import pretrained, resnet_ir, seed_checkpoint
from nets.spec import NetworkSpec

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "InsightFace_iter"
BEST_DIR = "best"
BEST_CHECKPOINT_NAME = "InsightFace_iter_best"
EMBEDDING_EXPORT = "embedding.keras"
CLASSES_FILE = "classes.txt"

# Every train_nets.Args (and train_nets_mgpu_new.Args) field, by whether a run may change it when it resumes.
# Fixed for the life of a run: what its checkpoints hold and how its data is walked.
RUN_FIELDS = frozenset({
    # the network (args.json rebuilds it for evaluation and export)
    "net_depth", "unit_type", "norm", "net_width", "backbone", "dropout_rate", "embedding_size", "norm_epsilon",
    "projection_shortcut",
    # the margin head
    "loss", "margin_s", "margin_m", "margin_m1", "margin_m2", "margin_m3", "easy_margin",
    "interclass_filtering_threshold", "num_output",
    # the data; the saved position counts batches of batch_size, and seed fixes each epoch's shuffle
    "train_dataset_dir", "image_size", "channel_order", "batch_size", "seed",
    # mixed_float16 wraps the optimizer in a loss-scale optimizer: another checkpoint layout
    "mixed_precision",
    # the recipe: another optimizer is another checkpoint layout; another schedule or loss, another run
    "optimizer", "lr_schedule", "warmup_steps", "label_smoothing",
    # the augmentation: part of the data each step sees (resume repeats it exactly)
    "aug_crop_prob", "aug_crop_area", "aug_crop_aspect", "aug_colour_prob", "aug_brightness", "aug_contrast",
    "aug_saturation", "aug_grey_prob", "aug_blur_prob", "aug_blur_sigma", "aug_cutout_prob", "aug_cutout_size",
    "aug_cutout_fill",
    # the starting point
    "restore_path", "restore_head",
    # Partial FC: another checkpoint layout of the class weights (the shards follow the replica count: check_head_layout)
    "partial_fc",
})
# Free to change on a resumed run (logged): schedule, optimisation, devices, validation, outputs, logging. sync_bn
# and the device counts change how replicas share the work, not the weights.
ADJUSTABLE_FIELDS = frozenset({
    "epoch", "max_steps", "lr_values", "lr_steps", "lr_steps_scaled", "lr_steps_as_seed_ran", "momentum",
    "weight_decay", "clip_grad_norm", "grad_accum_steps", "jit_compile", "sync_bn", "num_gpus", "multi_worker",
    "sample_rate",
    "eval_bins", "eval_db_path", "eval_dataset", "eval_pair", "validate_interval",
    "ckpt_path", "summary_path", "log_file_path", "saver_maxkeep", "ckpt_interval", "summary_interval",
    "show_info_interval",
})


class Progress(tf.Module):
    """The loop's position, saved with each checkpoint: step, epoch, batches done in that epoch, best accuracy."""

    def __init__(self) -> None:
        super().__init__(name="progress")
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        self.batch_in_epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="batch_in_epoch")
        self.best_accuracy = tf.Variable(-1.0, dtype=tf.float64, trainable=False, name="best_accuracy")


@dataclass
class ResumePoint:
    """What a run folder holds: its newest readable checkpoint and the unreadable ones newer than it, by step."""

    latest: str | None = None
    unreadable: dict[int, str] = field(default_factory=dict)  # step -> why its files do not read back

    @property
    def step(self) -> int:
        return checkpoint_step(self.latest) if self.latest else 0


def checkpoint_step(prefix: str | Path) -> int:
    """The step of a checkpoint prefix `<name>-<step>`."""
    return int(str(prefix).rsplit("-", 1)[1])


def checkpoint_files(ckpt_dir: str | Path, name: str = CHECKPOINT_NAME) -> dict[int, list[Path]]:
    """The `.index` and `.data-*` files of every checkpoint `<name>-<step>` in ckpt_dir, by step."""
    pattern = re.compile(rf"{re.escape(name)}-(\d+)\.(index|data-\d+-of-\d+)")
    found: dict[int, list[Path]] = {}
    folder = Path(ckpt_dir)
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        match = pattern.fullmatch(path.name)
        if match and path.is_file():
            found.setdefault(int(match.group(1)), []).append(path)
    return found


def unreadable_reason(prefix: str | Path) -> str | None:
    """Why checkpoint `prefix` cannot be restored (no or empty index, a missing, truncated or corrupt data shard), or
    None when every value reads back: the reader checks each value's size and checksum."""
    index = Path(f"{prefix}.index")
    if not index.is_file() or index.stat().st_size == 0:
        return f"{index} is {'empty' if index.is_file() else 'missing'}"
    try:
        reader = tf.train.load_checkpoint(str(prefix))
        for name in reader.get_variable_to_shape_map():
            reader.get_tensor(name)
    except Exception as err:  # noqa: BLE001 - any failure to read it back makes it unusable (the reader raises
        # tf.errors.OpError, IndexError for a short data file, ...)
        return f"{type(err).__name__}: {' '.join(str(err).split())[:300]}"
    return None


def clean_temp_folders(ckpt_dir: str | Path, name: str = CHECKPOINT_NAME) -> list[Path]:
    """Removes the `<name>-<step>_temp` folders that TensorFlow's sharded save leaves when killed, and only those."""
    folder = Path(ckpt_dir)
    if not folder.is_dir():
        return []
    pattern = re.compile(rf"{re.escape(name)}-\d+_temp")
    removed = [path for path in sorted(folder.iterdir())
               if pattern.fullmatch(path.name) and path.is_dir() and not path.is_symlink()]
    for path in removed:
        log.warning("removing %s, left by a save that was interrupted", path)
        shutil.rmtree(path)
    return removed


def find_resume_point(ckpt_dir: str | Path) -> ResumePoint:
    """The newest checkpoint of ckpt_dir whose files read back, whatever the `checkpoint` state file says.

    Reads only: the newer unreadable ones are listed in `unreadable` (see `set_aside_unreadable`).
    """
    point = ResumePoint()
    for step in sorted(checkpoint_files(ckpt_dir), reverse=True):
        reason = unreadable_reason(Path(ckpt_dir) / f"{CHECKPOINT_NAME}-{step}")
        if reason is None:
            point.latest = str(Path(ckpt_dir) / f"{CHECKPOINT_NAME}-{step}")
            break
        point.unreadable[step] = reason
    return point


def repair_state_file(point: ResumePoint, ckpt_dir: str | Path, keep: int) -> None:
    """Makes the `checkpoint` state file name `point.latest`, so that the CheckpointManager continues from it.

    A missing, garbage or stale one is rewritten to name it (and the `keep` - 1 checkpoints before it, which the
    manager may then delete as usual). Without a readable checkpoint it is removed: left, the manager would take
    its entries (unreadable checkpoints) for its own and delete them.
    """
    recorded = _recorded_latest(ckpt_dir)
    state_file = Path(ckpt_dir) / "checkpoint"
    if point.latest is None:
        if state_file.is_file():
            log.warning("removing the checkpoint state file %s: it names %s, and no checkpoint here reads back",
                        state_file, recorded or "nothing (unreadable)")
            state_file.unlink()
        return
    if recorded == point.latest:
        return
    older = [f"{CHECKPOINT_NAME}-{step}" for step in sorted(checkpoint_files(ckpt_dir))
             if step < point.step and Path(ckpt_dir, f"{CHECKPOINT_NAME}-{step}.index").is_file()]
    kept = [*(older[-(keep - 1):] if keep > 1 else []), Path(point.latest).name]
    log.warning("the checkpoint state file %s names %s: resuming from %s, the newest checkpoint that reads back",
                state_file, recorded or "nothing (missing or unreadable)", point.latest)
    tf.compat.v1.train.update_checkpoint_state(str(ckpt_dir), kept[-1], all_model_checkpoint_paths=kept)


def _recorded_latest(ckpt_dir: str | Path) -> str | None:
    """The latest checkpoint that the `checkpoint` state file names; None when it is missing or unreadable."""
    if not (Path(ckpt_dir) / "checkpoint").is_file():
        return None
    try:
        state = tf.train.get_checkpoint_state(str(ckpt_dir))
    except ValueError:  # TensorFlow reports a parse error as None, but lets a UnicodeDecodeError through
        return None
    return state.model_checkpoint_path if state else None


UNREADABLE_DIR = "unreadable"


def set_aside_unreadable(point: ResumePoint, ckpt_dir: str | Path) -> list[Path]:
    """Moves the files of the unreadable checkpoints newer than `point.latest` (a save killed half-way, a damaged
    disk) into ckpt_dir/unreadable/<name>-<step>[.k]/, kept as they are: the resumed run will save those steps
    again and must neither write over them nor lose them. Returns the folders they went to."""
    moved = []
    for step in sorted(point.unreadable):
        files = checkpoint_files(ckpt_dir).get(step, [])
        if not files:
            continue
        target = _free_folder(Path(ckpt_dir) / UNREADABLE_DIR / f"{CHECKPOINT_NAME}-{step}")
        target.mkdir(parents=True)
        for path in files:
            path.rename(target / path.name)
        log.warning("moved the unreadable checkpoint %s-%d (%s) to %s: kept, and not resumed from",
                    CHECKPOINT_NAME, step, point.unreadable[step], target)
        moved.append(target)
    return moved


def _free_folder(folder: Path) -> Path:
    """`folder`, or `folder.1`, `folder.2`... the first that does not exist."""
    candidate, count = folder, 0
    while candidate.exists():
        count += 1
        candidate = folder.with_name(f"{folder.name}.{count}")
    return candidate


def save_checkpoint(manager: tf.train.CheckpointManager, name: str, step: int, variables: list,
                    last_good: str | None) -> str:
    """Saves checkpoint `<name>-<step>` after checking that its weights are usable and that no file of it exists.

    FloatingPointError when a weight is not finite or has blown up so far that its squared norm overflows float32
    (the next loss would not be finite): a checkpoint is only saved when training can continue from it. ValueError
    when a file of that checkpoint exists: this run did not make it (its saves go to new steps) and keeps it.
    """
    blown = blown_up_variables(variables)
    if blown:
        named = ", ".join(blown[:3]) + (f" and {len(blown) - 3} more" if len(blown) > 3 else "")
        raise FloatingPointError(f"weights blew up at step {step} ({named} not finite or with a squared norm beyond "
                                 f"float32): checkpoint {name}-{step} not saved; last good checkpoint: "
                                 f"{last_good or 'none saved yet'}. Lower the learning rate or check the data.")
    existing = checkpoint_files(manager.directory, name).get(step)
    if existing:
        raise ValueError(f"will not overwrite {', '.join(map(str, existing))}: this run did not write it. Move it "
                         f"away and run again (it resumes from {last_good or 'the start'})")
    return manager.save(checkpoint_number=step)


def blown_up_variables(variables: list) -> list[str]:
    """The float variables that are not finite or whose squared norm overflows float32 (|w| around 1e19 or more)."""
    blown = []
    for variable in variables:
        if tf.as_dtype(variable.dtype).is_floating:
            squared = float(tf.reduce_sum(tf.square(tf.cast(variable, tf.float32))))
            if not math.isfinite(squared):
                blown.append(getattr(variable, "path", variable.name))
    return blown


# The Args fields of the margins; args.head_margins() gives the margins the head really uses.
MARGIN_FIELDS = ("margin_s", "margin_m", "margin_m1", "margin_m2", "margin_m3")


def check_resumed_args(args, ckpt_dir: str | Path) -> list[str]:
    """Compares `args` with the args.json of a run in `ckpt_dir` before anything there is written.

    Returns the adjustable fields that differ (logged; args.json may then be rewritten). Raises ValueError naming
    every differing RUN_FIELDS field (any field not in ADJUSTABLE_FIELDS counts as one) with both values. The
    margins count by the values the head uses (args.head_margins()), not by how the fields spell them.
    """
    path = Path(ckpt_dir) / ARGS_FILE
    if not path.is_file():
        return []
    saved_args = type(args).load(path, strict=False)
    saved, now = saved_args.to_dict(), args.to_dict()
    differing = [key for key in now if key not in MARGIN_FIELDS and saved[key] != now[key]]
    if saved["loss"] == now["loss"]:  # (another loss is refused by itself)
        # None and the loss's default are one margin, and a margin the loss does not take changes nothing: the
        # args.json of earlier versions holds margin_m1/m2/m3 = 1.0/0.3/0.2 whatever the loss.
        before, after = saved_args.head_margins(), args.head_margins()
        for margin, value in before.items():
            if after[margin] != value:
                key = f"margin_{margin}"  # the Args field that sets it
                differing.append(key)
                saved[key], now[key] = value, after[margin]
    refused = [key for key in differing if key not in ADJUSTABLE_FIELDS]
    if refused:
        listed = "; ".join(f"{key}: {saved[key]!r} in {path}, {now[key]!r} now" for key in refused)
        old_values = " ".join(f"--{key}={_cli_value(saved[key])}" for key in refused)
        raise ValueError(f"ckpt_path {ckpt_dir} holds a run with another network, head, data or starting point "
                         f"({listed}). A run cannot change these: give a new ckpt_path, or continue it with the "
                         f"saved values ({old_values}).")
    for key in differing:
        log.info("resuming with %s changed: %r in %s, %r now", key, saved[key], path, now[key])
    return differing


def _cli_value(value) -> str:
    """`value` as a --key=value override spells it (strings unquoted, lists without spaces)."""
    if isinstance(value, list):
        return f"[{','.join(_cli_value(item) for item in value)}]"
    if isinstance(value, bool):
        return str(value).lower()
    return value if isinstance(value, str) else str(value)


def write_class_list(data, ckpt_dir: str | Path) -> Path:
    """Writes the class list of `data` (data.train_data.TrainData) as ckpt_dir/classes.txt, atomically.

    A run (an args.json beside it) whose classes.txt lists other classes raises ValueError and keeps its file; one
    without args.json is left over from a set-up that failed, and is replaced.
    """
    path = Path(ckpt_dir) / CLASSES_FILE
    is_run = (Path(ckpt_dir) / ARGS_FILE).is_file()
    with replacing(path) as staged:  # an error below removes the staged list and keeps the run's
        data.save_class_list(staged)
        if is_run and path.is_file() and path.read_text() != staged.read_text():
            _refuse_other_classes(path, path.read_text().splitlines(), staged.read_text().splitlines())
    return path


def _refuse_other_classes(path: Path, saved: list[str], now: list[str]) -> None:
    first = next((i for i, (a, b) in enumerate(zip(saved, now)) if a != b), min(len(saved), len(now)))
    names = [names[first] if first < len(names) else "(none)" for names in (saved, now)]
    raise ValueError(f"{path} lists {len(saved)} classes, the training data has {len(now)}; the first difference "
                     f"is at line {first + 1}: {names[0]!r} in the run, {names[1]!r} now. A run cannot change its "
                     f"classes: give a new ckpt_path, or the data it was trained on.")


# Checkpoint keys of the class weights: the full head's [D, C] matrix, a Partial FC head's shards [rows, D] (numbered
# on each worker from 0) and its layout (losses.partial_fc.PartialFC.layout).
FULL_HEAD_KEY = "head/embedding_weights/.ATTRIBUTES/VARIABLE_VALUE"
SHARD_KEY = re.compile(r"^head/shards/(\d+)/\.ATTRIBUTES/VARIABLE_VALUE$")
LAYOUT_KEY = "head/layout/.ATTRIBUTES/VARIABLE_VALUE"
RESHARD_COMMAND = "python -m training.reshard_head"


def head_layout(prefix: str) -> dict[str, int] | None:
    """The Partial FC layout a checkpoint was written with (first_shard, local_shards, num_shards, num_classes), or
    None for a full head."""
    with reading(prefix):
        reader = tf.train.load_checkpoint(prefix)
    if not reader.has_tensor(LAYOUT_KEY):
        return None
    first, local, total, classes = (int(v) for v in reader.get_tensor(LAYOUT_KEY))
    return {"first_shard": first, "local_shards": local, "num_shards": total, "num_classes": classes}


def check_head_layout(prefix: str, head) -> None:
    """ValueError before a resume when the Partial FC head built now splits the classes otherwise than the checkpoint
    (another replica count): naming both and the re-shard command."""
    saved = head_layout(prefix)
    now = head.layout_dict() if hasattr(head, "layout_dict") else None
    if saved == now:
        return

    def describe(layout: dict[str, int] | None) -> str:
        return "the full head" if layout is None else f"{layout['num_shards']} Partial FC shard(s)"

    raise ValueError(f"checkpoint {prefix} holds its class weights as {describe(saved)}, this run builds "
                     f"{describe(now)} (a Partial FC head has one shard per replica): resume it on "
                     f"{saved['num_shards'] if saved else 'any number of'} replica(s), or re-shard it into a new run "
                     f"folder: {RESHARD_COMMAND} --ckpt_path=<run folder> --num_shards=<replicas>")


def full_head_classes(prefix: str) -> int:
    """The class count of a full-head checkpoint, from its shapes (the weights are not read)."""
    with reading(prefix):
        shapes = tf.train.load_checkpoint(prefix).get_variable_to_shape_map()
    if FULL_HEAD_KEY not in shapes:
        raise ValueError(f"checkpoint {prefix} holds no class weights")
    return int(shapes[FULL_HEAD_KEY][1])


def read_class_weights(prefix: str) -> np.ndarray:
    """The class weights [D, C] of a checkpoint, from the full head or from every Partial FC shard of a one-machine
    run (a multi-worker run's checkpoints each hold their worker's shards only: ValueError)."""
    with reading(prefix):
        reader = tf.train.load_checkpoint(prefix)
        if reader.has_tensor(FULL_HEAD_KEY):
            return reader.get_tensor(FULL_HEAD_KEY)
        layout = head_layout(prefix)
        if layout is None:
            raise ValueError(f"checkpoint {prefix} holds no class weights")
        if layout["local_shards"] != layout["num_shards"]:
            raise ValueError(f"checkpoint {prefix} holds Partial FC shards {layout['first_shard']}.."
                             f"{layout['first_shard'] + layout['local_shards'] - 1} of {layout['num_shards']} (one "
                             "worker's): restore the class weights from a one-machine run's checkpoint")
        shards = [reader.get_tensor(f"head/shards/{i}/.ATTRIBUTES/VARIABLE_VALUE")
                  for i in range(layout["local_shards"])]
    return np.concatenate(shards, axis=0).T


def restore_run(checkpoint: tf.train.Checkpoint, prefix: str) -> None:
    """Restores a run's own checkpoint (resume); ValueError naming it when it does not fit the network built."""
    try:
        with reading(prefix):
            checkpoint.restore(prefix).assert_existing_objects_matched()
    except AssertionError as err:
        raise ValueError(f"checkpoint {prefix} does not fit the network, head and optimizer of these Args (was it "
                         f"written with another {ARGS_FILE}?): give a new ckpt_path. {err}") from err


def restore_for_fine_tuning(model: keras.Model, head: keras.layers.Layer, path: str | Path, with_head: bool,
                            released: keras.Model | None = None) -> None:
    """Starts a run from another run's backbone (ours or the seed's TF1 checkpoint), optionally its class weights, or
    from insightface's released model (`released`: its network as check_released_model returned it, or None to
    read it here).

    Any error names the restore_path key (FileNotFoundError, or ValueError for a checkpoint that does not read or fit).
    """
    try:
        _restore_for_fine_tuning(model, head, path, with_head, released)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"Args: restore_path={path}: {err}") from err
    except ValueError as err:
        raise ValueError(f"Args: restore_path={path}: {err}") from err


def _restore_for_fine_tuning(model: keras.Model, head: keras.layers.Layer, path: str | Path, with_head: bool,
                             released: keras.Model | None) -> None:
    if released is not None or pretrained.is_pretrained_file(path):
        if with_head:
            raise ValueError(_NO_CLASS_WEIGHTS)
        network = released if released is not None else pretrained.build_from_weights(pretrained.read_weights(path))
        copy_network_weights(network, model)
        log.info("fine-tuning from insightface's %s in %s (backbone; a new head)", network.name, path)
        return
    prefix = resolve_checkpoint(path)
    if is_object_checkpoint(prefix):
        restore_embedding_weights(model, prefix)
        if with_head and hasattr(head, "assign_full"):  # a Partial FC head takes its shards' rows of any layout
            head.assign_full(_fitting_class_weights(read_class_weights(prefix), head, prefix))
        elif with_head:
            with reading(prefix):
                tf.train.Checkpoint(head=head).read(prefix).expect_partial().assert_existing_objects_matched()
        log.info("fine-tuning from %s (%s)", prefix, "backbone and class weights" if with_head else "backbone")
        return
    with reading(prefix):
        class_weights = seed_checkpoint.restore_weights(model, prefix)
    if with_head and not seed_checkpoint.restore_class_weights(head, class_weights):
        raise ValueError(f"restore_head: the class weights of {prefix} do not fit the head "
                         f"{tuple(head.embedding_weights.shape)} (see the log)")
    log.info("fine-tuning from the seed checkpoint %s", prefix)


def _fitting_class_weights(weights: np.ndarray, head, prefix: str) -> np.ndarray:
    expected = (head.embedding_size, head.num_classes)
    if weights.shape != expected:
        raise ValueError(f"restore_head: the class weights of {prefix} are {weights.shape}, the head needs {expected} "
                         "(embedding size, classes)")
    return weights


# --- fine-tuning from insightface's released models (nets.pretrained: ONNX, arcface_torch .pth, MXNet zoo) ---------

_NO_CLASS_WEIGHTS = ("restore_head=true: insightface's released models hold the backbone only, no class weights; "
                     "set --restore_head=false (the run starts a new head)")
# Listed in a refusal's overrides even when they already match: with them a reader sees which network the file is.
_ALWAYS_LISTED = ("net_depth", "embedding_size", "image_size", "norm_epsilon", "channel_order")
# The registry backbones an imported MobileFaceNet may be (nets.pretrained.build builds the paper's and arcface_torch's).
_MOBILEFACENETS = ("mobilefacenet", "mobilefacenet_arcface_torch")
# How far a released model's pixel normalisation may be from the training pipeline's, as a fraction of the normalised
# range (see _check_normalisation).
NORMALISATION_TOLERANCE = 0.01


def check_released_model(args) -> keras.Model | None:
    """The network of insightface's released model at args.restore_path (built and loaded by nets.pretrained) once
    the Args are checked to describe it; None when restore_path is empty or another kind of checkpoint.

    Run before anything is written. ValueError naming restore_path when restore_head is set (those files hold no
    class weights), when the Args describe another network or channel order (listing the --key=value overrides that
    match the file), or when the file's pixel normalisation is far from the training pipeline's.
    """
    path = args.restore_path
    if not path or not pretrained.is_pretrained_file(path):
        return None
    prefix = f"Args: restore_path={path}"
    if args.restore_head:
        raise ValueError(f"{prefix}: {_NO_CLASS_WEIGHTS}")
    try:
        weights = pretrained.read_weights(path)
        network = pretrained.build_from_weights(weights)
        described = released_model_args(network, weights.preprocessing)
    except ValueError as err:
        raise ValueError(f"{prefix}: {err}") from err
    now = args.to_dict()
    differing = [key for key, value in described.items() if not _same_arg_value(key, now[key], value)]
    if differing:
        listed = ", ".join(f"{key}={_cli_value(now[key])}" for key in differing)
        overrides = " ".join(f"--{key}={_cli_value(value)}" for key, value in described.items()
                             if key in differing or key in _ALWAYS_LISTED)
        raise ValueError(f"{prefix}: insightface's {network.name} there is another network or input than these Args "
                         f"describe ({listed}); run with {overrides} (dropout_rate may differ)")
    _check_normalisation(weights.preprocessing, prefix)
    return network


def released_model_args(network: keras.Model, preprocessing: Preprocessing) -> dict[str, Any]:
    """The train_nets.Args values that build `network` (one of nets.pretrained.build_from_weights) for its input.

    ValueError when no Args describe it (mixed batch-norm epsilons, a MobileFaceNet variant with no registry name).
    """
    epsilons = {float(layer.epsilon) for layer in network.layers if isinstance(layer, keras.layers.BatchNormalization)}
    if len(epsilons) != 1:
        raise ValueError(f"{network.name} has batch norms of the epsilons {sorted(epsilons)}; Args set one")
    described = dict(norm="bn", embedding_size=int(network.output_shape[-1]),
                     image_size=list(network.input_shape[1:3]), norm_epsilon=epsilons.pop())
    names = {layer.name for layer in network.layers}
    units = tuple(sum(bool(re.fullmatch(rf"block{stage}\.unit_\d+\.bottleneck_v1\.conv1", name)) for name in names)
                  for stage in range(1, 5))
    depths = [depth for depth, stage_units in resnet_ir.STAGE_UNITS.items() if stage_units == units]
    if depths:
        # Stage 1 keeps 64 channels: only a projection shortcut gives its first unit a shortcut convolution.
        projection = "block1.unit_1.bottleneck_v1.shortcut_conv" in names
        return dict(net_depth=depths[0], backbone="", unit_type="ir", net_width=1, **described,
                    projection_shortcut=projection, channel_order=preprocessing.channel_order)
    for backbone in _MOBILEFACENETS:
        candidate = dict(backbone=backbone, **described, projection_shortcut=False,
                         channel_order=preprocessing.channel_order)
        built = NetworkSpec.from_mapping({**candidate, "dropout_rate": 0.0}).build()
        if _layer_signatures(built) == _layer_signatures(network):
            return candidate
    raise ValueError(f"{network.name}: no backbone of nets.registry has its layers (IR-ResNet depths "
                     f"{sorted(resnet_ir.STAGE_UNITS)}, {', '.join(_MOBILEFACENETS)}): it can be evaluated and "
                     f"exported, not fine-tuned")


def _same_arg_value(key: str, now: Any, described: Any) -> bool:
    if key == "image_size":
        return image_size_pair(now) == image_size_pair(described)
    if key == "backbone":
        return now.lower() == described.lower()  # the registry's names are case-insensitive
    return now == described


def _check_normalisation(preprocessing: Preprocessing, prefix: str) -> None:
    """ValueError unless the training pipeline's (x - 127.5) / 128 is within NORMALISATION_TOLERANCE of the file's.

    arcface_torch's models were trained on (x - 127.5) / 127.5: fed the pipeline's numbers they see inputs 0.4%
    smaller. That is harmless for fine-tuning: the batch norm after the first convolution normalises by the batch's
    statistics in training (a scale of the input cancels there) and its running statistics adapt within the first
    steps; and every later reader of the run (evaluation, export, resume) takes the normalisation from the run's
    args.json, so it feeds what training fed. A model expecting other numbers (e.g. [0, 1] pixels) would start far
    from its weights, and is refused.
    """
    seed = SEED_PREPROCESSING
    mean_offset = abs(preprocessing.mean - seed.mean) * seed.scale
    scale_ratio = abs(preprocessing.scale / seed.scale - 1)
    if max(mean_offset, scale_ratio) > NORMALISATION_TOLERANCE:
        raise ValueError(f"{prefix}: the model takes (x - {preprocessing.mean:g}) * {preprocessing.scale:g}; "
                         f"training feeds (x - {seed.mean:g}) * {seed.scale:g}, too far from it to fine-tune")


def _layer_signatures(model: keras.Model) -> list[tuple]:
    """Per layer with weights, in build order: its class, weight shapes and norm epsilon (what a copy must match)."""
    return [(type(layer).__name__, tuple(tuple(weight.shape) for weight in layer.weights),
             getattr(layer, "epsilon", None)) for layer in model.layers if layer.weights]


def copy_network_weights(source: keras.Model, target: keras.Model) -> None:
    """Sets every weight of `target` to the one of `source` in the same place: the two networks must have the same
    weighted layers in the same order (class, shapes, norm epsilon); layer names may differ (nets.pretrained.build
    splits a MobileFaceNet's stages otherwise than the registry) and so may dropout. ValueError naming the first
    difference."""
    sources = [layer for layer in source.layers if layer.weights]
    targets = [layer for layer in target.layers if layer.weights]
    for index, (from_layer, to_layer, from_signature, to_signature) in enumerate(
            zip(sources, targets, _layer_signatures(source), _layer_signatures(target))):
        if from_signature != to_signature:
            raise ValueError(f"weighted layer {index} differs: {from_layer.name} {from_signature} in "
                             f"{source.name}, {to_layer.name} {to_signature} in the network of these Args")
    if len(sources) != len(targets):
        raise ValueError(f"{source.name} has {len(sources)} layers with weights, the network of these Args "
                         f"{len(targets)}")
    for from_layer, to_layer in zip(sources, targets):
        to_layer.set_weights(from_layer.get_weights())
    log.info("copied the %d weights of %s into %s", source.count_params(), source.name, target.name)
