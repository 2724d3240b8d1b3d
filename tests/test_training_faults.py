"""Faults around training checkpoints: a garbage or deleted state file, truncated or empty checkpoint files, weights
that blow up, temp folders of interrupted saves, bad restore_path and TF_CONFIG, and SIGKILLs at random moments.

Each run must resume from its newest readable checkpoint or stop with one line naming the file, and never write over
a checkpoint file that an earlier process made.
"""

from __future__ import annotations

import logging
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

import train_nets
from test_training import REPO, TINY, _out_args, _run_script, _saved_values, faces  # noqa: F401 (faces: fixture)
from models import load_embedding_model
from training import checkpoints


def _stats(folder: Path) -> dict[str, tuple[int, int, int]]:
    """(inode, mtime in ns, size) of every checkpoint file: a file written again gets a new inode or mtime."""
    return {path.name: (path.stat().st_ino, path.stat().st_mtime_ns, path.stat().st_size)
            for path in sorted(folder.glob(f"{checkpoints.CHECKPOINT_NAME}-*")) if path.is_file()}


def _train(faces: Path, out: Path, *extra: str) -> dict:
    return train_nets.train(train_nets.Args.from_cli([*TINY, f"--train_dataset_dir={faces}", *_out_args(out),
                                                      *extra]))


def _one_error_line(result: subprocess.CompletedProcess) -> str:
    """The run failed with exit status 1 and exactly one ERROR line, no traceback: that line."""
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if re.match(r"[\d-]+ [\d:,]+ ERROR ", line)]
    assert len(lines) == 1, result.stderr[-3000:]
    return lines[0]


@pytest.fixture(scope="module")
def trained_run(faces, tmp_path_factory) -> Path:
    """A run folder with checkpoints at steps 2 and 4 (copied by the tests that change it)."""
    out = tmp_path_factory.mktemp("trained")
    _train(faces, out, "--max_steps=4", "--ckpt_interval=2")
    return out


def _copy_run(run: Path, tmp_path: Path) -> Path:
    import shutil

    shutil.copytree(run, tmp_path / "run")
    return tmp_path / "run"


# ---------------------------------------------------------------------------------------------- the state file
@pytest.mark.parametrize("state", ["garbage", "deleted"])
def test_a_broken_state_file_resumes_from_the_checkpoint_files(faces, trained_run, tmp_path, state):
    run = _copy_run(trained_run, tmp_path)
    ckpt = run / "ckpt"
    if state == "garbage":
        (ckpt / "checkpoint").write_bytes(b"model_checkpoint_path: \x00\xff garbage {{{")
    else:
        (ckpt / "checkpoint").unlink()
    before = _stats(ckpt)
    assert {"InsightFace_iter-2.index", "InsightFace_iter-4.index"} <= before.keys()
    result = _run_script("train_nets.py", [*TINY, f"--train_dataset_dir={faces}", "--max_steps=6", "--ckpt_interval=2",
                                           *_out_args(run)])
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"resumed from {ckpt / 'InsightFace_iter-4'} at step 4" in result.stderr
    after = _stats(ckpt)
    assert {name: after.get(name) for name in before} == before, "a checkpoint file of the earlier run was rewritten"
    assert "InsightFace_iter-6.index" in after
    assert tf.train.latest_checkpoint(str(ckpt)) == str(ckpt / "InsightFace_iter-6")


# ---------------------------------------------------------------------------------------------- unreadable files
def _truncate(path: Path, size: int) -> None:
    with open(path, "r+b") as file:
        file.truncate(size)


@pytest.mark.parametrize("damage", ["truncated data", "empty index"])
def test_an_unreadable_latest_checkpoint_falls_back_and_is_kept(faces, trained_run, tmp_path, caplog, damage):
    run = _copy_run(trained_run, tmp_path)
    ckpt = run / "ckpt"
    if damage == "truncated data":
        (data_file,) = ckpt.glob("InsightFace_iter-4.data-*")
        _truncate(data_file, data_file.stat().st_size // 2)
    else:
        _truncate(ckpt / "InsightFace_iter-4.index", 0)
    before = _stats(ckpt)
    # ckpt_interval=3: this run saves at 3 and 5, never at the damaged step 4.
    with caplog.at_level("INFO"):
        summary = _train(faces, run, "--max_steps=5", "--ckpt_interval=3")
    assert f"resumed from {ckpt / 'InsightFace_iter-2'} at step 2" in caplog.text
    assert "moved the unreadable checkpoint InsightFace_iter-4" in caplog.text
    assert summary["step"] == 5 and summary["checkpoint"] == str(ckpt / "InsightFace_iter-5")
    _assert_set_aside_unchanged(before, ckpt, step=4)


def _assert_set_aside_unchanged(before: dict, ckpt: Path, step: int) -> None:
    """The files of checkpoint `step` are in unreadable/ as they were (same inode, mtime, size); the rest in place."""
    moved = {name: stat for name, stat in before.items() if name.startswith(f"{checkpoints.CHECKPOINT_NAME}-{step}.")}
    assert moved and _stats(ckpt / "unreadable" / f"{checkpoints.CHECKPOINT_NAME}-{step}") == moved
    after = _stats(ckpt)
    assert {name: after.get(name) for name in before if name not in moved} == {
        name: stat for name, stat in before.items() if name not in moved}


def test_a_run_that_saves_the_step_of_an_unreadable_checkpoint_sets_it_aside_first(faces, trained_run, tmp_path):
    """A save killed half-way leaves a checkpoint that the resumed run saves again: it is moved aside, never
    written over, and the run goes on (command line)."""
    run = _copy_run(trained_run, tmp_path)
    ckpt = run / "ckpt"
    (data_file,) = ckpt.glob("InsightFace_iter-4.data-*")
    damaged = data_file.read_bytes()[:1000]
    _truncate(data_file, 1000)
    before = _stats(ckpt)
    result = _run_script("train_nets.py", [*TINY, f"--train_dataset_dir={faces}", "--max_steps=4", "--ckpt_interval=2",
                                           *_out_args(run)])
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"resumed from {ckpt / 'InsightFace_iter-2'} at step 2" in result.stderr
    _assert_set_aside_unchanged(before, ckpt, step=4)
    assert (ckpt / "unreadable" / "InsightFace_iter-4" / data_file.name).read_bytes() == damaged
    assert checkpoints.unreadable_reason(ckpt / "InsightFace_iter-4") is None  # saved again, whole


@pytest.mark.parametrize("damage", ["truncated data", "empty index", "missing data"])
def test_reading_a_damaged_checkpoint_names_it(trained_run, tmp_path, damage):
    run = _copy_run(trained_run, tmp_path)
    prefix = run / "ckpt" / "InsightFace_iter-4"
    (data_file,) = prefix.parent.glob("InsightFace_iter-4.data-*")
    {"truncated data": lambda: _truncate(data_file, 5000), "empty index": lambda: _truncate(Path(f"{prefix}.index"), 0),
     "missing data": data_file.unlink}[damage]()
    assert checkpoints.unreadable_reason(prefix) is not None
    with pytest.raises(ValueError, match=rf"checkpoint {prefix} .*cannot be read"):
        load_embedding_model(prefix)
    assert checkpoints.unreadable_reason(run / "ckpt" / "InsightFace_iter-2") is None


def test_a_garbage_restore_path_is_one_line_naming_it(faces, tmp_path):
    garbage = tmp_path / "model.ckpt"
    Path(f"{garbage}.index").write_bytes(b"not a checkpoint index" * 20)
    result = _run_script("train_nets.py", [*TINY, f"--train_dataset_dir={faces}", "--max_steps=1",
                                           f"--restore_path={garbage}.index", *_out_args(tmp_path)])
    line = _one_error_line(result)
    assert f"restore_path={garbage}.index" in line and f"checkpoint {garbage} " in line
    missing = tmp_path / "nowhere" / "model.ckpt"
    with pytest.raises(FileNotFoundError, match=rf"restore_path={missing}: checkpoint {missing} not found"):
        _train(faces, tmp_path / "b", "--max_steps=1", f"--restore_path={missing}")


# ---------------------------------------------------------------------------------------------- blow-ups
def test_weights_that_blow_up_are_never_saved_and_the_error_names_the_last_good_one(faces, tmp_path):
    # lr 0.01 for updates 0-3 (steps 1-4), then 1e30: the update of step 5 sends the weights to ~1e30 while the loss of
    # step 5 (computed before that update) is still finite.
    ckpt = tmp_path / "ckpt"
    with pytest.raises(FloatingPointError) as error:
        _train(faces, tmp_path, "--max_steps=8", "--ckpt_interval=1", "--loss=softmax", "--lr_values=[0.01,1e30]",
               "--lr_steps=[3]", "--lr_steps_scaled=false")
    assert "at step 5" in str(error.value)
    assert f"last good checkpoint: {ckpt / 'InsightFace_iter-4'}." in str(error.value)
    saved = sorted(ckpt.glob("*.index"))
    assert [path.name for path in saved] == [f"InsightFace_iter-{step}.index" for step in range(1, 5)]
    for index in saved:
        for name, value in _saved_values(str(index)[:-len(".index")]).items():
            if np.issubdtype(value.dtype, np.floating):
                assert np.all(np.abs(value) < 1e6), (index.name, name)


# ---------------------------------------------------------------------------------------------- temp folders
def test_temp_folders_of_this_run_are_removed_and_nothing_else(faces, trained_run, tmp_path, caplog):
    run = _copy_run(trained_run, tmp_path)
    ckpt = run / "ckpt"
    ours = [ckpt / "InsightFace_iter-6_temp", ckpt / "best" / "InsightFace_iter_best-6_temp"]
    others = [ckpt / "other-6_temp", ckpt / "InsightFace_iter-x_temp", ckpt / "InsightFace_iter-6_temp.keep",
              ckpt / "InsightFace_iter_temp", run / "InsightFace_iter-6_temp"]
    for folder in ours + others:
        folder.mkdir(parents=True)
        (folder / "part-00000-of-00001.data-00000-of-00001").write_bytes(b"x" * 100)
    with caplog.at_level("INFO"):
        _train(faces, run, "--max_steps=4", "--ckpt_interval=2")
    assert not any(folder.exists() for folder in ours)
    assert all((folder / "part-00000-of-00001.data-00000-of-00001").is_file() for folder in others)
    assert caplog.text.count("left by a save that was interrupted") == 2


# ---------------------------------------------------------------------------------------------- TF_CONFIG
@pytest.mark.parametrize("value, named", [
    ("{not json", "not JSON"),
    ('["worker"]', "'cluster'"),
    ('{"cluster": {"worker": ["127.0.0.1"]}, "task": {"type": "worker", "index": 0}}', "'cluster'"),
    ('{"cluster": {"worker": ["127.0.0.1:2222"]}, "task": {"type": "chief", "index": 0}}', "'task'"),
    ('{"cluster": {"worker": ["127.0.0.1:2222"]}, "task": {"type": "worker", "index": 1}}', "task index 1"),
])
def test_a_bad_tf_config_is_named(value, named):
    from train_nets_mgpu_new import read_tf_config

    with pytest.raises(ValueError, match=rf"^TF_CONFIG.*{named}"):
        read_tf_config(value)


def test_a_bad_tf_config_is_one_line_on_the_command_line(faces, tmp_path):
    result = _run_script("train_nets_mgpu_new.py", [*TINY, f"--train_dataset_dir={faces}", "--num_gpus=1",
                                                    "--multi_worker=true", "--max_steps=1", *_out_args(tmp_path)],
                         env={"TF_CONFIG": "{worker: 1"})
    assert "TF_CONFIG is not JSON" in _one_error_line(result)
    assert not (tmp_path / "ckpt").exists()


# ---------------------------------------------------------------------------------------------- kills
def _wait_for(condition, process: subprocess.Popen, timeout: float = 300) -> bool:
    """Polls `condition` every 10 ms until it holds (True) or the process ends or the time is up (False)."""
    deadline = time.time() + timeout
    while time.time() < deadline and process.poll() is None:
        if condition():
            return True
        time.sleep(0.01)
    return False


@pytest.mark.slow
def test_random_sigkills_during_training_and_saves_end_as_an_uninterrupted_run(faces, tmp_path):
    """SIGKILLs at seeded random moments (half of them while a save is being written), a restart after each: the run
    ends with the uninterrupted run's values and no earlier process's checkpoint file was written again."""
    common = [*TINY, f"--train_dataset_dir={faces}", "--ckpt_interval=2", "--max_steps=12"]
    reference = _run_script("train_nets.py", [*common, *_out_args(tmp_path / "ref")])
    assert reference.returncode == 0, reference.stderr[-3000:]

    out, rng = tmp_path / "killed", random.Random(17)
    ckpt = out / "ckpt"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    earlier: dict[str, tuple[int, int, int]] = {}  # files made by the processes killed so far
    kills = []
    for mode in ["save", "any", "save", "any"]:
        process = subprocess.Popen([sys.executable, "train_nets.py", *common, *_out_args(out)], cwd=REPO, env=env,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        known = set(_stats(ckpt)) if ckpt.is_dir() else set()
        if mode == "save":  # a save of a new step has begun: kill while it writes, or just after
            started = _wait_for(lambda: ckpt.is_dir() and any(path.name.endswith("_temp") for path in ckpt.iterdir()),
                                process)
            delay = rng.uniform(0.0, 0.3)
        else:  # the run made progress: kill at any moment of the next seconds
            started = _wait_for(lambda: ckpt.is_dir() and bool(set(_stats(ckpt)) - known), process)
            delay = rng.uniform(0.0, 2.0)
        if started:
            time.sleep(delay)
        process.send_signal(signal.SIGKILL)
        process.wait()
        kills.append((mode, round(delay, 2), tf.train.latest_checkpoint(str(ckpt))))
        now = _stats(ckpt)
        assert {name: now.get(name) for name in earlier} == earlier, f"rewritten after kills {kills}"
        earlier = now

    logging.getLogger(__name__).info("kills (moment, delay s, latest checkpoint after it): %s", kills)
    final = _run_script("train_nets.py", [*common, *_out_args(out)])
    assert final.returncode == 0, final.stderr[-3000:]
    now = _stats(ckpt)
    assert {name: now.get(name) for name in earlier} == earlier, f"rewritten after kills {kills}"
    assert not [path for path in ckpt.rglob("*_temp")]
    expected = _saved_values(str(tmp_path / "ref" / "ckpt" / "InsightFace_iter-12"))
    actual = _saved_values(str(ckpt / "InsightFace_iter-12"))
    assert expected.keys() == actual.keys() and expected
    for name in expected:
        np.testing.assert_allclose(actual[name], expected[name], rtol=1e-5, atol=1e-6, err_msg=f"{name} {kills}")
