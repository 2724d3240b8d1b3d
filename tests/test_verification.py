"""eval.verification against the seed's straightforward loop protocol, written here independently in float64."""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
from scipy.interpolate import BSpline, interp1d
from scipy.optimize import brentq
from sklearn.metrics import auc as sklearn_auc
from sklearn.model_selection import KFold

from eval import verification
from eval.verification import equal_error_rate, evaluate, fold_slices, verify


# --- The reference: the seed's verification.py algorithm, one threshold and one fold at a time -------------------

def _reference_rates(threshold, dist, actual_issame):
    predict_issame = np.less(dist, threshold)
    tp = np.sum(np.logical_and(predict_issame, actual_issame))
    fp = np.sum(np.logical_and(predict_issame, np.logical_not(actual_issame)))
    tn = np.sum(np.logical_and(np.logical_not(predict_issame), np.logical_not(actual_issame)))
    fn = np.sum(np.logical_and(np.logical_not(predict_issame), actual_issame))
    tpr = 0 if (tp + fn == 0) else float(tp) / float(tp + fn)
    fpr = 0 if (fp + tn == 0) else float(fp) / float(fp + tn)
    acc = float(tp + tn) / dist.size
    return tpr, fpr, acc


def _reference_val_far(threshold, dist, actual_issame):
    predict_issame = np.less(dist, threshold)
    true_accept = np.sum(np.logical_and(predict_issame, actual_issame))
    false_accept = np.sum(np.logical_and(predict_issame, np.logical_not(actual_issame)))
    n_same = np.sum(actual_issame)
    n_diff = np.sum(np.logical_not(actual_issame))
    val = 0.0 if n_same == 0 else float(true_accept) / float(n_same)  # the fork's guard
    far = 0.0 if n_diff == 0 else float(false_accept) / float(n_diff)
    return val, far


def seed_era_slinear(far_train, thresholds, far_target):
    """interp1d(far_train, thresholds, kind="slinear")(far_target) as SciPy <= 1.8 computed it: a stable (mergesort)
    sort of x, then make_interp_spline(x, y, k=1)'s special case, knots r_[x[0], x, x[-1]] and coefficients y, i.e. a
    degree-1 B-spline whose repeated knots are kept (current make_interp_spline refuses them, BSpline does not)."""
    order = np.argsort(far_train, kind="mergesort")
    x, y = np.asarray(far_train, float)[order], np.asarray(thresholds, float)[order]
    return float(BSpline(np.r_[x[0], x, x[-1]], y, 1, extrapolate=False)(far_target))


def current_interp1d(far_train, thresholds, far_target):
    """Today's interp1d: valid only where FAR strictly increases."""
    return float(interp1d(far_train, thresholds, kind="slinear")(far_target))


def reference_evaluate(embeddings, actual_issame, num_folds=10, interpolate=seed_era_slinear):
    """The seed's evaluate(): returns tpr, fpr, accuracy, val, val_std, far, best thresholds and VAL thresholds."""
    actual_issame = np.asarray(actual_issame)
    embeddings1, embeddings2 = embeddings[0::2], embeddings[1::2]
    dist = np.sum(np.square(np.subtract(embeddings1, embeddings2)), 1)
    indices = np.arange(len(actual_issame))
    k_fold = KFold(n_splits=num_folds, shuffle=False)

    thresholds = np.arange(0, 4, 0.01)
    tprs = np.zeros((num_folds, len(thresholds)))
    fprs = np.zeros((num_folds, len(thresholds)))
    accuracy = np.zeros(num_folds)
    best_thresholds = np.zeros(num_folds)
    for fold_idx, (train_set, test_set) in enumerate(k_fold.split(indices)):
        acc_train = np.zeros(len(thresholds))
        for threshold_idx, threshold in enumerate(thresholds):
            _, _, acc_train[threshold_idx] = _reference_rates(threshold, dist[train_set], actual_issame[train_set])
        best_threshold_index = np.argmax(acc_train)
        for threshold_idx, threshold in enumerate(thresholds):
            tprs[fold_idx, threshold_idx], fprs[fold_idx, threshold_idx], _ = _reference_rates(
                threshold, dist[test_set], actual_issame[test_set])
        _, _, accuracy[fold_idx] = _reference_rates(thresholds[best_threshold_index], dist[test_set],
                                                    actual_issame[test_set])
        best_thresholds[fold_idx] = thresholds[best_threshold_index]
    tpr, fpr = np.mean(tprs, 0), np.mean(fprs, 0)

    thresholds = np.arange(0, 4, 0.001)
    val, far = np.zeros(num_folds), np.zeros(num_folds)
    val_thresholds = np.zeros(num_folds)
    for fold_idx, (train_set, test_set) in enumerate(k_fold.split(indices)):
        far_train = np.zeros(len(thresholds))
        for threshold_idx, threshold in enumerate(thresholds):
            _, far_train[threshold_idx] = _reference_val_far(threshold, dist[train_set], actual_issame[train_set])
        if np.max(far_train) >= 1e-3:
            threshold = interpolate(far_train, thresholds, 1e-3)
        else:
            threshold = 0.0
        val[fold_idx], far[fold_idx] = _reference_val_far(threshold, dist[test_set], actual_issame[test_set])
        val_thresholds[fold_idx] = threshold
    return dict(tpr=tpr, fpr=fpr, accuracy=accuracy, val=np.mean(val), val_std=np.std(val), far=np.mean(far),
                best_thresholds=best_thresholds, val_thresholds=val_thresholds)


# --- Synthetic embeddings ------------------------------------------------------------------------------------------

def unit_rows(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def noisy_pairs(num_pairs, dim=64, noise=0.9, seed=0, issame=None):
    """Pairs of unit vectors: matched = one identity + noise on each side, mismatched = two identities."""
    rng = np.random.default_rng(seed)
    if issame is None:
        issame = rng.random(num_pairs) < 0.5
    first = rng.normal(size=(num_pairs, dim))
    second = np.where(issame[:, None], first, rng.normal(size=(num_pairs, dim)))
    embeddings = np.empty((2 * num_pairs, dim))
    embeddings[0::2] = unit_rows(first + noise * rng.normal(size=first.shape))
    embeddings[1::2] = unit_rows(second + noise * rng.normal(size=second.shape))
    return embeddings, issame


def embeddings_at_distances(distances):
    """2-d unit vectors whose pairs have the given squared L2 distances (d = 2 - 2 cos angle)."""
    cosine = 1.0 - np.asarray(distances, float) / 2.0
    embeddings = np.zeros((2 * len(distances), 2))
    embeddings[0::2, 0] = 1.0
    embeddings[1::2, 0] = cosine
    embeddings[1::2, 1] = np.sqrt(1.0 - cosine ** 2)
    return embeddings


def assert_matches_reference(embeddings, issame, num_folds=10, **reference_options):
    expected = reference_evaluate(embeddings, issame, num_folds, **reference_options)
    result = verify(embeddings, issame, num_folds)
    np.testing.assert_array_equal(result.accuracy, expected["accuracy"])
    np.testing.assert_array_equal(result.best_thresholds, expected["best_thresholds"])
    np.testing.assert_allclose(result.tpr, expected["tpr"], rtol=0, atol=1e-9)
    np.testing.assert_allclose(result.fpr, expected["fpr"], rtol=0, atol=1e-9)
    np.testing.assert_allclose(result.val_thresholds, expected["val_thresholds"], rtol=0, atol=1e-9)
    for key in ("val", "val_std", "far"):
        assert getattr(result, key) == pytest.approx(expected[key], abs=1e-9), key
    assert result.auc == pytest.approx(sklearn_auc(expected["fpr"], expected["tpr"]), abs=1e-9)
    # The seed's tuple comes out of evaluate() unchanged.
    tpr, fpr, accuracy, val, val_std, far = evaluate(embeddings, issame, num_folds)
    np.testing.assert_array_equal(accuracy, result.accuracy)
    assert (val, val_std, far) == (result.val, result.val_std, result.far)
    np.testing.assert_array_equal(tpr, result.tpr)
    np.testing.assert_array_equal(fpr, result.fpr)
    return result


# --- Against the reference ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("num_pairs, noise", [(6000, 0.9), (1003, 0.6), (57, 1.2)])
def test_matches_the_reference_protocol(num_pairs, noise):
    embeddings, issame = noisy_pairs(num_pairs, noise=noise, seed=num_pairs)
    result = assert_matches_reference(embeddings, issame)
    assert 0.6 < result.accuracy_mean < 1.0  # a case where thresholds and VAL interpolation matter


def test_float32_embeddings_match_the_reference_computed_in_float32():
    embeddings, issame = noisy_pairs(2000, noise=0.8, seed=3)
    assert_matches_reference(embeddings.astype(np.float32), issame)


def test_val_threshold_equals_the_seeds_interp1d_where_far_strictly_increases():
    # One mismatched pair in the middle of every 0.001 step, in two different folds, so every training FAR
    # strictly increases over the 4,000 thresholds and today's interp1d(kind="slinear") applies unchanged.
    steps = (np.arange(4000) + 0.5) * 0.001
    rng = np.random.default_rng(0)
    per_fold = [np.concatenate([steps[f::5], rng.uniform(0, 0.5, 40)]) for f in range(5)] * 2
    labels = [np.r_[np.zeros(800, bool), np.ones(40, bool)] for _ in range(10)]
    distances, issame = np.concatenate(per_fold), np.concatenate(labels)
    embeddings = embeddings_at_distances(distances)
    result = assert_matches_reference(embeddings, issame, interpolate=current_interp1d)
    assert np.all(result.val_thresholds > 0)


def test_seed_era_emulation_on_a_hand_computed_case():
    # FAR 0, 0, 5e-4, 5e-4, 2e-3 at thresholds 0 .. 0.4: 1e-3 lies between the LAST threshold of the 5e-4 run (0.3)
    # and the first of the next run (0.4), a third of the way: 0.3 + 0.1 * (5e-4 / 1.5e-3).
    far = np.array([0.0, 0.0, 5e-4, 5e-4, 2e-3])
    assert seed_era_slinear(far, np.arange(5) * 0.1, 1e-3) == pytest.approx(0.3 + 0.1 / 3, abs=1e-12)
    # Exactly on a run: its last threshold.
    assert seed_era_slinear(far, np.arange(5) * 0.1, 5e-4) == pytest.approx(0.3, abs=1e-12)


def tie_heavy_far(rng, num_thresholds, num_negatives, step_probability):
    """A non-decreasing training FAR: k / num_negatives with k growing by 0 or 1 (mostly 0) per threshold."""
    counts = np.cumsum(rng.random(num_thresholds) < step_probability)
    return np.minimum(counts, num_negatives) / num_negatives


@pytest.mark.parametrize("seed", range(40))
def test_val_threshold_equals_the_seed_era_slinear_on_tie_heavy_far(seed):
    rng = np.random.default_rng(seed)
    num_negatives = int(rng.choice([1000, 2000, 2700, 5400, 12345]))  # 1000, 2000: FAR hits 1e-3 exactly
    far = tie_heavy_far(rng, 4000, num_negatives, step_probability=float(rng.choice([0.002, 0.01, 0.2, 0.9])))
    thresholds = verification.VAL_THRESHOLDS
    expected = seed_era_slinear(far, thresholds, 1e-3) if far.max() >= 1e-3 else 0.0
    assert verification._threshold_at_far(far, thresholds, 1e-3) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("num_pairs, levels, seed", [(600, 40, 0), (600, 400, 1), (6000, 400, 2), (6000, 4000, 3),
                                                     (1003, 25, 4)])
def test_val_at_far_matches_the_seed_era_protocol_on_tied_distances(num_pairs, levels, seed):
    # Distances rounded to `levels` values: many pairs share a distance, so the training FAR has long equal runs.
    embeddings, issame = noisy_pairs(num_pairs, noise=0.9, seed=seed)
    distances = np.round(np.sum((embeddings[0::2] - embeddings[1::2]) ** 2, 1) * levels / 4) * 4 / levels
    result = assert_matches_reference(embeddings_at_distances(distances), issame)
    assert np.all(result.val_thresholds > 0)


def test_val_at_far_unmeasurable_with_too_few_mismatched_pairs_is_flagged(caplog):
    # 600 pairs, 300 mismatched: 270 in the training folds of each fold, fewer than the 1,000 that FAR 1e-3 needs.
    embeddings, issame = noisy_pairs(600, noise=0.9, seed=11, issame=np.arange(600) % 2 == 0)
    with caplog.at_level(logging.WARNING, logger=verification.__name__):
        result = verify(embeddings, issame)
    assert not result.val_measurable and result.val_negatives_needed == 1000
    np.testing.assert_array_equal(result.val_training_negatives, np.full(10, 270))
    assert "VAL@FAR=0.001 cannot be measured" in caplog.text and "270 mismatched pairs" in caplog.text
    caplog.clear()
    # 20,000 pairs: 9,000 mismatched pairs in each fold's training folds, enough; no warning.
    embeddings, issame = noisy_pairs(20000, noise=0.9, seed=12, issame=np.arange(20000) % 2 == 0)
    with caplog.at_level(logging.WARNING, logger=verification.__name__):
        assert verify(embeddings, issame).val_measurable
    assert "cannot be measured" not in caplog.text


def test_single_class_folds_follow_the_guarded_reference_and_warn(caplog):
    # The fork's generator: all matched pairs first, then all mismatched: most folds hold one class.
    embeddings, issame = noisy_pairs(400, noise=0.7, seed=5, issame=np.r_[np.ones(200, bool), np.zeros(200, bool)])
    with caplog.at_level(logging.WARNING, logger=verification.__name__):
        assert_matches_reference(embeddings, issame)
    assert "single class" in caplog.text


def test_only_matched_pairs_give_zero_far_without_dividing_by_zero():
    embeddings, issame = noisy_pairs(100, noise=0.5, seed=6, issame=np.ones(100, bool))
    result = assert_matches_reference(embeddings, issame)
    assert result.far == 0.0 and np.all(result.val_thresholds == 0.0)


# --- Known cases -------------------------------------------------------------------------------------------------

def test_identical_matched_pairs_give_accuracy_one():
    embeddings, issame = noisy_pairs(600, noise=0.0, seed=1)
    result = verify(embeddings, issame)
    assert np.all(result.distances[issame] == 0.0)
    np.testing.assert_array_equal(result.accuracy, np.ones(10))
    assert result.auc == pytest.approx(1.0, abs=0.02)
    assert result.eer == pytest.approx(0.0, abs=0.01)


def test_separable_distances_give_accuracy_one_and_val_one():
    # 6,000 pairs: enough mismatched ones that FAR 1e-3 is a few pairs, so VAL is measured above the gap.
    rng = np.random.default_rng(2)
    issame = rng.random(6000) < 0.5
    distances = np.where(issame, rng.uniform(0.1, 0.9, 6000), rng.uniform(1.6, 3.0, 6000))
    result = verify(embeddings_at_distances(distances), issame)
    np.testing.assert_array_equal(result.accuracy, np.ones(10))
    # The first maximum: the smallest grid threshold above every matched distance.
    smallest_separating = np.arange(0, 4, 0.01)[np.arange(0, 4, 0.01) > distances[issame].max()][0]
    np.testing.assert_array_equal(result.best_thresholds, np.full(10, smallest_separating))
    assert result.val == 1.0 and result.far == pytest.approx(1e-3, abs=1e-3)
    assert np.all(result.val_thresholds > 1.6)
    assert result.eer == 0.0


def test_random_embeddings_give_chance_accuracy():
    rng = np.random.default_rng(4)
    embeddings = unit_rows(rng.normal(size=(12000, 128)))
    result = verify(embeddings, rng.random(6000) < 0.5)
    assert abs(result.accuracy_mean - 0.5) < 0.04
    assert abs(result.auc - 0.5) < 0.05
    assert abs(result.eer - 0.5) < 0.05


def test_predicted_same_uses_each_folds_threshold():
    embeddings, issame = noisy_pairs(300, noise=0.9, seed=8)
    result = verify(embeddings, issame)
    for fold, test_set in enumerate(fold_slices(300, 10)):
        expected = result.distances[test_set] < result.best_thresholds[fold]
        np.testing.assert_array_equal(result.predicted_same[test_set], expected)
        assert np.mean(expected == issame[test_set]) == result.accuracy[fold]


# --- Pieces --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("num_pairs, num_folds", [(6000, 10), (1003, 10), (10, 10), (17, 3)])
def test_folds_are_sklearns_unshuffled_kfold(num_pairs, num_folds):
    expected = [test for _, test in KFold(n_splits=num_folds, shuffle=False).split(np.arange(num_pairs))]
    got = [np.arange(num_pairs)[s] for s in fold_slices(num_pairs, num_folds)]
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        np.testing.assert_array_equal(g, e)


def test_equal_error_rate_matches_facenets_brentq_on_a_strictly_increasing_roc():
    fpr = np.array([0.0, 0.05, 0.1, 0.3, 0.6, 1.0])
    tpr = np.array([0.0, 0.5, 0.7, 0.8, 0.95, 1.0])
    expected = brentq(lambda x: 1.0 - x - interp1d(fpr, tpr)(x), 0.0, 1.0)
    assert equal_error_rate(fpr, tpr) == pytest.approx(expected, abs=1e-12)


def test_equal_error_rate_on_a_vertical_roc_segment_is_its_fpr():
    # TPR jumps from 0.2 to 0.9 at FPR 0.25: the line TPR = 1 - FPR is crossed at FPR 0.25 (0.75 lies in the jump).
    assert equal_error_rate(np.array([0.0, 0.25, 0.25, 1.0]), np.array([0.0, 0.2, 0.9, 1.0])) == 0.25


def test_bad_inputs_name_what_was_received():
    with pytest.raises(ValueError, match=r"\[2P, D\].*\(5, 4\)"):
        evaluate(np.ones((5, 4)), np.ones(2, bool))
    with pytest.raises(ValueError, match="one bool per pair: 20 pairs"):
        evaluate(unit_rows(np.ones((40, 4))), np.ones(19, bool))
    embeddings, issame = noisy_pairs(20, seed=9)
    embeddings[3] = np.nan
    with pytest.raises(ValueError, match="not finite"):
        evaluate(embeddings, issame)
    with pytest.raises(ValueError, match="one pair per fold"):
        evaluate(*noisy_pairs(5, seed=9))


# --- Embeddings, verification sets, reports (these import TensorFlow through data.preprocess) ---------------------

def projection_embed_fn(image_shape, dim=16, seed=0):
    """A fixed linear map of the pixels: embed_fn(normalised batch) = flatten(batch) @ W, in float64."""
    weights = np.random.default_rng(seed).normal(size=(int(np.prod(image_shape)), dim))
    return lambda batch: np.asarray(batch, np.float64).reshape(len(batch), -1) @ weights


def reference_embeddings(embed_fn, images, channel_order, flip):
    """float64 (x - 127.5) / 128 in the channel order, mirror = reversed width, then the flip combination."""
    def embed(rgb):
        x = rgb.astype(np.float64)
        x = x[..., ::-1] if channel_order == "BGR" else x
        return np.asarray(embed_fn((x - 127.5) / 128.0))

    plain = embed(images)
    mirrored = embed(images[:, :, ::-1, :])
    raw = [plain] if flip == "none" else [plain, mirrored]
    xnorm = np.mean(np.concatenate([np.linalg.norm(r, axis=1) for r in raw]))
    combined = {"none": plain, "sum": plain + mirrored,
                "concat": np.hstack([unit_rows(plain), unit_rows(mirrored)])}[flip]
    return unit_rows(combined), xnorm


@pytest.mark.parametrize("flip", ["sum", "none", "concat"])
@pytest.mark.parametrize("channel_order", ["BGR", "RGB"])
def test_compute_embeddings_matches_a_float64_reference(flip, channel_order):
    from eval.embeddings import compute_embeddings

    images = np.random.default_rng(1).integers(0, 256, (7, 5, 4, 3), dtype=np.uint8)
    embed_fn = projection_embed_fn(images.shape[1:])
    embeddings, xnorm = compute_embeddings(embed_fn, images, batch_size=3, preprocessing=channel_order, flip=flip)
    expected, expected_xnorm = reference_embeddings(embed_fn, images, channel_order, flip)
    assert embeddings.dtype == np.float64 and embeddings.shape == expected.shape
    np.testing.assert_allclose(embeddings, expected, rtol=0, atol=1e-10)
    assert xnorm == pytest.approx(expected_xnorm, rel=1e-12)


def test_compute_embeddings_rejects_bad_inputs_and_outputs():
    from eval.embeddings import compute_embeddings

    images = np.zeros((4, 3, 3, 3), np.uint8)
    with pytest.raises(ValueError, match="unknown flip 'mean'"):
        compute_embeddings(lambda b: np.ones((len(b), 2)), images, 2, flip="mean")
    with pytest.raises(ValueError, match=r"uint8 RGB \[N, H, W, 3\]; received float32"):
        compute_embeddings(lambda b: np.ones((len(b), 2)), images.astype(np.float32), 2)
    with pytest.raises(ValueError, match=r"returned shape \(1, 2\) for a batch of 2"):
        compute_embeddings(lambda b: np.ones((1, 2)), images, 2)
    with pytest.raises(ValueError, match="NaN or Inf for images 0..1"):
        compute_embeddings(lambda b: np.full((len(b), 2), np.nan), images, 2)


@pytest.mark.parametrize("channel_order", ["BGR", "RGB"])
def test_numpy_normalize_equals_the_tensorflow_normalize_of_training(channel_order):
    """The evaluator's numpy normalisation is the training pipeline's data.preprocess.normalize, and both are the
    float64 formula (x - 127.5) / 128 in the channel order, within float32 rounding."""
    from common.preprocessing import normalize
    from data.preprocess import normalize as tensorflow_normalize

    rng = np.random.default_rng(6)
    for images in (rng.integers(0, 256, (3, 5, 4, 3), dtype=np.uint8), rng.uniform(-20, 300, (2, 3, 3, 3))):
        ours = normalize(images, channel_order)
        assert ours.dtype == np.float32 and ours.shape == images.shape
        np.testing.assert_array_max_ulp(ours, tensorflow_normalize(images, channel_order).numpy(), maxulp=1)
        ordered = images[..., ::-1] if channel_order == "BGR" else images
        np.testing.assert_allclose(ours, (ordered.astype(np.float64) - 127.5) / 128.0, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="unknown channel_order 'BRG'"):
        normalize(np.zeros((1, 2, 2, 3), np.uint8), "BRG")


def test_every_eval_module_imports_without_tensorflow():
    """eval/ is numpy-only: in a fresh interpreter, importing all of its modules loads no TensorFlow."""
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    modules = sorted(f"eval.{path.stem}" for path in (repo / "eval").glob("*.py") if path.stem != "__init__")
    assert "eval.embeddings" in modules and "eval.sets" in modules
    script = ("import importlib, sys\n"
              f"for name in {modules!r}:\n"
              "    importlib.import_module(name)\n"
              "    assert 'tensorflow' not in sys.modules, name + ' imported TensorFlow'\n")
    result = subprocess.run([sys.executable, "-c", script], cwd=repo, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


def write_png(path, rgb):
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), rgb[:, :, ::-1])


@pytest.fixture
def identity_folder(tmp_path):
    """6 identities x 4 images of 10x8 pixels (identity = base colour, plus noise) and a 2-fold pairs file."""
    rng = np.random.default_rng(3)
    images = {}
    for identity in range(6):
        base = rng.integers(40, 216, 3)
        for k in range(4):
            rgb = np.clip(base + rng.normal(0, 12, (10, 8, 3)), 0, 255).astype(np.uint8)
            images[(f"p{identity}", f"{k}.png")] = rgb
            write_png(tmp_path / "faces" / f"p{identity}" / f"{k}.png", rgb)
    lines = ["2\t6"]
    for fold in range(2):
        lines += [f"p{(fold * 3 + k) % 6}\t{k % 4}.png\t{(k + 1) % 4}.png" for k in range(6)]
        lines += [f"p{(fold + k) % 6}\t{k % 4}.png\tp{(fold + k + 1) % 6}\t{(k + 2) % 4}.png" for k in range(6)]
    (tmp_path / "pairs.txt").write_text("\n".join(lines) + "\n")
    return tmp_path / "faces", tmp_path / "pairs.txt", images, lines[1:]


def test_load_pairs_set_reads_resizes_and_keeps_the_header_folds(identity_folder):
    from eval.sets import load_pairs_set

    data_dir, pairs_path, images, lines = identity_folder
    vset = load_pairs_set(data_dir, pairs_path, image_size=(12, 6))
    assert vset.name == "pairs" and vset.num_folds == 2 and vset.num_pairs == 24
    pair_keys = []
    for k, line in enumerate(lines):
        fields = line.split("\t")
        keys = [(fields[0], fields[1]), (fields[0], fields[2])] if len(fields) == 3 else \
            [(fields[0], fields[1]), (fields[2], fields[3])]
        assert vset.issame[k] == (len(fields) == 3)
        pair_keys.append(keys)
        for side, key in enumerate(keys):
            expected = cv2.resize(images[key], (6, 12), interpolation=cv2.INTER_LINEAR)
            np.testing.assert_array_equal(vset.images[vset.pair_rows[k, side]], expected)
            assert vset.pair_paths[2 * k + side] == str(data_dir / key[0] / key[1])
    # Each file is held once.
    distinct = {key for keys in pair_keys for key in keys}
    assert vset.images.shape == (len(distinct), 12, 6, 3) and vset.images.dtype == np.uint8
    assert sorted(vset.paths) == sorted(str(data_dir / name / file) for name, file in distinct)


def test_load_bin_set_reads_a_pickled_set(tmp_path):
    import pickle

    from eval.sets import load_bin_set

    rng = np.random.default_rng(4)
    rgb = rng.integers(0, 256, (4, 112, 112, 3), dtype=np.uint8)
    encoded = [cv2.imencode(".png", image[:, :, ::-1])[1].tobytes() for image in rgb]
    with open(tmp_path / "tiny.bin", "wb") as stream:  # InsightFace's layout: (list of encoded images, issame)
        pickle.dump((encoded, [True, False]), stream, protocol=2)
    vset = load_bin_set(tmp_path / "tiny.bin")
    assert vset.name == "tiny" and vset.issame.tolist() == [True, False]
    np.testing.assert_array_equal(vset.images, rgb)


def test_load_verification_sets_reads_the_bins_then_the_custom_set(identity_folder):
    import pickle

    from eval.sets import load_verification_sets

    data_dir, pairs_path, _, _ = identity_folder
    rgb = np.random.default_rng(5).integers(0, 256, (4, 10, 8, 3), dtype=np.uint8)
    bins = data_dir.parent / "bins"
    bins.mkdir()
    for name in ("lfw", "agedb_30"):
        with open(bins / f"{name}.bin", "wb") as stream:  # InsightFace's layout: (list of encoded images, issame)
            pickle.dump(([cv2.imencode(".png", image[:, :, ::-1])[1].tobytes() for image in rgb], [True, False]),
                        stream, protocol=2)
    sets = load_verification_sets(["agedb_30", "lfw"], bins, data_dir, pairs_path, image_size=10)
    assert [vset.name for vset in sets] == ["agedb_30", "lfw", "pairs"]
    assert [vset.images.shape[1:3] for vset in sets] == [(10, 10)] * 3
    assert sets[2].num_pairs == 24 and sets[2].num_folds == 2
    assert load_verification_sets([], bins, "", "", image_size=(10, 8)) == []
    for folder, pairs in ((data_dir, ""), ("", pairs_path)):
        with pytest.raises(ValueError, match="eval_dataset and eval_pair go together"):
            load_verification_sets(["lfw"], bins, folder, pairs, image_size=(10, 8))


def test_run_verification_logs_the_seed_lines_and_reports_the_protocol(identity_folder, caplog):
    from eval.sets import load_pairs_set, run_verification

    data_dir, pairs_path, _, _ = identity_folder
    vset = load_pairs_set(data_dir, pairs_path, image_size=(10, 8), name="tiny")
    embed_fn = projection_embed_fn((10, 8, 3), dim=8, seed=5)
    with caplog.at_level(logging.INFO):
        report = run_verification(embed_fn, vset, batch_size=5, preprocessing="BGR", step=7)
    embeddings, xnorm = reference_embeddings(embed_fn, vset.images[vset.pair_rows.reshape(-1)], "BGR", "sum")
    expected = verify(embeddings, vset.issame, num_folds=2)  # the header's 2 folds
    assert report["num_folds"] == 2 and report["xnorm"] == pytest.approx(xnorm, rel=1e-12)
    assert report["accuracy_mean"] == pytest.approx(expected.accuracy_mean, abs=1e-12)
    assert report["accuracy_std"] == pytest.approx(expected.accuracy_std, abs=1e-12)
    np.testing.assert_allclose(report["distances"], expected.distances, atol=1e-12)
    for key in ("val", "far", "auc"):
        assert report[key] == pytest.approx(getattr(expected, key), abs=1e-12)
    assert f"[tiny][7]XNorm: {xnorm:f}" in caplog.text
    assert f"[tiny][7]Accuracy-Flip: {expected.accuracy_mean:1.5f}+-{expected.accuracy_std:1.5f}" in caplog.text
    assert "[tiny][7]VAL@FAR=0.001:" in caplog.text and "[tiny][7]AUC:" in caplog.text
    # Hardest pairs: the closest mismatched and the farthest matched, in that order.
    distances, issame = np.asarray(report["distances"]), np.asarray(report["issame"])
    closest = np.sort(distances[~issame])[:len(report["hardest_false_matches"])]
    np.testing.assert_allclose([e["distance"] for e in report["hardest_false_matches"]], closest)
    farthest = np.sort(distances[issame])[::-1][:len(report["hardest_false_non_matches"])]
    np.testing.assert_allclose([e["distance"] for e in report["hardest_false_non_matches"]], farthest)
    first = report["hardest_false_matches"][0]
    assert first["paths"] == [vset.paths[row] for row in vset.pair_rows[first["pair"]]]


def test_report_files_are_strict_json_and_pictures(identity_folder, tmp_path):
    import json

    from eval.report import plot_roc, save_report_files
    from eval.sets import load_pairs_set, run_verification

    data_dir, pairs_path, _, _ = identity_folder
    vset = load_pairs_set(data_dir, pairs_path, image_size=(10, 8), name="tiny")
    report = run_verification(projection_embed_fn((10, 8, 3), dim=8), vset, batch_size=8, step="ckpt 3")
    paths = save_report_files(tmp_path / "out", vset, report)
    assert paths["json"].name == "tiny_ckpt_3.json"
    loaded = json.loads(paths["json"].read_text())
    assert loaded["accuracy_per_fold"] == report["accuracy_per_fold"] and loaded["step"] == "ckpt 3"
    assert loaded["roc"]["fpr"] == report["roc"]["fpr"]
    for key in ("roc", "hardest_pairs"):
        picture = cv2.imread(str(paths[key]))
        assert picture is not None and picture.shape[0] > 200 and picture.shape[1] > 400
    two_curves = plot_roc(tmp_path / "out" / "both.png", [report, dict(report, name="again")])
    assert cv2.imread(str(two_curves)) is not None


def test_report_gives_thresholds_as_cosines_of_the_compared_embeddings(identity_folder):
    from eval.sets import load_pairs_set, run_verification

    data_dir, pairs_path, _, _ = identity_folder
    vset = load_pairs_set(data_dir, pairs_path, image_size=(10, 8), name="tiny")
    embed_fn = projection_embed_fn((10, 8, 3), dim=8, seed=5)
    report = run_verification(embed_fn, vset, batch_size=5, preprocessing="BGR")
    embeddings, _ = reference_embeddings(embed_fn, vset.images[vset.pair_rows.reshape(-1)], "BGR", "sum")
    cosines = np.einsum("ij,ij->i", embeddings[0::2], embeddings[1::2])  # dot products of the flip-summed rows
    fold_of_pair = np.repeat([0, 1], 12)
    threshold_cosine = np.asarray(report["best_thresholds_cosine"])[fold_of_pair]
    # "same" by distance < threshold is "same" by cosine > the cosine threshold, pair by pair.
    np.testing.assert_array_equal(cosines > threshold_cosine,
                                  np.asarray(report["distances"]) < np.asarray(report["best_thresholds"])[fold_of_pair])
    for entry in report["hardest_false_matches"] + report["hardest_false_non_matches"]:
        assert entry["cosine"] == pytest.approx(cosines[entry["pair"]], abs=1e-12)
        assert entry["threshold_cosine"] == pytest.approx(threshold_cosine[entry["pair"]], abs=1e-12)
    np.testing.assert_allclose(report["roc"]["thresholds_cosine"], 1 - np.arange(0, 4, 0.01) / 2, atol=1e-12)
    np.testing.assert_allclose(report["val_thresholds_cosine"], 1 - np.asarray(report["val_thresholds"]) / 2,
                               atol=1e-12)
    # 12 mismatched pairs: 6 per training set, far fewer than the 1,000 VAL@FAR=1e-3 needs.
    assert report["val_measurable"] is False and report["val_training_negatives"] == [6, 6]


def drawn_hardest_pairs(monkeypatch, tmp_path, vset, report):
    """The figure plot_hardest_pairs saves: [(image array, title)] of every axes showing an image."""
    from eval import report as report_module

    saved = []
    original = report_module._save
    monkeypatch.setattr(report_module, "_save", lambda figure, path: saved.append(figure) or original(figure, path))
    report_module.plot_hardest_pairs(tmp_path / "hardest.png", vset, report)
    return [(axes.images[0].get_array(), axes.get_title()) for axes in saved[0].axes if axes.images]


def test_hardest_pairs_picture_shows_every_listed_pair_with_its_files(identity_folder, tmp_path, monkeypatch):
    from eval.sets import HARDEST_LISTED, load_pairs_set, run_verification

    data_dir, pairs_path, _, _ = identity_folder
    vset = load_pairs_set(data_dir, pairs_path, image_size=(10, 8), name="tiny")
    report = run_verification(projection_embed_fn((10, 8, 3), dim=8), vset, batch_size=8)
    entries = report["hardest_false_matches"] + report["hardest_false_non_matches"]
    assert len(entries) == 2 * HARDEST_LISTED
    drawn = drawn_hardest_pairs(monkeypatch, tmp_path, vset, report)
    assert len(drawn) == len(entries)
    for (image, title), entry in zip(drawn, entries):
        k = entry["pair"]
        first, second = vset.pair_rows[k]
        np.testing.assert_array_equal(image, np.hstack([vset.images[first], vset.images[second]]))
        assert f"d={entry['distance']:.3f}" in title
        for path in (vset.paths[first], vset.paths[second]):  # identity folder and file name of both images
            assert f"{Path(path).parent.name}/{Path(path).name}" in title


def test_hardest_pairs_picture_of_a_bin_set_names_image_indices(tmp_path, monkeypatch):
    from eval.sets import VerificationSet, run_verification

    images = np.random.default_rng(6).integers(0, 256, (48, 6, 5, 3), dtype=np.uint8)
    vset = VerificationSet("binset", images, np.arange(24) % 2 == 0)
    report = run_verification(projection_embed_fn((6, 5, 3), dim=8), vset, batch_size=16, num_folds=2)
    drawn = drawn_hardest_pairs(monkeypatch, tmp_path, vset, report)
    entries = report["hardest_false_matches"] + report["hardest_false_non_matches"]
    assert len(drawn) == len(entries) == 20
    for (_, title), entry in zip(drawn, entries):
        k = entry["pair"]
        assert f"image {2 * k}\n" in title and title.endswith(f"image {2 * k + 1}")
