"""Models: a path (a .keras file, an export, a training checkpoint or run folder, a seed TF1 checkpoint, a released
recogniser) -> an embedding model.

`load_embedding_model(path, channel_order=None)` recognises what is at `path` and returns an `EmbeddingModel`: the
keras.Model (images -> embeddings; none for an export of export.py, run by its own runtime), the channel order to
feed it, its input size, the resolved path, its kind, and `embed_function()`: uint8 RGB batches -> embeddings.
Evaluation (eval_ckpt_file.py), export (export.py) and fine-tuning (training.checkpoints) all load through here.

* models.loading: EmbeddingModel, KINDS (one loader per kind of model file) and load_embedding_model;
* models.exported: our own exports (SavedModel, ONNX, TFLite) recognised by their recorded input contract;
* models.checkpoints: reading TensorFlow checkpoints: the one path resolver (`resolve_checkpoint`), ours vs the
  seed's (`is_object_checkpoint`), the run's args.json, TF read errors as one ValueError (`reading`);
* models.channel_order: the one channel-order decision (explicit > recorded > the seed's BGR).

The network of a run is rebuilt from its args.json by nets.spec.NetworkSpec; the seed's checkpoints are mapped onto
our IR-ResNet by nets.seed_checkpoint.
"""

from models.channel_order import resolve_channel_order
from models.checkpoints import resolve_checkpoint
from models.loading import KINDS, EmbeddingModel, load_embedding_model

__all__ = ["KINDS", "EmbeddingModel", "load_embedding_model", "resolve_channel_order", "resolve_checkpoint"]
