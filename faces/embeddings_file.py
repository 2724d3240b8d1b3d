"""An embeddings file (.npz, read without pickle): the L2-normalised embeddings of a folder of faces with their files,
identities, the model that made them and how (channel order, flip), and the images that were skipped and why."""

from __future__ import annotations

import io
import logging
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from common.files import write_replacing

log = logging.getLogger(__name__)

FORMAT = "insightface_tf.embeddings/1"  # stored in every file; a file without it is refused


@dataclass
class FaceEmbeddings:
    """Embeddings of face images, row k of `embeddings` from `paths[k]` of identity `labels[k]`.

    Attributes:
        embeddings: float32 [N, D], rows of unit L2 norm.
        paths, labels: [N] the image files and their identity names.
        source: the model they come from (EmbeddingModel.source).
        channel_order, flip: how the model was fed (see eval.embeddings.compute_embeddings).
        skipped: (path, reason) of each image left out: unreadable, or no face found.
    """

    embeddings: np.ndarray
    paths: list[str]
    labels: list[str]
    source: str
    channel_order: str
    flip: str
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.embeddings = np.asarray(self.embeddings, np.float32).reshape(len(self.paths), -1)
        if len(self.labels) != len(self.paths):
            raise ValueError(f"{len(self.labels)} labels for {len(self.paths)} images")

    def save(self, path: str | Path) -> Path:
        """Writes the .npz (replacing it atomically); returns its path."""
        buffer = io.BytesIO()
        skipped_paths, reasons = zip(*self.skipped) if self.skipped else ((), ())
        np.savez(buffer, format=np.array(FORMAT), embeddings=self.embeddings, paths=np.array(self.paths, dtype=str),
                 labels=np.array(self.labels, dtype=str), source=np.array(self.source),
                 channel_order=np.array(self.channel_order), flip=np.array(self.flip),
                 skipped_paths=np.array(skipped_paths, dtype=str), skipped_reasons=np.array(reasons, dtype=str))
        return write_replacing(path, buffer.getvalue())

    @classmethod
    def load(cls, path: str | Path) -> "FaceEmbeddings":
        """Reads a file `save` wrote; ValueError naming `path` when it is not one."""
        stored = _read_npz(path)
        if str(stored.get("format", "")) != FORMAT:
            raise ValueError(f"{path}: not an embeddings file of this toolkit (no format {FORMAT!r})")
        return cls(stored["embeddings"], stored["paths"].tolist(), stored["labels"].tolist(), str(stored["source"]),
                   str(stored["channel_order"]), str(stored["flip"]),
                   list(zip(stored["skipped_paths"].tolist(), stored["skipped_reasons"].tolist())))


def _read_npz(path: str | Path) -> dict[str, np.ndarray]:
    """The arrays of an .npz file (no pickled objects); ValueError naming `path` for anything else."""
    try:
        with open(path, "rb") as stream:
            if stream.read(4) != b"PK\x03\x04":
                raise ValueError("not a zip archive")
            stream.seek(0)
            with np.load(stream, allow_pickle=False) as stored:
                return {key: stored[key] for key in stored.files}
    except FileNotFoundError:
        raise FileNotFoundError(f"embeddings file not found: {path}") from None
    except (OSError, EOFError, ValueError, zipfile.BadZipFile) as err:
        raise ValueError(f"{path}: cannot read it as an embeddings file (.npz): {err}") from None
