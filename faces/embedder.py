"""A model ready for faces: image files -> face crops (faces.images) -> embeddings, through the evaluator's one
embedding path (eval.embeddings.compute_embeddings on models.EmbeddingModel.embed_function), so an embedding here
equals the one eval_ckpt_file.py scores."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from data.image_folders import printable_path
from eval.embeddings import compute_embeddings
from faces.embeddings_file import FaceEmbeddings
from faces.images import Detector, FaceCropper, list_face_images
from models import EmbeddingModel, load_embedding_model

log = logging.getLogger(__name__)


class FaceEmbedder:
    """Embeds face images with one model.

    Args:
        model: the loaded model (models.load_embedding_model); fed as evaluation feeds it (its embed_function).
        flip: "sum", "none" or "concat" (eval.embeddings.compute_embeddings).
        aligned: the images are aligned face crops: resize them to the model's input size instead of detecting.
        batch_size: images per forward pass.
        detector: the face detector for unaligned images (default: align.detector.FaceDetector, built when needed).
    """

    def __init__(self, model: EmbeddingModel, flip: str = "sum", aligned: bool = False, batch_size: int = 32,
                 detector: Detector | None = None) -> None:
        self.model = model
        self.flip = flip
        self.batch_size = batch_size
        self.crop = FaceCropper(model.input_size, aligned, detector)
        self._embed = model.embed_function()

    @classmethod
    def load(cls, path: str | Path, channel_order: str | None = None, **options) -> "FaceEmbedder":
        """The embedder of the model at `path` (anything models.load_embedding_model reads); `options` as __init__."""
        return cls(load_embedding_model(path, channel_order), **options)

    def embed_crops(self, crops: np.ndarray) -> np.ndarray:
        """float32 [N, D] L2-normalised embeddings of uint8 RGB face crops [N, H, W, 3] at the model's input size."""
        embeddings, _ = compute_embeddings(self._embed, crops, self.batch_size, None, self.flip, description="faces")
        return embeddings.astype(np.float32)

    def embed_photo(self, path: str | Path) -> np.ndarray:
        """The [D] embedding of the face in one photo; faces.images.NoFaceError when there is none."""
        return self.embed_crops(self.crop(path)[None])[0]

    def embed_paths(self, paths: Sequence[str], labels: Sequence[str]) -> FaceEmbeddings:
        """Embeddings of the faces in `paths` (identity `labels`); an unreadable image or one without a face is
        skipped, logged and listed in the result's `skipped`, never fatal."""
        crops, kept, skipped = [], [], []
        for index, path in enumerate(paths):
            try:
                crops.append(self.crop(path))
            except (OSError, ValueError) as err:  # NoFaceError is a ValueError
                skipped.append((str(path), str(err)))
                log.warning("skipped %s: %s", printable_path(path), err)
                continue
            kept.append(index)
        if not crops:
            raise ValueError(f"no face found in any of the {len(paths)} images (first: {skipped[0][1]})" if skipped
                             else "no images to embed")
        return FaceEmbeddings(self.embed_crops(np.stack(crops)), [str(paths[i]) for i in kept],
                              [str(labels[i]) for i in kept], self.model.source, self.model.channel_order, self.flip,
                              skipped)

    def embed_folder(self, folder: str | Path) -> FaceEmbeddings:
        """Embeddings of every image of `folder` (faces.images.list_face_images: identity folders or flat)."""
        paths, labels = list_face_images(folder)
        result = self.embed_paths(paths, labels)
        log.info("%s: embedded %d of %d images (%d identities) with %s; %d skipped", folder, len(result.paths),
                 len(paths), len(set(result.labels)), self.model.source, len(result.skipped))
        return result
