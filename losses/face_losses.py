"""Margin heads of the seed (losses/face_losses.py), as pure functions of (embeddings, labels, class weights).

Every function returns the [N, C] logits; the caller applies sparse softmax cross-entropy, as the seed did.
Weights have the seed's shape [D, C] (one column per class). Embedding rows and weight columns are L2-normalised
with an epsilon and cosines are clipped to [-1, 1], so zero embeddings and |cos| = 1 give finite values and
gradients (the seed had neither). Everything is computed in float32, also under a mixed-precision policy.

Target-logit formulas (theta = angle between embedding and its class column; other classes get s*cos(theta)):

* ArcFace:   s*cos(theta + m) while cos(theta) > cos(pi - m), else s*(cos(theta) - m*sin(m)) (the seed's fallback);
* CosFace:   s*(cos(theta) - m);
* combined:  s*(cos(m1*theta + m2) - m3) (insightface's combined margin; no fallback, as in the seed);
* softmax:   plain logits embeddings @ weights, no normalisation, no margin.
"""

from __future__ import annotations

import math

from keras import ops

from losses.margins import DEFAULT_MARGINS

NORM_EPSILON = 1e-12
# Below this, 1 - cos^2 is treated as 0 so that sqrt never sees 0 in the backward pass.
SQRT_FLOOR = 1e-12


def l2_normalize(x, axis: int):
    """x / max(||x||, eps) along `axis`, in float32."""
    x = ops.cast(x, "float32")
    norm = ops.sqrt(ops.maximum(ops.sum(ops.square(x), axis=axis, keepdims=True), NORM_EPSILON**2))
    return x / norm


def cosine(embeddings, weights):
    """cos(theta) [N, C] between the rows of embeddings [N, D] and the columns of weights [D, C], clipped to [-1, 1]."""
    cos = ops.matmul(l2_normalize(embeddings, axis=1), l2_normalize(weights, axis=0))
    return ops.clip(cos, -1.0, 1.0)


def _safe_sine(cos):
    """sqrt(1 - cos^2) with a finite gradient where |cos| = 1 (the value there is exactly 0)."""
    sin_sq = 1.0 - ops.square(cos)
    positive = sin_sq > SQRT_FLOOR
    return ops.where(positive, ops.sqrt(ops.where(positive, sin_sq, 1.0)), 0.0)


def _target_cosine(cos, m1: float, m2: float, m3: float, arcface_fallback: bool):
    """cos(m1*theta + m2) - m3 for every entry of cos; with the ArcFace fallback where theta + m2 passes pi."""
    if m1 == 1.0:
        # cos(theta + m2) by the angle-sum identity: exact and smooth at |cos| = 1, unlike acos.
        target = cos if m2 == 0.0 else cos * math.cos(m2) - _safe_sine(cos) * math.sin(m2)
    else:
        eps = 1e-7
        theta = ops.arccos(ops.clip(cos, -1.0 + eps, 1.0 - eps))
        target = ops.cos(m1 * theta + m2)
    target = target - m3
    if arcface_fallback:
        threshold = math.cos(math.pi - m2)
        target = ops.where(cos > threshold, target, cos - m2 * math.sin(m2))
    return target


def margin_logits(cos, labels, *, s: float, m1: float = 1.0, m2: float = 0.0, m3: float = 0.0,
                  arcface_fallback: bool = False):
    """s * cos with the margin applied to the label column: the common core of every margin head.

    Args:
        cos: [N, C] float32 cosines.
        labels: [N] integer class indices.
        s: scale.
        m1, m2, m3: combined margin cos(m1*theta + m2) - m3.
        arcface_fallback: use s*(cos - m2*sin(m2)) where cos <= cos(pi - m2), as the seed's ArcFace did.
    """
    mask = ops.one_hot(ops.cast(labels, "int32"), ops.shape(cos)[-1], dtype="float32")
    target = _target_cosine(cos, m1, m2, m3, arcface_fallback)
    return s * (cos + mask * (target - cos))


def arcface_logits(embeddings, labels, weights, s: float = DEFAULT_MARGINS["arcface"]["s"],
                   m: float = DEFAULT_MARGINS["arcface"]["m"]):
    """ArcFace (additive angular margin) logits [N, C], with the seed's fallback past theta = pi - m."""
    return margin_logits(cosine(embeddings, weights), labels, s=s, m2=m, arcface_fallback=True)


def cosface_logits(embeddings, labels, weights, s: float = DEFAULT_MARGINS["cosface"]["s"],
                   m: float = DEFAULT_MARGINS["cosface"]["m"]):
    """CosineFace (additive cosine margin) logits [N, C]."""
    return margin_logits(cosine(embeddings, weights), labels, s=s, m3=m)


def combined_margin_logits(embeddings, labels, weights, s: float = DEFAULT_MARGINS["combined"]["s"],
                           m1: float = DEFAULT_MARGINS["combined"]["m1"],
                           m2: float = DEFAULT_MARGINS["combined"]["m2"],
                           m3: float = DEFAULT_MARGINS["combined"]["m3"]):
    """Combined margin logits [N, C]: target s*(cos(m1*theta + m2) - m3); (1, 0, 0) is the normalised softmax."""
    return margin_logits(cosine(embeddings, weights), labels, s=s, m1=m1, m2=m2, m3=m3)


def softmax_logits(embeddings, labels, weights):
    """Plain softmax logits embeddings @ weights ([N, C]); labels are unused (kept for a uniform signature)."""
    del labels
    return ops.matmul(ops.cast(embeddings, "float32"), ops.cast(weights, "float32"))
