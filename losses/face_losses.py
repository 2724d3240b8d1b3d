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

Two options of arcface_torch's CombinedMarginLoss (both off by default, as in the seed):

* easy_margin (ArcFace, combined): the target gets the margin only where cos(theta) > 0 and stays s*cos(theta)
  elsewhere, in place of ArcFace's fallback past pi - m;
* interclass_filtering_threshold t > 0 (every margin loss): a negative (non-label) cosine above t is set to 0 before
  the margin, so its logit is 0 and no gradient flows to it or to its class column from that row.
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


def _target_cosine(cos, m1: float, m2: float, m3: float, arcface_fallback: bool, easy_margin: bool):
    """cos(m1*theta + m2) - m3 for every entry of cos; where cos <= 0 plain cos with easy_margin, else with the
    ArcFace fallback where theta + m2 passes pi."""
    if m1 == 1.0:
        # cos(theta + m2) by the angle-sum identity: exact and smooth at |cos| = 1, unlike acos.
        target = cos if m2 == 0.0 else cos * math.cos(m2) - _safe_sine(cos) * math.sin(m2)
    else:
        eps = 1e-7
        theta = ops.arccos(ops.clip(cos, -1.0 + eps, 1.0 - eps))
        target = ops.cos(m1 * theta + m2)
    target = target - m3
    if easy_margin:
        return ops.where(cos > 0.0, target, cos)
    if arcface_fallback:
        threshold = math.cos(math.pi - m2)
        target = ops.where(cos > threshold, target, cos - m2 * math.sin(m2))
    return target


def filter_interclass(cos, label_mask, threshold: float):
    """cos with every negative above `threshold` set to 0 (arcface_torch's interclass filtering): those entries
    take no gradient, and the label column is never filtered. label_mask: [N, C] one-hot float32 of the labels."""
    filtered = ops.logical_and(cos > threshold, label_mask == 0.0)
    return ops.where(filtered, 0.0, cos)


def margin_logits(cos, labels, *, s: float, m1: float = 1.0, m2: float = 0.0, m3: float = 0.0,
                  arcface_fallback: bool = False, easy_margin: bool = False,
                  interclass_filtering_threshold: float = 0.0):
    """s * cos with the margin applied to the label column: the common core of every margin head.

    Args:
        cos: [N, C] float32 cosines.
        labels: [N] integer class indices.
        s: scale.
        m1, m2, m3: combined margin cos(m1*theta + m2) - m3.
        arcface_fallback: use s*(cos - m2*sin(m2)) where cos <= cos(pi - m2), as the seed's ArcFace did.
        easy_margin: instead, no margin where cos <= 0 (the target logit stays s*cos there).
        interclass_filtering_threshold: > 0: negatives whose cosine exceeds it are set to 0 (filter_interclass).
    """
    mask = ops.one_hot(ops.cast(labels, "int32"), ops.shape(cos)[-1], dtype="float32")
    if interclass_filtering_threshold > 0.0:
        cos = filter_interclass(cos, mask, interclass_filtering_threshold)
    target = _target_cosine(cos, m1, m2, m3, arcface_fallback, easy_margin)
    return s * (cos + mask * (target - cos))


def loss_logits(loss: str, cos, labels, margins: dict[str, float], easy_margin: bool = False,
                interclass_filtering_threshold: float = 0.0):
    """The margin logits of a cosine loss ("arcface", "cosface" or "combined") from its cosines [N, C]; `margins`:
    the loss's (s, m) or (s, m1, m2, m3). What arcface_logits, cosface_logits and combined_margin_logits compute
    after their cosine, for heads that also need the cosines themselves (one matmul for both)."""
    filtering = interclass_filtering_threshold
    if loss == "arcface":
        return margin_logits(cos, labels, s=margins["s"], m2=margins["m"], arcface_fallback=True,
                             easy_margin=easy_margin, interclass_filtering_threshold=filtering)
    if loss == "cosface":  # no angle to limit: easy_margin is refused earlier (margins.check_margin_options)
        return margin_logits(cos, labels, s=margins["s"], m3=margins["m"], interclass_filtering_threshold=filtering)
    if loss == "combined":
        return margin_logits(cos, labels, s=margins["s"], m1=margins["m1"], m2=margins["m2"], m3=margins["m3"],
                             easy_margin=easy_margin, interclass_filtering_threshold=filtering)
    raise ValueError(f"loss_logits: expected a cosine loss (arcface, cosface, combined), received {loss!r}")


def arcface_logits(embeddings, labels, weights, s: float = DEFAULT_MARGINS["arcface"]["s"],
                   m: float = DEFAULT_MARGINS["arcface"]["m"], easy_margin: bool = False,
                   interclass_filtering_threshold: float = 0.0):
    """ArcFace (additive angular margin) logits [N, C], with the seed's fallback past theta = pi - m (or, with
    easy_margin, no margin where theta >= pi/2)."""
    return loss_logits("arcface", cosine(embeddings, weights), labels, {"s": s, "m": m}, easy_margin,
                       interclass_filtering_threshold)


def cosface_logits(embeddings, labels, weights, s: float = DEFAULT_MARGINS["cosface"]["s"],
                   m: float = DEFAULT_MARGINS["cosface"]["m"], interclass_filtering_threshold: float = 0.0):
    """CosineFace (additive cosine margin) logits [N, C]."""
    return loss_logits("cosface", cosine(embeddings, weights), labels, {"s": s, "m": m},
                       interclass_filtering_threshold=interclass_filtering_threshold)


def combined_margin_logits(embeddings, labels, weights, s: float = DEFAULT_MARGINS["combined"]["s"],
                           m1: float = DEFAULT_MARGINS["combined"]["m1"],
                           m2: float = DEFAULT_MARGINS["combined"]["m2"],
                           m3: float = DEFAULT_MARGINS["combined"]["m3"], easy_margin: bool = False,
                           interclass_filtering_threshold: float = 0.0):
    """Combined margin logits [N, C]: target s*(cos(m1*theta + m2) - m3); (1, 0, 0) is the normalised softmax.
    With easy_margin the target stays s*cos(theta) where theta >= pi/2."""
    return loss_logits("combined", cosine(embeddings, weights), labels, {"s": s, "m1": m1, "m2": m2, "m3": m3},
                       easy_margin, interclass_filtering_threshold)


def softmax_logits(embeddings, labels, weights):
    """Plain softmax logits embeddings @ weights ([N, C]); labels are unused (kept for a uniform signature)."""
    del labels
    return ops.matmul(ops.cast(embeddings, "float32"), ops.cast(weights, "float32"))
