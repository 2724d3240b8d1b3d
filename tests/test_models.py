"""models/: every kind of model file loads into the network that wrote it, one checkpoint resolver, one channel order.

The run here is written the way train_nets writes one (args.json, a CheckpointManager's InsightFace_iter-<step>
checkpoints holding `model=`, best/ with its own checkpoint and embedding.keras), from an IR-ResNet built with
nets.get_resnet directly and given random weights (moving statistics included): a loaded model that gives that
network's outputs has its weights. The seed checkpoint is written by test_seed_checkpoint's TF1 writer and checked
against its float64 numpy forward pass.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

import eval_ckpt_file
import export
import train_nets
from common.preprocessing import normalize
from common.sizes import image_size_pair
from deploy.preprocessing import with_preprocessing
from models import KINDS, load_embedding_model, resolve_checkpoint
from nets import get_resnet
from nets.spec import NetworkSpec
from test_seed_checkpoint import (UNITS, max_relative_difference, random_values, seed_forward, seed_variable_shapes,
                                  write_tf1_checkpoint)

REPO = Path(__file__).resolve().parents[1]
SIZE = 32
EMBEDDING = 16


def _randomise(model: keras.Model, rng: np.random.Generator) -> None:
    """Every weight moved away from its initial value; variances kept positive."""
    for variable in model.weights:
        value = variable.numpy()
        if "variance" in variable.path:
            variable.assign(rng.uniform(0.5, 2.0, value.shape).astype(value.dtype))
        else:
            variable.assign((value * rng.uniform(0.5, 1.5, value.shape) + rng.normal(0, 0.05, value.shape))
                            .astype(value.dtype))


def _outputs(model: keras.Model, inputs: np.ndarray) -> np.ndarray:
    return np.asarray(model(inputs, training=False))


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict:
    """A run folder: step 1 and step 2 (different weights), best/ at step 2 with embedding.keras, args.json (RGB)."""
    root = tmp_path_factory.mktemp("models")
    ckpt = root / "ckpt"
    rng = np.random.default_rng(0)
    inputs = rng.uniform(-1, 1, (3, SIZE, SIZE, 3)).astype("float32")
    network = get_resnet(18, image_size=SIZE, embedding_size=EMBEDDING, seed=5)
    train_nets.Args(net_depth=18, image_size=[SIZE, SIZE], embedding_size=EMBEDDING, channel_order="RGB",
                    ckpt_path=str(ckpt)).save(ckpt / "args.json")
    checkpoint = tf.train.Checkpoint(model=network)
    manager = tf.train.CheckpointManager(checkpoint, str(ckpt), max_to_keep=5, checkpoint_name="InsightFace_iter")
    _randomise(network, rng)
    manager.save(checkpoint_number=1)
    step1 = _outputs(network, inputs)
    _randomise(network, rng)
    manager.save(checkpoint_number=2)
    best = tf.train.CheckpointManager(checkpoint, str(ckpt / "best"), max_to_keep=1,
                                      checkpoint_name="InsightFace_iter_best")
    best.save(checkpoint_number=2)
    network.save(ckpt / "best" / "embedding.keras")
    return {"root": root, "ckpt": ckpt, "inputs": inputs, "step1": step1, "step2": _outputs(network, inputs),
            "network": network}


# ---------------------------------------------------------------------------------------------- each kind loads
@pytest.mark.parametrize("where, step, kind, source", [
    ("InsightFace_iter-1", "step1", "checkpoint", "InsightFace_iter-1"),
    ("InsightFace_iter-1.index", "step1", "checkpoint", "InsightFace_iter-1"),
    ("InsightFace_iter-2.data-00000-of-00001", "step2", "checkpoint", "InsightFace_iter-2"),
    ("", "step2", "checkpoint", "InsightFace_iter-2"),  # the run folder: its latest checkpoint
    ("best", "step2", "checkpoint", "best/InsightFace_iter_best-2"),
    ("best/embedding.keras", "step2", "keras", "best/embedding.keras"),
])
def test_every_path_of_a_run_loads_the_network_that_wrote_it(run, where, step, kind, source):
    loaded = load_embedding_model(run["ckpt"] / where)
    assert (loaded.kind, loaded.source) == (kind, str(run["ckpt"] / source))
    assert loaded.input_size == (SIZE, SIZE) and loaded.channel_order == "RGB"  # recorded in ckpt/args.json
    np.testing.assert_allclose(_outputs(loaded.model, run["inputs"]), run[step], rtol=1e-5, atol=1e-6)
    # the weights came from the file: the network args.json describes, freshly built, gives other outputs
    fresh = NetworkSpec.from_mapping({"net_depth": 18, "image_size": [SIZE, SIZE], "embedding_size": EMBEDDING})
    assert not np.allclose(_outputs(fresh.build(), run["inputs"]), run[step], atol=1e-3)


def test_a_keras_archive_is_recognised_by_its_content_not_its_name(run, tmp_path):
    renamed = tmp_path / "network.bin"
    shutil.copy(run["ckpt"] / "best" / "embedding.keras", renamed)
    loaded = load_embedding_model(renamed)
    assert loaded.kind == "keras" and loaded.channel_order == "BGR"  # no args.json here: the seed's order
    np.testing.assert_allclose(_outputs(loaded.model, run["inputs"]), run["step2"], rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def seed_ckpt(tmp_path_factory) -> dict:
    """A depth-18 seed TF1 checkpoint at 32x32, in a folder of its own."""
    folder = tmp_path_factory.mktemp("seed")
    values = random_values(seed_variable_shapes("resnet_v1_18", UNITS[18], image_size=SIZE, num_classes=5),
                           np.random.default_rng(1))
    prefix = folder / "InsightFace_iter_best_1000.ckpt"
    write_tf1_checkpoint(str(prefix), values)
    return {"prefix": prefix, "values": values}


@pytest.mark.parametrize("state_file", [True, False], ids=["with_state_file", "one_index_no_state_file"])
def test_a_seed_checkpoint_loads_from_its_prefix_and_its_folder(seed_ckpt, tmp_path, state_file):
    folder = seed_ckpt["prefix"].parent  # the Saver's state file names the checkpoint by its absolute path
    if not state_file:
        folder = Path(shutil.copytree(folder, tmp_path / "model_d"))
        (folder / "checkpoint").unlink()
    images = np.random.default_rng(2).integers(0, 256, (2, SIZE, SIZE, 3), dtype=np.uint8)
    reference = seed_forward(images, seed_ckpt["values"], "resnet_v1_18", UNITS[18], 1, "bn", False)
    for path in (folder / seed_ckpt["prefix"].name, folder):
        loaded = load_embedding_model(path)
        assert (loaded.kind, loaded.source) == ("seed_checkpoint", str(folder / seed_ckpt["prefix"].name))
        assert loaded.channel_order == "BGR" and loaded.input_size == (SIZE, SIZE)
        assert max_relative_difference(_outputs(loaded.model, normalize(images, "BGR")), reference) < 1e-4


# ---------------------------------------------------------------------------------------------- one resolver
def _write_checkpoint(prefix: Path) -> None:
    tf.train.Checkpoint(value=tf.Variable(1.0)).write(str(prefix))


def test_the_resolver_takes_a_prefix_its_files_and_run_folders(run):
    ckpt = run["ckpt"]
    for given in ("InsightFace_iter-1", "InsightFace_iter-1.index", "InsightFace_iter-1.data-00000-of-00001"):
        assert resolve_checkpoint(ckpt / given) == str(ckpt / "InsightFace_iter-1")
    assert resolve_checkpoint(ckpt) == str(ckpt / "InsightFace_iter-2")  # the state file names the latest
    assert resolve_checkpoint(ckpt / "best") == str(ckpt / "best" / "InsightFace_iter_best-2")


def test_a_folder_without_state_file_needs_exactly_one_checkpoint(tmp_path):
    _write_checkpoint(tmp_path / "model.ckpt")
    assert resolve_checkpoint(tmp_path) == str(tmp_path / "model.ckpt")
    _write_checkpoint(tmp_path / "other.ckpt")
    with pytest.raises(FileNotFoundError) as error:
        resolve_checkpoint(tmp_path)
    message = str(error.value)
    assert f"{tmp_path} is a folder with 2 checkpoints" in message
    assert str(tmp_path / "model.ckpt") in message and str(tmp_path / "other.ckpt") in message


def test_a_state_file_wins_over_the_files_and_a_stale_one_falls_back_to_the_only_checkpoint(tmp_path):
    for name in ("a.ckpt", "b.ckpt"):
        _write_checkpoint(tmp_path / name)
    tf.compat.v1.train.update_checkpoint_state(str(tmp_path), "a.ckpt")
    assert resolve_checkpoint(tmp_path) == str(tmp_path / "a.ckpt")
    other = tmp_path / "other"
    other.mkdir()
    _write_checkpoint(other / "only.ckpt")
    tf.compat.v1.train.update_checkpoint_state(str(other), "deleted.ckpt")  # names a checkpoint that is gone
    assert resolve_checkpoint(other) == str(other / "only.ckpt")


def test_no_checkpoint_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"no checkpoint in folder {tmp_path}"):
        resolve_checkpoint(tmp_path)
    with pytest.raises(FileNotFoundError, match=f"checkpoint {tmp_path / 'absent'} not found: no TF checkpoint at"):
        resolve_checkpoint(tmp_path / "absent")


# ---------------------------------------------------------------------------------------------- one channel order
def test_an_explicit_channel_order_wins_and_a_differing_one_is_a_warning(run, caplog):
    with caplog.at_level(logging.INFO, logger="models"):
        assert load_embedding_model(run["ckpt"], "BGR").channel_order == "BGR"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [f"channel_order=BGR differs from RGB recorded in {run['ckpt'] / 'args.json'}: using BGR"]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="models"):
        assert load_embedding_model(run["ckpt"], "RGB").channel_order == "RGB"
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_an_export_s_preprocessing_records_its_channel_order(run, tmp_path):
    (tmp_path / "args.json").write_text('{"channel_order": "BGR"}')  # the model file itself says otherwise
    with_preprocessing(run["network"], "RGB").save(tmp_path / "deployed.keras")
    loaded = load_embedding_model(tmp_path / "deployed.keras")
    assert loaded.kind == "keras" and loaded.channel_order == "RGB"
    images = np.random.default_rng(3).integers(0, 256, (3, SIZE, SIZE, 3), dtype=np.uint8)
    unit = run["network"](normalize(images, "RGB"), training=False).numpy()
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)
    np.testing.assert_allclose(_outputs(loaded.model, images), unit, rtol=1e-4, atol=1e-5)


def test_an_unknown_channel_order_is_refused(run):
    with pytest.raises(ValueError, match="unknown channel_order 'bgr'"):
        load_embedding_model(run["ckpt"], "bgr")


def test_unset_is_none_in_both_scripts():
    for script in (eval_ckpt_file, export):
        assert script.Args().channel_order is None
        assert script.Args.from_cli(["--channel_order=None"]).channel_order is None
        assert script.Args.from_cli(["--channel_order=RGB"]).channel_order == "RGB"


def test_an_empty_channel_order_on_the_command_line_is_refused_by_name(tmp_path):
    """"" no longer means unset (None does): the parser names the key and what it takes."""
    result = subprocess.run([sys.executable, str(REPO / "eval_ckpt_file.py"), "--channel_order="], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "channel_order=''" in result.stderr and "BGR" in result.stderr


# ---------------------------------------------------------------------------------------------- unknown paths
def test_a_file_of_no_known_kind_is_named_with_the_kinds_accepted(tmp_path):
    garbage = tmp_path / "model.onnx"
    garbage.write_bytes(b"\x08\x07not a model" * 10)
    with pytest.raises(ValueError) as error:
        load_embedding_model(garbage)
    assert f"{garbage} is not a model this toolkit reads" in str(error.value)
    assert all(f"{kind.name}: " in str(error.value) for kind in KINDS)
    with pytest.raises(FileNotFoundError) as missing:
        load_embedding_model(tmp_path / "nowhere.keras.zip")
    assert f"no model at {tmp_path / 'nowhere.keras.zip'}" in str(missing.value)
    assert all(f"{kind.name}: " in str(missing.value) for kind in KINDS)


# ---------------------------------------------------------------------------------------------- the network spec
def test_network_spec_defaults_are_train_nets_defaults():
    spec, args = NetworkSpec(), train_nets.Args()
    for name in NetworkSpec.field_names():
        expected = image_size_pair(args.image_size) if name == "image_size" else getattr(args, name)
        assert getattr(spec, name) == expected, name
    assert NetworkSpec.from_mapping({"loss": "cosface", "net_depth": 18}) == NetworkSpec(net_depth=18)



@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict:
    """A small network trained "in RGB", exported by deploy.formats as export.py exports (SavedModel, ONNX, TFLite,
    .keras; uint8 RGB in, L2-normalised out), and the independent reference of its outputs on mirrored images."""
    from deploy.formats import export_model, reference_embeddings
    from test_export import _tiny_network

    folder = tmp_path_factory.mktemp("export")
    network = _tiny_network(SIZE)
    images = np.random.default_rng(5).integers(0, 256, (6, SIZE, SIZE, 3), dtype=np.uint8)
    export_model(with_preprocessing(network, "RGB"), folder, ["saved_model", "onnx", "tflite", "keras"], images[:2])
    mirrored = images[:, :, ::-1]
    return {"folder": folder, "network": network, "mirrored": mirrored,
            "reference": reference_embeddings(with_preprocessing(network, "RGB"), np.ascontiguousarray(mirrored))}


EXPORTS = {"saved_model": "saved_model", "onnx": "embedding.onnx", "tflite": "embedding.tflite"}


@pytest.mark.parametrize("fmt", EXPORTS)
def test_an_export_runs_by_its_runtime_on_pixels_with_its_recorded_preprocessing(exported, fmt):
    """Kind "export": the file itself, run by its runtime on uint8 RGB (mirrored views too), gives the reference
    (numpy preprocessing, the network, numpy L2); it is no Keras model, and its channel order is fixed inside."""
    from common.preprocessing import Preprocessing

    loaded = load_embedding_model(exported["folder"] / EXPORTS[fmt])
    assert (loaded.kind, loaded.export.format, loaded.channel_order) == ("export", fmt, "RGB")
    assert loaded.input_size == (SIZE, SIZE) and loaded.preprocessing == Preprocessing("RGB", 127.5, 1 / 128)
    embeddings = loaded.embed_function()(exported["mirrored"])
    assert max_relative_difference(embeddings, exported["reference"]) < 1e-5
    with pytest.raises(ValueError, match="not a Keras model: give the .keras export"):
        loaded.model  # what export.py and fine-tuning ask for
    with pytest.raises(ValueError, match="converts RGB pixels inside"):
        load_embedding_model(exported["folder"] / EXPORTS[fmt], "BGR")


def test_exports_are_recognised_by_content_and_need_their_metadata(exported, tmp_path):
    """Renamed ONNX and TFLite files are still exports (the ONNX by our metadata_props, so the insightface reader
    never sees it); without export_metadata.json beside them a SavedModel or TFLite file is refused by name; an ONNX
    file without our metadata is not an export (nets.pretrained's reader gets it)."""
    import onnx

    from models.exported import find_export

    shutil.copy(exported["folder"] / "embedding.onnx", tmp_path / "model.bin")
    shutil.copy(exported["folder"] / "embedding.tflite", tmp_path / "model.dat")
    shutil.copy(exported["folder"] / "export_metadata.json", tmp_path)
    assert load_embedding_model(tmp_path / "model.bin").export.format == "onnx"
    assert load_embedding_model(tmp_path / "model.dat").export.format == "tflite"

    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(exported["folder"] / "embedding.tflite", bare / "embedding.tflite")
    shutil.copytree(exported["folder"] / "saved_model", bare / "saved_model")
    for name in ("embedding.tflite", "saved_model"):
        with pytest.raises(ValueError, match="without export.py's export_metadata.json beside it"):
            load_embedding_model(bare / name)

    proto = onnx.load(str(exported["folder"] / "embedding.onnx"))
    del proto.metadata_props[:]
    onnx.save(proto, str(bare / "theirs.onnx"))
    assert find_export(bare / "theirs.onnx") is None


def test_export_py_refuses_an_export_run_by_its_runtime(exported, tmp_path):
    for name in ("embedding.onnx", "saved_model"):
        with pytest.raises(ValueError, match="not a Keras model"):
            export.main(export.Args(input_model=str(exported["folder"] / name), output_dir=str(tmp_path / name),
                                    formats=["keras"]))
        assert not (tmp_path / name).exists()


def test_a_keras_model_embeds_pixels_exactly_as_the_network_on_normalised_input(exported):
    """embed_function of a Keras model is normalise + the compiled network call: bit for bit what evaluation did."""
    from eval.embeddings import compute_embeddings
    from training.validation import embedding_function

    loaded = load_embedding_model(exported["folder"] / "embedding.keras")
    images = np.ascontiguousarray(exported["mirrored"])
    for flip in ("sum", "none"):
        new, new_xnorm = compute_embeddings(loaded.embed_function(), images, 4, None, flip)
        old, old_xnorm = compute_embeddings(embedding_function(loaded.network), images, 4, loaded.preprocessing, flip)
        assert np.array_equal(new, old) and new_xnorm == old_xnorm


def test_faces_embed_with_an_export(exported):
    """faces/ takes an export: its flip-free embeddings are the export's outputs (unit norm)."""
    from faces.embedder import FaceEmbedder

    embedder = FaceEmbedder.load(exported["folder"] / "embedding.onnx", flip="none", aligned=True)
    embeddings = embedder.embed_crops(np.ascontiguousarray(exported["mirrored"]))
    assert max_relative_difference(embeddings, exported["reference"]) < 1e-5


def test_a_bare_network_export_is_fed_the_normalised_pixels(exported, tmp_path):
    """An export without preprocessing (export.py --with_preprocessing=false): the seed's numbers in the channel
    order asked for, then the file; its output is the raw embedding of the network."""
    from deploy.formats import export_model

    images = np.ascontiguousarray(exported["mirrored"])
    export_model(exported["network"], tmp_path, ["onnx"], normalize(images[:2], "RGB"))
    loaded = load_embedding_model(tmp_path / "embedding.onnx", "RGB")
    assert (loaded.kind, loaded.channel_order, loaded.export.takes_pixels) == ("export", "RGB", False)
    expected = _outputs(exported["network"], normalize(images, "RGB"))
    assert max_relative_difference(loaded.embed_function()(exported["mirrored"]), expected) < 1e-5
