"""Margin heads: the losses and their default margins (margins), pure logit functions (face_losses) and the layer
that owns the class weights (margin_head, built for training by make_head) and the same class weights sharded
over replicas (partial_fc)."""

from losses.face_losses import arcface_logits, combined_margin_logits, cosface_logits, softmax_logits
from losses.margin_head import MarginHead, make_head, sparse_softmax_cross_entropy
from losses.margins import DEFAULT_MARGINS, LOSSES, check_margin_options, margins_in_use
from losses.partial_fc import PartialFC, Sample, reshard, shard_ranges

__all__ = ["arcface_logits", "cosface_logits", "combined_margin_logits", "softmax_logits", "DEFAULT_MARGINS", "LOSSES",
           "MarginHead", "PartialFC", "Sample", "check_margin_options", "make_head", "margins_in_use", "reshard",
           "shard_ranges", "sparse_softmax_cross_entropy"]
