"""generate_pairs.py: identity folders -> a pairs file in the LFW layout that the reader takes back."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest

from eval.pairs import read_pairs, resolve_pair_paths
from generate_pairs import Args, main

REPO = Path(__file__).resolve().parents[1]


def make_identity_tree(root, images_per_identity, extension=".png"):
    """<root>/<id_k>/face_<i><ext> tiny PNGs, as align_dataset_mtcnn.py lays out its output."""
    for k, count in enumerate(images_per_identity):
        folder = root / f"id_{k:02d}"
        folder.mkdir(parents=True)
        for i in range(count):
            pixels = np.full((4, 4, 3), (k * 7 + i) % 256, dtype=np.uint8)
            assert cv2.imwrite(str(folder / f"face_{i}{extension}"), pixels)
    return root


def generate(tmp_path, data_dir, **overrides):
    args = Args(data_dir=str(data_dir), pairs_filepath=str(tmp_path / "pairs.txt"), **overrides)
    main(args)
    return tmp_path / "pairs.txt"


def assert_lfw_layout(pairs_file, num_folds, per_fold):
    """Header, folds interleaved (P matched then P mismatched), distinct pairs, no image paired with itself."""
    assert (pairs_file.num_folds, pairs_file.pairs_per_fold) == (num_folds, per_fold)
    assert len(pairs_file.pairs) == num_folds * 2 * per_fold
    one_fold = np.r_[np.ones(per_fold, bool), np.zeros(per_fold, bool)]
    np.testing.assert_array_equal(pairs_file.issame, np.tile(one_fold, num_folds))
    keys = [frozenset([(p.name1, p.image1), (p.name2, p.image2)]) for p in pairs_file.pairs]
    assert len(set(keys)) == len(keys), "a pair appears twice"
    assert all(len(key) == 2 for key in keys), "an image is paired with itself"
    assert all(p.name1 != p.name2 for p in pairs_file.pairs if not p.issame)


def test_generated_file_has_the_lfw_layout_and_round_trips(tmp_path):
    data = make_identity_tree(tmp_path / "aligned", [2, 3, 5, 8, 4, 6, 1, 9, 3, 7, 5, 4])
    (data / "bounding_boxes.txt").write_text("x 1 2 3 4\n")  # align's side files are not identities
    (data / "id_03" / ".DS_Store").write_bytes(b"")
    (data / "id_03" / "notes.txt").write_text("not an image")
    path = generate(tmp_path, data, num_folds=10, pairs_per_fold=6, seed=1)
    assert path.read_text().splitlines()[0] == "10\t6"
    pairs_file = read_pairs(path)
    assert_lfw_layout(pairs_file, 10, 6)
    resolved = resolve_pair_paths(pairs_file.pairs, data)
    assert resolved.num_skipped == 0 and len(resolved.paths) == 2 * 120
    assert all(p.suffix == ".png" and p.parent.parent == data for p in resolved.paths)
    # Each contiguous fold holds both classes, so the protocol's folds are never single-class.
    folds = pairs_file.issame.reshape(10, 12)
    assert np.all(folds.any(axis=1)) and np.all((~folds).any(axis=1))


def test_same_seed_same_file_other_seed_other_file(tmp_path):
    data = make_identity_tree(tmp_path / "aligned", [4, 6, 5, 7, 3])
    first = generate(tmp_path, data, num_folds=2, pairs_per_fold=5, seed=3).read_text()
    assert generate(tmp_path, data, num_folds=2, pairs_per_fold=5, seed=3).read_text() == first
    assert generate(tmp_path, data, num_folds=2, pairs_per_fold=5, seed=4).read_text() != first


def test_matched_pairs_are_spread_over_identities(tmp_path):
    # One identity has 40 images (780 possible pairs), nine have 4 (6 each): balanced drawing gives each ~3.
    data = make_identity_tree(tmp_path / "aligned", [40] + [4] * 9)
    pairs_file = read_pairs(generate(tmp_path, data, num_folds=10, pairs_per_fold=3, seed=0))
    per_identity = Counter(p.name1 for p in pairs_file.pairs if p.issame)
    assert len(per_identity) == 10 and max(per_identity.values()) <= 4
    mismatched = [p for p in pairs_file.pairs if not p.issame]
    appearances = Counter(p.name1 for p in mismatched) + Counter(p.name2 for p in mismatched)
    assert len(appearances) == 10 and max(appearances.values()) <= 12  # 60 appearances, ~6 each


def test_too_little_data_says_so_and_keeps_folds_balanced(tmp_path, caplog):
    # 3 identities x 3 images: 9 distinct matched pairs, 27 mismatched; 4 folds of 5 asked -> 2 per fold.
    data = make_identity_tree(tmp_path / "aligned", [3, 3, 3])
    with caplog.at_level(logging.WARNING):
        pairs_file = read_pairs(generate(tmp_path, data, num_folds=4, pairs_per_fold=5, seed=0))
    assert "3 identities, 9 images: 9 distinct matched and 27 distinct mismatched pairs" in caplog.text
    assert "writing 2 of each per fold" in caplog.text
    assert_lfw_layout(pairs_file, 4, 2)


def test_every_possible_pair_when_all_are_asked(tmp_path):
    data = make_identity_tree(tmp_path / "aligned", [2, 3, 1])
    pairs_file = read_pairs(generate(tmp_path, data, num_folds=2, pairs_per_fold=2, seed=0))
    assert_lfw_layout(pairs_file, 2, 2)
    matched = {(p.name1, frozenset([p.image1, p.image2])) for p in pairs_file.pairs if p.issame}
    # id_00 has 1 possible matched pair, id_01 has 3, id_02 none: all 4 are used.
    assert matched == {("id_00", frozenset(["face_0.png", "face_1.png"])),
                       ("id_01", frozenset(["face_0.png", "face_1.png"])),
                       ("id_01", frozenset(["face_0.png", "face_2.png"])),
                       ("id_01", frozenset(["face_1.png", "face_2.png"]))}


def test_impossible_requests_and_bad_names_are_errors(tmp_path):
    single = make_identity_tree(tmp_path / "single", [5])
    with pytest.raises(ValueError, match="1 identities, 5 images: 10 distinct matched and 0 distinct mismatched"):
        generate(tmp_path, single)
    no_repeats = make_identity_tree(tmp_path / "ones", [1, 1, 1])
    with pytest.raises(ValueError, match="0 distinct matched"):
        generate(tmp_path, no_repeats)
    tabbed = make_identity_tree(tmp_path / "tabbed", [2, 2])
    (tabbed / "id_00" / "face_0.png").rename(tabbed / "id_00" / "fa\tce.png")
    with pytest.raises(ValueError, match=r"fa\\tce.png.*tab"):
        generate(tmp_path, tabbed)
    with pytest.raises(FileNotFoundError, match="dataset folder not found"):
        generate(tmp_path, tmp_path / "nowhere")


def test_orl_faces_generate_then_read_round_trip(orl_faces, tmp_path):
    path = generate(tmp_path, orl_faces, num_folds=10, pairs_per_fold=100, seed=313)
    pairs_file = read_pairs(path)
    assert_lfw_layout(pairs_file, 10, 100)
    resolved = resolve_pair_paths(pairs_file.pairs, orl_faces)
    assert len(resolved.paths) == 2 * 2000 and all(p.is_file() for p in resolved.paths)
    assert {p.name1 for p in pairs_file.pairs} <= {f"s{k}" for k in range(1, 41)}


def test_all_digit_identity_names_are_written_and_resolve(tmp_path):
    # CASIA-WebFace names its identities 0000045, 0000099, ...; the fork used 00001, ...; its images 001.jpg, ...
    names = ["0000045", "0000099", "00001", "00002", "7"]
    for k, name in enumerate(names):
        (tmp_path / "aligned" / name).mkdir(parents=True)
        for i in range(4):
            assert cv2.imwrite(str(tmp_path / "aligned" / name / f"{i + 1:03d}.jpg"), np.full((4, 4, 3), k * 9 + i,
                                                                                               np.uint8))
    completed = subprocess.run([sys.executable, "generate_pairs.py", f"--data_dir={tmp_path / 'aligned'}",
                                f"--pairs_filepath={tmp_path / 'pairs.txt'}", "--num_folds=2", "--pairs_per_fold=5"],
                               cwd=REPO, capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    pairs_file = read_pairs(tmp_path / "pairs.txt")
    assert_lfw_layout(pairs_file, 2, 5)
    assert {p.name1 for p in pairs_file.pairs} | {p.name2 for p in pairs_file.pairs} == set(names)
    resolved = resolve_pair_paths(pairs_file.pairs, tmp_path / "aligned")
    assert resolved.num_skipped == 0 and all(path.is_file() for path in resolved.paths)
    for pair, first, second in zip(pairs_file.pairs, resolved.paths[0::2], resolved.paths[1::2]):
        assert (first.parent.name, first.name) == (pair.name1, pair.image1)
        assert (second.parent.name, second.name) == (pair.name2, pair.image2)


def test_a_folder_name_that_is_not_utf8_is_refused_naming_it_and_nothing_is_left_behind(tmp_path):
    data = tmp_path / "aligned"
    make_identity_tree(data, [3, 3])
    bad = os.fsencode(data) + b"/Andr\xe9"  # a Latin-1 name: not UTF-8, as copied from an old archive
    os.mkdir(bad)
    for i in range(3):
        with open(bad + b"/face_%d.png" % i, "wb") as stream:
            stream.write((data / "id_00" / "face_0.png").read_bytes())
    (tmp_path / "pairs.txt").write_text("the user's pairs\n")
    result = subprocess.run([sys.executable, "generate_pairs.py", f"--data_dir={data}",
                             f"--pairs_filepath={tmp_path / 'pairs.txt'}", "--num_folds=2", "--pairs_per_fold=2"],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Andr\\xe9" in lines[0] and "not valid UTF-8" in lines[0], result.stderr
    assert (tmp_path / "pairs.txt").read_text() == "the user's pairs\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["aligned", "pairs.txt"]
