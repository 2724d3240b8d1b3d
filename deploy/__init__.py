"""Deployment: the network as users run it, and the files it is shipped in.

* deploy.preprocessing (Keras and keras.ops only; no TensorFlow, no data/): `with_preprocessing` wraps a network so it
  takes uint8 RGB images and returns L2-normalised embeddings, `deployment_info` reads that contract back from a
  model, `standard_model` / `save_keras` write a `.keras` of standard layers that loads with plain Keras on any
  backend;
* deploy.formats (TensorFlow): the SavedModel, .keras, ONNX (tf2onnx) and TFLite writers (`save`, FORMATS), their
  runners (`load_runner`), the check against an independent reference, and `export_model`, which writes a checked
  export with export_report.json and export_metadata.json (the export.py script calls it).

Import the submodule you need: this package imports neither, so deploy.preprocessing stays TensorFlow-free.
"""
