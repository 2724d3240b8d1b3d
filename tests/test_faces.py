"""The faces API and recognize.py: embed a folder (bad images skipped and listed), the alignment of photos not at the
model's size, compare at the pairs protocol's threshold, search, the embeddings file, and the command's three jobs."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

import eval_ckpt_file
import generate_pairs
from align.detector import Face
from align.warp import template_for_size
from data import synthetic
from eval.verification import fold_slices
from faces import (FaceEmbedder, FaceEmbeddings, compare_embeddings, list_face_images, search,
                   threshold_from_report)

REPO = Path(__file__).resolve().parents[1]
SIZE = 32


class FixedDetector:
    """A stand-in for MTCNN: the faces it is given, for every image; counts its calls."""

    def __init__(self, faces: list[Face]) -> None:
        self.faces = faces
        self.calls = 0

    def detect(self, rgb: np.ndarray) -> list[Face]:
        self.calls += 1
        return self.faces


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    from nets import get_resnet

    path = tmp_path_factory.mktemp("model") / "tiny.keras"
    get_resnet(18, image_size=SIZE, embedding_size=16, seed=0).save(path)
    return path


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    return synthetic.generate(tmp_path_factory.mktemp("faces") / "faces", 5, 4, seed=2, image_size=SIZE)


def reference_embedding(model_path: Path, rgb: np.ndarray) -> np.ndarray:
    """The seed's BGR (x - 127.5) / 128, the model on the image and its mirror, summed, L2-normalised."""
    import keras

    model = keras.saving.load_model(model_path, compile=False)
    x = ((rgb[None, :, :, ::-1].astype(np.float64) - 127.5) / 128.0).astype(np.float32)
    summed = np.asarray(model(x, training=False), np.float64) + np.asarray(model(x[:, :, ::-1], training=False),
                                                                            np.float64)
    return summed[0] / np.linalg.norm(summed[0])


def test_embed_a_folder_writes_the_file_and_lists_the_bad_images(tiny_model, photos, tmp_path):
    folder = tmp_path / "mixed"
    for source in sorted(photos.glob("*/*.jpg")):
        (folder / source.parent.name).mkdir(parents=True, exist_ok=True)
        (folder / source.parent.name / source.name).write_bytes(source.read_bytes())
    (folder / "id_00000" / "broken.jpg").write_bytes(b"not a jpeg at all")
    cv2.imwrite(str(folder / "id_00001" / "large.png"), np.full((80, 60, 3), 128, np.uint8))  # no face there
    embedder = FaceEmbedder.load(tiny_model, detector=FixedDetector([]))
    result = embedder.embed_folder(folder)
    assert [Path(path).name for path, _ in result.skipped] == ["broken.jpg", "large.png"]
    assert "no face detected" in result.skipped[1][1] and "broken.jpg" in result.skipped[0][1]
    assert len(result.paths) == 20 and result.labels[:4] == ["id_00000"] * 4
    result.save(tmp_path / "gallery.npz")
    saved = FaceEmbeddings.load(tmp_path / "gallery.npz")
    assert saved.embeddings.dtype == np.float32 and saved.embeddings.shape == (20, 16)
    np.testing.assert_allclose(np.linalg.norm(saved.embeddings, axis=1), 1.0, rtol=1e-6)
    assert (saved.paths, saved.labels, saved.skipped) == (result.paths, result.labels, result.skipped)
    assert (saved.source, saved.channel_order, saved.flip) == (str(tiny_model), "BGR", "sum")
    expected = reference_embedding(tiny_model, cv2.imread(saved.paths[5])[:, :, ::-1])
    np.testing.assert_allclose(saved.embeddings[5], expected, atol=1e-5)


def test_a_photo_not_at_the_input_size_is_warped_onto_the_template(tiny_model, photos):
    """A 32x32 face scaled by 2.5 and shifted into a 120x100 photo; the detector reports the template points moved the
    same way: the crop must give back the face (up to resampling), and `aligned` must instead only resize."""
    face = cv2.imread(str(sorted(photos.glob("*/*.jpg"))[0]))[:, :, ::-1]
    scale, shift = 2.5, np.array([14.0, 25.0])
    photo = np.zeros((120, 100, 3), np.uint8)
    photo[25:105, 14:94] = cv2.resize(face, (80, 80), interpolation=cv2.INTER_CUBIC)
    # cv2.resize maps pixel centre x to s x + (s - 1) / 2
    landmarks = template_for_size(SIZE) * scale + shift + (scale - 1) / 2
    detector = FixedDetector([Face(np.array([14.0, 25, 94, 105]), 0.99, landmarks)])
    embedder = FaceEmbedder.load(tiny_model, detector=detector)
    with_path = Path(photos).parent / "photo.png"
    cv2.imwrite(str(with_path), photo[:, :, ::-1])
    crop = embedder.crop(with_path)
    assert crop.shape == (SIZE, SIZE, 3) and detector.calls == 1
    # Measured 0.66; landmarks 1.5 px off give 13.5, unscaled ones 41, a plain resize 68.
    assert np.abs(crop.astype(float) - face).mean() < 2.0
    resized = FaceEmbedder.load(tiny_model, aligned=True, detector=detector).crop(with_path)
    assert detector.calls == 1 and np.array_equal(resized, cv2.resize(photo, (SIZE, SIZE)))


def test_a_flat_folder_makes_each_photo_its_own_identity(photos, tmp_path):
    for k, source in enumerate(sorted(photos.glob("id_00002/*.jpg"))):
        (tmp_path / f"person_{k}.jpg").write_bytes(source.read_bytes())
    paths, labels = list_face_images(tmp_path)
    assert labels == ["person_0", "person_1", "person_2", "person_3"] and paths[0].endswith("person_0.jpg")


def test_compare_decides_as_the_pairs_protocol_at_its_threshold(tiny_model, photos, tmp_path):
    generate_pairs.main(generate_pairs.Args(data_dir=str(photos), pairs_filepath=str(tmp_path / "pairs.txt"),
                                            num_folds=3, pairs_per_fold=4, seed=0))
    report = eval_ckpt_file.evaluate_checkpoints(eval_ckpt_file.Args(
        ckpt_file=str(tiny_model), ckpt_index_list=[], eval_dataset=str(photos), eval_pair=str(tmp_path / "pairs.txt"),
        output_dir=str(tmp_path / "eval")))[0]
    chosen = threshold_from_report(tmp_path / "eval" / "report.json")
    assert chosen.threshold == pytest.approx(np.mean(report["best_thresholds"])) and chosen.flip == "sum"
    assert chosen.threshold_cosine == pytest.approx(1 - chosen.threshold / 2)
    embedder = FaceEmbedder.load(tiny_model)
    folds = fold_slices(report["num_pairs"], report["num_folds"])
    false_matches = 0
    for fold, pairs in enumerate(folds):
        for k in range(pairs.start, pairs.stop):
            first, second = (embedder.embed_photo(path) for path in pair_paths(tmp_path / "pairs.txt", photos, k))
            result = compare_embeddings(first, second, report["best_thresholds"][fold])
            assert result.distance == pytest.approx(report["distances"][k], abs=1e-5)
            assert result.cosine == pytest.approx(1 - result.distance / 2)
            assert result.same == (result.distance < result.threshold) == (result.cosine > result.threshold_cosine)
            false_matches += result.same and not report["issame"][k]
    assert false_matches == report["false_matches"]


def pair_paths(pairs_path: Path, data_dir: Path, pair: int) -> list[str]:
    """The two image files of pair `pair` of a pairs file."""
    from eval.pairs import read_pairs, resolve_pair_paths

    resolved = resolve_pair_paths(read_pairs(pairs_path).pairs, data_dir)
    return [str(resolved.paths[2 * pair]), str(resolved.paths[2 * pair + 1])]


def test_a_report_of_several_sets_needs_the_set_named(tmp_path):
    entries = [{"name": "lfw", "checkpoint": "m", "best_thresholds": [1.0, 1.2]},
               {"name": "pairs", "checkpoint": "m", "best_thresholds": [0.5, 0.7]}]
    (tmp_path / "report.json").write_text(json.dumps(entries))
    with pytest.raises(ValueError, match=r"lfw \(m\), pairs \(m\)"):
        threshold_from_report(tmp_path / "report.json")
    assert threshold_from_report(tmp_path / "report.json", "pairs").threshold == pytest.approx(0.6)


def test_search_ranks_the_probe_s_own_identity_first_with_best_scores(tiny_model, photos):
    embedder = FaceEmbedder.load(tiny_model)
    gallery = embedder.embed_folder(photos)
    probe_row = 9  # id_00002's second photo: its identity's gallery holds it
    matches = search(gallery.embeddings[probe_row], gallery, top_k=3)
    assert matches[0].identity == gallery.labels[probe_row] and matches[0].path == gallery.paths[probe_row]
    assert matches[0].score == pytest.approx(1.0, abs=1e-5) and len(matches) == 3
    labels = np.array(gallery.labels)
    for match in matches:  # each identity's best image, brute force
        best = max(float(gallery.embeddings[row] @ gallery.embeddings[probe_row])
                   for row in np.flatnonzero(labels == match.identity))
        assert match.score == pytest.approx(best, abs=1e-6)
    assert [m.score for m in matches] == sorted((m.score for m in matches), reverse=True)


def test_an_embeddings_file_is_read_without_pickle_or_refused_by_name(tmp_path):
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object))
    (tmp_path / "objects.npz").write_bytes((tmp_path / "objects.npy").read_bytes())
    with pytest.raises(ValueError, match="objects.npz: cannot read it as an embeddings file"):
        FaceEmbeddings.load(tmp_path / "objects.npz")
    np.savez(tmp_path / "other.npz", embeddings=np.zeros((1, 4)))
    with pytest.raises(ValueError, match="not an embeddings file of this toolkit"):
        FaceEmbeddings.load(tmp_path / "other.npz")


def _recognize(command: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *shlex.split(command)], cwd=REPO, capture_output=True, text=True,
                          timeout=300)


def test_recognize_jobs_embed_search_compare(tiny_model, photos, tmp_path, caplog):
    import recognize

    common = dict(input_model=str(tiny_model), embeddings_file=str(tmp_path / "gallery.npz"))
    caplog.set_level("INFO")
    recognize.main(recognize.Args(job="embed", input_dir=str(photos), **common))
    probe = sorted(photos.glob("id_00003/*.jpg"))[1]
    matches = recognize.main(recognize.Args(job="search", probe=str(probe), gallery=str(tmp_path / "gallery.npz"),
                                            top_k=2, **common))
    assert matches[0].identity == "id_00003" and f"1. id_00003  cosine 1.0000  ({probe})" in caplog.text
    assert "scores across models" not in caplog.text
    first, second = sorted(photos.glob("id_00001/*.jpg"))[:2]
    result = recognize.main(recognize.Args(job="compare", first_photo=str(first), second_photo=str(second),
                                           threshold=1.5, **common))
    assert result.threshold == 1.5 and result.threshold_cosine == pytest.approx(0.25)
    assert result.same == (result.distance < 1.5)
    assert f"threshold 1.5000 (cosine {result.cosine:.4f}" in caplog.text


def test_recognize_command_names_what_a_job_is_missing():
    done = _recognize("recognize.py --job=compare --first_photo=a.jpg")
    assert done.returncode == 1 and "job compare needs --second_photo=..." in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.slow
def test_recognize_embed_search_and_compare_from_the_command_line(tiny_model, photos, tmp_path):
    done = _recognize(f"recognize.py --job=embed --input_model={tiny_model} --input_dir={photos} "
                      f"--embeddings_file={tmp_path / 'gallery.npz'}")
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"wrote 20 embeddings (5 identities, 0 skipped) to {tmp_path / 'gallery.npz'}" in done.stderr
    probe = sorted(photos.glob("id_00003/*.jpg"))[1]
    done = _recognize(f"recognize.py --job=search --input_model={tiny_model} --probe={probe} "
                      f"--gallery={tmp_path / 'gallery.npz'} --top_k=2")
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"1. id_00003  cosine 1.0000  ({probe})" in done.stderr and "2. id_0000" in done.stderr
    first, second = sorted(photos.glob("id_00001/*.jpg"))[:2]
    done = _recognize(f"recognize.py --job=compare --input_model={tiny_model} --first_photo={first} "
                      f"--second_photo={second} --threshold=1.5")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "cosine similarity" in done.stderr and "threshold 1.5000 (cosine " in done.stderr
    assert "same person" in done.stderr or "different people" in done.stderr
