"""Export of the embedding network alone (no class weights): SavedModel, .keras, ONNX and TFLite, each checked.

The TensorFlow side of deployment (the Keras-only model it writes comes from deploy.preprocessing). Formats (file or
folder name inside the output folder):

* ``saved_model`` (``saved_model/``): TensorFlow SavedModel with a ``serve`` endpoint (and ``serving_default``);
* ``keras`` (``embedding.keras``): the Keras model, standard layers only (deploy.preprocessing.standard_model): it
  loads with plain ``keras.saving.load_model`` anywhere, without this package;
* ``onnx`` (``embedding.onnx``): ONNX through Keras' exporter (tf2onnx), for onnxruntime and TensorRT;
* ``tflite`` (``embedding.tflite``): float32 TensorFlow Lite;
* ``tflite_fp16`` / ``tflite_int8``: weights stored as float16, or int8 weights and activations calibrated on sample
  images; smaller and faster, not exact, so their differences are reported but not held to the tolerance.

A model wrapped by deploy.preprocessing.with_preprocessing (uint8 RGB in, L2-normalised embedding out) carries its
input contract; export_metadata.json and the ONNX metadata record it. Every export is run back on check images
(load_runner: each format's own runtime) and compared with reference_embeddings, an independent path (numpy
preprocessing, the bare network, numpy L2): max |exported - reference| / max |reference| must stay under TOLERANCE
for the float formats, and a failed export never replaces an earlier one (common.files.move_into_place).
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

from common.files import move_into_place
from deploy.preprocessing import deployment_info, save_keras, standard_model

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
METADATA_FILE = "export_metadata.json"


def _metadata(model: keras.Model) -> dict:
    """The input contract of an exported model, for export_metadata.json and the ONNX metadata."""
    info = deployment_info(model)
    if info is None:
        return {"input_size": list(model.input_shape[1:3]), "input": "float32, preprocessed (data.preprocess)",
                "output": f"{model.output_shape[-1]}-d embedding, not normalised"}
    return {key: value for key, value in info.items() if key != "network"}


def reference_embeddings(model: keras.Model, inputs: np.ndarray) -> np.ndarray:
    """What `model` should output on `inputs`, computed on an independent path (float64).

    For a with_preprocessing model: the preprocessing written in numpy (channel order, (x - mean) * scale, and
    tf.image.resize when it resizes), the wrapped network's own layers, and a numpy L2 normalisation when the model
    ends with one, so a model whose preprocessing is wrong or doubled disagrees with it. For a bare network: its
    Keras output.
    """
    info = deployment_info(model)
    if info is None:
        return keras.ops.convert_to_numpy(model(inputs, training=False)).astype(np.float64)
    network = info["network"]
    if deployment_info(network) is not None or network.inputs[0].dtype != "float32":
        raise ValueError(f"model {model.name} wraps the preprocessing twice (its network {network.name} takes uint8 "
                         f"images too): every face would map to nearly one point; export the training model instead")
    x = np.asarray(inputs, np.float64)
    x = ((x[..., ::-1] if info["channel_order"] == "BGR" else x) - info["mean"]) * info["scale"]
    if info["resize"]:
        x = tf.image.resize(x, info["network_input_size"], method="bilinear").numpy()
    embeddings = keras.ops.convert_to_numpy(network(x.astype(np.float32), training=False)).astype(np.float64)
    if not info["l2_normalized"]:
        return embeddings
    return embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)


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


def _input_spec(model: keras.Model) -> tf.TensorSpec:
    """The model's input, any batch size: for the SavedModel function and the ONNX graph (a clone never called
    has no traced signature of its own)."""
    return tf.TensorSpec((None, *model.input_shape[1:]), model.inputs[0].dtype, name=model.inputs[0].name)


def _save_saved_model(model: keras.Model, path: Path) -> None:
    """A SavedModel with one `serve` function (also the `serving_default` signature), each weight stored once.

    Keras' model.export stores every variable twice (keras-team/keras#23553: the Keras wrappers and the tf.Variables
    the traced function captures are different objects), doubling the file and the memory of whoever loads it.
    Tracking the underlying tf.Variables only avoids that.
    """
    module = tf.Module()
    module.model_variables = [variable.value for variable in model.weights]

    @tf.function(input_signature=[_input_spec(model)])
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
        save_keras(model, path)
    elif fmt == "onnx":
        model.export(str(path), format="onnx", verbose=False, input_signature=[_input_spec(model)])
        _add_onnx_metadata(path, _metadata(model))
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


def _add_onnx_metadata(path: Path, metadata: dict) -> None:
    """Records the input contract in the ONNX file's metadata_props (onnxruntime: session.get_modelmeta())."""
    import onnx  # only ONNX export needs it

    proto = onnx.load(str(path))
    onnx.helper.set_model_props(proto, {key: json.dumps(value) for key, value in metadata.items()})
    onnx.save(proto, str(path))


def _write_and_check(model: keras.Model, folder: Path, formats: list[str], check_inputs: np.ndarray,
                     reference: np.ndarray, calibration_inputs: np.ndarray) -> list[ExportResult]:
    saved_model_dir = None
    if any(fmt.startswith("tflite") for fmt in formats):
        # TFLite converts from a SavedModel: the exported one, or one written once beside the files.
        saved_model_dir = folder / (FORMATS["saved_model"] if "saved_model" in formats else "tflite_source")
        save(model, "saved_model", saved_model_dir)
    results = []
    for fmt in formats:
        path = folder / FORMATS[fmt]
        if path != saved_model_dir:
            save(model, fmt, path, saved_model_dir=saved_model_dir, calibration_inputs=calibration_inputs)
        difference = max_relative_difference(load_runner(fmt, path)(check_inputs), reference)
        results.append(ExportResult(fmt, str(path), _size(path), difference,
                                    TOLERANCE if fmt in FLOAT_FORMATS else None))
        log.info("%-12s %-40s %12d bytes  max relative difference %.2e%s", fmt, path, results[-1].bytes,
                 difference, "" if results[-1].passed else f"  ABOVE the tolerance {TOLERANCE:g}")
    return results


def export_model(model: keras.Model, output_dir: str | Path, formats: Iterable[str], check_inputs: np.ndarray,
                 calibration_inputs: np.ndarray | None = None) -> list[ExportResult]:
    """Exports `model` in each format, runs each file on `check_inputs` and compares it with reference_embeddings.

    The files are made of standard layers (standard_model) and written to a scratch folder inside `output_dir`;
    only when every float format is within TOLERANCE do they replace the files of an earlier export, with
    OUTPUT_DIR/export_report.json (sizes, differences) and export_metadata.json (input size, channel order,
    normalisation: deployment_info). Otherwise RuntimeError, and `output_dir` is left as it was.

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
    reference = reference_embeddings(model, check_inputs)
    calibration_inputs = check_inputs if calibration_inputs is None else calibration_inputs
    with tempfile.TemporaryDirectory(dir=output_dir, prefix=".export-") as scratch:
        results = _write_and_check(standard_model(model), Path(scratch), formats, check_inputs, reference,
                                   calibration_inputs)
        failed = [r for r in results if not r.passed]
        if failed:
            raise RuntimeError(f"exports differ from the reference by more than {TOLERANCE:g}: "
                               + ", ".join(f"{r.format} {r.max_relative_difference:.2e}" for r in failed)
                               + f"; nothing written to {output_dir}")
        for result in results:
            destination = output_dir / FORMATS[result.format]
            move_into_place(Path(result.path), destination)
            result.path = str(destination)
    from eval.report import write_json_report  # strict JSON: a difference that is not finite is written as null

    write_json_report(output_dir / REPORT_FILE, [dataclasses.asdict(r) for r in results])
    write_json_report(output_dir / METADATA_FILE, _metadata(model))
    return results
