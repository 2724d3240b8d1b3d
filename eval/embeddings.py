"""Embeddings of an image set for verification: batches normalised (common.preprocessing), left-right flip, L2 norm."""

from __future__ import annotations

import logging
from typing import Any, Callable

import numpy as np
from tqdm import tqdm

from common.preprocessing import Preprocessing, as_preprocessing, normalize

log = logging.getLogger(__name__)

FLIP_MODES = ("sum", "none", "concat")
EmbedFn = Callable[[Any], Any]  # float32 [b, H, W, 3] normalised batch (or the uint8 RGB one) -> [b, D] embeddings


def _l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm; zero rows stay zero (as sklearn.preprocessing.normalize)."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms == 0.0, 1.0, norms)


def _embed(embed_fn: EmbedFn, rgb_batch: np.ndarray, preprocessing: Preprocessing | None,
           first_row: int) -> np.ndarray:
    inputs = rgb_batch if preprocessing is None else normalize(rgb_batch, preprocessing)
    embeddings = np.asarray(embed_fn(inputs), dtype=np.float64)
    if embeddings.ndim != 2 or embeddings.shape[0] != rgb_batch.shape[0]:
        raise ValueError(f"embed_fn returned shape {embeddings.shape} for a batch of {rgb_batch.shape[0]} images "
                         f"(rows {first_row}..); expected [batch, embedding_size]")
    if not np.all(np.isfinite(embeddings)):
        raise ValueError(f"embed_fn returned NaN or Inf for images {first_row}..{first_row + len(rgb_batch) - 1}")
    return embeddings


def _check_weights(weights: np.ndarray | None, num_images: int) -> np.ndarray:
    """The XNorm weight of each image: ones when none are given; ValueError unless [N] finite, >= 0, not all 0."""
    if weights is None:
        return np.ones(num_images)
    weights = np.asarray(weights, dtype=np.float64)
    if weights.shape != (num_images,) or not np.all(np.isfinite(weights) & (weights >= 0)) or not weights.any():
        raise ValueError(f"weights must be [{num_images}] finite values >= 0, not all 0 (one per image); received "
                         f"shape {weights.shape}")
    return weights


def compute_embeddings(embed_fn: EmbedFn, images_uint8_rgb: np.ndarray, batch_size: int,
                       preprocessing: Preprocessing | str | None = "BGR",
                       flip: str = "sum", description: str = "embeddings",
                       weights: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """Embeds every image (and its left-right mirror) and returns L2-normalised float64 embeddings and XNorm.

    Args:
        embed_fn: maps a float32 batch already normalised by `common.preprocessing.normalize` to [b, D] embeddings
            (e.g. the embedding keras.Model in inference mode); with preprocessing=None, a uint8 RGB batch
            (models.EmbeddingModel.embed_function).
        images_uint8_rgb: [N, H, W, 3] uint8 RGB; never copied whole (batches and their flips are made one at a time).
        batch_size: images per embed_fn call.
        preprocessing: the network's input convention (common.preprocessing.Preprocessing); a channel order
            alone ("BGR" for the seed, or "RGB") means the seed's (x - 127.5) / 128, which the networks trained here take;
            None: embed_fn normalises itself. An embed_fn returning L2-normalised embeddings (an export) makes
            "sum" add unit vectors, not the raw embeddings, and XNorm 1.
        flip: "sum": emb(image) + emb(mirror), then L2 (the seed and InsightFace); "none": emb(image), L2;
            "concat": [L2(emb(image)), L2(emb(mirror))] / sqrt(2) (facenet's concatenation, scaled to unit norm so
            squared distances stay in [0, 4], half of facenet's).
        description: label of the progress bar.
        weights: [N] how many times each image counts in XNorm (None: once each). A verification set that holds
            each distinct image once passes how many pair slots each fills, so that XNorm stays the seed's mean over
            the two images of every pair.

    Returns:
        embeddings [N, D] ([N, 2D] for "concat"), rows of unit norm; XNorm = the (weighted) mean L2 norm of the raw
        embeddings of the images embedded, mirrors included: the seed's statistic.
    """
    if preprocessing is not None:
        preprocessing = as_preprocessing(preprocessing)  # checked once, not per batch
    if flip not in FLIP_MODES:
        raise ValueError(f"unknown flip {flip!r}; expected one of {', '.join(FLIP_MODES)}")
    if images_uint8_rgb.ndim != 4 or images_uint8_rgb.shape[-1] != 3 or images_uint8_rgb.dtype != np.uint8:
        raise ValueError(f"images must be uint8 RGB [N, H, W, 3]; received {images_uint8_rgb.dtype} "
                         f"{images_uint8_rgb.shape}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, received {batch_size}")
    weights = _check_weights(weights, len(images_uint8_rgb))
    parts: list[np.ndarray] = []
    norm_sum, norm_count = 0.0, 0
    for start in tqdm(range(0, len(images_uint8_rgb), batch_size), desc=description, unit="batch", leave=False):
        batch = images_uint8_rgb[start:start + batch_size]
        views = [_embed(embed_fn, batch, preprocessing, start)]
        if flip != "none":
            views.append(_embed(embed_fn, batch[:, :, ::-1], preprocessing, start))
        batch_weights = weights[start:start + batch_size]
        for view in views:
            norm_sum += float(np.linalg.norm(view, axis=1) @ batch_weights)
            norm_count += float(batch_weights.sum())
        if flip == "sum":
            parts.append(views[0] + views[1])
        elif flip == "concat":
            parts.append(np.concatenate([_l2_normalize(v) for v in views], axis=1))
        else:
            parts.append(views[0])
    if not parts:
        raise ValueError("no images to embed")
    return _l2_normalize(np.concatenate(parts)), norm_sum / norm_count
