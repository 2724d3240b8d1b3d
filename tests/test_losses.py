"""Margin heads against float64 numpy implementations of the seed's formulas, edges and gradients included."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from losses import MarginHead, face_losses, sparse_softmax_cross_entropy

RNG = np.random.default_rng(0)


def _cos64(x, w):
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    w = w / np.linalg.norm(w, axis=0, keepdims=True)
    return np.clip(x @ w, -1.0, 1.0)


def arcface_ref(x, labels, w, s=64.0, m=0.5):
    """The seed's arcface_loss in float64 (seed-behaviour.md 3.1)."""
    cos = _cos64(x, w)
    sin = np.sqrt(1.0 - cos**2)
    cos_mt = s * (cos * math.cos(m) - sin * math.sin(m))
    keep = s * (cos - math.sin(m) * m)
    target = np.where(cos - math.cos(math.pi - m) > 0, cos_mt, keep)
    mask = np.eye(w.shape[1])[labels]
    return s * cos * (1 - mask) + target * mask


def cosface_ref(x, labels, w, s=30.0, m=0.4):
    cos = _cos64(x, w)
    mask = np.eye(w.shape[1])[labels]
    return s * cos * (1 - mask) + s * (cos - m) * mask


def combined_ref(x, labels, w, s, m1, m2, m3):
    cos = _cos64(x, w)
    target = np.cos(m1 * np.arccos(cos) + m2) - m3
    mask = np.eye(w.shape[1])[labels]
    return s * cos * (1 - mask) + s * target * mask


def _inputs(n=16, d=8, c=10):
    return RNG.normal(size=(n, d)), RNG.integers(0, c, size=n), RNG.normal(size=(d, c))


def _close(actual, expected, s):
    # Relative 1e-5 of the logit scale s: logits near 0 have no meaningful relative error of their own.
    np.testing.assert_allclose(np.asarray(actual, np.float64), expected, rtol=1e-5, atol=1e-5 * s)


def test_arcface_matches_reference_on_random_inputs():
    x, y, w = _inputs()
    _close(face_losses.arcface_logits(x.astype("float32"), y, w.astype("float32")), arcface_ref(x, y, w), 64)


def test_arcface_seed_table_and_branch_boundary():
    """The seed's numeric table (seed-behaviour.md 3.1): target logits for chosen cosines, both sides of cos(pi-m)."""
    thr = math.cos(math.pi - 0.5)
    cosines = np.array([1.0, 0.5, 0.0, -0.87, thr + 1e-4, thr - 1e-4, -1.0])
    # Embedding (c, sqrt(1-c^2)) against the class column (1, 0) has exactly that cosine.
    x = np.stack([cosines, np.sqrt(1 - cosines**2)], axis=1)
    w = np.array([[1.0, 0.0], [0.0, 1.0]])
    y = np.zeros(len(cosines), dtype=int)
    got = np.asarray(face_losses.arcface_logits(x.astype("float32"), y, w.astype("float32")))[:, 0]
    _close(got, arcface_ref(x, y, w)[:, 0], 64)
    np.testing.assert_allclose(got[:3], [56.165, 1.510, -30.683], atol=2e-3)
    assert got[4] == pytest.approx(-64.0, abs=0.02) and got[5] == pytest.approx(-71.5, abs=0.02)


def test_cosface_matches_reference():
    x, y, w = _inputs()
    _close(face_losses.cosface_logits(x.astype("float32"), y, w.astype("float32")), cosface_ref(x, y, w), 30)


@pytest.mark.parametrize("m1, m2, m3", [(1.0, 0.3, 0.2), (1.0, 0.0, 0.0), (1.0, 0.5, 0.0), (1.0, 0.0, 0.35),
                                        (0.9, 0.4, 0.15), (1.35, 0.0, 0.0)])
def test_combined_margin_matches_reference(m1, m2, m3):
    x, y, w = _inputs()
    got = face_losses.combined_margin_logits(x.astype("float32"), y, w.astype("float32"), s=64.0, m1=m1, m2=m2, m3=m3)
    _close(got, combined_ref(x, y, w, 64.0, m1, m2, m3), 64)


def test_softmax_is_the_plain_product():
    x, y, w = _inputs()
    np.testing.assert_allclose(face_losses.softmax_logits(x.astype("float32"), y, w.astype("float32")), x @ w,
                               rtol=1e-5, atol=1e-5)


EDGE_FUNCTIONS = {
    "arcface": lambda x, y, w: face_losses.arcface_logits(x, y, w),
    "cosface": lambda x, y, w: face_losses.cosface_logits(x, y, w),
    "combined": lambda x, y, w: face_losses.combined_margin_logits(x, y, w),
    "combined_m1": lambda x, y, w: face_losses.combined_margin_logits(x, y, w, m1=0.9, m2=0.4, m3=0.1),
}


@pytest.mark.parametrize("name", sorted(EDGE_FUNCTIONS))
def test_values_and_gradients_finite_at_the_edges(name):
    """Zero embeddings, embeddings equal to their class column (cos = 1) and opposite to it (cos = -1)."""
    w = tf.constant([[1.0, 0.0, 0.3], [0.0, 1.0, 0.4]])
    x = tf.constant([[0.0, 0.0], [2.0, 0.0], [-3.0, 0.0], [0.0, 5.0]])
    y = tf.constant([0, 0, 0, 1])
    with tf.GradientTape() as tape:
        tape.watch([x, w])
        logits = EDGE_FUNCTIONS[name](x, y, w)
        loss = sparse_softmax_cross_entropy(logits, y)
    grads = tape.gradient(loss, [x, w])
    assert np.isfinite(logits.numpy()).all()
    for grad in grads:
        assert np.isfinite(grad.numpy()).all()


def test_arcface_value_exact_at_cos_one():
    w = np.array([[1.0], [0.0]])
    x = np.array([[3.0, 0.0]])
    got = float(face_losses.arcface_logits(x.astype("float32"), np.array([0]), w.astype("float32"))[0, 0])
    assert got == pytest.approx(64 * math.cos(0.5), rel=1e-6)


def test_head_owns_weights_and_computes_in_float32_under_mixed_precision():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        head = MarginHead(10, loss="arcface", seed=1)
        x, y, _ = _inputs(c=10)
        logits = head(tf.constant(x, tf.float16), tf.constant(y))
        assert logits.dtype == tf.float32
        assert head.embedding_weights.dtype == "float32"
        assert [v.path for v in head.weights] == ["arcface_loss/embedding_weights"]
        w = head.embedding_weights.numpy().astype(np.float64)
        _close(logits, arcface_ref(x.astype(np.float16).astype(np.float64), y, w), 64)
        np.testing.assert_allclose(head.plain_logits(tf.constant(x, tf.float16)),
                                   64 * _cos64(x.astype(np.float16).astype(np.float64), w), atol=64 * 1e-5)
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_head_xavier_init_and_config_round_trip():
    head = MarginHead(2000, loss="combined", margins={"m2": 0.25}, seed=3)
    head.build((None, 512))
    std = head.embedding_weights.numpy().std()
    assert std == pytest.approx(math.sqrt(2.0 / (512 + 2000)), rel=0.05)
    clone = MarginHead.from_config(head.get_config())
    assert clone.margins == {"s": 64.0, "m1": 1.0, "m2": 0.25, "m3": 0.2} and clone.loss == "combined"


def test_head_rejects_unknown_loss_and_margins():
    with pytest.raises(ValueError, match="arcface, cosface, combined, softmax"):
        MarginHead(3, loss="sphereface")
    with pytest.raises(ValueError, match="m1"):
        MarginHead(3, loss="arcface", margins={"m1": 1.0})


def test_cross_entropy_matches_numpy():
    logits = RNG.normal(size=(5, 4)) * 10
    labels = np.array([0, 3, 1, 1, 2])
    shifted = logits - logits.max(axis=1, keepdims=True)
    expected = np.mean(np.log(np.exp(shifted).sum(axis=1)) - shifted[np.arange(5), labels])
    assert float(sparse_softmax_cross_entropy(logits.astype("float32"), labels)) == pytest.approx(expected, rel=1e-5)


# The published defaults, written here independently of losses.margins: ArcFace (64, 0.5), CosFace (30, 0.4) and
# insightface's combined margin (64; 1.0, 0.3, 0.2).
def _reference_at_published_defaults(loss, x, y, w):
    if loss == "arcface":
        return arcface_ref(x, y, w, s=64.0, m=0.5)
    if loss == "cosface":
        return cosface_ref(x, y, w, s=30.0, m=0.4)
    if loss == "combined":
        return combined_ref(x, y, w, 64.0, 1.0, 0.3, 0.2)
    return x @ w


def _training_head_logits(args, x, y, w):
    """The logits of the head train_nets builds for `args` (make_head from Args.head_margins), with weights w."""
    from losses import make_head

    head = make_head(args.loss, w.shape[1], **args.head_margins(), seed=0)
    head.build((None, w.shape[0]))
    head.embedding_weights.assign(w.astype("float32"))
    return head(x.astype("float32"), y)


@pytest.mark.parametrize("loss", ["arcface", "cosface", "combined", "softmax"])
def test_the_defaults_reach_the_training_head_and_the_logit_functions(loss):
    """Args with every margin left at None, and the logit functions called without margins, give the published
    defaults: the float64 formula at those values."""
    import train_nets

    x, y, w = _inputs()
    args = train_nets.Args(loss=loss)
    assert (args.margin_s, args.margin_m, args.margin_m1, args.margin_m2, args.margin_m3) == (None,) * 5
    expected = _reference_at_published_defaults(loss, x, y, w)
    _close(_training_head_logits(args, x, y, w), expected, 64)
    function = {"arcface": face_losses.arcface_logits, "cosface": face_losses.cosface_logits,
                "combined": face_losses.combined_margin_logits, "softmax": face_losses.softmax_logits}[loss]
    _close(function(x.astype("float32"), y, w.astype("float32")), expected, 64)


@pytest.mark.parametrize("loss, patched", [("arcface", {"s": 48.0, "m": 0.35}), ("cosface", {"s": 20.0, "m": 0.25}),
                                           ("combined", {"s": 32.0, "m1": 1.2, "m2": 0.15, "m3": 0.1})])
def test_the_training_head_takes_its_defaults_from_DEFAULT_MARGINS(loss, patched, monkeypatch):
    """Changing DEFAULT_MARGINS alone changes the head of Args() (the combined m1, m2, m3 too): no other copy of the
    defaults stands in between."""
    import train_nets
    from losses.margins import DEFAULT_MARGINS

    for key, value in patched.items():
        monkeypatch.setitem(DEFAULT_MARGINS[loss], key, value)
    x, y, w = _inputs()
    reference = {"arcface": lambda: arcface_ref(x, y, w, **patched), "cosface": lambda: cosface_ref(x, y, w, **patched),
                 "combined": lambda: combined_ref(x, y, w, **patched)}[loss]
    _close(_training_head_logits(train_nets.Args(loss=loss), x, y, w), reference(), patched["s"])


def test_given_margins_override_the_defaults_and_unused_ones_are_ignored():
    import train_nets

    x, y, w = _inputs()
    combined = train_nets.Args(loss="combined", margin_s=32.0, margin_m2=0.4, margin_m=0.9)  # m: not a combined margin
    _close(_training_head_logits(combined, x, y, w), combined_ref(x, y, w, 32.0, 1.0, 0.4, 0.2), 32)
    arcface = train_nets.Args(loss="arcface", margin_m=0.3, margin_m1=1.5)  # m1: not an arcface margin
    _close(_training_head_logits(arcface, x, y, w), arcface_ref(x, y, w, s=64.0, m=0.3), 64)
