"""The seed's optimisation: piecewise-constant learning rate and L2 weight decay added to the loss."""

from __future__ import annotations

import keras

# Variables the seed decayed (by name: W_conv2d, E_DenseLayer/W, embedding_weights, gamma, alphas): every conv and
# dense kernel, the class weights, trainable norm gammas and PReLU alphas; never biases or betas.
DECAYED_SUFFIXES = ("/kernel", "/embedding_weights", "/gamma", "/alpha")


def lr_boundaries(lr_steps: list[int], batch_size: int, scale_by_batch: bool,
                  as_seed_ran: bool = False) -> list[int]:
    """The boundaries b of the piecewise schedule, read at the update count t (0 for the first update).

    The seed's are lr_steps x int(512 / batch_size) when `scale_by_batch`, else lr_steps as given. Its
    tf.train.piecewise_constant kept values[i] while global_step <= b, and its global_step was 2t at update t (two
    increments per iteration), so its runs really dropped once t > b // 2: `as_seed_ran` gives those boundaries.
    """
    factor = max(1, int(512 / batch_size)) if scale_by_batch else 1
    boundaries = [int(step) * factor for step in lr_steps]
    return [boundary // 2 for boundary in boundaries] if as_seed_ran else boundaries


def piecewise_schedule(lr_values: list[float], boundaries: list[int]) -> keras.optimizers.schedules.LearningRateSchedule:
    """lr_values[i] for steps in [boundaries[i-1], boundaries[i]); one value more than boundaries."""
    if len(lr_values) != len(boundaries) + 1:
        raise ValueError(f"lr_values needs one value more than lr_steps; received {len(lr_values)} values for "
                         f"{len(boundaries)} steps")
    if any(later <= earlier for earlier, later in zip(boundaries, boundaries[1:])):
        raise ValueError(f"lr_steps must be increasing; received {boundaries}")
    if not boundaries:
        return ConstantSchedule(float(lr_values[0]))
    return keras.optimizers.schedules.PiecewiseConstantDecay(boundaries, [float(v) for v in lr_values])


class ConstantSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """One learning rate for every step (lr_steps = []); Keras' piecewise schedule needs at least one boundary."""

    def __init__(self, value: float) -> None:
        self.value = value

    def __call__(self, step):
        return keras.ops.convert_to_tensor(self.value, dtype="float32")

    def get_config(self) -> dict:
        return {"value": self.value}


def decayed_variables(variables: list) -> list:
    """The trainable variables that weight decay applies to (see DECAYED_SUFFIXES)."""
    return [v for v in variables if v.trainable and v.path.endswith(DECAYED_SUFFIXES)]


def weight_decay_loss(variables: list, weight_decay: float):
    """weight_decay * sum(||v||^2) / 2 over `variables`, in float32 (tf.contrib l2_regularizer's convention)."""
    total = keras.ops.zeros((), dtype="float32")
    for variable in variables:
        total = total + keras.ops.sum(keras.ops.square(keras.ops.cast(variable, "float32")))
    return 0.5 * weight_decay * total
