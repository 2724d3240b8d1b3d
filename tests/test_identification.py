"""1:N identification (eval.identification, identify.py): the metrics against a brute-force loop and a hand-computed
example, the split, the report and CMC plot, and the command on a folder with a .keras model."""

from __future__ import annotations

import json
import math
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from eval.identification import (GalleryProbeSplit, evaluate_identification, identification_report,
                                 split_gallery_probes)
from eval.report import plot_cmc, write_json_report
from strict_json import load_strict_json

REPO = Path(__file__).resolve().parents[1]


def unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def clustered_embeddings(num_identities: int, per_identity: int, spread: float, seed: int):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(num_identities, 12))
    labels = np.repeat([f"id{k:02d}" for k in range(num_identities)], per_identity)
    rows = centres[np.repeat(np.arange(num_identities), per_identity)] + spread * rng.normal(size=(len(labels), 12))
    return unit(rows), labels


def brute_force(embeddings, labels, split, fpir_targets, max_rank):
    """The protocol of eval.identification's docstring written as plain loops, sharing no code with it."""
    gallery_ids = sorted({labels[g] for g in split.gallery})
    mated, non_mated = [], []
    for p in split.probes:
        score = {}
        for identity in gallery_ids:
            score[identity] = max(float(np.dot(embeddings[p], embeddings[g])) for g in split.gallery
                                  if labels[g] == identity)
        best = max(score.values())
        if labels[p] in score:
            own = score[labels[p]]
            rank = 1 + sum(1 for identity, value in score.items() if identity != labels[p] and value >= own)
            mated.append((rank, own))
        else:
            non_mated.append(best)
    cmc = [sum(1 for rank, _ in mated if rank <= k) / len(mated) for k in range(1, max_rank + 1)]
    points = []
    for target in fpir_targets:
        ordered = sorted(non_mated, reverse=True)
        allowed = min(int(math.floor(target * len(ordered) + 1e-9)), len(ordered) - 1)
        threshold = ordered[allowed]
        tpir = sum(1 for rank, own in mated if rank == 1 and own > threshold) / len(mated)
        fpir = sum(1 for value in non_mated if value > threshold) / len(non_mated)
        points.append((threshold, fpir, tpir))
    return [rank for rank, _ in mated], cmc, points


@pytest.mark.parametrize("seed, gallery_per_identity", [(0, 1), (1, 2), (2, 3)])
def test_metrics_equal_a_brute_force_loop_on_random_embeddings(seed, gallery_per_identity):
    embeddings, labels = clustered_embeddings(25, 6, spread=1.2, seed=seed)
    split = split_gallery_probes(labels, gallery_per_identity, left_out_fraction=0.4, seed=seed)
    result = evaluate_identification(embeddings, labels, split, fpir_targets=(0.05, 0.2), max_rank=10)
    ranks, cmc, points = brute_force(embeddings, labels, split, (0.05, 0.2), 10)
    assert result.ranks.tolist() == ranks
    assert 0.1 < result.rank_accuracy(1) < 1.0  # neither trivial nor hopeless: the loop really compares ranks
    np.testing.assert_allclose(result.cmc, cmc)
    for point, (threshold, fpir, tpir) in zip(result.open_set, points):
        assert point["threshold"] == pytest.approx(threshold) and point["fpir"] == pytest.approx(fpir)
        assert point["tpir"] == pytest.approx(tpir)
    assert result.rank_accuracy(5) == pytest.approx(cmc[4])


def test_separable_embeddings_give_rank_1_of_one_and_the_cmc_never_decreases():
    embeddings, labels = clustered_embeddings(12, 4, spread=0.01, seed=3)
    result = evaluate_identification(embeddings, labels, split_gallery_probes(labels, 1, 0.25, seed=0))
    assert result.rank_accuracy(1) == 1.0 and np.all(result.cmc == 1.0)
    noisy, noisy_labels = clustered_embeddings(12, 4, spread=3.0, seed=3)
    cmc = evaluate_identification(noisy, noisy_labels, split_gallery_probes(noisy_labels, 1, 0.0, seed=0),
                                  max_rank=12).cmc
    assert np.all(np.diff(cmc) >= 0) and cmc[0] < 1.0 and cmc[-1] == 1.0  # 9 gallery identities: rank <= 9 <= 12


def test_ties_count_against_the_probe():
    labels = np.repeat(["a", "b", "c"], 2)
    constant = np.tile([[1.0, 0.0]], (6, 1))  # a network that maps every face to one vector
    result = evaluate_identification(constant, labels, split_gallery_probes(labels, 1, 0.0, seed=0))
    assert result.ranks.tolist() == [3, 3, 3] and result.rank_accuracy(1) == 0.0


def _at(cos_a: float, cos_b: float = 0.0) -> list[float]:
    return [cos_a, cos_b, math.sqrt(1.0 - cos_a ** 2 - cos_b ** 2)]


def test_tpir_at_fpir_on_a_hand_computed_example():
    """Gallery: A = e1, B = e2. Ten non-mated probes (X) with top-1 scores 0.9, 0.8, ..., 0.0. Mated probes of A with
    scores 0.95, 0.85, 0.75, 0.81 and one closer to B (A 0.55, B 0.83: rank 2). FPIR 0.1 of 10 allows one false
    positive: t = 0.8 (the 2nd highest), TPIR = 3/5 (0.95, 0.85, 0.81; the B-ranked one does not count although its
    top-1 score is above t). FPIR 0.01 allows none: t = 0.9, TPIR = 1/5, not measurable. FPIR 0.25 allows two:
    t = 0.7, TPIR = 4/5."""
    non_mated = [_at(s) for s in np.arange(0.9, -0.05, -0.1)]
    mated = [_at(0.95), _at(0.85), _at(0.75), _at(0.81), _at(0.55, 0.83)]
    embeddings = np.array([[1.0, 0, 0], [0, 1.0, 0], *non_mated, *mated])
    labels = ["A", "B"] + ["X"] * 10 + ["A"] * 5
    split = GalleryProbeSplit(np.array([0, 1]), np.arange(2, 17), ["X"])
    result = evaluate_identification(embeddings, labels, split, fpir_targets=(0.01, 0.1, 0.25))
    assert result.ranks.tolist() == [1, 1, 1, 1, 2] and result.rank_accuracy(1) == pytest.approx(0.8)
    low, middle, high = result.open_set
    assert (low["threshold"], low["fpir"], low["tpir"], low["measurable"]) == (pytest.approx(0.9), 0.0, 0.2, False)
    assert (middle["threshold"], middle["fpir"], middle["tpir"]) == (pytest.approx(0.8), 0.1, 0.6)
    assert middle["measurable"] and (high["threshold"], high["fpir"], high["tpir"]) == (pytest.approx(0.7), 0.2, 0.8)
    assert result.mated_top1_identities.tolist() == ["A", "A", "A", "A", "B"]


def test_the_split_is_seeded_disjoint_complete_and_leaves_identities_out():
    labels = np.repeat([f"p{k}" for k in range(20)], 5)
    split = split_gallery_probes(labels, gallery_per_identity=2, left_out_fraction=0.25, seed=7)
    assert len(split.left_out_identities) == 5
    assert sorted([*split.gallery, *split.probes]) == list(range(100))
    gallery_labels = labels[split.gallery]
    assert not set(gallery_labels) & set(split.left_out_identities)
    assert all(np.sum(gallery_labels == identity) == 2 for identity in set(labels) - set(split.left_out_identities))
    again = split_gallery_probes(labels, 2, 0.25, seed=7)
    assert np.array_equal(again.gallery, split.gallery) and again.left_out_identities == split.left_out_identities
    assert not np.array_equal(split_gallery_probes(labels, 2, 0.25, seed=8).gallery, split.gallery)
    with pytest.raises(ValueError, match="left_out_fraction"):
        split_gallery_probes(labels, 1, 1.0)


def test_the_report_is_strict_json_and_the_cmc_plot_is_written(tmp_path):
    embeddings, labels = clustered_embeddings(8, 3, spread=1.0, seed=0)
    result = evaluate_identification(embeddings, labels, split_gallery_probes(labels, 1, 0.25, seed=0))
    paths = [f"folder/{label}/{k}.png" for k, label in enumerate(labels)]
    report = identification_report(result, "toy", paths, labels)
    write_json_report(tmp_path / "report.json", report)
    saved = load_strict_json(tmp_path / "report.json")
    assert saved["rank_1"] == result.rank_accuracy(1) and len(saved["cmc"]["identification_rate"]) == 20
    assert saved["num_mated_probes"] + saved["num_non_mated_probes"] == len(labels) - saved["num_gallery_images"]
    assert saved["mated_probes"]["paths"][0] == paths[saved["mated_probes"]["rows"][0]]
    assert plot_cmc(tmp_path / "cmc.png", [report]).stat().st_size > 1000


def reference_embeddings(model_path: Path, paths: list[str], size: int) -> np.ndarray:
    """cv2 read + resize, the seed's BGR (x - 127.5) / 128, the model on the image and its mirror, sum, L2."""
    import cv2
    import keras

    model = keras.saving.load_model(model_path, compile=False)
    rgb = np.stack([cv2.resize(cv2.imread(p)[:, :, ::-1], (size, size), interpolation=cv2.INTER_LINEAR)
                    for p in paths]).astype(np.float64)
    x = ((rgb[..., ::-1] - 127.5) / 128.0).astype(np.float32)
    summed = np.asarray(model(x, training=False), np.float64) + np.asarray(model(x[:, :, ::-1], training=False),
                                                                            np.float64)
    return unit(summed)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    from nets import get_resnet

    path = tmp_path_factory.mktemp("model") / "tiny.keras"
    get_resnet(18, image_size=32, embedding_size=16, seed=0).save(path)
    return path


@pytest.mark.slow
def test_identify_command_on_a_folder_equals_the_protocol_on_reference_embeddings(tiny_model, tmp_path):
    from data import synthetic

    faces = synthetic.generate(tmp_path / "faces", 10, 4, seed=5, image_size=40)  # not 32: resized (aligned)
    command = (f"{shlex.quote(sys.executable)} identify.py --input_model={tiny_model} --data_dir={faces} "
               f"--aligned=True --left_out_fraction=0.3 --seed=1 --output_dir={tmp_path / 'out'}")
    done = subprocess.run(shlex.split(command), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "rank-1:" in done.stderr and "TPIR@FPIR=0.1:" in done.stderr
    report = load_strict_json(tmp_path / "out" / "report.json")
    assert (tmp_path / "out" / "cmc.png").stat().st_size > 1000
    assert report["channel_order"] == "BGR" and report["flip"] == "sum" and len(report["left_out_identities"]) == 3
    paths = sorted(str(p) for p in Path(faces).glob("*/*.jpg"))
    labels = [Path(p).parent.name for p in paths]
    embeddings = reference_embeddings(tiny_model, paths, 32)
    split = split_gallery_probes(labels, 1, 0.3, seed=1)
    ranks, cmc, points = brute_force(embeddings, labels, split, (0.01, 0.1), 20)
    assert report["mated_probes"]["rank"] == ranks
    np.testing.assert_allclose(report["cmc"]["identification_rate"], cmc)
    np.testing.assert_allclose([p["tpir"] for p in report["open_set"]], [tpir for _, _, tpir in points])
    np.testing.assert_allclose([p["threshold"] for p in report["open_set"]], [t for t, _, _ in points], atol=1e-5)


def test_identify_needs_one_source_of_embeddings(tmp_path):
    import identify

    with pytest.raises(ValueError, match="data_dir .* or embeddings_file"):
        identify.identify(identify.Args(output_dir=str(tmp_path)))


def test_real_faces_orl_rank_1_of_a_random_network(orl_faces, tiny_model, tmp_path):
    """ORL (40 people x 10 grey 92x112 crops), resized to 32x32 (aligned), 1 gallery image per person, 20% of the people
    left out. Even a random IR-ResNet ranks the right person first well above chance (1/32)."""
    import identify

    report = identify.identify(identify.Args(input_model=str(tiny_model), data_dir=str(orl_faces), aligned=True,
                                             output_dir=str(tmp_path)))
    assert report["num_gallery_identities"] == 32 and report["num_mated_probes"] == 32 * 9
    assert report["num_non_mated_probes"] == 80
    assert report["rank_1"] > 0.25 and report["rank_5"] >= report["rank_1"]  # measured 0.354, rank-5 0.642
    json.dumps(report, allow_nan=False)
