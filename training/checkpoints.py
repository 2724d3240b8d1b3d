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

import keras
import tensorflow as tf

from common.files import replacing

from models.checkpoints import (ARGS_FILE, is_object_checkpoint, reading, resolve_checkpoint,
                                restore_embedding_weights)
from nets import pretrained, seed_checkpoint

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
    "net_depth", "unit_type", "norm", "net_width", "backbone", "dropout_rate", "embedding_size",
    # the margin head
    "loss", "margin_s", "margin_m", "margin_m1", "margin_m2", "margin_m3", "num_output",
    # the data; the saved position counts batches of batch_size, and seed fixes each epoch's shuffle
    "train_dataset_dir", "image_size", "channel_order", "batch_size", "seed",
    # mixed_float16 wraps the optimizer in a loss-scale optimizer: another checkpoint layout
    "mixed_precision",
    # the starting point
    "restore_path", "restore_head",
})
# Free to change on a resumed run (logged): schedule, optimisation, devices, validation, outputs, logging. sync_bn
# and the device counts change how replicas share the work, not the weights.
ADJUSTABLE_FIELDS = frozenset({
    "epoch", "max_steps", "lr_values", "lr_steps", "lr_steps_scaled", "lr_steps_as_seed_ran", "momentum",
    "weight_decay", "grad_accum_steps", "jit_compile", "sync_bn", "num_gpus", "multi_worker",
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


def restore_run(checkpoint: tf.train.Checkpoint, prefix: str) -> None:
    """Restores a run's own checkpoint (resume); ValueError naming it when it does not fit the network built."""
    try:
        with reading(prefix):
            checkpoint.restore(prefix).assert_existing_objects_matched()
    except AssertionError as err:
        raise ValueError(f"checkpoint {prefix} does not fit the network, head and optimizer of these Args (was it "
                         f"written with another {ARGS_FILE}?): give a new ckpt_path. {err}") from err


def restore_for_fine_tuning(model: keras.Model, head: keras.layers.Layer, path: str | Path, with_head: bool) -> None:
    """Starts a run from another run's backbone (ours or the seed's TF1 checkpoint), optionally its class weights.

    Any error names the restore_path key (FileNotFoundError, or ValueError for a checkpoint that does not read or fit).
    """
    try:
        _restore_for_fine_tuning(model, head, path, with_head)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"Args: restore_path={path}: {err}") from err
    except ValueError as err:
        raise ValueError(f"Args: restore_path={path}: {err}") from err


def _restore_for_fine_tuning(model: keras.Model, head: keras.layers.Layer, path: str | Path, with_head: bool) -> None:
    if pretrained.is_pretrained_file(path):
        # Their networks differ from the seed's (batch-norm epsilon, shortcuts, widths) and so would the data's
        # normalisation: a run cannot yet be built to match one.
        raise ValueError(f"{path} is one of insightface's released models (ONNX / .pth / MXNet): fine-tuning from "
                         f"one is not supported yet; evaluate it (eval_ckpt_file.py) or export it (export.py), or "
                         f"fine-tune from a checkpoint of this toolkit or of the seed")
    prefix = resolve_checkpoint(path)
    if is_object_checkpoint(prefix):
        restore_embedding_weights(model, prefix)
        if with_head:
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
