"""train_nets.py and train_nets_mgpu_new.py: loss parity, schedule, resume after SIGKILL, NaN stop, distributed
equalities and end-to-end script runs, on tiny generated data."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

import train_nets
from data import synthetic
from nets.spec import NetworkSpec
from losses import make_head
from training.optim import lr_boundaries, piecewise_schedule
from training.step import make_train_step

REPO = Path(__file__).resolve().parents[1]
TINY = ["--net_depth=18", "--image_size=[32,32]", "--batch_size=8", "--show_info_interval=1",
        "--summary_interval=2", "--validate_interval=0", "--lr_values=[0.01,0.005,0.003,0.001]"]


@pytest.fixture(scope="module")
def faces(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("faces")
    synthetic.generate(root, num_identities=5, images_per_identity=8, seed=0, image_size=32)
    return root


def _out_args(tmp_path: Path) -> list[str]:
    return [f"--ckpt_path={tmp_path}/ckpt", f"--summary_path={tmp_path}/summary", f"--log_file_path={tmp_path}/logs"]


def _run_script(script: str, argv: list[str], env: dict[str, str] | None = None,
                **kwargs) -> subprocess.CompletedProcess:
    """Runs a script as a user does; `env` adds environment variables."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})}
    return subprocess.run([sys.executable, str(REPO / script), *argv], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600, **kwargs)


def _saved_values(prefix: str) -> dict[str, np.ndarray]:
    """Every value of a checkpoint (weights, BN statistics, momentum, progress), read with TensorFlow's own reader.

    Each variable is stored once, under the first object path that reaches it: the trainable weights appear under
    optimizer/_trainable_variables/, the BN statistics under model/.
    """
    reader = tf.train.load_checkpoint(prefix)
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()
            if name != "_CHECKPOINTABLE_OBJECT_GRAPH"}


# ---------------------------------------------------------------------------------------------- schedule
def test_lr_boundaries_follow_the_seed_without_its_double_step():
    # The seed: boundaries = lr_steps * int(512 / batch_size); tf.train.piecewise_constant keeps values[i] while
    # step <= boundaries[i].
    boundaries = lr_boundaries([40000, 60000, 80000], batch_size=32, scale_by_batch=True)
    assert boundaries == [640000, 960000, 1280000]
    assert lr_boundaries([10, 20], batch_size=1024, scale_by_batch=True) == [10, 20]
    schedule = piecewise_schedule([0.001, 0.0005, 0.0003, 0.0001], boundaries)
    for step, expected in [(0, 0.001), (640000, 0.001), (640001, 0.0005), (960001, 0.0003), (1280001, 0.0001)]:
        assert float(schedule(step)) == pytest.approx(expected)
    with pytest.raises(ValueError, match="one value more"):
        piecewise_schedule([0.1, 0.01], [10, 20])
    with pytest.raises(ValueError, match="increasing"):
        piecewise_schedule([0.1, 0.01, 0.001], [20, 10])
    constant = piecewise_schedule([0.02], [])
    assert float(constant(0)) == pytest.approx(0.02) and float(constant(10**7)) == pytest.approx(0.02)


def _seed_learning_rate(update: int, lr_values: list[float], boundaries: list[int]) -> float:
    """The seed's tf.train.piecewise_constant at its global_step, which was 2 x the update count (2 per iteration)."""
    global_step = 2 * update
    return lr_values[sum(global_step > boundary for boundary in boundaries)]


def test_lr_steps_as_seed_ran_drop_where_the_seed_runs_dropped(faces, tmp_path, caplog):
    values = [0.001, 0.0005, 0.0003, 0.0001]
    for lr_steps, batch_size, scaled in [([40000, 60000, 80000], 32, True), ([5, 9, 14], 8, False)]:
        seed_boundaries = [step * (int(512 / batch_size) if scaled else 1) for step in lr_steps]
        schedule = piecewise_schedule(values, lr_boundaries(lr_steps, batch_size, scaled, as_seed_ran=True))
        near = sorted({b // 2 + d for b in seed_boundaries for d in range(-3, 4)} | set(range(16)))
        for update in near:
            expected = _seed_learning_rate(update, values, seed_boundaries)
            assert float(schedule(update)) == pytest.approx(expected), update
    assert lr_boundaries([40000, 60000, 80000], 32, True, as_seed_ran=True) == [320000, 480000, 640000]
    # The real train() builds its schedule from these boundaries.
    args = train_nets.Args.from_cli([*TINY, f"--train_dataset_dir={faces}", "--max_steps=1", "--ckpt_interval=0",
                                     "--lr_steps=[4,8,12]", "--lr_steps_scaled=false", "--lr_steps_as_seed_ran=true",
                                     *_out_args(tmp_path)])
    with caplog.at_level("INFO"):
        train_nets.train(args)
    assert "with boundaries [2, 4, 6]" in caplog.text


# ---------------------------------------------------------------------------------------------- one step
def _arcface_ce_reference(embeddings: np.ndarray, labels: np.ndarray, weights: np.ndarray, s=64.0, m=0.5) -> float:
    """Mean softmax cross-entropy of the seed's ArcFace logits, float64."""
    x = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    w = weights / np.linalg.norm(weights, axis=0, keepdims=True)
    cos = np.clip(x @ w, -1, 1)
    sin = np.sqrt(1 - cos**2)
    target = np.where(cos > math.cos(math.pi - m), s * (cos * math.cos(m) - sin * math.sin(m)),
                      s * (cos - m * math.sin(m)))
    mask = np.eye(w.shape[1])[labels]
    logits = s * cos * (1 - mask) + target * mask
    logits -= logits.max(axis=1, keepdims=True)
    return float(np.mean(np.log(np.exp(logits).sum(axis=1)) - logits[np.arange(len(labels)), labels]))


def _seed_decayed_values(model: keras.Model, head) -> list[np.ndarray]:
    """What the seed decayed, chosen by layer type: conv/dense kernels, trainable gammas, PReLU alphas, class weights."""
    values = [head.embedding_weights.numpy()]
    for layer in model.layers:
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)):
            values.append(layer.kernel.numpy())
        elif isinstance(layer, keras.layers.BatchNormalization) and layer.gamma.trainable:
            values.append(layer.gamma.numpy())
        elif isinstance(layer, keras.layers.PReLU):
            values.append(layer.alpha.numpy())
    return values


def test_two_steps_match_an_independent_loss_and_momentum_sgd_update():
    args = train_nets.Args(net_depth=18, image_size=[32, 32], dropout_rate=0.0, batch_size=8, momentum=0.9,
                           lr_values=[0.05, 0.01, 0.005, 0.001])
    model = NetworkSpec.from_mapping(args.to_dict()).build()
    head = make_head(args.loss, 5, **args.head_margins(), seed=args.seed)
    head.build((None, 512))
    optimizer = keras.optimizers.SGD(piecewise_schedule(args.lr_values, [100, 200, 300]), momentum=args.momentum)
    variables = model.trainable_variables + head.trainable_variables
    optimizer.build(variables)
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (8, 32, 32, 3)).astype("float32")
    labels = rng.integers(0, 5, 8)
    start = [v.numpy() for v in model.weights + head.weights]

    embeddings = model(images, training=True).numpy().astype(np.float64)
    expected_ce = _arcface_ce_reference(embeddings, labels, head.embedding_weights.numpy().astype(np.float64))
    expected_wd = 0.5 * 5e-4 * sum(float(np.sum(v.astype(np.float64) ** 2)) for v in _seed_decayed_values(model, head))
    def gradients() -> list[np.ndarray]:
        """The gradient of the seed's loss at the current weights, by an independent tape (BN statistics restored)."""
        current = [v.numpy() for v in model.weights + head.weights]
        with tf.GradientTape() as tape:
            logits = head(model(images, training=True), labels)
            ce = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True))
            wd = 0.5 * 5e-4 * tf.add_n([tf.reduce_sum(tf.square(v)) for v in _decayed_tensors(model, head)])
            loss = ce + wd
        grads = [g.numpy() for g in tape.gradient(loss, variables)]
        for variable, value in zip(model.weights + head.weights, current):
            variable.assign(value)
        return grads

    grads = gradients()
    train_step = make_train_step(tf.distribute.get_strategy(), model, head, optimizer, 8,
                                 weight_decay=args.weight_decay)
    metrics = train_step(images, labels)
    assert float(metrics["inference_loss"]) == pytest.approx(expected_ce, rel=1e-5)
    assert float(metrics["wd_loss"]) == pytest.approx(expected_wd, rel=1e-5)
    # First momentum step from a zero velocity: w1 = w0 - lr * g0.
    start_by_path = {v.path: value for v, value in zip(model.weights + head.weights, start)}
    after_first = [v.numpy() for v in variables]
    for variable, value, grad in zip(variables, after_first, grads):
        np.testing.assert_allclose(value, start_by_path[variable.path] - 0.05 * grad, rtol=1e-4, atol=1e-6)
    # Second step, with the velocity of the first (Keras SGD: v = momentum * v - lr * g; w += v):
    # w2 = w1 - momentum * lr * g0 - lr * g1.
    second_grads = gradients()
    train_step(images, labels)
    for variable, value, grad, second in zip(variables, after_first, grads, second_grads):
        np.testing.assert_allclose(variable.numpy(), value - 0.9 * 0.05 * grad - 0.05 * second, rtol=1e-4, atol=1e-6)


def test_train_applies_the_second_learning_rate_after_the_boundary(faces, tmp_path):
    """lr_steps=[2] (unscaled): the real train() runs updates 0, 1, 2 at lr_values[0] (piecewise_constant keeps a value
    while the update count <= the boundary) and update 3 at lr_values[1]. Without momentum an update is -lr x gradient,
    and from equal weights on the same batch the gradient is equal: the 4th update of a run dropping 0.01 -> 0.001 is
    0.1 x that of a constant-0.01 run, the first three are the same."""
    common = [*TINY, f"--train_dataset_dir={faces}", "--max_steps=4", "--ckpt_interval=1", "--momentum=0",
              "--lr_steps_scaled=false"]
    for name, schedule in [("drop", ["--lr_values=[0.01,0.001]", "--lr_steps=[2]"]),
                           ("constant", ["--lr_values=[0.01]", "--lr_steps=[]"])]:
        train_nets.train(train_nets.Args.from_cli([*common, *schedule, *_out_args(tmp_path / name)]))

    def weights(name: str, step: int) -> dict[str, np.ndarray]:
        values = _saved_values(str(tmp_path / name / "ckpt" / f"InsightFace_iter-{step}"))
        return {key: value for key, value in values.items() if key.startswith("optimizer/_trainable_variables/")}

    for step in (1, 2, 3):
        drop, constant = weights("drop", step), weights("constant", step)
        assert drop.keys() == constant.keys() and drop
        for key in drop:
            np.testing.assert_allclose(drop[key], constant[key], rtol=1e-6, atol=1e-8, err_msg=f"{key} at {step}")
    delta_drop = np.concatenate([(weights("drop", 4)[k] - weights("drop", 3)[k]).ravel() for k in sorted(drop)])
    delta_constant = np.concatenate([(weights("constant", 4)[k] - weights("constant", 3)[k]).ravel()
                                     for k in sorted(drop)]).astype(np.float64)
    ratio = float(np.dot(delta_drop, delta_constant) / np.dot(delta_constant, delta_constant))
    assert ratio == pytest.approx(0.1, rel=1e-2)


def _decayed_tensors(model: keras.Model, head) -> list:
    tensors = [head.embedding_weights]
    for layer in model.layers:
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)):
            tensors.append(layer.kernel)
        elif isinstance(layer, keras.layers.BatchNormalization) and layer.gamma.trainable:
            tensors.append(layer.gamma)
        elif isinstance(layer, keras.layers.PReLU):
            tensors.append(layer.alpha)
    return tensors


def test_gradient_accumulation_equals_the_full_batch():
    """With no batch-dependent statistics (group norm, no dropout), 2 micro-batches of 4 = one batch of 8."""
    rng = np.random.default_rng(1)
    images = rng.uniform(-1, 1, (8, 32, 32, 3)).astype("float32")
    labels = rng.integers(0, 4, 8)
    results = []
    for accum in (1, 2):
        args = train_nets.Args(net_depth=18, norm="gn", image_size=[32, 32], dropout_rate=0.0, batch_size=8,
                               grad_accum_steps=accum, lr_values=[0.1] * 4, seed=7)
        model = NetworkSpec.from_mapping(args.to_dict()).build()
        head = make_head(args.loss, 4, **args.head_margins(), seed=args.seed)
        head.build((None, 512))
        optimizer = keras.optimizers.SGD(0.1, momentum=0.9)
        optimizer.build(model.trainable_variables + head.trainable_variables)
        train_step = make_train_step(tf.distribute.get_strategy(), model, head, optimizer, 8,
                                     weight_decay=args.weight_decay, grad_accum_steps=args.grad_accum_steps)
        metrics = train_step(images, labels)
        results.append((float(metrics["total_loss"]), [v.numpy() for v in model.weights + head.weights]))
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-5)
    for a, b in zip(results[0][1], results[1][1]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------------------------------------- runs
def test_run_checkpoints_args_and_fine_tuning(faces, tmp_path):
    args = train_nets.Args.from_cli([*TINY, f"--train_dataset_dir={faces}", "--max_steps=4", "--ckpt_interval=2",
                                     *_out_args(tmp_path / "a")])
    summary = train_nets.train(args)
    ckpt = tmp_path / "a" / "ckpt"
    assert summary["step"] == 4 and summary["checkpoint"].endswith("InsightFace_iter-4")
    assert train_nets.Args.load(ckpt / "args.json") == args
    assert (ckpt / "classes.txt").read_text().split() == sorted(p.name for p in faces.iterdir() if p.is_dir())
    assert np.isfinite(summary["total_loss"])
    assert list((tmp_path / "a" / "summary").iterdir()) and list((tmp_path / "a" / "logs").iterdir())

    # Fine-tuning: a new run starts from that backbone with a fresh head.
    tuned = train_nets.Args.from_cli([*TINY, f"--train_dataset_dir={faces}", "--max_steps=1",
                                      f"--restore_path={summary['checkpoint']}", *_out_args(tmp_path / "b")])
    model = NetworkSpec.from_mapping(tuned.to_dict()).build()
    from training.checkpoints import restore_for_fine_tuning
    head = make_head(tuned.loss, 5, **tuned.head_margins(), seed=tuned.seed)
    head.build((None, 512))
    restore_for_fine_tuning(model, head, summary["checkpoint"], with_head=False)
    saved = _saved_values(summary["checkpoint"])
    _assert_every_weight_is_one_of(model, [value for name, value in saved.items()
                                           if name.startswith(("optimizer/_trainable_variables/", "model/"))])


def _assert_every_weight_is_one_of(model: keras.Model, sources: list[np.ndarray]) -> None:
    """Each weight of `model` (kernels, gammas, betas, alphas, BN statistics) equals a distinct array of `sources`,
    matched by value (flattened: the seed stored PReLU alphas as [C], Keras holds [1, 1, C]), so that the check does
    not depend on how the restore maps names."""
    remaining = list(sources)
    weights = [w for w in model.weights if "seed_generator" not in w.path]
    for weight in weights:
        value = weight.numpy()
        match = next((i for i, source in enumerate(remaining)
                      if source.size == value.size and np.array_equal(source.ravel(), value.ravel())), None)
        assert match is not None, f"{weight.path} {value.shape} equals no value of the source checkpoint"
        remaining.pop(match)
    assert len(weights) > 50


def _killed_after_its_first_checkpoint(argv: list[str], out: Path) -> str:
    """Starts `train_nets.py argv` without a step limit into `out`, SIGKILLs it once its first checkpoint is written
    and returns the latest checkpoint it left."""
    process = subprocess.Popen([sys.executable, "train_nets.py", *argv, "--max_steps=1000000", *_out_args(out)],
                               cwd=REPO, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    state = out / "ckpt" / "checkpoint"
    deadline = time.time() + 300
    while not state.exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    latest = tf.train.latest_checkpoint(str(out / "ckpt"))
    assert latest is not None, "the killed run wrote no checkpoint"
    return latest


def test_resume_after_sigkill_continues_at_the_checkpoint(faces, tmp_path):
    common = [*TINY, f"--train_dataset_dir={faces}", "--ckpt_interval=3"]
    reference = _run_script("train_nets.py", [*common, "--max_steps=12", *_out_args(tmp_path / "ref")])
    assert reference.returncode == 0, reference.stderr[-3000:]

    killed_dir = tmp_path / "killed"
    latest = _killed_after_its_first_checkpoint(common, killed_dir)
    killed_step = int(latest.rsplit("-", 1)[1])
    assert 3 <= killed_step < 12
    # What a crash in the middle of the next save would leave: files of a newer checkpoint, state file untouched.
    (killed_dir / "ckpt" / "InsightFace_iter-999.index").write_bytes(b"\x00" * 10)

    resumed = _run_script("train_nets.py", [*common, "--max_steps=12", *_out_args(killed_dir)])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from {latest} at step {killed_step}" in resumed.stderr
    expected = _saved_values(str(tmp_path / "ref" / "ckpt" / "InsightFace_iter-12"))
    actual = _saved_values(str(killed_dir / "ckpt" / "InsightFace_iter-12"))
    assert expected.keys() == actual.keys() and expected
    for name in expected:
        np.testing.assert_allclose(actual[name], expected[name], rtol=1e-5, atol=1e-6, err_msg=name)


# ---------------------------------------------------------------------------------------------- distributed
TWO_REPLICAS = textwrap.dedent("""
    import sys, json, numpy as np, tensorflow as tf, keras
    sys.path.insert(0, {repo!r})
    from train_nets_mgpu_new import make_strategy
    import train_nets
    from nets.spec import NetworkSpec
    from losses import make_head
    from training.step import make_train_step

    strategy = make_strategy(2)
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (8, 32, 32, 3)).astype("float32")
    labels = rng.integers(0, 6, 8)

    def one_step(strategy, dropout_rate=0.0):
        # sync_bn for the full-batch comparison only: the dropout masks do not depend on it, and tracing the
        # synchronised batch norm of 2 replicas costs about 25 s more.
        args = train_nets.Args(net_depth=18, image_size=[32, 32], dropout_rate=dropout_rate, batch_size=8,
                               sync_bn=not dropout_rate, seed=3, weight_decay=0.0 if dropout_rate else 5e-4)
        with strategy.scope():
            model = NetworkSpec.from_mapping(args.to_dict()).build()
            head = make_head(args.loss, 6, **args.head_margins(), seed=args.seed)
            head.build((None, 512))
            optimizer = keras.optimizers.SGD(0.1, momentum=0.9)
            optimizer.build(model.trainable_variables + head.trainable_variables)
        step = make_train_step(strategy, model, head, optimizer, 8, weight_decay=args.weight_decay)
        batch = tf.data.Dataset.from_tensors((images, labels))
        if strategy.num_replicas_in_sync > 1:
            batch = strategy.experimental_distribute_dataset(batch)
        start = [v.numpy() for v in model.weights + head.weights]
        metrics = [{{k: float(v) for k, v in step(x, y).items()}} for x, y in batch][0]
        return metrics, start, [v.numpy() for v in model.weights + head.weights]

    (m2, _, w2), (m1, _, w1) = one_step(strategy), one_step(tf.distribute.get_strategy())
    # allclose(rtol=1e-4, atol=1e-5) as one number: <= 1 everywhere means equal within float tolerance.
    worst = max(float(np.max(np.abs(a - b) / (1e-4 * np.abs(b) + 1e-5))) for a, b in zip(w2, w1))

    # Dropout: both replicas see the same 4 images. A row of the dense kernel (one flattened feature) gets no update
    # only when that feature is dropped in every image of the global batch.
    images = np.concatenate([images[:4], images[:4]])

    _, start, end = one_step(strategy, dropout_rate=0.5)
    (dense,) = [i for i, a in enumerate(start) if a.ndim == 2 and a.shape[0] == 2048]  # E_DenseLayer's kernel
    untouched = int(np.sum(np.all(end[dense] == start[dense], axis=1)))
    print(json.dumps({{"replicas": strategy.num_replicas_in_sync, "loss2": m2["total_loss"],
                      "loss1": m1["total_loss"], "worst": worst, "untouched_rows": untouched}}))
""")


def test_two_replicas_give_the_full_batch_update():
    result = subprocess.run([sys.executable, "-c", TWO_REPLICAS.format(repo=str(REPO))], capture_output=True,
                            text=True, timeout=600, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["replicas"] == 2
    assert report["loss2"] == pytest.approx(report["loss1"], rel=1e-5)
    assert report["worst"] <= 1.0
    # Dropout 0.5, 2048 features: with a mask per image, a feature is dropped in all 8 images with p = 1/256
    # (about 8 rows, sd 2.8); one mask shared by the replicas repeats 4 masks twice: p = 1/16 (about 128 rows, sd 11).
    assert report["untouched_rows"] < 40, f"the replicas drew one dropout mask: {report}"


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


# Two workers against one process at the same global batch (depth 18, 32x32, no dropout): measured
# relative difference (norm of the difference / norm), with group norm against one device, 6.8e-7 for the step-1
# momentum and 3e-3 for the step-3 momentum; with batch norm and sync_bn against one process of 2 replicas 1.3e-6 (the
# gradient itself: float summation order only) and 0.022 for the step-3 momentum, 1.3e-4 for the step-3 loss (ArcFace
# at s=64 amplifies that rounding over steps). A worker whose half of the batch were lost, counted twice or taken
# from another step would be off by tens of percent.
STEP1_TOLERANCE = 1e-5
STEP3_MOMENTUM_TOLERANCE = 0.06
LOSS_TOLERANCE = 5e-4
LOSS_LINE = re.compile(r"total_step (\d+), total loss ([\d.]+)")


def _relative_difference(actual: dict[str, np.ndarray], expected: dict[str, np.ndarray], names: list[str]) -> float:
    difference = sum(float(np.sum((actual[n].astype(np.float64) - expected[n]) ** 2)) for n in names)
    return (difference / sum(float(np.sum(expected[n].astype(np.float64) ** 2)) for n in names)) ** 0.5


def _logged_losses(log_folder: Path) -> dict[int, float]:
    text = "".join(path.read_text() for path in log_folder.glob("*.log"))
    return {int(step): float(loss) for step, loss in LOSS_LINE.findall(text)}


def test_two_workers_train_as_one_process_with_the_same_global_batch(faces, tmp_path):
    """Batch norm with sync_bn: every saved value, the moving statistics included, must agree exactly across the
    workers, and with a single process of 2 replicas fed the same global batch of 8 (each worker reads and computes
    half of it). (One device differs from any 2 synchronised replicas by 1e-3 in the step-1 gradient: Keras'
    synchronised moments are computed otherwise than its one-device moments; measured the same with 1 process.)"""
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    common = [*TINY, f"--train_dataset_dir={faces}", "--norm=bn", "--sync_bn=true", "--dropout_rate=0", "--max_steps=3",
              "--ckpt_interval=1"]
    processes = []
    for index in range(2):
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2",
               "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})}
        processes.append(subprocess.Popen(
            [sys.executable, "train_nets_mgpu_new.py", *common, "--num_gpus=1", "--multi_worker=true",
             *_out_args(tmp_path / "workers")],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    single = _run_script("train_nets_mgpu_new.py", [*common, "--num_gpus=2", *_out_args(tmp_path / "single")])
    try:
        outputs = [process.communicate(timeout=300) for process in processes]
    finally:
        for process in processes:
            process.kill()
    for process, (_, stderr) in zip(processes, outputs):
        assert process.returncode == 0, stderr[-3000:]
    assert single.returncode == 0, single.stderr[-3000:]
    chief = _saved_values(str(tmp_path / "workers" / "ckpt" / "InsightFace_iter-3"))
    other = _saved_values(str(tmp_path / "workers" / "ckpt" / "worker_1" / "InsightFace_iter-3"))
    assert chief.keys() == other.keys() and chief
    for name in chief:
        np.testing.assert_array_equal(chief[name], other[name], err_msg=name)

    momentum = [name for name in chief if name.startswith("optimizer/_variables/") and chief[name].dtype.kind == "f"]
    weights = [name for name in chief if name.startswith("optimizer/_trainable_variables/")]
    statistics = [name for name in chief if "moving_" in name]
    assert momentum and weights and statistics
    at_step = {step: (_saved_values(str(tmp_path / "workers" / "ckpt" / f"InsightFace_iter-{step}")),
                      _saved_values(str(tmp_path / "single" / "ckpt" / f"InsightFace_iter-{step}"))) for step in (1, 3)}
    assert at_step[3][0].keys() == at_step[3][1].keys()
    assert _relative_difference(*at_step[1], momentum + weights + statistics) < STEP1_TOLERANCE
    assert _relative_difference(*at_step[3], momentum) < STEP3_MOMENTUM_TOLERANCE
    worker_losses, single_losses = (_logged_losses(tmp_path / run / "logs") for run in ("workers", "single"))
    assert sorted(single_losses) == [1, 2, 3] and worker_losses.keys() == single_losses.keys()
    for step, loss in single_losses.items():
        assert worker_losses[step] == pytest.approx(loss, rel=LOSS_TOLERANCE), step


# Slow: the fast suite runs train_nets_mgpu_new.py end to end on 2 logical devices in test_partial_fc_training.py's
# runs fixture (and on 2 workers in the test above).
@pytest.mark.slow
def test_mgpu_script_end_to_end_on_two_logical_devices(faces, tmp_path):
    result = _run_script("train_nets_mgpu_new.py", [*TINY, f"--train_dataset_dir={faces}", "--num_gpus=2",
                                                    "--max_steps=3", "--ckpt_interval=3", *_out_args(tmp_path)])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 replicas in sync" in result.stderr
    assert "total_step 3" in result.stderr
    assert (tmp_path / "ckpt" / "InsightFace_iter-3.index").is_file()


# Relative distance of one bfloat16 update of all 91 trainable weights from the float32 update: measured 0.17 at
# depth 18, 32x32 (bfloat16 keeps 8 bits of mantissa through 18 layers); twice the learning rate, a lost gradient or a
# skipped step gives 1.0.
BFLOAT16_UPDATE_TOLERANCE = 0.35


@pytest.fixture(scope="module")
def float32_step(faces, tmp_path_factory) -> tuple[dict, dict]:
    """The weights before and after one float32 step of TINY (before: a run at lr 1e-30, below float32 resolution)."""
    values = []
    for lr in ("1e-30", "0.01"):
        out = tmp_path_factory.mktemp(f"float32_lr{lr}")
        summary = train_nets.train(train_nets.Args.from_cli(
            [*TINY, f"--train_dataset_dir={faces}", "--max_steps=1", "--ckpt_interval=0", f"--lr_values=[{lr}]",
             "--lr_steps=[]", "--dropout_rate=0", *_out_args(out)]))
        values.append(_trainable_values(summary["checkpoint"]))
    return values[0], values[1]


def _trainable_values(prefix: str) -> dict[str, np.ndarray]:
    """Every trainable weight of a checkpoint (backbone and class weights; see _saved_values for where they live)."""
    values = {name: value for name, value in _saved_values(prefix).items()
              if name.startswith("optimizer/_trainable_variables/") or name.startswith("head/embedding_weights")}
    assert len(values) > 50, sorted(values)  # a depth-18 IR-ResNet has ~90
    return values


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_step_is_the_float32_step_with_16_bit_convolutions(faces, tmp_path, policy, float32_step):
    before, after_float32 = float32_step
    summary = train_nets.train(train_nets.Args.from_cli(
        [*TINY, f"--train_dataset_dir={faces}", "--max_steps=1", "--ckpt_interval=0", "--lr_values=[0.01]",
         "--lr_steps=[]", "--dropout_rate=0", f"--mixed_precision={policy}", *_out_args(tmp_path)]))
    assert np.isfinite(summary["total_loss"])
    assert keras.mixed_precision.global_policy().name == "float32"  # train() restores the policy
    after_mixed = _trainable_values(summary["checkpoint"])
    assert after_mixed.keys() == after_float32.keys() and all(v.dtype == np.float32 for v in after_mixed.values())
    update_float32 = np.concatenate([(after_float32[k] - before[k]).ravel() for k in sorted(before)])
    update_mixed = np.concatenate([(after_mixed[k] - before[k]).ravel() for k in sorted(before)])
    if policy == "mixed_bfloat16":
        distance = np.linalg.norm(update_mixed - update_float32) / np.linalg.norm(update_float32)
        assert distance < BFLOAT16_UPDATE_TOLERANCE, distance
    else:
        # float16 with dynamic loss scaling: the first step's scaled gradients (x 2^15) overflow float16, so the
        # step is skipped, nothing is updated and the scale halves, as Keras' LossScaleOptimizer does.
        saved = _saved_values(summary["checkpoint"])
        # (`before` is the lr 1e-30 run: it differs from the initial weights by ~1e-31 where they are near 0.)
        assert np.abs(update_mixed).max() < 1e-6 * np.abs(update_float32).max()
        assert saved["optimizer/dynamic_scale/.ATTRIBUTES/VARIABLE_VALUE"] == 2.0 ** 14
    # Under the policy the convolutions compute in 16 bit, the margin head in float32.
    args = train_nets.Args.from_cli([*TINY, f"--mixed_precision={policy}"])
    keras.mixed_precision.set_global_policy(policy)
    try:
        model = NetworkSpec.from_mapping(args.to_dict()).build()
        head = make_head(args.loss, 4, **args.head_margins(), seed=args.seed)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    convolutions = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    sixteen_bit = policy.removeprefix("mixed_")
    assert convolutions and {layer.compute_dtype for layer in convolutions} == {sixteen_bit}
    assert {layer.variable_dtype for layer in convolutions} == {"float32"}
    probe = keras.Model(model.input, convolutions[0].output)
    assert probe(np.zeros((1, 32, 32, 3), "float32")).dtype == sixteen_bit
    logits = head(np.ones((2, 512), "float32"), np.array([0, 1]))
    assert logits.dtype == "float32"


def test_bad_args_are_named(faces, tmp_path):
    with pytest.raises(ValueError, match="grad_accum_steps"):
        train_nets.train(train_nets.Args(batch_size=10, grad_accum_steps=3, train_dataset_dir=str(faces)))
    with pytest.raises(ValueError, match="mixed_precision"):
        train_nets.train(train_nets.Args(mixed_precision="fp8", train_dataset_dir=str(faces)))


def test_both_scripts_refuse_a_custom_set_without_its_pairs_file_by_one_rule(tmp_path):
    import eval_ckpt_file

    for fields in ({"eval_dataset": str(tmp_path)}, {"eval_pair": str(tmp_path / "pairs.txt")}):
        with pytest.raises(ValueError, match="eval_dataset and eval_pair go together"):
            train_nets.validate_args(train_nets.Args(train_dataset_dir=str(tmp_path), **fields))
        with pytest.raises(ValueError, match="eval_dataset and eval_pair go together"):
            eval_ckpt_file.load_sets(eval_ckpt_file.Args(eval_bins=["lfw"], **fields), (112, 112))


def test_validation_during_training_keeps_the_best_checkpoint_and_export(faces, tmp_path, caplog):
    import generate_pairs

    generate_pairs.main(generate_pairs.Args(data_dir=str(faces), pairs_filepath=str(tmp_path / "pairs.txt"),
                                            num_folds=2, pairs_per_fold=4, seed=0))
    args = train_nets.Args.from_cli([*TINY, f"--train_dataset_dir={faces}", "--max_steps=4", "--ckpt_interval=0",
                                     f"--eval_dataset={faces}", f"--eval_pair={tmp_path / 'pairs.txt'}",
                                     "--validate_interval=2", *_out_args(tmp_path)])
    with caplog.at_level("INFO"):
        summary = train_nets.train(args)
    logged = {int(step): float(accuracy) for step, accuracy
              in re.findall(r"\[pairs\]\[(\d+)\]Accuracy-Flip: ([0-9.]+)\+-", caplog.text)}
    assert sorted(logged) == [2, 4] and caplog.text.count("[pairs][2]Accuracy-Flip") == 1
    # The best is the first step of the highest logged accuracy (a tie keeps the earlier checkpoint).
    expected_step = max(logged, key=lambda step: (logged[step], -step))
    assert int(summary["best_checkpoint"].rsplit("-", 1)[1]) == expected_step
    assert summary["best_accuracy"] == pytest.approx(logged[expected_step], abs=1e-5)
    exported = keras.saving.load_model(tmp_path / "ckpt" / "best" / "embedding.keras", compile=False)
    assert exported.output_shape == (None, 512) and "arcface_loss" not in [layer.name for layer in exported.layers]
    # The export is the best checkpoint's network: a network read from that checkpoint embeds alike.
    network = NetworkSpec.from_mapping(args.to_dict()).build()
    tf.train.Checkpoint(model=network).read(summary["best_checkpoint"]).expect_partial()
    images = np.random.default_rng(5).uniform(-1, 1, (4, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(exported(images, training=False), network(images, training=False),
                               rtol=1e-5, atol=1e-5)


def test_fine_tuning_from_a_seed_tf1_checkpoint(faces, tmp_path):
    """A checkpoint written by TF1's Saver with the seed's TensorLayer names starts a run with a new head."""
    from test_seed_checkpoint import random_values, seed_variable_shapes, write_tf1_checkpoint

    shapes = seed_variable_shapes("resnet_v1_18", (2, 2, 2, 2), image_size=32, num_classes=7)
    values = random_values(shapes, np.random.default_rng(0))
    prefix = str(tmp_path / "seed" / "InsightFace_iter_best_1000.ckpt")
    write_tf1_checkpoint(prefix, values)
    args = train_nets.Args.from_cli([*TINY, f"--train_dataset_dir={faces}", "--max_steps=1",
                                     f"--restore_path={prefix}", *_out_args(tmp_path / "run")])
    summary = train_nets.train(args)
    assert summary["step"] == 1 and np.isfinite(summary["total_loss"])
    # The restore train() does, checked on every weight of the network before any update.
    from training.checkpoints import restore_for_fine_tuning

    model = NetworkSpec.from_mapping(args.to_dict()).build()
    head = make_head(args.loss, 5, **args.head_margins(), seed=args.seed)
    head.build((None, 512))
    restore_for_fine_tuning(model, head, prefix, with_head=False)
    _assert_every_weight_is_one_of(model, [value for name, value in values.items() if "embedding_weights" not in name])
    with pytest.raises(ValueError, match="class weights"):
        train_nets.train(train_nets.Args.from_cli([*TINY, f"--train_dataset_dir={faces}", "--max_steps=1",
                                                   f"--restore_path={prefix}", "--restore_head=true",
                                                   *_out_args(tmp_path / "run2")]))


@pytest.mark.parametrize("backbone", ["mobilefacenet", "resnet50_v1", "vgg16"])
def test_every_registry_backbone_builds_from_training_args(backbone):
    args = train_nets.Args(backbone=backbone, image_size=[112, 112], dropout_rate=0.2)
    model = NetworkSpec.from_mapping(args.to_dict()).build()
    assert model.output_shape == (None, 512)
    assert any(isinstance(layer, keras.layers.Dropout) and layer.rate == pytest.approx(0.2) for layer in model.layers)


def test_xla_step_gives_the_same_update():
    """jit_compile=True compiles the forward/backward pass with XLA; one step equals the plain step."""
    rng = np.random.default_rng(2)
    images = rng.uniform(-1, 1, (4, 32, 32, 3)).astype("float32")
    labels = rng.integers(0, 3, 4)
    weights = []
    for jit in (False, True):
        args = train_nets.Args(net_depth=18, norm="gn", image_size=[32, 32], dropout_rate=0.0, batch_size=4,
                               jit_compile=jit, seed=11)
        model = NetworkSpec.from_mapping(args.to_dict()).build()
        head = make_head(args.loss, 3, **args.head_margins(), seed=args.seed)
        head.build((None, 512))
        optimizer = keras.optimizers.SGD(0.1, momentum=0.9)
        optimizer.build(model.trainable_variables + head.trainable_variables)
        make_train_step(tf.distribute.get_strategy(), model, head, optimizer, 4, weight_decay=args.weight_decay,
                        jit_compile=args.jit_compile)(images, labels)
        weights.append([v.numpy() for v in model.weights + head.weights])
    for plain, compiled in zip(*weights):
        np.testing.assert_allclose(compiled, plain, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------------------------- re-runs into a run
def _files(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def test_every_args_field_is_classified_for_resume():
    import train_nets_mgpu_new
    from training.checkpoints import ADJUSTABLE_FIELDS, RUN_FIELDS

    assert not RUN_FIELDS & ADJUSTABLE_FIELDS
    fields = set(train_nets.Args.fields()) | set(train_nets_mgpu_new.Args.fields())
    assert fields == RUN_FIELDS | ADJUSTABLE_FIELDS, "classify every Args field in training/checkpoints.py"


def _write_args_json_of_the_previous_version(ckpt_dir: Path, **fields) -> None:
    """An args.json as the version before the margin defaults moved wrote it: margin_m1/m2/m3 = 1.0/0.3/0.2 always,
    whatever the loss (written here with json, not by Args.save)."""
    values = {**train_nets.Args().to_dict(), "margin_m1": 1.0, "margin_m2": 0.3, "margin_m3": 0.2, **fields}
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    (ckpt_dir / "args.json").write_text(json.dumps(values, indent=2))


@pytest.mark.parametrize("loss", ["arcface", "cosface", "combined", "softmax"])
def test_a_run_of_the_previous_version_resumes(tmp_path, loss):
    from training.checkpoints import check_resumed_args

    _write_args_json_of_the_previous_version(tmp_path, loss=loss)
    assert check_resumed_args(train_nets.Args(loss=loss), tmp_path) == []
    # The margins the head used are the same whether given or left to the loss's default.
    assert check_resumed_args(train_nets.Args(loss=loss, margin_m1=1.0, margin_m2=0.3, margin_m3=0.2), tmp_path) == []


def test_a_real_margin_change_is_still_refused(tmp_path):
    from training.checkpoints import check_resumed_args

    _write_args_json_of_the_previous_version(tmp_path / "combined", loss="combined")
    with pytest.raises(ValueError, match="another network, head") as error:
        check_resumed_args(train_nets.Args(loss="combined", margin_m2=0.35), tmp_path / "combined")
    assert "margin_m2: 0.3 in" in str(error.value) and "0.35 now" in str(error.value)
    assert "--margin_m2=0.3" in str(error.value) and "margin_m1" not in str(error.value)

    _write_args_json_of_the_previous_version(tmp_path / "arcface", loss="arcface")  # margin_m None: 0.5
    assert check_resumed_args(train_nets.Args(loss="arcface", margin_m=0.5, margin_s=64.0), tmp_path / "arcface") == []
    with pytest.raises(ValueError, match=r"margin_m: 0\.5 in .*, 0\.4 now.*--margin_m=0\.5"):
        check_resumed_args(train_nets.Args(loss="arcface", margin_m=0.4), tmp_path / "arcface")
    with pytest.raises(ValueError, match="loss: 'arcface' in"):
        check_resumed_args(train_nets.Args(loss="cosface"), tmp_path / "arcface")


class _ClassList:
    """Stands in for data.train_data.TrainData: save_class_list writes `names` one a line."""

    def __init__(self, names: list[str]) -> None:
        self.names = names

    def save_class_list(self, path: Path) -> Path:
        Path(path).write_text("".join(f"{name}\n" for name in self.names))
        return Path(path)


def test_class_list_is_written_through_a_temporary_that_a_refusal_or_a_failure_removes(tmp_path):
    from training.checkpoints import write_class_list

    assert write_class_list(_ClassList(["ann", "bob"]), tmp_path).read_text() == "ann\nbob\n"
    (tmp_path / "args.json").write_text("{}")  # now a run: its classes are fixed
    with pytest.raises(ValueError, match="line 2: 'bob' in the run, 'cy' now"):
        write_class_list(_ClassList(["ann", "cy"]), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["args.json", "classes.txt"]
    assert (tmp_path / "classes.txt").read_text() == "ann\nbob\n"

    class DiskFull(_ClassList):
        def save_class_list(self, path: Path) -> Path:
            Path(path).write_text("ann\n")  # half written
            raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        write_class_list(DiskFull([]), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["args.json", "classes.txt"]
    assert (tmp_path / "classes.txt").read_text() == "ann\nbob\n"


def _tiny_run(faces: Path, out: Path, *extra: str) -> list[str]:
    """The command line of a tiny run into `out`; runs it once in-process and returns the command line."""
    argv = [*TINY, f"--train_dataset_dir={faces}", "--max_steps=2", "--ckpt_interval=0", *_out_args(out), *extra]
    train_nets.train(train_nets.Args.from_cli(argv))
    return argv


@pytest.mark.slow
def test_rerun_with_another_network_refuses_on_the_command_line(faces, tmp_path):
    argv = _tiny_run(faces, tmp_path)
    before = _files(tmp_path / "ckpt")
    assert {"args.json", "classes.txt", "checkpoint", "InsightFace_iter-2.index"} <= before.keys()
    refused = _run_script("train_nets.py", [*argv, "--net_depth=34", "--seed=5"])
    assert refused.returncode != 0
    (message,) = [line for line in refused.stderr.splitlines() if "holds a run with another network" in line]
    assert "Traceback" not in refused.stderr, refused.stderr[-3000:]
    assert "net_depth: 18 in" in message and "34 now" in message and "seed: 313 in" in message and "5 now" in message
    assert "new ckpt_path" in message and "--net_depth=18 --seed=313" in message
    assert _files(tmp_path / "ckpt") == before


def test_rerun_keeps_the_run_and_resumes_with_a_new_schedule(faces, tmp_path, caplog):
    argv = _tiny_run(faces, tmp_path)
    ckpt = tmp_path / "ckpt"
    before = _files(ckpt)
    with pytest.raises(ValueError) as error:
        train_nets.train(train_nets.Args.from_cli([*argv, "--net_depth=34", "--image_size=[16,16]"]))
    assert "net_depth: 18 in" in str(error.value) and "image_size: [32, 32] in" in str(error.value)
    assert "--net_depth=18 --image_size=[32,32]" in str(error.value)
    assert _files(ckpt) == before

    # A schedule change resumes at the saved step, is logged, and is recorded in args.json.
    with caplog.at_level("INFO"):
        summary = train_nets.train(train_nets.Args.from_cli([*argv, "--max_steps=3",
                                                             "--lr_values=[0.02,0.01,0.005,0.001]"]))
    assert f"resumed from {ckpt / 'InsightFace_iter-2'} at step 2" in caplog.text
    assert "resuming with max_steps changed: 2 in" in caplog.text and "lr_values changed" in caplog.text
    saved = json.loads((ckpt / "args.json").read_text())
    assert summary["step"] == 3 and saved["max_steps"] == 3 and saved["net_depth"] == 18
    assert (ckpt / "classes.txt").read_bytes() == before["classes.txt"]


def test_rerun_with_other_classes_refuses_and_keeps_the_run(tmp_path):
    data = tmp_path / "faces"
    synthetic.generate(data, num_identities=4, images_per_identity=4, seed=0, image_size=32)
    args = train_nets.Args.from_cli([*TINY, f"--train_dataset_dir={data}", "--max_steps=1", "--ckpt_interval=0",
                                     *_out_args(tmp_path)])
    train_nets.train(args)
    before = _files(tmp_path / "ckpt")
    first, second = sorted(p for p in data.iterdir() if p.is_dir())[:2]
    first.rename(first.with_name("zz_" + first.name))  # the same images under another class list
    with pytest.raises(ValueError, match=rf"classes.txt lists 4 classes, the training data has 4; the first "
                                         rf"difference is at line 1: '{first.name}' in the run, '{second.name}' "
                                         rf"now\. A run cannot change its classes: give a new ckpt_path"):
        train_nets.train(args)
    assert _files(tmp_path / "ckpt") == before
