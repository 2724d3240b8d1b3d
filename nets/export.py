"""Export of the embedding network alone (no class weights): SavedModel, .keras, ONNX and TFLite, each checked.

Formats (file or folder name inside the output folder):

* ``saved_model`` (``saved_model/``): TensorFlow SavedModel with a ``serve`` endpoint (and ``serving_default``);
* ``keras`` (``embedding.keras``): the Keras model (loading it needs this package importable: ``import nets.export``
  registers the preprocessing layer, ``nets`` the frozen-gamma batch norm);
* ``onnx`` (``embedding.onnx``): ONNX through Keras' exporter (tf2onnx), for onnxruntime and TensorRT;
* ``tflite`` (``embedding.tflite``): float32 TensorFlow Lite;
* ``tflite_fp16`` / ``tflite_int8``: weights stored as float16, or int8 weights and activations calibrated on sample
  images; smaller and faster, not exact, so their differences are reported but not held to the tolerance.

`with_preprocessing` wraps the network so the exported file takes uint8 RGB images [N, H, W, 3] and returns
L2-normalised embeddings: the channel order and the (x - 127.5) / 128 scaling (data.preprocess.normalize) travel
inside the file and deployers cannot get them wrong. Every export is run back on check images and compared with the
Keras model: max |exported - keras| / max |keras| must stay under TOLERANCE for the float formats.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import tempfile
import warnings
from pathlib import Path
from typing import Callable, Iterable

import keras
import numpy as np
import tensorflow as tf

from data.preprocess import check_channel_order, normalize

log = logging.getLogger(__name__)

FORMATS: dict[str, str] = {
    "saved_model": "saved_model",
    "keras": "embedding.keras",
    "onnx": "embedding.onnx",
    "tflite": "embedding.tflite",
    "tflite_fp16": "embedding_fp16.tflite",
    "tflite_int8": "embedding_int8.tflite",
}
FLOAT_FORMATS = ("saved_model", "keras", "onnx", "tflite")
TOLERANCE = 1e-4
REPORT_FILE = "export_report.json"


@keras.saving.register_keras_serializable(package="insightface_tf")
class FacePreprocessing(keras.layers.Layer):
    """RGB images in 0..255 (uint8 or float) [N, H, W, 3] -> the network input, by data.preprocess.normalize."""

    def __init__(self, channel_order: str = "BGR", **kwargs) -> None:
        check_channel_order(channel_order)
        super().__init__(**kwargs)
        self.channel_order = channel_order

    def call(self, images):
        return normalize(images, self.channel_order)

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return input_shape

    def get_config(self) -> dict:
        return {**super().get_config(), "channel_order": self.channel_order}


def with_preprocessing(model: keras.Model, channel_order: str = "BGR") -> keras.Model:
    """`model` wrapped for deployment: uint8 RGB [N, H, W, 3] in, L2-normalised embedding out.

    Args:
        model: an embedding network that takes normalised images (data.preprocess).
        channel_order: the order the network was trained with ("BGR" for the seed and its checkpoints).
    """
    inputs = keras.Input(model.input_shape[1:], dtype="uint8", name="rgb_uint8")
    x = FacePreprocessing(channel_order, name="preprocess")(inputs)
    x = model(x, training=False)
    x = keras.layers.UnitNormalization(axis=-1, name="l2_normalize")(x)
    return keras.Model(inputs, x, name=f"{model.name}_deploy")


def max_relative_difference(actual: np.ndarray, reference: np.ndarray) -> float:
    """max |actual - reference| / max |reference|: the error relative to the output's scale."""
    return float(np.max(np.abs(np.asarray(actual, np.float64) - reference)) / np.max(np.abs(reference)))


def _representative_dataset(images: np.ndarray):
    def generate():
        for image in images:
            yield [image[None]]
    return generate


def _tflite_bytes(saved_model_dir: Path, fmt: str, calibration_inputs: np.ndarray | None) -> bytes:
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model_dir))
    if fmt == "tflite_fp16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif fmt == "tflite_int8":
        if calibration_inputs is None or not len(calibration_inputs):
            raise ValueError("tflite_int8 needs calibration images (the model's inputs) to set activation ranges")
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = _representative_dataset(calibration_inputs)
    return converter.convert()


def _save_saved_model(model: keras.Model, path: Path) -> None:
    """A SavedModel with one `serve` function (also the `serving_default` signature), each weight stored once.

    Keras' model.export stores every variable twice (keras-team/keras#23553: the Keras wrappers and the tf.Variables
    the traced function captures are different objects), doubling the file and the memory of whoever loads it.
    Tracking the underlying tf.Variables only avoids that.
    """
    module = tf.Module()
    module.model_variables = [variable.value for variable in model.weights]
    spec = tf.TensorSpec((None, *model.input_shape[1:]), model.inputs[0].dtype, name=model.inputs[0].name)

    @tf.function(input_signature=[spec])
    def serve(images):
        return model(images, training=False)

    module.serve = serve
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})


def save(model: keras.Model, fmt: str, path: str | Path, *, saved_model_dir: str | Path | None = None,
         calibration_inputs: np.ndarray | None = None) -> Path:
    """Writes `model` in format `fmt` (one of FORMATS) to `path`.

    Args:
        saved_model_dir: an existing SavedModel of `model` to convert to TFLite (one is written otherwise).
        calibration_inputs: model inputs for the int8 activation ranges (tflite_int8 only).
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; expected one of {', '.join(FORMATS)}")
    path = Path(path)
    if fmt == "saved_model":
        _save_saved_model(model, path)
    elif fmt == "keras":
        model.save(path)
    elif fmt == "onnx":
        model.export(str(path), format="onnx", verbose=False)
    elif saved_model_dir is not None:
        path.write_bytes(_tflite_bytes(Path(saved_model_dir), fmt, calibration_inputs))
    else:
        with tempfile.TemporaryDirectory() as folder:
            save(model, "saved_model", Path(folder) / "saved_model")
            path.write_bytes(_tflite_bytes(Path(folder) / "saved_model", fmt, calibration_inputs))
    return path


def _tflite_runner(path: Path) -> Callable[[np.ndarray], np.ndarray]:
    with warnings.catch_warnings():
        # TF 2.21 still ships tf.lite.Interpreter but warns that ai_edge_litert (not in our stack) replaces it.
        warnings.simplefilter("ignore", UserWarning)
        interpreter = tf.lite.Interpreter(model_path=str(path))
    input_index = interpreter.get_input_details()[0]["index"]
    output_index = interpreter.get_output_details()[0]["index"]
    allocated_shape = None

    def infer(inputs: np.ndarray) -> np.ndarray:
        nonlocal allocated_shape
        if inputs.shape != allocated_shape:  # the batch size is resizable; resizing reallocates
            interpreter.resize_tensor_input(input_index, inputs.shape)
            interpreter.allocate_tensors()
            allocated_shape = inputs.shape
        interpreter.set_tensor(input_index, inputs)
        interpreter.invoke()
        return interpreter.get_tensor(output_index)

    return infer


def load_runner(fmt: str, path: str | Path) -> Callable[[np.ndarray], np.ndarray]:
    """Loads an exported file with that format's own runtime; returns inputs (a batch) -> embeddings (numpy)."""
    path = Path(path)
    if fmt == "saved_model":
        loaded = tf.saved_model.load(str(path))  # the closure keeps it alive: its functions do not hold the variables
        return lambda inputs: loaded.serve(tf.constant(inputs)).numpy()
    if fmt == "keras":
        model = keras.saving.load_model(path, compile=False)
        return lambda inputs: keras.ops.convert_to_numpy(model(inputs, training=False))
    if fmt == "onnx":
        import onnxruntime  # only running ONNX files needs it

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        input_name = session.get_inputs()[0].name
        return lambda inputs: session.run(None, {input_name: inputs})[0]
    if fmt in FORMATS:
        return _tflite_runner(path)
    raise ValueError(f"unknown export format {fmt!r}; expected one of {', '.join(FORMATS)}")


@dataclasses.dataclass
class ExportResult:
    """One exported file and how far its outputs are from the Keras model's on the check inputs."""

    format: str
    path: str
    bytes: int
    max_relative_difference: float
    tolerance: float | None  # None for the quantised formats (reported only)

    @property
    def passed(self) -> bool:
        return self.tolerance is None or self.max_relative_difference <= self.tolerance


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


def export_model(model: keras.Model, output_dir: str | Path, formats: Iterable[str], check_inputs: np.ndarray,
                 calibration_inputs: np.ndarray | None = None) -> list[ExportResult]:
    """Exports `model` in each format, runs each file on `check_inputs` and compares with the Keras model.

    Writes OUTPUT_DIR/export_report.json and logs a table. Raises RuntimeError (after writing everything) when a
    float format differs from Keras by more than TOLERANCE.

    Args:
        model: the network to export, as deployed (e.g. with_preprocessing(...)); it must not hold class weights.
        output_dir: folder for the files (see FORMATS).
        formats: names from FORMATS.
        check_inputs: a batch of model inputs (uint8 RGB for a wrapped model) for the comparison.
        calibration_inputs: model inputs for the int8 calibration; default `check_inputs`.
    """
    formats = list(formats)
    unknown = [fmt for fmt in formats if fmt not in FORMATS]
    if unknown:
        raise ValueError(f"unknown export formats {unknown}; expected some of {', '.join(FORMATS)}")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    reference = keras.ops.convert_to_numpy(model(check_inputs, training=False)).astype(np.float64)
    calibration_inputs = check_inputs if calibration_inputs is None else calibration_inputs
    results = []
    with tempfile.TemporaryDirectory() as scratch:
        saved_model_dir = None
        if any(fmt.startswith("tflite") for fmt in formats):
            # TFLite converts from a SavedModel: reuse the exported one, or write one once to a scratch folder.
            saved_model_dir = output_dir / FORMATS["saved_model"] if "saved_model" in formats else Path(scratch) / "sm"
            save(model, "saved_model", saved_model_dir)
        for fmt in formats:
            path = output_dir / FORMATS[fmt]
            if not (fmt == "saved_model" and saved_model_dir == path):
                save(model, fmt, path, saved_model_dir=saved_model_dir, calibration_inputs=calibration_inputs)
            difference = max_relative_difference(load_runner(fmt, path)(check_inputs), reference)
            results.append(ExportResult(fmt, str(path), _size(path), difference,
                                        TOLERANCE if fmt in FLOAT_FORMATS else None))
            log.info("%-12s %-40s %12d bytes  max relative difference %.2e%s", fmt, path, results[-1].bytes,
                     difference, "" if results[-1].passed else f"  ABOVE the tolerance {TOLERANCE:g}")
    (output_dir / REPORT_FILE).write_text(json.dumps([dataclasses.asdict(r) for r in results], indent=2) + "\n")
    failed = [r for r in results if not r.passed]
    if failed:
        raise RuntimeError(f"exports differ from the Keras model by more than {TOLERANCE:g}: "
                           + ", ".join(f"{r.format} {r.max_relative_difference:.2e}" for r in failed))
    return results
