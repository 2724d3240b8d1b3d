"""deploy.formats, deploy.preprocessing and export.py: every format runs back to the Keras model's embeddings,
preprocessing included.

Each exported file is run here with its own runtime (the SavedModel's serving_default signature, onnxruntime, the
TFLite interpreter, keras.saving) and compared with the Keras model; the built-in preprocessing is compared with the
seed's convention written in numpy (RGB uint8 -> channel order -> (x - 127.5) / 128 -> network -> L2 normalise).
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from deploy import formats
from deploy.preprocessing import PREPROCESS_BGR, PREPROCESS_SCALE, save_keras, with_preprocessing
from nets import get_backbone, get_resnet
from strict_json import load_strict_json

IMAGE_SIZE = 112


@pytest.fixture(scope="module")
def network():
    model = get_resnet(18, image_size=IMAGE_SIZE, seed=0)
    rng = np.random.default_rng(3)
    for layer in model.layers:  # non-trivial BN statistics, so inference really uses them
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.moving_mean.assign(rng.normal(0, 0.1, layer.moving_mean.shape))
            layer.moving_variance.assign(rng.uniform(0.5, 2.0, layer.moving_variance.shape))
    return model


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).integers(0, 256, (2, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)


def seed_convention(network, rgb_uint8, channel_order="BGR"):
    """The deployment contract in numpy: order the channels, (x - 127.5) / 128, embed, L2-normalise."""
    x = rgb_uint8[..., ::-1] if channel_order == "BGR" else rgb_uint8
    x = ((x.astype(np.float64) - 127.5) / 128.0).astype(np.float32)
    embeddings = network(x, training=False).numpy().astype(np.float64)
    return embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)


def relative_difference(actual, reference):
    return float(np.max(np.abs(np.asarray(actual, np.float64) - reference)) / np.max(np.abs(reference)))


def run_saved_model(path, inputs):
    loaded = tf.saved_model.load(str(path))  # keep a reference: the signature does not hold the variables
    (output,) = loaded.signatures["serving_default"](tf.constant(inputs)).values()
    return output.numpy()


def run_tflite(path, inputs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        interpreter = tf.lite.Interpreter(model_path=str(path))
    (details,) = interpreter.get_input_details()
    assert details["dtype"] == inputs.dtype
    interpreter.resize_tensor_input(details["index"], inputs.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(details["index"], inputs)
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])


def run_onnx(path, inputs):
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: inputs})[0]


@pytest.mark.parametrize("channel_order", ["BGR", "RGB"])
def test_built_in_preprocessing_is_the_seed_convention(network, images, channel_order):
    deployed = with_preprocessing(network, channel_order)
    assert deployed.input.dtype == "uint8" and deployed.output_shape == (None, 512)
    output = deployed(images).numpy()
    assert relative_difference(output, seed_convention(network, images, channel_order)) < 1e-5
    np.testing.assert_allclose(np.linalg.norm(output, axis=1), 1.0, rtol=1e-5)


def test_saved_model_and_tflite_run_back_to_keras(network, images, tmp_path):
    deployed = with_preprocessing(network, "BGR")
    results = formats.export_model(deployed, tmp_path, ["saved_model", "tflite"], images)
    reference = seed_convention(network, images)
    assert relative_difference(run_saved_model(tmp_path / "saved_model", images), reference) < 1e-4
    assert relative_difference(run_tflite(tmp_path / "embedding.tflite", images), reference) < 1e-4
    report = load_strict_json(tmp_path / formats.REPORT_FILE)
    assert [r["format"] for r in report] == ["saved_model", "tflite"] == [r.format for r in results]
    assert all(r["max_relative_difference"] < 1e-4 for r in report)
    # float32 weights stored once (Keras' own SavedModel export stores them twice, keras-team/keras#23553)
    assert all(0.95 < r["bytes"] / (4 * network.count_params()) < 1.1 for r in report)


def test_keras_file_without_preprocessing_round_trips(network, images, tmp_path):
    inputs = ((images[..., ::-1].astype(np.float32) - 127.5) / 128.0)
    formats.export_model(network, tmp_path, ["keras"], inputs)
    loaded = keras.saving.load_model(tmp_path / "embedding.keras", compile=False)
    reference = network(inputs, training=False).numpy()
    # float32 round-off only: the loaded file's plain Keras batch norm is computed apart from the fused kernel
    assert relative_difference(loaded(inputs, training=False).numpy(), reference) < 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("preprocessing", [True, False])
def test_onnx_runs_back_to_keras(network, images, tmp_path, preprocessing):
    model = with_preprocessing(network) if preprocessing else network
    inputs = images if preprocessing else ((images[..., ::-1].astype(np.float32) - 127.5) / 128.0)
    formats.export_model(model, tmp_path, ["onnx"], inputs)
    reference = model(inputs, training=False).numpy().astype(np.float64)
    assert relative_difference(run_onnx(tmp_path / "embedding.onnx", inputs), reference) < 1e-4


@pytest.mark.parametrize("preprocessing", [True, False])
def test_small_network_onnx_runs_back_to_keras(tmp_path, preprocessing):
    """The fast-suite ONNX parity (the 112x112 IR-ResNet above is slow): a few-layer network with frozen-gamma BN and
    non-trivial moving statistics, exported alone or wrapped, run by onnxruntime against the numpy-side reference."""
    network = _tiny_network(32)
    images = np.random.default_rng(6).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    floats = ((images[..., ::-1].astype(np.float32) - 127.5) / 128.0)
    model, inputs = (with_preprocessing(network), images) if preprocessing else (network, floats)
    formats.export_model(model, tmp_path, ["onnx"], inputs)
    reference = seed_convention(network, images) if preprocessing else network(floats).numpy().astype(np.float64)
    assert relative_difference(run_onnx(tmp_path / "embedding.onnx", inputs), reference) < 1e-5
    (report,) = load_strict_json(tmp_path / formats.REPORT_FILE)
    assert report["format"] == "onnx" and report["max_relative_difference"] < 1e-5


@pytest.mark.slow
def test_quantised_tflite_is_reported(network, images, tmp_path):
    deployed = with_preprocessing(network)
    calibration = np.random.default_rng(1).integers(0, 256, (16, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    results = {r.format: r for r in formats.export_model(deployed, tmp_path, ["tflite_fp16", "tflite_int8"], images,
                                                        calibration)}
    reference = seed_convention(network, images)
    fp16 = run_tflite(tmp_path / "embedding_fp16.tflite", images)
    int8 = run_tflite(tmp_path / "embedding_int8.tflite", images)
    assert relative_difference(fp16, reference) < 1e-2  # float16 weights: ~3 significant digits
    assert np.min(np.sum(int8 * reference, axis=1)) > 0.9  # int8: the embedding direction survives
    assert results["tflite_int8"].tolerance is None and results["tflite_int8"].bytes < results["tflite_fp16"].bytes


def test_cli_uses_the_recorded_channel_order(images, tmp_path):
    import export as export_cli

    network = get_backbone("mobilefacenet", seed=0)  # small, and another backbone of the registry
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    network.save(run_dir / "embedding.keras")
    (run_dir / "args.json").write_text(json.dumps({"channel_order": "RGB"}))
    args = export_cli.Args(input_model=str(run_dir / "embedding.keras"), output_dir=str(tmp_path / "out"),
                           formats=["keras"], num_check_images=2)
    export_cli.main(args)
    loaded = keras.saving.load_model(tmp_path / "out" / "embedding.keras", compile=False)
    assert relative_difference(loaded(images).numpy(), seed_convention(network, images, "RGB")) < 1e-5
    assert (tmp_path / "out" / "export_args.json").is_file()


def test_unknown_format_is_named(network, tmp_path):
    with pytest.raises(ValueError, match="'pb'.*saved_model, keras, onnx"):
        formats.export_model(network, tmp_path, ["pb"], np.zeros((1, IMAGE_SIZE, IMAGE_SIZE, 3), np.float32))


REPO = Path(__file__).resolve().parents[1]
# Loads .keras files in a process that imports keras only (cwd outside the repository, so nets/ cannot be found).
PLAIN_LOAD = """
import sys
import keras
import numpy as np
for path, inputs in zip(sys.argv[1::2], sys.argv[2::2]):
    model = keras.saving.load_model(path)
    np.save(path + ".out.npy", keras.ops.convert_to_numpy(model(np.load(inputs), training=False)))
assert not [name for name in sys.modules if name.split(".")[0] in ("nets", "data", "training", "deploy", "common")]
"""


def test_saved_models_load_with_plain_keras_and_give_the_same_embeddings(tmp_path):
    """save_keras (training's best/embedding.keras) and export's .keras, with and without the preprocessing, of a
    network with frozen-gamma BN and batch renorm, load in a process that never imported nets/ and give the source
    model's outputs (relative difference < 1e-6)."""
    model = _tiny_network(32, renorm=True)
    rng = np.random.default_rng(5)
    for _ in range(3):  # moves the moving statistics and the renorm averages away from their start
        model(rng.normal(0.5, 2.0, (4, 32, 32, 3)).astype("float32"), training=True)
    images = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    floats = ((images[..., ::-1].astype(np.float32) - 127.5) / 128.0)
    np.save(tmp_path / "images.npy", images)
    np.save(tmp_path / "floats.npy", floats)
    save_keras(model, tmp_path / "best.keras")
    formats.export_model(model, tmp_path / "raw", ["keras"], floats)
    formats.export_model(with_preprocessing(model), tmp_path / "deploy", ["keras"], images)
    files = [(tmp_path / "best.keras", "floats"), (tmp_path / "raw" / "embedding.keras", "floats"),
             (tmp_path / "deploy" / "embedding.keras", "images")]
    argv = [str(arg) for path, name in files for arg in (path, tmp_path / f"{name}.npy")]
    result = subprocess.run([sys.executable, "-c", PLAIN_LOAD, *argv], cwd=tmp_path, capture_output=True, text=True,
                            timeout=300, env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert result.returncode == 0, result.stderr[-2000:]
    expected = model(floats, training=False).numpy()
    for path, _ in files[:2]:
        assert relative_difference(np.load(f"{path}.out.npy"), expected) < 1e-6
    assert relative_difference(np.load(f"{files[2][0]}.out.npy"), seed_convention(model, images)) < 1e-6


def numpy_bilinear(images, size):
    """Bilinear resize with half-pixel centres and no antialiasing (TF2's tf.image.resize), in float64 numpy."""
    def weights(out_size, in_size):
        src = np.clip((np.arange(out_size) + 0.5) * in_size / out_size - 0.5, 0, in_size - 1)
        low = np.floor(src).astype(int)
        return low, np.minimum(low + 1, in_size - 1), src - low

    (y0, y1, fy), (x0, x1, fx) = weights(size[0], images.shape[1]), weights(size[1], images.shape[2])
    rows = images[:, y0] * (1 - fy)[None, :, None, None] + images[:, y1] * fy[None, :, None, None]
    return rows[:, :, x0] * (1 - fx)[None, None, :, None] + rows[:, :, x1] * fx[None, None, :, None]


def _tiny_network(size=32, renorm=False):
    """A few layers (ONNX conversion in seconds) with a frozen-gamma BN (and a batch renorm)."""
    from nets.norms import make_norm

    inputs = keras.Input((size, size, 3))
    x = keras.layers.Conv2D(8, 3, strides=2, kernel_initializer=keras.initializers.GlorotNormal(seed=1))(inputs)
    x = make_norm("bn", "bn", frozen_gamma=True)(x)
    if renorm:
        x = make_norm("brn", "brn")(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(16, kernel_initializer=keras.initializers.GlorotNormal(seed=2), name="dense")(x)
    model = keras.Model(inputs, x, name="tiny")
    model.get_layer("bn").moving_mean.assign(np.linspace(-0.2, 0.2, 8))
    return model


def _readme_onnx_snippet() -> str:
    text = (REPO / "docs" / "export.md").read_text()
    block = text[text.index("# deploy-snippet: start"):text.index("# deploy-snippet: onnx end")]
    header, onnx_part = block[:block.index("# SavedModel")], block[block.index("# ONNX"):]
    assert "faces = " in header and "onnxruntime" in onnx_part
    return header + onnx_part


def test_readme_onnx_snippet_runs_on_an_export_that_resizes(tmp_path):
    """export with input_size: the metadata records the input, the model resizes inside, and the README's ONNX code,
    as written, runs in a fresh process on it and gives the independent numpy reference."""
    network = _tiny_network(32)
    deployed = with_preprocessing(network, "BGR", input_size=(48, 40))
    images = np.random.default_rng(2).integers(0, 256, (3, 48, 40, 3), dtype=np.uint8)
    out = tmp_path / "output" / "export"
    formats.export_model(deployed, out, ["onnx"], images)
    metadata = load_strict_json(out / formats.METADATA_FILE)
    assert metadata["input_size"] == [48, 40] and metadata["network_input_size"] == [32, 32]
    assert metadata["channel_order"] == "BGR" and metadata["input"] == "uint8 RGB"

    x = numpy_bilinear((images[..., ::-1].astype(np.float64) - 127.5) / 128.0, (32, 32))
    reference = network(x.astype(np.float32)).numpy().astype(np.float64)
    reference /= np.linalg.norm(reference, axis=1, keepdims=True)
    np.save(tmp_path / "faces.npy", images)
    snippet = _readme_onnx_snippet().replace("faces = ", "faces = np.load('faces.npy')  # ", 1)
    script = snippet + "\nnp.save('embeddings.npy', embeddings)\n"
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert relative_difference(np.load(tmp_path / "embeddings.npy"), reference) < 1e-5
    import onnxruntime

    session = onnxruntime.InferenceSession(str(out / "embedding.onnx"), providers=["CPUExecutionProvider"])
    assert json.loads(session.get_modelmeta().custom_metadata_map["input_size"]) == [48, 40]


def _export_cli(*argv):
    return subprocess.run([sys.executable, "export.py", *argv], cwd=REPO, capture_output=True, text=True, timeout=300)


def test_re_exporting_an_export_keeps_it_and_never_wraps_twice(tmp_path):
    """The CLI given its own embedding.keras re-exports it as it is (same embeddings, not one point), a model wrapped
    twice is refused by the check, and with_preprocessing refuses a wrapped model."""
    network = _tiny_network(32)
    out = tmp_path / "export"
    formats.export_model(with_preprocessing(network), out, ["keras"],
                        np.zeros((1, 32, 32, 3), np.uint8) + 100)
    again = _export_cli(f"--input_model={out / 'embedding.keras'}", f"--output_dir={out}", "--formats=keras",
                        "--num_check_images=2")
    assert again.returncode == 0, again.stderr[-2000:]
    assert "already carries the preprocessing" in again.stderr
    images = np.random.default_rng(3).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    reexported = keras.saving.load_model(out / "embedding.keras")(images).numpy()
    assert relative_difference(reexported, seed_convention(network, images)) < 1e-5
    assert np.min(1 - reexported @ reexported.T + np.eye(4)) > 1e-3  # distinct faces stay distinct

    refused = _export_cli(f"--input_model={out / 'embedding.keras'}", f"--output_dir={tmp_path / 'raw'}",
                          "--formats=keras", "--with_preprocessing=false")
    assert refused.returncode != 0 and not (tmp_path / "raw").exists()
    assert "already carries the preprocessing" in refused.stderr.strip().splitlines()[-1]

    deployed = keras.saving.load_model(out / "embedding.keras")
    with pytest.raises(ValueError, match="already takes uint8 images"):
        with_preprocessing(deployed)
    twice = keras.Input((32, 32, 3), dtype="uint8")
    x = keras.layers.Rescaling(1 / 128, offset=-127.5 / 128, name=PREPROCESS_SCALE)(twice)
    twice = keras.Model(twice, keras.layers.UnitNormalization()(deployed(x)))
    with pytest.raises(ValueError, match="wraps the preprocessing twice"):
        formats.export_model(twice, tmp_path / "twice", ["keras"], images)


def test_a_failed_export_leaves_the_previous_one(tmp_path):
    """A model whose built-in preprocessing is wrong (RGB kept while it says BGR) differs from the independent
    reference: the export fails, and the good files of the earlier export are untouched."""
    network = _tiny_network(32)
    images = np.random.default_rng(4).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    formats.export_model(with_preprocessing(network), tmp_path, ["keras", "saved_model"], images)
    before = {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    broken = with_preprocessing(network)
    broken.get_layer(PREPROCESS_BGR).kernel.assign(np.eye(3, dtype=np.float32).reshape(1, 1, 3, 3))
    with pytest.raises(RuntimeError, match="differ from the reference.*keras.*nothing written"):
        formats.export_model(broken, tmp_path, ["keras", "saved_model"], images)
    after = {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert after == before


def test_re_export_replaces_a_saved_model_folder(tmp_path):
    """A second export over a first swaps the SavedModel folder whole: it runs the new network, and neither the
    previous folder nor the scratch folder is left beside it."""
    first, second = _tiny_network(32), _tiny_network(32)
    dense = second.get_layer("dense")
    dense.kernel.assign(-2.0 * dense.kernel.numpy())  # a different network: outputs scaled by -2 (bias is zero)
    inputs = np.random.default_rng(7).normal(0, 1, (2, 32, 32, 3)).astype(np.float32)
    formats.export_model(first, tmp_path, ["saved_model"], inputs)
    formats.export_model(second, tmp_path, ["saved_model"], inputs)
    reference = second(inputs, training=False).numpy().astype(np.float64)
    assert relative_difference(run_saved_model(tmp_path / "saved_model", inputs), reference) < 1e-5
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["saved_model", formats.REPORT_FILE, formats.METADATA_FILE])


# --- TensorFlow-free deployment: deploy.preprocessing and nets/ need Keras only -----------------------------------

# Keras' numpy backend runs convolutions through jax.lax (keras/src/backend/numpy/nn.py imports jax), so the side venv
# holds keras, jax and numpy and no TensorFlow at all: the script can only pass if nothing it imports needs TensorFlow.
NUMPY_BACKEND_REQUIREMENTS = [f"keras=={keras.__version__}", "jax==0.10.2", f"numpy=={np.__version__}"]
NUMPY_BACKEND_RUN = """
import importlib.util
import sys

import keras
import numpy as np

from deploy.preprocessing import save_keras, with_preprocessing
from nets import get_resnet

weights, images, out = sys.argv[1:]
assert keras.backend.backend() == "numpy", keras.backend.backend()
network = get_resnet(18, image_size=32, seed=0)
network.load_weights(weights)
save_keras(with_preprocessing(network, "BGR", input_size=(40, 36)), out + "/deploy.keras")
loaded = keras.saving.load_model(out + "/deploy.keras")
np.save(out + "/embeddings.npy", keras.ops.convert_to_numpy(loaded(np.load(images), training=False)))
assert importlib.util.find_spec("tensorflow") is None, "this venv has TensorFlow: the run proves nothing"
assert "tensorflow" not in sys.modules
assert not [name for name in sys.modules if name.split(".")[0] == "data"]
"""


@pytest.fixture(scope="module")
def numpy_backend_python() -> Path:
    """The python of a side venv with keras + jax + numpy and no TensorFlow (built once: ~30 s, then reused)."""
    from side_venv import SideVenvUnavailable, side_venv_python

    check = ("import importlib.util, os; os.environ['KERAS_BACKEND'] = 'numpy'; import keras; "
             "assert keras.backend.backend() == 'numpy'; assert importlib.util.find_spec('tensorflow') is None")
    try:
        return side_venv_python("keras-numpy-venv", NUMPY_BACKEND_REQUIREMENTS, check)
    except SideVenvUnavailable as err:
        pytest.skip(f"TensorFlow-free deployment not run: {err}")


def test_deployed_keras_model_is_built_saved_and_run_without_tensorflow(numpy_backend_python, tmp_path):
    """In a venv without TensorFlow (Keras' numpy backend), nets builds a depth-18 IR-ResNet (conv, BN, PReLU,
    dropout, dense), deploy.preprocessing wraps it (rescale, BGR swap, bilinear resize 40x36 -> 32x32, L2 norm) and
    saves it, and the loaded .keras gives the TensorFlow-backend network's output on numpy-preprocessed images."""
    network = get_resnet(18, image_size=32, seed=0)
    rng = np.random.default_rng(8)
    for layer in network.layers:  # non-trivial BN statistics, so inference really uses them
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.moving_mean.assign(rng.normal(0, 0.1, layer.moving_mean.shape))
            layer.moving_variance.assign(rng.uniform(0.5, 2.0, layer.moving_variance.shape))
    network.save_weights(tmp_path / "network.weights.h5")
    images = rng.integers(0, 256, (3, 40, 36, 3), dtype=np.uint8)
    np.save(tmp_path / "images.npy", images)
    result = subprocess.run([str(numpy_backend_python), "-c", NUMPY_BACKEND_RUN, str(tmp_path / "network.weights.h5"),
                             str(tmp_path / "images.npy"), str(tmp_path)], cwd=REPO, capture_output=True, text=True,
                            timeout=300, env={**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
                                              "KERAS_BACKEND": "numpy"})
    assert result.returncode == 0, result.stderr[-3000:]

    x = numpy_bilinear((images[..., ::-1].astype(np.float64) - 127.5) / 128.0, (32, 32))
    reference = network(x.astype(np.float32), training=False).numpy().astype(np.float64)
    reference /= np.linalg.norm(reference, axis=1, keepdims=True)
    assert relative_difference(np.load(tmp_path / "embeddings.npy"), reference) < 1e-5


def _imported_modules(path: Path) -> set[str]:
    """Every module `path` imports, at the top or inside a function (absolute names; relative ones are not used)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_model_code_and_deploy_preprocessing_import_no_tensorflow():
    """nets/ (but its TF1 checkpoint reader and the kernels its layers call on the TensorFlow backend),
    deploy.preprocessing and common/ import neither TensorFlow nor the TensorFlow input pipeline (data/), directly or
    inside a function; nets/ does not reach into deploy/ either. (That the kernels stay unimported on another backend
    is shown by test_deployed_keras_model_is_built_saved_and_run_without_tensorflow.)"""
    files = [REPO / "deploy" / "preprocessing.py", *sorted((REPO / "common").glob("*.py")),
             *sorted(p for p in (REPO / "nets").glob("*.py")
                    if p.name not in ("seed_checkpoint.py", "tensorflow_kernels.py"))]
    offending = {}
    for path in files:
        forbidden = ("tensorflow", "data", "training", "eval") + (("deploy",) if path.parent.name == "nets" else ())
        found = sorted(name for name in _imported_modules(path) if name.split(".")[0] in forbidden)
        if found:
            offending[str(path.relative_to(REPO))] = found
    assert len(files) > 10 and not offending
