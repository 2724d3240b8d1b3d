"""Normalisation layers of the IR-ResNet family, chosen by name: "bn", "gn" or "brn".

The settings are the seed's: its custom BatchNormLayer (epsilon 2e-5, moving-average decay 0.9, gamma initialised to
N(1, 0.002)), its GroupNormLayer (32 groups, epsilon 1e-5) and its tf.layers batch renormalisation (rmax 3, rmin 1/3,
dmax 5, renorm momentum 0.9, epsilon 1e-3 as tf.layers defaulted to).
"""

from __future__ import annotations

import keras

NORMS = ("bn", "gn", "brn")
BN_EPSILON = 2e-5
BN_MOMENTUM = 0.9
GN_GROUPS = 32
GN_EPSILON = 1e-5
BRN_EPSILON = 1e-3
RENORM_CLIPPING = {"rmax": 3.0, "rmin": 1.0 / 3.0, "dmax": 5.0}


def check_norm(norm: str) -> None:
    """Raises a ValueError naming the choices when `norm` is not one of NORMS."""
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; expected one of {', '.join(NORMS)}")
    if norm == "brn" and tuple(int(p) for p in keras.version().split(".")[:2]) < (3, 14):
        raise ValueError(f"norm='brn' needs Keras >= 3.14 (batch renorm was removed in 3.0); found {keras.version()}")


def make_norm(norm: str, name: str, *, frozen_gamma: bool = False, synchronized: bool = False,
              seed: int | None = None) -> keras.layers.Layer:
    """One normalisation layer over the last axis.

    Args:
        norm: "bn" (batch norm), "gn" (group norm) or "brn" (batch renorm).
        name: the layer name (deterministic: it maps onto the seed's variable scopes).
        frozen_gamma: keep gamma at its initial value (the seed's E_BN2); ignored for "gn".
        synchronized: batch statistics over all replicas of a tf.distribute strategy (BN and BRN).
        seed: seed of the gamma initialiser.
    """
    check_norm(norm)
    if norm == "gn":
        return keras.layers.GroupNormalization(groups=GN_GROUPS, epsilon=GN_EPSILON, name=name)
    # The seed's gamma starts near 1 with a tiny spread rather than exactly 1.
    gamma_init = keras.initializers.RandomNormal(mean=1.0, stddev=0.002, seed=seed)
    layer_class = FrozenGammaBatchNormalization if frozen_gamma else keras.layers.BatchNormalization
    options = dict(momentum=BN_MOMENTUM, gamma_initializer=gamma_init, synchronized=synchronized, name=name)
    if norm == "brn":
        options.update(epsilon=BRN_EPSILON, renorm=True, renorm_clipping=dict(RENORM_CLIPPING),
                       renorm_momentum=BN_MOMENTUM)
    else:
        options.update(epsilon=BN_EPSILON)
    return layer_class(**options)


@keras.saving.register_keras_serializable(package="insightface_tf")
class FrozenGammaBatchNormalization(keras.layers.BatchNormalization):
    """Batch norm whose gamma is not trainable while beta is (the seed's E_BN2, MXNet's fix_gamma on fc1)."""

    def build(self, input_shape: tuple) -> None:
        super().build(input_shape)
        self.gamma.trainable = False
