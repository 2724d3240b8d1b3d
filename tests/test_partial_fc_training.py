"""Partial FC in the training scripts: 2 replicas with sharded class weights train as the full head on one device,
a sampled run resumes exactly after SIGKILL, and the re-shard command moves a run to another replica count or back to
the full head. Tiny generated faces; the head itself is tested in test_partial_fc.py."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import train_nets
from data import synthetic
from test_training import (REPO, TINY, _killed_after_its_first_checkpoint, _logged_losses, _out_args,
                           _run_script, _saved_values)
from training import checkpoints
from training.reshard_head import reshard_run

# Group norm and no dropout: nothing differs between 2 replicas and one device but the summation order.
EXACT = [*TINY, "--norm=gn", "--dropout_rate=0", "--lr_values=[0.05]", "--lr_steps=[]"]
# Relative difference of one update (step 1) between 2 Partial FC replicas and the full head on one device: float32
# summation order only (measured below 1e-6); a shard updated twice, a lost replica's classes or a gradient N times
# too large are off by 50% or more.
UPDATE_TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def faces(tmp_path_factory) -> Path:
    """12 identities: several classes per shard, and more than a batch of 8 holds (unsampled rows exist)."""
    root = tmp_path_factory.mktemp("faces12")
    synthetic.generate(root, num_identities=12, images_per_identity=4, seed=0, image_size=32)
    return root


@pytest.fixture(scope="module")
def runs(faces, tmp_path_factory) -> dict[str, Path]:
    """A one-step start; from it the full head on one device and Partial FC on 2 replicas, 3 steps each."""
    root = tmp_path_factory.mktemp("partial_fc_runs")
    common = [*EXACT, f"--train_dataset_dir={faces}"]
    fine_tune = [*common, f"--restore_path={root / 'start' / 'ckpt'}", "--restore_head=true", "--max_steps=3",
                 "--ckpt_interval=1"]
    with _loss_lines_logged():
        train_nets.train(train_nets.Args.from_cli([*common, "--max_steps=1", *_out_args(root / "start")]))
        train_nets.train(train_nets.Args.from_cli([*fine_tune, *_out_args(root / "full")]))
    # 2 logical devices need a process of their own (TensorFlow's devices are fixed once it starts).
    sharded = _run_script("train_nets_mgpu_new.py", [*fine_tune, "--num_gpus=2", "--partial_fc=true",
                                                     "--sample_rate=1.0", *_out_args(root / "sharded")])
    assert sharded.returncode == 0, sharded.stderr[-3000:]
    assert "Partial FC: 12 classes in 2 shards" in sharded.stderr, sharded.stderr[-3000:]
    return {name: root / name for name in ("start", "full", "sharded")}


@contextlib.contextmanager
def _loss_lines_logged() -> Iterator[None]:
    """train()'s INFO lines (a loss per step) reach its log file, as when the script runs."""
    logger = logging.getLogger("train_nets")
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.setLevel(level)


def _checkpoint(run: Path, step: int) -> str:
    return str(run / "ckpt" / f"{checkpoints.CHECKPOINT_NAME}-{step}")


def _relative(actual: np.ndarray, expected: np.ndarray) -> float:
    return float(np.linalg.norm(actual.astype(np.float64) - expected) / np.linalg.norm(expected))


def _backbone(prefix: str) -> np.ndarray:
    """A checkpoint's backbone weights as one vector: the optimiser's trainable variables, the backbone's first and in
    the same order in every run, without the full head's class weights [D, C] (the last, when there is one)."""
    values = _saved_values(prefix)
    names = sorted((n for n in values if n.startswith("optimizer/_trainable_variables/")
                    and values[n].shape != (512, 12)), key=lambda n: int(n.split("/")[2]))
    assert len(names) > 50
    return np.concatenate([values[n].ravel() for n in names])


def test_two_sharded_replicas_update_as_the_full_head_on_one_device(runs):
    start_classes = checkpoints.read_class_weights(_checkpoint(runs["start"], 1))
    full, sharded = _checkpoint(runs["full"], 1), _checkpoint(runs["sharded"], 1)
    assert checkpoints.head_layout(full) is None
    assert checkpoints.head_layout(sharded) == {"first_shard": 0, "local_shards": 2, "num_shards": 2,
                                                "num_classes": 12}
    # The class weights' first update: equal, and far from zero (the test would pass on no update at all otherwise).
    full_update = checkpoints.read_class_weights(full) - start_classes
    sharded_update = checkpoints.read_class_weights(sharded) - start_classes
    assert np.linalg.norm(full_update) > 1e-3 * np.linalg.norm(start_classes)
    assert _relative(sharded_update, full_update) < UPDATE_TOLERANCE
    # The backbone's first update: the same gradient, whose head part came through the all-gather.
    start_backbone = _backbone(_checkpoint(runs["start"], 1))
    full_backbone, sharded_backbone = _backbone(full), _backbone(sharded)
    assert full_backbone.shape == sharded_backbone.shape == start_backbone.shape
    assert _relative(sharded_backbone - start_backbone, full_backbone - start_backbone) < UPDATE_TOLERANCE
    # Losses of every step (the third's inputs already differ by float rounding of two updates).
    full_losses, sharded_losses = (_logged_losses(runs[name] / "logs") for name in ("full", "sharded"))
    assert sorted(full_losses) == [1, 2, 3] and full_losses.keys() == sharded_losses.keys()
    for step, loss in full_losses.items():
        assert sharded_losses[step] == pytest.approx(loss, rel=1e-4), step


def test_a_sharded_run_refuses_another_replica_count_and_names_the_reshard_command(runs, faces):
    args = train_nets.Args.from_cli([*EXACT, f"--train_dataset_dir={faces}", "--partial_fc=true",
                                     f"--restore_path={runs['start'] / 'ckpt'}", "--restore_head=true",
                                     "--max_steps=4", *_out_args(runs["sharded"])])
    with pytest.raises(ValueError, match=r"2 Partial FC shard\(s\), this run builds 1 .*python -m training.reshard_head"):
        train_nets.train(args)


@pytest.mark.parametrize("num_shards", [1, 0])
def test_reshard_keeps_every_value_and_the_run_continues(runs, faces, tmp_path, num_shards):
    """2 shards -> 1 shard, or merged into the full head: the class weights (so every logit) and their momentum
    are the 2-shard run's, every other saved value is unchanged, and training continues from the new folder."""
    out = tmp_path / "resharded"
    if num_shards:  # the command as users type it
        result = subprocess.run([sys.executable, "-m", "training.reshard_head",
                                 f"--ckpt_path={runs['sharded'] / 'ckpt'}", f"--num_shards={num_shards}",
                                 f"--output_path={out}"], cwd=REPO, capture_output=True, text=True, timeout=600,
                                env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
        assert result.returncode == 0, result.stderr[-3000:]
    else:
        reshard_run(runs["sharded"] / "ckpt", num_shards, out)
    source, written = _checkpoint(runs["sharded"], 3), str(out / f"{checkpoints.CHECKPOINT_NAME}-3")
    np.testing.assert_array_equal(checkpoints.read_class_weights(written), checkpoints.read_class_weights(source))
    before, after = _saved_values(source), _saved_values(written)
    # save_counter counts the saves of the object that wrote the file, not the run.
    kept = [n for n in before if not n.startswith(("head/", "optimizer/_variables/", "save_counter/"))]
    assert len(kept) > 50
    for name in kept:
        np.testing.assert_array_equal(after[name], before[name], err_msg=name)
    momentum = np.concatenate([before[f"head/slots/momentum/{i}/.ATTRIBUTES/VARIABLE_VALUE"] for i in (0, 1)])
    if num_shards:
        np.testing.assert_array_equal(after["head/slots/momentum/0/.ATTRIBUTES/VARIABLE_VALUE"], momentum)
    else:  # the full head's momentum is the optimiser's slot of shape [D, C]
        slots = [v for n, v in after.items() if n.startswith("optimizer/_variables/") and v.shape == momentum.T.shape]
        assert len(slots) == 1
        np.testing.assert_array_equal(slots[0], momentum.T)
    assert (out / "classes.txt").read_text() == (runs["sharded"] / "ckpt" / "classes.txt").read_text()
    with _loss_lines_logged():
        summary = train_nets.train(train_nets.Args.from_cli([
            *EXACT, f"--train_dataset_dir={faces}", f"--partial_fc={'true' if num_shards else 'false'}",
            f"--restore_path={runs['start'] / 'ckpt'}", "--restore_head=true", "--max_steps=4", "--ckpt_interval=1",
            f"--ckpt_path={out}", f"--summary_path={tmp_path}/summary", f"--log_file_path={tmp_path}/logs"]))
    assert summary["step"] == 4 and summary["checkpoint"] == str(out / f"{checkpoints.CHECKPOINT_NAME}-4")
    assert _logged_losses(tmp_path / "logs").keys() == {4}  # resumed at 3: one step more


def test_reshard_refuses_an_existing_output_folder_and_keeps_it(runs, tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "mine.txt").write_text("kept")
    with pytest.raises(ValueError, match=f"output_path={out} exists"):
        reshard_run(runs["sharded"] / "ckpt", 1, out)
    assert [p.name for p in out.iterdir()] == ["mine.txt"] and (out / "mine.txt").read_text() == "kept"


def test_sampled_partial_fc_stopped_and_resumed_ends_as_an_uninterrupted_run(faces, tmp_path):
    """sample_rate 0.5 on one device, in one process: 2 steps then 2 more from the checkpoint equal 4 steps."""
    common = [*TINY, f"--train_dataset_dir={faces}", "--partial_fc=true", "--sample_rate=0.5", "--ckpt_interval=2"]
    with _loss_lines_logged():
        train_nets.train(train_nets.Args.from_cli([*common, "--max_steps=4", *_out_args(tmp_path / "ref")]))
    train_nets.train(train_nets.Args.from_cli([*common, "--max_steps=2", *_out_args(tmp_path / "resumed")]))
    train_nets.train(train_nets.Args.from_cli([*common, "--max_steps=4", *_out_args(tmp_path / "resumed")]))
    expected = _saved_values(_checkpoint(tmp_path / "ref", 4))
    actual = _saved_values(_checkpoint(tmp_path / "resumed", 4))
    assert expected.keys() == actual.keys() and any(n.startswith("head/shards/") for n in expected)
    for name in expected:
        np.testing.assert_allclose(actual[name], expected[name], rtol=1e-5, atol=1e-6, err_msg=name)
    log_text = "".join(path.read_text() for path in (tmp_path / "ref" / "logs").glob("*.log"))
    sampled = [int(n) for n in re.findall(r"(\d+) classes sampled", log_text)]
    # Each step: int(0.5 x 12) = 6 classes, or more when the batch of 8 holds more classes; never all 12.
    assert len(sampled) == 4 and all(6 <= n <= 8 for n in sampled), sampled


@pytest.mark.slow
def test_sampled_partial_fc_resumes_after_sigkill_as_an_uninterrupted_run(faces, tmp_path):
    """sample_rate 0.5 on one device: the sampled rows are drawn from (seed, update, shard), so the run killed after
    a checkpoint and resumed samples, and ends, as the uninterrupted one."""
    common = [*TINY, f"--train_dataset_dir={faces}", "--partial_fc=true", "--sample_rate=0.5", "--ckpt_interval=3"]
    reference = _run_script("train_nets.py", [*common, "--max_steps=9", *_out_args(tmp_path / "ref")])
    assert reference.returncode == 0, reference.stderr[-3000:]
    assert "classes sampled" in reference.stderr

    killed = tmp_path / "killed"
    latest = _killed_after_its_first_checkpoint(common, killed)
    assert 3 <= int(latest.rsplit("-", 1)[1]) < 9

    resumed = _run_script("train_nets.py", [*common, "--max_steps=9", *_out_args(killed)])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    expected = _saved_values(_checkpoint(tmp_path / "ref", 9))
    actual = _saved_values(_checkpoint(killed, 9))
    assert expected.keys() == actual.keys() and any(n.startswith("head/shards/") for n in expected)
    for name in expected:
        np.testing.assert_allclose(actual[name], expected[name], rtol=1e-5, atol=1e-6, err_msg=name)


@pytest.fixture(scope="module")
def one_partial_step(runs, faces, tmp_path_factory):
    """Runs one Partial FC step (one device) from the start checkpoint with extra flags; returns its checkpoint
    (each set of flags runs once)."""
    @functools.cache
    def run(*flags: str) -> str:
        out = tmp_path_factory.mktemp("one_step")
        summary = train_nets.train(train_nets.Args.from_cli([
            *EXACT, f"--train_dataset_dir={faces}", "--partial_fc=true", f"--restore_path={runs['start'] / 'ckpt'}",
            "--restore_head=true", "--max_steps=1", *flags, *_out_args(out)]))
        return summary["checkpoint"]
    return run


# Relative distance of one 16-bit update from the float32 update (the test_training bound for the full head: 16-bit
# convolutions through 18 layers); a lost or doubled gradient, or a skipped step, gives 1.0 or more.
HALF_PRECISION_UPDATE_TOLERANCE = 0.35


@pytest.mark.parametrize("flag, tolerance", [("--grad_accum_steps=2", UPDATE_TOLERANCE),
                                             ("--mixed_precision=mixed_float16", HALF_PRECISION_UPDATE_TOLERANCE),
                                             ("--mixed_precision=mixed_bfloat16", HALF_PRECISION_UPDATE_TOLERANCE)])
def test_partial_fc_update_with_accumulation_or_16_bit_is_the_float32_update(runs, one_partial_step, flag,
                                                                               tolerance):
    """Two micro-batches on the same sampled rows sum to the one-batch gradient; under mixed_float16 the rows'
    gradient is unscaled from the loss scale; both 16-bit policies keep the head in float32."""
    start = _checkpoint(runs["start"], 1)
    reference, other = one_partial_step(), one_partial_step(flag)
    start_classes = checkpoints.read_class_weights(start)
    reference_update = checkpoints.read_class_weights(reference) - start_classes
    assert np.linalg.norm(reference_update) > 1e-3 * np.linalg.norm(start_classes)
    assert _relative(checkpoints.read_class_weights(other) - start_classes, reference_update) < tolerance
    start_backbone = _backbone(start)
    assert _relative(_backbone(other) - start_backbone, _backbone(reference) - start_backbone) < tolerance


@pytest.mark.parametrize("flags, key", [(["--sample_rate=0.5"], "sample_rate=0.5"),
                                        (["--partial_fc=true", "--jit_compile=true"], "jit_compile"),
                                        (["--partial_fc=true", "--label_smoothing=0.1"], "label_smoothing")])
def test_partial_fc_options_it_cannot_take_are_refused_by_name(faces, tmp_path, flags, key):
    args = train_nets.Args.from_cli([*TINY, f"--train_dataset_dir={faces}", *flags, *_out_args(tmp_path)])
    with pytest.raises(ValueError, match=key):
        train_nets.train(args)
    assert not (tmp_path / "ckpt").exists()  # refused before anything is written


def test_a_full_head_run_splits_into_shards_with_the_same_class_weights(runs, tmp_path):
    written = reshard_run(runs["full"] / "ckpt", 2, tmp_path / "split")
    assert checkpoints.head_layout(written)["num_shards"] == 2
    np.testing.assert_array_equal(checkpoints.read_class_weights(written),
                                  checkpoints.read_class_weights(_checkpoint(runs["full"], 3)))
