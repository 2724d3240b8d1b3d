"""data.synthetic: deterministic, distinct identities that differ by shape rather than by colour."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage.feature import hog
from sklearn.model_selection import cross_val_score
from sklearn.neighbors import NearestCentroid

from data import synthetic


def folder_bytes(root: Path) -> dict[str, bytes]:
    return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*.jpg"))}


def test_same_seed_same_bytes_other_seed_other_images(tmp_path):
    first = synthetic.generate(tmp_path / "a", num_identities=3, images_per_identity=2, seed=5, image_size=48)
    again = synthetic.generate(tmp_path / "b", num_identities=3, images_per_identity=2, seed=5, image_size=48)
    other = synthetic.generate(tmp_path / "c", num_identities=3, images_per_identity=2, seed=6, image_size=48)
    a, b, c = folder_bytes(first), folder_bytes(again), folder_bytes(other)
    assert sorted(a) == [f"id_{k:05d}/{j:04d}.jpg" for k in range(3) for j in range(2)]
    assert a == b
    assert sorted(c) == sorted(a) and all(a[name] != c[name] for name in a)
    image = Image.open(io.BytesIO(a["id_00001/0001.jpg"]))
    assert image.format == "JPEG" and image.size == (48, 48) and image.mode == "RGB"


def test_rerun_is_a_no_op_and_foreign_folder_is_refused(tmp_path):
    root = synthetic.generate(tmp_path / "set", num_identities=2, images_per_identity=1, seed=0, image_size=32)
    manifest = json.loads((root / synthetic.MANIFEST).read_text())
    assert manifest["num_identities"] == 2 and manifest["seed"] == 0
    (root / "id_00000" / "0000.jpg").write_bytes(b"changed")
    synthetic.generate(root, num_identities=2, images_per_identity=1, seed=0, image_size=32)
    assert (root / "id_00000" / "0000.jpg").read_bytes() == b"changed"  # nothing regenerated
    with pytest.raises(FileExistsError, match="not empty"):
        synthetic.generate(root, num_identities=3, images_per_identity=1, seed=0, image_size=32)


def test_cli_writes_the_data_set(tmp_path):
    args = synthetic.Args.from_cli([f"--output_dir={tmp_path / 'cli'}", "--num_identities=2",
                                    "--images_per_identity=2", "--seed=3", "--image_size=40"])
    synthetic.main(args)
    assert len(list((tmp_path / "cli").rglob("*.jpg"))) == 4


def test_identities_differ_by_shape_not_by_mean_colour():
    """Nearest-centroid on HOG features (shapes) tells held-out images apart; on the mean colour it barely can."""
    mean_colours, shapes, labels = [], [], []
    for identity in range(12):
        person = synthetic.random_identity(np.random.default_rng([0, identity]))
        for index in range(8):
            rng = np.random.default_rng([0, identity, index])
            image = synthetic.render(person, synthetic.random_variation(rng), 64, rng)
            mean_colours.append(image.reshape(-1, 3).mean(axis=0))
            shapes.append(hog(image.mean(axis=2), pixels_per_cell=(16, 16), cells_per_block=(2, 2)))
            labels.append(identity)
    by_shape = cross_val_score(NearestCentroid(), np.array(shapes), labels, cv=4).mean()
    by_colour = cross_val_score(NearestCentroid(), np.array(mean_colours), labels, cv=4).mean()
    assert by_shape >= 0.7, by_shape  # chance is 1/12 (measured 0.84)
    assert by_colour <= 0.4, by_colour  # (measured 0.19)
