"""The training-time head: a Keras layer that owns the class weights and calls a margin function of face_losses."""

from __future__ import annotations

import keras
from keras import ops

from losses import face_losses
from losses.margins import margins_in_use, resolve_margins

# The name of the seed's variable scope of the class weights, whatever the loss; a training head keeps it.
SEED_HEAD_NAME = "arcface_loss"


@keras.saving.register_keras_serializable(package="insightface_tf")
class MarginHead(keras.layers.Layer):
    """Class weights `embedding_weights` [D, C] (Xavier normal) and the margin logits of one loss.

    Call it as ``head(embeddings, labels)`` for the training logits (margin applied) and ``head.plain_logits(x)``
    for the same logits without the margin (s * cos, or the raw product for softmax), whose argmax is the
    prediction. The weights stay float32 under a mixed-precision policy.

    Args:
        num_classes: number of identities C.
        loss: one of LOSSES.
        margins: overrides of DEFAULT_MARGINS[loss] (s, m for arcface/cosface; s, m1, m2, m3 for combined).
        seed: seed of the weight initialiser.
        easy_margin: arcface/combined: no margin where cos(theta) <= 0 (face_losses); refused for other losses.
        interclass_filtering_threshold: in [0, 1); > 0 zeroes the negative cosines above it (face_losses);
            refused for softmax.
    """

    def __init__(self, num_classes: int, loss: str = "arcface", margins: dict[str, float] | None = None,
                 seed: int | None = None, easy_margin: bool = False, interclass_filtering_threshold: float = 0.0,
                 **kwargs) -> None:
        margins = resolve_margins(loss, margins, easy_margin, interclass_filtering_threshold)
        kwargs.setdefault("name", f"{loss}_loss")
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.num_classes = int(num_classes)
        self.loss = loss
        self.margins = margins
        self.seed = seed
        self.easy_margin = bool(easy_margin)
        self.interclass_filtering_threshold = float(interclass_filtering_threshold)

    def build(self, embeddings_shape: tuple) -> None:
        self.embedding_weights = self.add_weight(
            name="embedding_weights", shape=(int(embeddings_shape[-1]), self.num_classes),
            initializer=keras.initializers.GlorotNormal(seed=self.seed), dtype="float32")

    def call(self, embeddings, labels):
        if self.loss == "softmax":
            return face_losses.softmax_logits(embeddings, labels, self.embedding_weights)
        return face_losses.loss_logits(self.loss, face_losses.cosine(embeddings, self.embedding_weights), labels,
                                       self.margins, self.easy_margin, self.interclass_filtering_threshold)

    def plain_logits(self, embeddings):
        """Logits without the margin: s*cos(theta) for the margin losses, embeddings @ W for softmax."""
        if self.loss == "softmax":
            return face_losses.softmax_logits(embeddings, None, self.embedding_weights)
        return self.margins["s"] * face_losses.cosine(embeddings, self.embedding_weights)

    def compute_output_shape(self, embeddings_shape: tuple, labels_shape: tuple = None) -> tuple:
        return (embeddings_shape[0], self.num_classes)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(num_classes=self.num_classes, loss=self.loss, margins=dict(self.margins), seed=self.seed,
                      easy_margin=self.easy_margin,
                      interclass_filtering_threshold=self.interclass_filtering_threshold)
        return config


def make_head(loss: str, num_classes: int, *, s: float | None = None, m: float | None = None,
              m1: float | None = None, m2: float | None = None, m3: float | None = None,
              seed: int | None = None, easy_margin: bool = False,
              interclass_filtering_threshold: float = 0.0) -> MarginHead:
    """The training head of `loss` for `num_classes` identities, named as the seed's (SEED_HEAD_NAME).

    Margins left at None take the loss's defaults (losses.margins.DEFAULT_MARGINS); those the loss does not use are
    ignored (see losses.margins.margins_in_use). easy_margin and interclass_filtering_threshold: see MarginHead.
    """
    margins = margins_in_use(loss, s=s, m=m, m1=m1, m2=m2, m3=m3)
    return MarginHead(num_classes, loss=loss, margins=margins, seed=seed, easy_margin=easy_margin,
                      interclass_filtering_threshold=interclass_filtering_threshold, name=SEED_HEAD_NAME)


def sparse_softmax_cross_entropy(logits, labels):
    """Mean sparse softmax cross-entropy in float32 (the seed's inference_loss)."""
    return ops.mean(keras.losses.sparse_categorical_crossentropy(
        ops.cast(labels, "int32"), ops.cast(logits, "float32"), from_logits=True))
