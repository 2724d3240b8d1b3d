"""Training recipes of train_nets.Args: warm-up with poly/cosine decay, AdamW, backbone gradient clipping and label
smoothing, each against a float64 formula written here; resume exactness of the new schedules and of AdamW."""

from __future__ import annotations

import itertools
import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

import train_nets
import training.step
from data import synthetic
from losses import make_head
from nets.spec import NetworkSpec
from training.optim import ConstantSchedule, lr_boundaries, make_optimizer, make_schedule
from training.step import make_train_step

REPO = Path(__file__).resolve().parents[1]
# Group norm and no dropout: the gradient of a batch is the sum of its micro-batches' and its replicas' gradients.
NET = dict(net_depth=18, norm="gn", image_size=[16, 16], embedding_size=8, dropout_rate=0.0, seed=5)
CLASSES = 4


# ---------------------------------------------------------------------------------------------- schedules
def _warmup_poly(t: int, peak: float, warmup: int, total: int) -> float:
    """arcface_torch's PolynomialLRWarmup (power 1) in closed form, at update t."""
    if t < warmup:
        return peak * t / warmup
    return peak * (1.0 - (min(t, total) - warmup) / (total - warmup))


def _warmup_cosine(t: int, peak: float, warmup: int, total: int) -> float:
    if t < warmup:
        return peak * t / warmup
    return peak * 0.5 * (1.0 + math.cos(math.pi * (min(t, total) - warmup) / (total - warmup)))


@pytest.mark.parametrize("name, formula", [("poly", _warmup_poly), ("cosine", _warmup_cosine)])
def test_warmup_then_decay_follows_its_formula(name, formula):
    peak, warmup, total = 0.1, 10, 110
    schedule = make_schedule(name, [peak, 0.5, 0.7], [3, 4], warmup, total)  # lr_values[1:], lr_steps unused
    for t in (0, 1, 5, 9, 10, 11, 60, 100, 109, 110, 500):
        assert float(schedule(t)) == pytest.approx(formula(t, peak, warmup, total), rel=1e-6, abs=1e-9), t
    assert float(schedule(0)) == 0.0 and float(schedule(warmup)) == pytest.approx(peak)
    # the last update (t = total - 1) runs at 1 / (total - warmup) of the peak (poly) and a cosine tail
    assert float(schedule(total - 1)) > 0.0 and float(schedule(total)) == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError, match="warmup_steps=110 leaves no step"):
        make_schedule(name, [peak], [], 110, 110)


def test_warmup_before_the_piecewise_schedule_keeps_its_boundaries():
    values, boundaries = [0.1, 0.01], lr_boundaries([20], 512, scale_by_batch=False)
    schedule = make_schedule("piecewise", values, boundaries, 8, 1000)
    expected = {0: 0.0, 4: 0.05, 7: 0.1 * 7 / 8, 8: 0.1, 20: 0.1, 21: 0.01, 999: 0.01}
    for t, lr in expected.items():
        assert float(schedule(t)) == pytest.approx(lr, rel=1e-6, abs=1e-12), t


# ---------------------------------------------------------------------------------------------- one step
@pytest.fixture(scope="module")
def tiny_net() -> tuple[keras.Model, keras.layers.Layer, list[np.ndarray]]:
    """A tiny network and arcface head, and their initial weights (each test starts from them)."""
    args = train_nets.Args(**NET)
    model = NetworkSpec.from_mapping(args.to_dict()).build()
    head = make_head(args.loss, CLASSES, **args.head_margins(), seed=args.seed)
    head.build((None, args.embedding_size))
    rng = np.random.default_rng(3)
    # biases, betas and PReLU alphas start at 0, where a decay would not show: give them a non-zero start
    for variable in model.trainable_variables:
        if not np.any(variable.numpy()):
            variable.assign(rng.normal(0, 0.1, variable.shape).astype("float32"))
    return model, head, [v.numpy() for v in model.weights + head.weights]


@pytest.fixture(scope="module")
def batch() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.uniform(-1, 1, (8, 16, 16, 3)).astype("float32"), np.array([0, 1, 2, 3, 0, 1, 2, 3])


def _reset(model, head, start: list[np.ndarray]) -> list:
    for variable, value in zip(model.weights + head.weights, start):
        variable.assign(value)
    return model.trainable_variables + head.trainable_variables


def _tape(model, head, images, labels, eps: float = 0.0) -> tuple[np.ndarray, list[np.ndarray]]:
    """The margin logits and the gradient of the mean cross-entropy against the smoothed targets, by its own tape."""
    with tf.GradientTape() as tape:
        logits = head(model(images, training=True), labels)
        targets = (1.0 - eps) * tf.one_hot(labels, CLASSES) + eps / CLASSES
        loss = tf.reduce_mean(-tf.reduce_sum(targets * tf.nn.log_softmax(logits), axis=-1))
    grads = tape.gradient(loss, model.trainable_variables + head.trainable_variables)
    return logits.numpy().astype(np.float64), [g.numpy().astype(np.float64) for g in grads]


def _decayed_by_layer_type(model, head) -> set[int]:
    """ids of what AdamW must decay, chosen by layer type: conv/dense kernels, norm gammas, PReLU alphas, class
    weights; every other trainable variable must be a bias or a beta."""
    decayed = {id(head.embedding_weights)}
    for layer in model.layers:
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)):
            decayed.add(id(layer.kernel))
        elif isinstance(layer, (keras.layers.GroupNormalization, keras.layers.BatchNormalization)):
            decayed.add(id(layer.gamma))
        elif isinstance(layer, keras.layers.PReLU):
            decayed.add(id(layer.alpha))
    rest = [v.path for v in model.trainable_variables if id(v) not in decayed]
    assert rest and all(path.endswith(("/bias", "/beta")) for path in rest), rest
    return decayed


def test_adamw_two_steps_match_a_float64_adamw_with_decoupled_decay(tiny_net, batch):
    model, head, start = tiny_net
    images, labels = batch
    variables = _reset(model, head, start)
    lr, wd, b1, b2, eps = 0.01, 1.0, 0.9, 0.999, 1e-8
    optimizer = make_optimizer("adamw", ConstantSchedule(lr), variables, momentum=0.9, weight_decay=wd)
    optimizer.build(variables)
    step = make_train_step(tf.distribute.get_strategy(), model, head, optimizer, 8, weight_decay=0.0)
    decayed = _decayed_by_layer_type(model, head)
    before = [v.numpy().astype(np.float64) for v in variables]
    weights = [w.copy() for w in before]
    torch_weights = [w.copy() for w in weights]
    m = [np.zeros_like(w) for w in weights]
    v = [np.zeros_like(w) for w in weights]
    for t in (1, 2):
        _, grads = _tape(model, head, images, labels)
        step(images, labels)
        for i, (variable, g) in enumerate(zip(variables, grads)):
            keep = 1.0 - lr * wd if id(variable) in decayed else 1.0
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g * g
            # Keras: epsilon on sqrt(v) before v's bias correction; torch: after it.
            weights[i] = keep * weights[i] - lr * math.sqrt(1 - b2**t) / (1 - b1**t) * m[i] / (np.sqrt(v[i]) + eps)
            torch_weights[i] = keep * torch_weights[i] - lr * (m[i] / (1 - b1**t)) / (
                np.sqrt(v[i] / (1 - b2**t)) + eps)
    # Adam divides by |g|: where a gradient is ~0, float32's summation order moves its step by up to ~1e-3 lr, so
    # each variable's two-step update is compared as a whole. A decay on a wrong variable, or none on a right one,
    # moves it by ~2 lr wd |w|: the bound is far below that.
    for variable, start, expected, torch_expected in zip(variables, before, weights, torch_weights):
        update, tolerance = variable.numpy() - start, 2e-3 * np.linalg.norm(expected - start)
        assert 2 * lr * wd * np.linalg.norm(start) > 5 * tolerance, variable.path  # a decay error would show
        assert np.linalg.norm(update - (expected - start)) <= tolerance, variable.path
        assert np.linalg.norm(update - (torch_expected - start)) <= 5 * tolerance, variable.path


@pytest.fixture(scope="module")
def clipped_reference(tiny_net, batch) -> dict:
    """The float64 expectation of one SGD step (lr 1, no momentum, no L2) with label smoothing 0.1 and the backbone's
    gradient clipped to 1e-3 of its norm."""
    model, head, start = tiny_net
    _reset(model, head, start)
    logits, grads = _tape(model, head, *batch, eps=0.1)
    backbone = len(model.trainable_variables)
    norm = math.sqrt(sum(float(np.sum(g * g)) for g in grads[:backbone]))
    clip = 1e-3 * norm
    updates = [-g * (clip / norm) for g in grads[:backbone]] + [-g for g in grads[backbone:]]
    return {"logits": logits, "clip": clip, "updates": updates, "backbone": backbone}


def _clipped_step(tiny_net, batch, clip: float, **step_options) -> dict:
    model, head, start = tiny_net
    variables = _reset(model, head, start)
    optimizer = keras.optimizers.SGD(1.0, momentum=0.0)
    optimizer.build(variables)
    step = make_train_step(tf.distribute.get_strategy(), model, head, optimizer, 8, weight_decay=0.0,
                           clip_grad_norm=clip, label_smoothing=0.1, **step_options)
    return {k: float(v) for k, v in step(*batch).items()}


def _updates(variables: list, start: list[np.ndarray], model, head) -> list[np.ndarray]:
    by_id = {id(v): value for v, value in zip(model.weights + head.weights, start)}
    return [variable.numpy().astype(np.float64) - by_id[id(variable)] for variable in variables]


def test_smoothed_clipped_step_has_the_numpy_loss_and_clips_the_backbone_only(tiny_net, batch, clipped_reference):
    """One step with label smoothing and clipping: the smoothed cross-entropy of the head's margin logits, and the
    backbone moved by the clip along its gradient, the head by its whole gradient (float64 expectations)."""
    metrics = _clipped_step(tiny_net, batch, clipped_reference["clip"])
    _assert_clipped_update(tiny_net, clipped_reference)
    z, labels = clipped_reference["logits"], batch[1]
    targets = np.full(z.shape, 0.1 / CLASSES)
    targets[np.arange(len(labels)), labels] += 0.9
    log_softmax = z - (np.log(np.sum(np.exp(z - z.max(axis=1, keepdims=True)), axis=1)) + z.max(axis=1))[:, None]
    assert metrics["inference_loss"] == pytest.approx(float(np.mean(-np.sum(targets * log_softmax, axis=1))), rel=1e-5)


def test_clipping_uses_the_gradient_accumulated_over_micro_batches(tiny_net, batch, clipped_reference):
    _clipped_step(tiny_net, batch, clipped_reference["clip"], grad_accum_steps=2)
    _assert_clipped_update(tiny_net, clipped_reference)


def _assert_clipped_update(tiny_net, clipped_reference: dict) -> None:
    """The backbone moved along its (accumulated) gradient by exactly `clip`; the head by its unclipped gradient."""
    model, head, start = tiny_net
    variables = model.trainable_variables + head.trainable_variables
    actual = _updates(variables, start, model, head)
    norm = math.sqrt(sum(float(np.sum(u * u)) for u in actual[:clipped_reference["backbone"]]))
    assert norm == pytest.approx(clipped_reference["clip"], rel=1e-4)
    for variable, update, expected in zip(variables, actual, clipped_reference["updates"]):
        assert np.linalg.norm(update - expected) <= 1e-3 * np.linalg.norm(expected) + 1e-12, variable.path


def test_clipping_under_float16_loss_scaling_clips_the_unscaled_gradient(batch):
    """With a loss scale of 16 the clip applies to the gradient itself: the backbone still moves by `clip`."""
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        args = train_nets.Args(**NET)
        model = NetworkSpec.from_mapping(args.to_dict()).build()
        head = make_head(args.loss, CLASSES, **args.head_margins(), seed=args.seed)
        head.build((None, args.embedding_size))
    finally:
        keras.mixed_precision.set_global_policy("float32")
    start = [v.numpy() for v in model.weights + head.weights]
    variables = model.trainable_variables + head.trainable_variables
    optimizer = keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(1.0, momentum=0.0), initial_scale=16.0)
    optimizer.build(variables)
    clip = 1e-3
    step = make_train_step(tf.distribute.get_strategy(), model, head, optimizer, 8, weight_decay=0.0,
                           clip_grad_norm=clip)
    step(*batch)
    assert float(optimizer.dynamic_scale) == 16.0  # the step was applied, not skipped
    actual = _updates(variables, start, model, head)
    norm = math.sqrt(sum(float(np.sum(u * u)) for u in actual[:len(model.trainable_variables)]))
    assert norm == pytest.approx(clip, rel=1e-3)


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
    images = rng.uniform(-1, 1, (8, 16, 16, 3)).astype("float32")
    labels = np.array([0, 1, 2, 3, 0, 1, 2, 3])

    def one_step(strategy):
        args = train_nets.Args(**{net!r})
        with strategy.scope():
            model = NetworkSpec.from_mapping(args.to_dict()).build()
            head = make_head(args.loss, 4, **args.head_margins(), seed=args.seed)
            head.build((None, args.embedding_size))
            optimizer = keras.optimizers.SGD(1.0, momentum=0.0)
            optimizer.build(model.trainable_variables + head.trainable_variables)
        step = make_train_step(strategy, model, head, optimizer, 8, weight_decay=5e-4, clip_grad_norm=1e-3)
        batch = tf.data.Dataset.from_tensors((images, labels))
        if strategy.num_replicas_in_sync > 1:
            batch = strategy.experimental_distribute_dataset(batch)
        start = [v.numpy() for v in model.trainable_variables]
        [step(x, y) for x, y in batch]
        updates = [v.numpy() - s for v, s in zip(model.trainable_variables, start)]
        return updates, float(np.sqrt(sum(np.sum(u.astype(np.float64) ** 2) for u in updates)))

    (two, norm2), (one, norm1) = one_step(strategy), one_step(tf.distribute.get_strategy())
    worst = max(float(np.linalg.norm(a - b) / np.linalg.norm(b)) for a, b in zip(two, one) if np.linalg.norm(b))
    print(json.dumps({{"replicas": strategy.num_replicas_in_sync, "norm2": norm2, "norm1": norm1, "worst": worst}}))
""")


@pytest.mark.slow
def test_two_replicas_clip_the_norm_of_the_summed_gradient():
    """Two replicas of 4 images clip like one device with 8: the norm of the sum, not each replica's norm."""
    result = subprocess.run([sys.executable, "-c", TWO_REPLICAS.format(repo=str(REPO), net=NET)], capture_output=True,
                            text=True, timeout=600, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["replicas"] == 2
    # each replica clipping its own half would move the backbone by up to 2 x the clip
    assert report["norm2"] == pytest.approx(1e-3, rel=1e-4) and report["norm1"] == pytest.approx(1e-3, rel=1e-4)
    assert report["worst"] < 1e-3, report


# ---------------------------------------------------------------------------------------------- runs and resume
@pytest.fixture(scope="module")
def faces(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("faces")
    synthetic.generate(root, num_identities=4, images_per_identity=4, seed=0, image_size=16)
    return root


class _Crash(Exception):
    """What the injected failure raises: a run stopping without its final save."""


def _crashing(real, steps: int):
    """make_train_step whose step function fails on its call after `steps` calls."""
    def make(*args, **kwargs):
        train_step, calls = real(*args, **kwargs), itertools.count(1)

        def step(images, labels):
            if next(calls) > steps:
                raise _Crash
            return train_step(images, labels)
        return step
    return make


def _run_argv(faces: Path, out: Path, recipe: list[str]) -> list[str]:
    return ["--net_depth=18", "--image_size=[16,16]", "--embedding_size=8", "--batch_size=4", "--max_steps=4",
            "--ckpt_interval=2", "--summary_interval=1", "--show_info_interval=1", "--validate_interval=0",
            f"--train_dataset_dir={faces}", f"--ckpt_path={out}/ckpt", f"--summary_path={out}/summary",
            f"--log_file_path={out}/logs", *recipe]


def _saved_values(prefix: str) -> dict[str, np.ndarray]:
    reader = tf.train.load_checkpoint(prefix)
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()
            if name != "_CHECKPOINTABLE_OBJECT_GRAPH"}


def _logged_learning_rates(summary_dir: Path) -> dict[int, float]:
    rates = {}
    for path in summary_dir.glob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                if value.tag == "learning_rate":
                    rates[event.step] = float(tf.make_ndarray(value.tensor))
    return rates


RECIPES = {
    "poly_sgd": pytest.param(["--lr_schedule=poly", "--warmup_steps=2", "--lr_values=[0.02]", "--clip_grad_norm=5",
                  "--label_smoothing=0.1"], _warmup_poly, marks=pytest.mark.slow),
    # (the fast suite's: the same warm-up and decay code as poly, and AdamW's slots)
    "cosine_adamw": pytest.param(["--lr_schedule=cosine", "--warmup_steps=2", "--lr_values=[0.001]", "--optimizer=adamw",
                      "--weight_decay=0.1"], _warmup_cosine),
}


@pytest.mark.parametrize("recipe, flags, formula", [pytest.param(name, *param.values, marks=param.marks, id=name)
                                                     for name, param in RECIPES.items()])
def test_a_resumed_run_ends_as_the_uninterrupted_one_and_logs_the_applied_rate(faces, tmp_path, monkeypatch, recipe,
                                                                              flags, formula):
    whole = train_nets.train(train_nets.Args.from_cli(_run_argv(faces, tmp_path / "whole", flags)))
    assert whole["step"] == 4
    # the rate logged at step s is the one update s - 1 ran at (arcface_torch's closed form, 4 steps in all)
    logged = _logged_learning_rates(tmp_path / "whole" / "summary")
    for step in (1, 2, 3, 4):
        assert logged[step] == pytest.approx(formula(step - 1, 0.02 if "poly" in recipe else 0.001, 2, 4),
                                             rel=1e-6, abs=1e-12), step

    argv = _run_argv(faces, tmp_path / "stopped", flags)
    with monkeypatch.context() as patch:
        patch.setattr(training.step, "make_train_step", _crashing(training.step.make_train_step, 3))
        with pytest.raises(_Crash):
            train_nets.train(train_nets.Args.from_cli(argv))
    assert tf.train.latest_checkpoint(str(tmp_path / "stopped" / "ckpt")).endswith("InsightFace_iter-2")
    resumed = train_nets.train(train_nets.Args.from_cli(argv))
    assert resumed["step"] == 4
    expected, actual = _saved_values(whole["checkpoint"]), _saved_values(resumed["checkpoint"])
    assert expected.keys() == actual.keys()
    # the optimizer's slots (SGD's momentums; AdamW's momentums and velocities) are among the compared values
    slots = [name for name in expected if name.startswith("optimizer/_variables/")]
    assert len(slots) >= 50, sorted(expected)
    for name in expected:
        np.testing.assert_allclose(actual[name], expected[name], rtol=1e-5, atol=1e-6, err_msg=name)
