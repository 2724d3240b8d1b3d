"""easy_margin and interclass filtering (arcface_torch's CombinedMarginLoss options) against float64 numpy formulas
written here, their gradients, their refusals, the head's config, and a real 2-step run that resumes only unchanged."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

import losses
import train_nets
from data import synthetic
from losses import MarginHead, face_losses, make_head, sparse_softmax_cross_entropy
from training.checkpoints import check_resumed_args

RNG = np.random.default_rng(16)


def _cos64(x, w):
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    w = w / np.linalg.norm(w, axis=0, keepdims=True)
    return np.clip(x @ w, -1.0, 1.0)


def _filtered64(cos, labels, threshold):
    """arcface_torch's filtering: negatives above the threshold become 0, the label column never does."""
    if threshold <= 0:
        return cos
    negative = np.eye(cos.shape[1])[labels] == 0
    return np.where(negative & (cos > threshold), 0.0, cos)


def _with_target(cos, labels, target, s):
    mask = np.eye(cos.shape[1])[labels]
    return s * (cos * (1 - mask) + target * mask)


def arcface64(x, labels, w, s=64.0, m=0.5, easy_margin=False, threshold=0.0):
    """arcface_torch's ArcFace branch: cos(theta + m) where cos > 0 (easy) or cos > cos(pi - m), else cos (easy) or
    cos - m*sin(pi - m)."""
    cos = _filtered64(_cos64(x, w), labels, threshold)
    cos_theta_m = np.cos(np.arccos(cos) + m)
    if easy_margin:
        target = np.where(cos > 0, cos_theta_m, cos)
    else:
        target = np.where(cos > math.cos(math.pi - m), cos_theta_m, cos - math.sin(math.pi - m) * m)
    return _with_target(cos, labels, target, s)


def cosface64(x, labels, w, s=30.0, m=0.4, threshold=0.0):
    cos = _filtered64(_cos64(x, w), labels, threshold)
    return _with_target(cos, labels, cos - m, s)


def combined64(x, labels, w, s, m1, m2, m3, easy_margin=False):
    cos = _cos64(x, w)
    target = np.cos(m1 * np.arccos(cos) + m2) - m3
    if easy_margin:
        target = np.where(cos > 0, target, cos)
    return _with_target(cos, labels, target, s)


def _close(actual, expected, s):
    # Relative 1e-5 of the logit scale s: logits near 0 have no meaningful relative error of their own.
    np.testing.assert_allclose(np.asarray(actual, np.float64), expected, rtol=1e-5, atol=1e-5 * s)


def _at_angles(angles):
    """Embeddings at `angles` from class column 0 ((1, 0)); column 1 is (0, 1). Labels all 0."""
    angles = np.asarray(angles, np.float64)
    x = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    return x, np.zeros(len(angles), dtype=int), np.eye(2)


# Both sides of 90 degrees, both sides of pi - m = 2.64 (m = 0.5), and 180 degrees.
ANGLES = [0.0, 0.4, 1.2, math.pi / 2 - 0.02, math.pi / 2 + 0.02, 2.2, math.pi - 0.5 - 0.01, math.pi - 0.5 + 0.01,
          3.0, math.pi]


@pytest.mark.parametrize("easy_margin", [False, True])
def test_arcface_target_logits_at_angles_either_side_of_90_degrees_and_of_pi_minus_m(easy_margin):
    x, y, w = _at_angles(ANGLES)
    got = np.asarray(face_losses.arcface_logits(x.astype("float32"), y, w.astype("float32"), easy_margin=easy_margin))
    _close(got, arcface64(x, y, w, easy_margin=easy_margin), 64)
    theta = np.asarray(ANGLES)
    obtuse = theta > math.pi / 2
    if easy_margin:  # past 90 degrees the target is the plain s*cos(theta), before it s*cos(theta + m)
        _close(got[obtuse, 0], 64 * np.cos(theta[obtuse]), 64)
        _close(got[~obtuse, 0], 64 * np.cos(theta[~obtuse] + 0.5), 64)
    else:  # the seed's fallback past pi - m only
        past = theta > math.pi - 0.5
        _close(got[~past, 0], 64 * np.cos(theta[~past] + 0.5), 64)
        _close(got[past, 0], 64 * (np.cos(theta[past]) - 0.5 * math.sin(0.5)), 64)


@pytest.mark.parametrize("m1, m2, m3", [(1.0, 0.3, 0.2), (0.9, 0.4, 0.1)])
def test_combined_easy_margin_keeps_obtuse_targets_plain(m1, m2, m3):
    # not 0 and pi: with m1 != 1 the head takes arccos of a cosine clipped 1e-7 inside [-1, 1] (finite gradients)
    x, y, w = _at_angles(ANGLES[1:-1])
    got = face_losses.combined_margin_logits(x.astype("float32"), y, w.astype("float32"), s=32.0, m1=m1, m2=m2, m3=m3,
                                             easy_margin=True)
    _close(got, combined64(x, y, w, 32.0, m1, m2, m3, easy_margin=True), 32)


def _filtering_case():
    """Random embeddings, half of them labelled with their nearest class, and a threshold that filters some
    negatives and lies below some positives (checked, so the test cannot pass on an empty case)."""
    x, w = RNG.normal(size=(16, 8)), RNG.normal(size=(8, 10))
    cos = _cos64(x, w)
    labels = RNG.integers(0, 10, size=16)
    labels[:8] = cos[:8].argmax(axis=1)
    threshold = 0.3
    positive = cos[np.arange(16), labels]
    negative = np.eye(10)[labels] == 0
    assert 5 <= (negative & (cos > threshold)).sum() < negative.sum() and (positive > threshold).sum() >= 3
    return x, labels, w, threshold


@pytest.mark.parametrize("loss", ["arcface", "cosface"])
def test_filtering_zeroes_the_negatives_above_the_threshold_and_never_the_positive(loss):
    x, y, w, threshold = _filtering_case()
    head = MarginHead(10, loss=loss, interclass_filtering_threshold=threshold)
    head.build((None, 8))
    head.embedding_weights.assign(w.astype("float32"))
    got = np.asarray(head(x.astype("float32"), y))
    reference = {"arcface": arcface64, "cosface": cosface64}[loss]
    _close(got, reference(x, y, w, threshold=threshold), head.margins["s"])
    cos = _cos64(x, w)
    filtered = (np.eye(10)[y] == 0) & (cos > threshold)
    assert np.all(got[filtered] == 0.0)
    # the label columns keep their margin logit even above the threshold
    _close(got[np.arange(16), y], reference(x, y, w)[np.arange(16), y], head.margins["s"])


def _class_weight_gradient(threshold: float) -> np.ndarray:
    """d(cross-entropy)/d(class weights) for 4 embeddings of class 0 where class 1 lies close to all of them (a
    negative above 0.5) and class 2 far (below it)."""
    x = np.array([[1.0, 0.2, 0.0], [1.0, -0.1, 0.1], [0.9, 0.0, -0.2], [1.0, 0.1, 0.2]], np.float32)
    w = tf.Variable(np.array([[0.0, 1.0, -0.3], [1.0, 0.1, 1.0], [0.0, 0.0, 0.2]], np.float32))
    labels = np.zeros(4, dtype=int)
    assert np.all(_cos64(x, w.numpy())[:, 1] > 0.5) and np.all(_cos64(x, w.numpy())[:, 2] < 0.5)
    with tf.GradientTape() as tape:
        logits = face_losses.arcface_logits(x, labels, w, interclass_filtering_threshold=threshold)
        loss = sparse_softmax_cross_entropy(logits, labels)
    return tape.gradient(loss, w).numpy()


def test_a_filtered_negative_gets_no_gradient_in_its_class_column():
    filtered, plain = _class_weight_gradient(0.5), _class_weight_gradient(0.0)
    assert np.all(filtered[:, 1] == 0.0)  # class 1 is filtered in every row
    assert np.abs(plain[:, 1]).max() > 1e-3  # without filtering it does get one
    assert np.abs(filtered[:, 2]).max() > 1e-3 and np.abs(filtered[:, 0]).max() > 1e-3


@pytest.mark.parametrize("loss", ["arcface", "cosface", "combined", "softmax"])
def test_defaults_are_the_seed_logits(loss):
    x, y, w = RNG.normal(size=(12, 6)), RNG.integers(0, 5, size=12), RNG.normal(size=(6, 5))
    # one embedding past pi - m of its class (the seed's arcface fallback), not at pi, where the float32 cosine
    # rounding sets sqrt(1 - cos^2) off by ~1e-4
    x[0] = -w[:, y[0]] + 0.2 * np.linalg.norm(w[:, y[0]]) * RNG.normal(size=6) / math.sqrt(6)
    assert -0.999 < _cos64(x, w)[0, y[0]] < math.cos(math.pi - 0.5)
    head = make_head(loss, 5, seed=0)
    head.build((None, 6))
    head.embedding_weights.assign(w.astype("float32"))
    assert head.get_config()["easy_margin"] is False and head.get_config()["interclass_filtering_threshold"] == 0.0
    got = head(x.astype("float32"), y)
    expected = {"arcface": lambda: arcface64(x, y, w), "cosface": lambda: cosface64(x, y, w),
                "combined": lambda: combined64(x, y, w, 64.0, 1.0, 0.3, 0.2), "softmax": lambda: x @ w}[loss]()
    _close(got, expected, head.margins.get("s", 1.0))


def test_head_config_carries_both_options_and_rebuilds_the_same_logits():
    x, y, w, threshold = _filtering_case()
    head = make_head("arcface", 10, easy_margin=True, interclass_filtering_threshold=threshold, seed=1)
    head.build((None, 8))
    head.embedding_weights.assign(w.astype("float32"))
    config = head.get_config()
    assert config["easy_margin"] is True and config["interclass_filtering_threshold"] == threshold
    clone = MarginHead.from_config(json.loads(json.dumps(config)))
    clone.build((None, 8))
    clone.embedding_weights.assign(w.astype("float32"))
    _close(clone(x.astype("float32"), y), arcface64(x, y, w, easy_margin=True, threshold=threshold), 64)


def test_options_a_loss_cannot_take_are_refused_by_name():
    for loss in ("cosface", "softmax"):
        with pytest.raises(ValueError, match=f"easy_margin=True applies to loss arcface or combined.*loss='{loss}'"):
            MarginHead(3, loss=loss, easy_margin=True)
    with pytest.raises(ValueError, match="interclass_filtering_threshold=0.2 applies to .*loss='softmax'"):
        make_head("softmax", 3, interclass_filtering_threshold=0.2)
    with pytest.raises(ValueError, match=r"interclass_filtering_threshold=1.0 must be in \[0, 1\)"):
        MarginHead(3, interclass_filtering_threshold=1.0)
    with pytest.raises(ValueError, match="interclass_filtering_threshold"):
        train_nets.Args(interclass_filtering_threshold=1.0)
    with pytest.raises(ValueError, match="easy_margin=True .*loss='cosface'"):
        train_nets.validate_args(train_nets.Args(loss="cosface", easy_margin=True))


def test_two_steps_with_both_options_record_them_and_refuse_a_resume_that_changes_them(tmp_path, monkeypatch):
    faces = tmp_path / "faces"
    synthetic.generate(faces, num_identities=4, images_per_identity=4, seed=0, image_size=16)
    argv = ["--net_depth=18", "--image_size=[16,16]", "--embedding_size=8", "--batch_size=8", "--max_steps=2",
            "--validate_interval=0", "--ckpt_interval=0", "--show_info_interval=1", "--summary_interval=2",
            f"--train_dataset_dir={faces}", f"--ckpt_path={tmp_path}/ckpt", f"--summary_path={tmp_path}/summary",
            f"--log_file_path={tmp_path}/logs", "--easy_margin=true", "--interclass_filtering_threshold=0.3"]
    built = []

    def make_and_keep_head(*args, **kwargs) -> MarginHead:  # train() imports make_head from losses when it runs
        built.append(make_head(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(losses, "make_head", make_and_keep_head)
    summary = train_nets.train(train_nets.Args.from_cli(argv))
    assert summary["step"] == 2 and math.isfinite(summary["total_loss"])
    (head,) = built
    assert head.easy_margin is True and head.interclass_filtering_threshold == 0.3
    saved = json.loads(Path(tmp_path / "ckpt" / "args.json").read_text())
    assert saved["easy_margin"] is True and saved["interclass_filtering_threshold"] == 0.3

    ckpt = tmp_path / "ckpt"
    assert check_resumed_args(train_nets.Args.from_cli(argv), ckpt) == []
    with pytest.raises(ValueError, match=r"easy_margin: True in .*False now.*--easy_margin=true"):
        check_resumed_args(train_nets.Args.from_cli([*argv, "--easy_margin=false"]), ckpt)
    with pytest.raises(ValueError, match=r"interclass_filtering_threshold: 0\.3 in .*0\.5 now"):
        check_resumed_args(train_nets.Args.from_cli([*argv, "--interclass_filtering_threshold=0.5"]), ckpt)
    # an args.json written before these fields existed is a run without them
    del saved["easy_margin"], saved["interclass_filtering_threshold"]
    (ckpt / "args.json").write_text(json.dumps(saved))
    assert check_resumed_args(train_nets.Args.from_cli(argv[:-2]), ckpt) == []
    with pytest.raises(ValueError, match="easy_margin: False in"):
        check_resumed_args(train_nets.Args.from_cli(argv), ckpt)
