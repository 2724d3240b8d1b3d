"""nets.export and export.py: every format runs back to the Keras model's embeddings, preprocessing included.

Each exported file is run here with its own runtime (the SavedModel's serving_default signature, onnxruntime, the
TFLite interpreter, keras.saving) and compared with the Keras model; the built-in preprocessing is compared with the
seed's convention written in numpy (RGB uint8 -> channel order -> (x - 127.5) / 128 -> network -> L2 normalise).
"""

from __future__ import annotations

import json
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

from nets import export, get_backbone, get_resnet

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
    deployed = export.with_preprocessing(network, channel_order)
    assert deployed.input.dtype == "uint8" and deployed.output_shape == (None, 512)
    output = deployed(images).numpy()
    assert relative_difference(output, seed_convention(network, images, channel_order)) < 1e-5
    np.testing.assert_allclose(np.linalg.norm(output, axis=1), 1.0, rtol=1e-5)


def test_saved_model_and_tflite_run_back_to_keras(network, images, tmp_path):
    deployed = export.with_preprocessing(network, "BGR")
    results = export.export_model(deployed, tmp_path, ["saved_model", "tflite"], images)
    reference = seed_convention(network, images)
    assert relative_difference(run_saved_model(tmp_path / "saved_model", images), reference) < 1e-4
    assert relative_difference(run_tflite(tmp_path / "embedding.tflite", images), reference) < 1e-4
    report = json.loads((tmp_path / export.REPORT_FILE).read_text())
    assert [r["format"] for r in report] == ["saved_model", "tflite"] == [r.format for r in results]
    assert all(r["max_relative_difference"] < 1e-4 for r in report)
    # float32 weights stored once (Keras' own SavedModel export stores them twice, keras-team/keras#23553)
    assert all(0.95 < r["bytes"] / (4 * network.count_params()) < 1.1 for r in report)


def test_keras_file_without_preprocessing_round_trips(network, images, tmp_path):
    inputs = ((images[..., ::-1].astype(np.float32) - 127.5) / 128.0)
    export.export_model(network, tmp_path, ["keras"], inputs)
    loaded = keras.saving.load_model(tmp_path / "embedding.keras", compile=False)
    reference = network(inputs, training=False).numpy()
    assert relative_difference(loaded(inputs, training=False).numpy(), reference) < 1e-6


@pytest.mark.slow
@pytest.mark.parametrize("preprocessing", [True, False])
def test_onnx_runs_back_to_keras(network, images, tmp_path, preprocessing):
    model = export.with_preprocessing(network) if preprocessing else network
    inputs = images if preprocessing else ((images[..., ::-1].astype(np.float32) - 127.5) / 128.0)
    export.export_model(model, tmp_path, ["onnx"], inputs)
    reference = model(inputs, training=False).numpy().astype(np.float64)
    assert relative_difference(run_onnx(tmp_path / "embedding.onnx", inputs), reference) < 1e-4


@pytest.mark.slow
def test_quantised_tflite_is_reported(network, images, tmp_path):
    deployed = export.with_preprocessing(network)
    calibration = np.random.default_rng(1).integers(0, 256, (16, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    results = {r.format: r for r in export.export_model(deployed, tmp_path, ["tflite_fp16", "tflite_int8"], images,
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
        export.export_model(network, tmp_path, ["pb"], np.zeros((1, IMAGE_SIZE, IMAGE_SIZE, 3), np.float32))
