"""Normalisation layers of the IR-ResNet family, chosen by name: "bn", "gn" or "brn".

The settings are the seed's: its custom BatchNormLayer (epsilon 2e-5, moving-average decay 0.9, gamma initialised to
N(1, 0.002)), its GroupNormLayer (32 groups, epsilon 1e-5) and its `tf.layers.batch_normalization(renorm=True)`
(rmax 3, rmin 0.3333, dmax 5, renorm momentum 0.9, momentum 0.9, epsilon 1e-3, gamma initialised to 1 and trainable in
every layer), which BatchRenormalization reproduces.

Batch norm is FusedBatchNormalization: Keras' BatchNormalization computed by TensorFlow's fused kernel.

`standard_layer` turns each of them into a standard Keras layer with the same inference output, so saved models load
with plain `keras.saving.load_model` (deploy.preprocessing.standard_model).
"""

from __future__ import annotations

import keras
from keras import ops

NORMS = ("bn", "gn", "brn")
BN_EPSILON = 2e-5
BN_MOMENTUM = 0.9
GN_GROUPS = 32
GN_EPSILON = 1e-5
BRN_EPSILON = 1e-3
SEED_EPSILONS = {"bn": BN_EPSILON, "gn": GN_EPSILON, "brn": BRN_EPSILON}
# As the seed wrote them (rmin 0.3333, not 1/3).
RENORM_CLIPPING = {"rmax": 3.0, "rmin": 0.3333, "dmax": 5.0}


def check_norm(norm: str) -> None:
    """Raises a ValueError naming the choices when `norm` is not one of NORMS."""
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; expected one of {', '.join(NORMS)}")


def make_norm(norm: str, name: str, *, frozen_gamma: bool = False, synchronized: bool = False,
              seed: int | None = None, epsilon: float | None = None) -> keras.layers.Layer:
    """One normalisation layer over the last axis.

    Args:
        norm: "bn" (batch norm), "gn" (group norm) or "brn" (the seed's TF 1.x batch renorm).
        name: the layer name (deterministic: it maps onto the seed's variable scopes).
        frozen_gamma: keep gamma at its initial value (the seed's E_BN2); "bn" only: the seed's group-norm net has no
            E_BN2 and its batch-renorm net trained every gamma.
        synchronized: batch statistics over all replicas of a tf.distribute strategy (BN and BRN).
        seed: seed of the gamma initialiser.
        epsilon: the variance epsilon; None: the seed's for that norm (SEED_EPSILONS).
            arcface_torch's networks use torch's 1e-5, and an imported network must use its own to compute the same.
    """
    check_norm(norm)
    if epsilon is None:
        epsilon = SEED_EPSILONS[norm]
    if norm == "gn":
        return keras.layers.GroupNormalization(groups=GN_GROUPS, epsilon=epsilon, name=name)
    if norm == "brn":
        return BatchRenormalization(epsilon=epsilon, synchronized=synchronized, name=name)
    # The seed's BatchNormLayer starts gamma near 1 with a tiny spread rather than exactly 1.
    gamma_init = keras.initializers.RandomNormal(mean=1.0, stddev=0.002, seed=seed)
    layer_class = FrozenGammaBatchNormalization if frozen_gamma else FusedBatchNormalization
    return layer_class(momentum=BN_MOMENTUM, epsilon=epsilon, gamma_initializer=gamma_init,
                       synchronized=synchronized, name=name)


@keras.saving.register_keras_serializable(package="insightface_tf")
class FusedBatchNormalization(keras.layers.BatchNormalization):
    """Keras' BatchNormalization, computed by TensorFlow's fused batch-norm kernel where that kernel applies.

    Keras 3 computes batch norm as separate ops: the batch moments, the normalisation and, under mixed precision, a
    cast to float32 and back, each a pass over the activations. TensorFlow's FusedBatchNormV3 (oneDNN on a CPU,
    cuDNN on a GPU) does all of it in one kernel forward and one backward, reading bfloat16/float16 activations with
    float32 statistics as Keras does. LResNet50E-IR's training step ran 1.3x faster in bf16 and 1.13x in float32 on a
    CPU (bench/README.md).

    The formula is Keras': the biased batch variance normalises and feeds the moving variance, and the moving
    averages move by `momentum`. Keras' own computation runs where the kernel does not apply: other backends,
    synchronised statistics, masks, inputs that are not 4-D NHWC, float64, batch renorm.
    """

    def call(self, inputs, training: bool | None = None, mask=None):
        if not self._fusable(inputs, mask):
            return super().call(inputs, training=training, mask=mask)
        from nets import tensorflow_kernels

        gamma = self.gamma if self.scale else ops.ones_like(self.moving_mean)
        beta = self.beta if self.center else ops.zeros_like(self.moving_mean)
        if not (training and self.trainable):
            return tensorflow_kernels.fused_batch_norm_inference(inputs, gamma, beta, self.moving_mean,
                                                                 self.moving_variance, self.epsilon)
        outputs, mean, variance = tensorflow_kernels.fused_batch_norm(inputs, gamma, beta, self.epsilon)
        self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1.0 - self.momentum))
        self.moving_variance.assign(self.moving_variance * self.momentum + variance * (1.0 - self.momentum))
        return outputs

    def _fusable(self, inputs, mask) -> bool:
        return (keras.backend.backend() == "tensorflow" and not self.synchronized and not self.renorm
                and mask is None and len(inputs.shape) == 4 and self.axis in (-1, 3)
                and keras.backend.standardize_dtype(inputs.dtype) in ("float32", "bfloat16", "float16"))


@keras.saving.register_keras_serializable(package="insightface_tf")
class FrozenGammaBatchNormalization(FusedBatchNormalization):
    """Batch norm whose gamma is not trainable while beta is (the seed's E_BN2, MXNet's fix_gamma on fc1)."""

    def build(self, input_shape: tuple) -> None:
        super().build(input_shape)
        self.gamma.trainable = False


@keras.saving.register_keras_serializable(package="insightface_tf")
class BatchRenormalization(keras.layers.Layer):
    """TF 1.x `tf.layers.batch_normalization(renorm=True)` over the last axis, as the seed's RBN net trained it.

    Training (batch mean m and biased variance v over all axes but the last; s = sqrt(v + epsilon)):

    * the renorm averages start at 0 with 0 weights and are mixed with the batch value until their weight nears 1:
      mixed_mean = renorm_mean + (1 - renorm_mean_weight) * m, likewise for the stddev;
    * r = clip(s / mixed_stddev, rmin, rmax) and d = clip((m - mixed_mean) / mixed_stddev, -dmax, dmax), both under
      stop_gradient; output = (x - m) / s * r * gamma + d * gamma + beta;
    * renorm_mean, renorm_stddev and their weights move by renorm_momentum (the weights towards 1); their ratios are
      the debiased averages, which feed moving_mean and moving_variance (= stddev^2 - epsilon) by momentum.

    Inference is plain batch norm on moving_mean and moving_variance. The variable names are TF 1.x's.
    """

    def __init__(self, momentum: float = BN_MOMENTUM, epsilon: float = BRN_EPSILON,
                 renorm_momentum: float = BN_MOMENTUM, renorm_clipping: dict[str, float] | None = None,
                 synchronized: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        if synchronized and keras.backend.backend() != "tensorflow":
            raise ValueError(f"synchronized batch renorm needs the TensorFlow backend (tf.distribute); the backend is "
                             f"{keras.backend.backend()}")
        self.momentum = float(momentum)
        self.epsilon = float(epsilon)
        self.renorm_momentum = float(renorm_momentum)
        self.renorm_clipping = dict(RENORM_CLIPPING if renorm_clipping is None else renorm_clipping)
        self.synchronized = synchronized

    def build(self, input_shape: tuple) -> None:
        shape = (input_shape[-1],)

        def variable(name: str, initializer: str, shape: tuple = shape, trainable: bool = False) -> keras.Variable:
            # float32 even under mixed precision: the statistics are accumulated over many steps.
            return self.add_weight(name=name, shape=shape, initializer=initializer, trainable=trainable,
                                   autocast=False)

        self.gamma = variable("gamma", "ones", trainable=True)
        self.beta = variable("beta", "zeros", trainable=True)
        self.moving_mean = variable("moving_mean", "zeros")
        self.moving_variance = variable("moving_variance", "ones")
        self.renorm_mean = variable("renorm_mean", "zeros")
        self.renorm_mean_weight = variable("renorm_mean_weight", "zeros", shape=())
        self.renorm_stddev = variable("renorm_stddev", "zeros")
        self.renorm_stddev_weight = variable("renorm_stddev_weight", "zeros", shape=())
        self._reduction_axes = list(range(len(input_shape) - 1))

    def call(self, inputs, training: bool | None = None):
        inputs = ops.cast(inputs, "float32")  # statistics in float32, as Keras' BatchNormalization
        if training and self.trainable:
            mean, variance = ops.moments(inputs, axes=self._reduction_axes, synchronized=self.synchronized)
            r, d = self._corrections_and_updates(mean, variance)
            scale, offset = r * self.gamma, d * self.gamma + self.beta
        else:
            mean, variance = self.moving_mean, self.moving_variance
            scale, offset = self.gamma, self.beta
        outputs = ops.batch_normalization(inputs, mean, variance, axis=-1, offset=offset, scale=scale,
                                          epsilon=self.epsilon)
        return ops.cast(outputs, self.compute_dtype)

    def _corrections_and_updates(self, mean, variance):
        """r and d from the pre-update renorm averages, then the updates of all six statistics (TF 1.x order)."""
        stddev = ops.sqrt(variance + self.epsilon)
        mixed_mean = self.renorm_mean + (1.0 - self.renorm_mean_weight) * mean
        mixed_stddev = self.renorm_stddev + (1.0 - self.renorm_stddev_weight) * stddev
        r = ops.clip(stddev / mixed_stddev, self.renorm_clipping["rmin"], self.renorm_clipping["rmax"])
        d = ops.clip((mean - mixed_mean) / mixed_stddev, -self.renorm_clipping["dmax"], self.renorm_clipping["dmax"])
        new_mean = self._debiased_average(self.renorm_mean, self.renorm_mean_weight, mean)
        new_stddev = self._debiased_average(self.renorm_stddev, self.renorm_stddev_weight, stddev)
        for variable, value in ((self.moving_mean, new_mean),
                                (self.moving_variance, ops.square(new_stddev) - self.epsilon)):
            variable.assign(variable * self.momentum + ops.stop_gradient(value) * (1.0 - self.momentum))
        return ops.stop_gradient(r), ops.stop_gradient(d)

    def _debiased_average(self, average: keras.Variable, weight: keras.Variable, value):
        """Moves `average` towards `value` and `weight` towards 1 by renorm_momentum; returns average / weight."""
        decay = self.renorm_momentum
        new_average = average * decay + ops.stop_gradient(value) * (1.0 - decay)
        new_weight = weight * decay + (1.0 - decay)
        average.assign(new_average)
        weight.assign(new_weight)
        return new_average / new_weight

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return input_shape

    def get_config(self) -> dict:
        return {**super().get_config(), "momentum": self.momentum, "epsilon": self.epsilon,
                "renorm_momentum": self.renorm_momentum, "renorm_clipping": dict(self.renorm_clipping),
                "synchronized": self.synchronized}


def standard_layer(layer: keras.layers.Layer) -> keras.layers.Layer | None:
    """A standard Keras layer with the same inference output as our `layer`, unbuilt; None for a standard layer.

    Fused and frozen-gamma batch norm are Keras' BatchNormalization computed otherwise, and batch renorm computes
    (x - moving_mean) / sqrt(moving_variance + eps) * gamma + beta at inference, so all become a plain
    BatchNormalization holding gamma, beta, moving_mean, moving_variance (copy them with `standard_weights`). The
    training-only state (the renorm averages, gamma being frozen) is left out: training resumes from checkpoints,
    which keep it.
    """
    if isinstance(layer, FusedBatchNormalization):
        return keras.layers.BatchNormalization.from_config(layer.get_config())
    if isinstance(layer, BatchRenormalization):
        return keras.layers.BatchNormalization(momentum=layer.momentum, epsilon=layer.epsilon, name=layer.name,
                                               dtype=layer.dtype_policy)
    return None


def standard_weights(layer: keras.layers.Layer) -> list:
    """`layer`'s weights in the order of the layer `standard_layer` makes of it (or its own weights)."""
    if isinstance(layer, BatchRenormalization):
        return [ops.convert_to_numpy(v) for v in (layer.gamma, layer.beta, layer.moving_mean, layer.moving_variance)]
    return layer.get_weights()
