"""The embedding output block "E" shared by the face backbones (norm -> dropout -> flatten -> dense -> norm), and the
per-layer initialiser seeds they draw.

This is insightface's "E" head as the seed built it (nets/L_Resnet_E_IR_fix_issue9.py): batch norm over the last
feature map, dropout, flatten in NHWC order, a dense layer to the embedding size, and a batch norm whose gamma stays
at its initial value (MXNet's fix_gamma on fc1). The seed's group-norm net (L_Resnet_E_IR_GBN.py) normalises the
feature map with group norm and has no final norm.

Layer names are the seed's TensorLayer scopes, so nets.seed_checkpoint maps them onto its checkpoints.
"""

from __future__ import annotations

import itertools
from typing import Callable

import keras

from nets.norms import make_norm


def _no_seed() -> None:
    return None


def seed_sequence(seed: int | None) -> Callable[[], int | None]:
    """A function that returns a new initialiser seed on each call (always None when `seed` is None).

    The backbones draw one seed per layer in build order (the scheme of nets.resnet_ir), so a seeded build is
    deterministic and no two layers share an initialiser stream.
    """
    if seed is None:
        return _no_seed
    counter = itertools.count(1)
    return lambda: seed * 100_003 + next(counter)


def embedding_block(x, *, norm: str = "bn", dropout_rate: float = 0.4, embedding_size: int = 512,
                    synchronized_bn: bool = False, next_seed: Callable[[], int | None] = _no_seed,
                    norm_epsilon: float | None = None):
    """Appends the "E" block to the feature map `x` (N, H, W, C) and returns the (N, embedding_size) tensor.

    Args:
        x: the backbone's last feature map (a Keras tensor); H and W must be static (the flatten fixes them).
        norm: "bn", "gn" or "brn" (nets.norms); "gn" gives the seed's GN head (E_GN_0, no final norm).
        dropout_rate: fraction dropped before the dense layer in training.
        embedding_size: output dimension.
        synchronized_bn: batch statistics over all replicas under a tf.distribute strategy.
        next_seed: called once per initialiser, in layer order, so a seeded backbone stays deterministic.
        norm_epsilon: the norms' variance epsilon; None: the seed's (nets.norms.make_norm).

    The flatten is NHWC (the seed's); arcface_torch's iresnet flattens NCHW before its fc, so an importer permutes
    that fc's rows instead (nets.pretrained.build): the block itself is the same.
    """
    if not 0.0 <= dropout_rate < 1.0:
        raise ValueError(f"dropout_rate must be in [0, 1); received {dropout_rate}")
    x = make_norm(norm, "E_GN_0" if norm == "gn" else "E_BN1", synchronized=synchronized_bn, seed=next_seed(),
                  epsilon=norm_epsilon)(x)
    x = keras.layers.Dropout(dropout_rate, name="E_Dropout")(x)
    x = keras.layers.Flatten(name="E_Reshapelayer")(x)
    # tf.contrib's xavier_initializer(uniform=False), as the seed's trainers passed it for every weight.
    x = keras.layers.Dense(embedding_size, kernel_initializer=keras.initializers.GlorotNormal(seed=next_seed()),
                           bias_initializer="zeros", name="E_DenseLayer")(x)
    if norm != "gn":
        # The seed's GN net has no final norm (its E_GN_1 was commented out).
        x = make_norm(norm, "E_BN2", frozen_gamma=True, synchronized=synchronized_bn, seed=next_seed(),
                      epsilon=norm_epsilon)(x)
    return x
