"""Margin heads: pure logit functions (face_losses) and the layer that owns the class weights (margin_head)."""

from losses.face_losses import arcface_logits, combined_margin_logits, cosface_logits, softmax_logits
from losses.margin_head import LOSSES, MarginHead, sparse_softmax_cross_entropy

__all__ = ["arcface_logits", "cosface_logits", "combined_margin_logits", "softmax_logits", "LOSSES", "MarginHead",
           "sparse_softmax_cross_entropy"]
