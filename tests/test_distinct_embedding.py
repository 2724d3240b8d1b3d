"""Validation and evaluation speed: a verification set embeds each distinct image once and gives the numbers of
embedding every pair's two images; the console's samples/s and ETA leave validation time out."""

from __future__ import annotations

import math
import pickle
import re
import time

import cv2
import numpy as np
import pytest

from eval.verification import verify

IMAGE_SHAPE = (8, 6, 3)
IDENTITIES, IMAGES_PER_IDENTITY = 5, 3
PAIRS_PER_FOLD, NUM_FOLDS = 8, 2  # 32 pairs, 64 pair slots over at most 15 images: each image in several pairs


def _pair_layout(seed: int = 0) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """LFW layout: per fold PAIRS_PER_FOLD matched pairs, then as many mismatched; (identity, image) per side."""
    rng = np.random.default_rng(seed)
    pairs = []
    for _ in range(NUM_FOLDS):
        for _ in range(PAIRS_PER_FOLD):
            identity = int(rng.integers(IDENTITIES))
            first, second = rng.choice(IMAGES_PER_IDENTITY, 2, replace=False)
            pairs.append(((identity, int(first)), (identity, int(second))))
        for _ in range(PAIRS_PER_FOLD):
            one, other = rng.choice(IDENTITIES, 2, replace=False)
            pairs.append(((int(one), int(rng.integers(IMAGES_PER_IDENTITY))),
                          (int(other), int(rng.integers(IMAGES_PER_IDENTITY)))))
    return pairs


@pytest.fixture(scope="module")
def faces() -> dict[tuple[int, int], np.ndarray]:
    rng = np.random.default_rng(1)
    return {(i, j): rng.integers(0, 256, IMAGE_SHAPE, dtype=np.uint8)
            for i in range(IDENTITIES) for j in range(IMAGES_PER_IDENTITY)}


class CountingProjection:
    """embed_fn: a fixed float64 linear map of the normalised pixels, counting its calls and the rows it embeds."""

    def __init__(self, dim: int = 8, seed: int = 3) -> None:
        self.weights = np.random.default_rng(seed).normal(size=(int(np.prod(IMAGE_SHAPE)), dim))
        self.calls = self.rows = 0

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.calls += 1
        self.rows += len(batch)
        return np.asarray(batch, np.float64).reshape(len(batch), -1) @ self.weights


def per_pair_reference(weights: np.ndarray, pair_images: np.ndarray, flip: str) -> tuple[np.ndarray, float]:
    """The old computation, in float64: every pair's two images embedded (BGR, (x - 127.5) / 128, mirror = reversed
    width); XNorm = mean norm over all those embeddings."""
    def embed(rgb: np.ndarray) -> np.ndarray:
        x = (rgb[..., ::-1].astype(np.float64) - 127.5) / 128.0
        return x.reshape(len(x), -1) @ weights

    views = [embed(pair_images)] + ([] if flip == "none" else [embed(pair_images[:, :, ::-1])])
    combined = views[0] + views[1] if flip == "sum" else views[0]
    xnorm = float(np.mean(np.concatenate([np.linalg.norm(view, axis=1) for view in views])))
    return combined / np.linalg.norm(combined, axis=1, keepdims=True), xnorm


def assert_report_matches_the_per_pair_protocol(report: dict, embeddings: np.ndarray, issame: np.ndarray,
                                                xnorm: float, pair_paths: list[str] | None) -> None:
    expected = verify(embeddings, issame, NUM_FOLDS)
    assert report["num_pairs"] == len(issame) and report["xnorm"] == pytest.approx(xnorm, rel=1e-12)
    np.testing.assert_allclose(report["distances"], expected.distances, rtol=0, atol=1e-12)
    for key in ("accuracy_mean", "accuracy_std", "val", "far", "auc"):
        assert report[key] == pytest.approx(getattr(expected, key), abs=1e-12), key
    for key in ("accuracy", "best_thresholds", "val_thresholds", "tpr", "fpr"):
        report_key = {"accuracy": "accuracy_per_fold"}.get(key, key)
        actual = report["roc"][key] if key in ("tpr", "fpr") else report[report_key]
        np.testing.assert_allclose(actual, getattr(expected, key), rtol=0, atol=1e-12)
    # The hardest pairs, in the same order: the closest mismatched, the farthest matched, with their files.
    by_distance = np.argsort(expected.distances, kind="stable")
    closest = [int(k) for k in by_distance if not issame[k]][:len(report["hardest_false_matches"])]
    farthest = [int(k) for k in np.argsort(-expected.distances, kind="stable") if issame[k]]
    assert [entry["pair"] for entry in report["hardest_false_matches"]] == closest
    assert [entry["pair"] for entry in report["hardest_false_non_matches"]] == \
        farthest[:len(report["hardest_false_non_matches"])]
    for entry in report["hardest_false_matches"] + report["hardest_false_non_matches"]:
        k = entry["pair"]
        assert entry["images"] == [2 * k, 2 * k + 1]
        if pair_paths is None:
            assert "paths" not in entry
        else:
            assert entry["paths"] == pair_paths[2 * k: 2 * k + 2]


def test_a_pairs_file_set_embeds_each_file_once_and_reports_as_embedding_every_pair(faces, tmp_path):
    from eval.sets import load_pairs_set, run_verification

    layout = _pair_layout()
    lines = [f"{NUM_FOLDS}\t{PAIRS_PER_FOLD}"]
    for (one, first), (other, second) in layout:
        lines.append(f"p{one}\t{first}.png\t{second}.png" if one == other else
                     f"p{one}\t{first}.png\tp{other}\t{second}.png")
    for (identity, image), pixels in faces.items():
        (tmp_path / f"p{identity}").mkdir(exist_ok=True)
        cv2.imwrite(str(tmp_path / f"p{identity}" / f"{image}.png"), pixels[:, :, ::-1])
    (tmp_path / "pairs.txt").write_text("\n".join(lines) + "\n")

    vset = load_pairs_set(tmp_path, tmp_path / "pairs.txt", image_size=IMAGE_SHAPE[:2])
    used = {key for pair in layout for key in pair}
    assert vset.images.shape == (len(used), *IMAGE_SHAPE) and len(used) < 2 * len(layout)  # only distinct kept
    embed_fn = CountingProjection()
    report = run_verification(embed_fn, vset, batch_size=4, preprocessing="BGR", step=1)
    assert embed_fn.rows == 2 * len(used) and embed_fn.calls == 2 * math.ceil(len(used) / 4)  # image + mirror

    pair_images = np.stack([faces[key] for pair in layout for key in pair])
    embeddings, xnorm = per_pair_reference(embed_fn.weights, pair_images, "sum")
    pair_paths = [str(tmp_path / f"p{identity}" / f"{image}.png") for pair in layout for identity, image in pair]
    issame = np.array([one[0] == other[0] for one, other in layout])
    assert_report_matches_the_per_pair_protocol(report, embeddings, issame, xnorm, pair_paths)
    # XNorm weighs an image by its pairs: the plain mean over the distinct images is another number.
    _, distinct_xnorm = per_pair_reference(embed_fn.weights, vset.images, "sum")
    assert abs(distinct_xnorm - xnorm) > 1e-6


def test_a_bin_set_decodes_and_embeds_identical_encoded_images_once(faces, tmp_path):
    from eval.sets import load_bin_set, run_verification

    layout = _pair_layout(seed=2)
    encoded = {key: cv2.imencode(".png", pixels[:, :, ::-1])[1].tobytes() for key, pixels in faces.items()}
    issame = [one[0] == other[0] for one, other in layout]
    # Each pair slot gets its own bytes object, as a file written per pair holds them.
    stored = [bytes(bytearray(encoded[key])) for pair in layout for key in pair]
    with open(tmp_path / "set.bin", "wb") as stream:
        pickle.dump((stored, issame), stream, protocol=4)

    vset = load_bin_set(tmp_path / "set.bin", image_size=IMAGE_SHAPE[:2])
    used = list(dict.fromkeys(key for pair in layout for key in pair))  # first-appearance order
    np.testing.assert_array_equal(vset.images, np.stack([faces[key] for key in used]))
    assert vset.paths is None and vset.pair_counts.sum() == 2 * len(layout)
    embed_fn = CountingProjection(seed=4)
    report = run_verification(embed_fn, vset, batch_size=5, preprocessing="BGR", flip="none", num_folds=NUM_FOLDS)
    assert embed_fn.rows == len(used)  # flip "none": each distinct image once, no mirror

    embeddings, xnorm = per_pair_reference(embed_fn.weights, np.stack([faces[k] for p in layout for k in p]), "none")
    assert_report_matches_the_per_pair_protocol(report, embeddings, np.array(issame), xnorm, None)


def test_load_bin_still_gives_the_stored_layout(faces, tmp_path):
    from data.bin_dataset import load_bin

    keys = [(0, 0), (1, 2), (0, 0), (0, 1)]
    with open(tmp_path / "set.bin", "wb") as stream:
        pickle.dump(([cv2.imencode(".png", faces[key][:, :, ::-1])[1].tobytes() for key in keys], [False, True]),
                    stream, protocol=4)
    images, issame = load_bin(tmp_path / "set.bin", None)
    np.testing.assert_array_equal(images, np.stack([faces[key] for key in keys]))
    assert issame.tolist() == [False, True]


def test_pair_rows_that_are_not_rows_of_the_images_are_refused():
    from eval.sets import VerificationSet

    images = np.zeros((3, *IMAGE_SHAPE), np.uint8)
    with pytest.raises(ValueError, match=r"tiny: pair_rows must be integer \[2, 2\] rows of the 3 images"):
        VerificationSet("tiny", images, [True, False], pair_rows=np.array([[0, 1], [2, 3]]))
    with pytest.raises(ValueError, match=r"tiny: 3 images for 2 pairs; expected 2 images per pair, or pair_rows"):
        VerificationSet("tiny", images, [True, False])


# --- train_nets.py: the console rate leaves validation out --------------------------------------------------------

SLEEP_SECONDS = 1.5
BATCH = 8


def test_time_in_a_pause_is_left_out_of_samples_per_sec_and_of_the_bar():
    import io

    import train_nets

    bar = train_nets.tqdm(total=10, file=io.StringIO(), mininterval=0, miniters=1)
    created = bar._time()
    rate = train_nets._SampleRate(0, bar)
    bar.update(1)
    with rate.paused():
        time.sleep(SLEEP_SECONDS / 5)
    bar.update(1)
    # Counting the pause would give at most 2 steps of BATCH over the sleep.
    assert rate.read(2, BATCH) > 2 * BATCH / (SLEEP_SECONDS / 5)
    assert bar.format_dict["elapsed"] <= bar._time() - created - SLEEP_SECONDS / 5
    bar.close()


@pytest.mark.slow  # a short training run: 10-50 s
def test_samples_per_sec_and_the_bar_leave_a_slow_validation_out(tmp_path, monkeypatch, caplog):
    import generate_pairs
    import train_nets
    from data import synthetic
    from training import validation

    # 32 images: the 4 steps are one epoch (a new epoch's first step is slow, and step 3 must be a plain one).
    synthetic.generate(tmp_path / "faces", num_identities=4, images_per_identity=8, seed=0, image_size=16)
    generate_pairs.main(generate_pairs.Args(data_dir=str(tmp_path / "faces"), pairs_filepath=str(tmp_path / "p.txt"),
                                            num_folds=2, pairs_per_fold=2, seed=0))

    def slow_validation(model, sets, **_):
        time.sleep(SLEEP_SECONDS)
        return {vset.name: {"accuracy_mean": -1.0, "val": 0.0, "auc": 0.5, "eer": None, "xnorm": 1.0}
                for vset in sets}

    bars = []

    class RecordingBar(train_nets.tqdm):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.created, self.lifetime, self.elapsed = self._time(), None, None
            bars.append(self)

        def close(self):
            if self.elapsed is None:
                self.elapsed, self.lifetime = self._time() - self.start_t, self._time() - self.created
            super().close()

    monkeypatch.setattr(validation, "validate", slow_validation)
    monkeypatch.setattr(train_nets, "tqdm", RecordingBar)
    args = train_nets.Args.from_cli([
        "--net_depth=18", "--image_size=[16,16]", "--embedding_size=16", f"--batch_size={BATCH}",
        "--show_info_interval=1", "--summary_interval=100", "--max_steps=4", "--ckpt_interval=0",
        "--validate_interval=2", f"--train_dataset_dir={tmp_path / 'faces'}", f"--eval_dataset={tmp_path / 'faces'}",
        f"--eval_pair={tmp_path / 'p.txt'}", f"--ckpt_path={tmp_path}/ckpt", f"--summary_path={tmp_path}/summary",
        f"--log_file_path={tmp_path}/logs"])
    with caplog.at_level("INFO", logger="train_nets"):
        train_nets.train(args)
    rates = {int(step): float(rate) for step, rate in
             re.findall(r"total_step (\d+), .*?, ([0-9.]+) samples/sec", caplog.text)}
    assert sorted(rates) == [1, 2, 3, 4]
    # Step 3's window starts after the validation of step 2: counting the sleep would give under BATCH / SLEEP.
    assert rates[3] > BATCH / SLEEP_SECONDS
    # The validations of steps 2 and 4 ran while the bar was open, and its clock (rate, ETA) left them out.
    (bar,) = bars
    assert bar.elapsed <= bar.lifetime - 2 * SLEEP_SECONDS + 0.05
