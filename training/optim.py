"""Optimisation: the seed's piecewise-constant learning rate and L2 weight decay added to the loss, warm-up, polynomial
and cosine decay, AdamW with decoupled weight decay."""

from __future__ import annotations

import math

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


class WarmupSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up from 0: update t < warmup_steps runs at peak * t / warmup_steps, later ones at `after(t)`.

    The closed form of arcface_torch's PolynomialLRWarmup (update 0 at 0). Its chained form, which its training
    loop really runs, returns the optimizer's initial rate at update 0, a full-rate first update of a random
    network that warm-up exists to avoid: not reproduced.
    """

    def __init__(self, peak: float, warmup_steps: int, after: keras.optimizers.schedules.LearningRateSchedule) -> None:
        self.peak, self.warmup_steps, self.after = float(peak), int(warmup_steps), after

    def __call__(self, step):
        after = self.after(step)
        if not self.warmup_steps:
            return after
        update = keras.ops.cast(step, "float32")
        warm = self.peak * update / self.warmup_steps
        return keras.ops.where(update < self.warmup_steps, warm, keras.ops.cast(after, "float32"))

    def get_config(self) -> dict:
        return {"peak": self.peak, "warmup_steps": self.warmup_steps,
                "after": keras.optimizers.schedules.serialize(self.after)}


class DecayToZero(keras.optimizers.schedules.LearningRateSchedule):
    """peak at update `start`, 0 at update `end` (never applied: the run's last update is end - 1), constant outside.

    "poly": peak * (1 - f) ** power, arcface_torch's PolynomialLRWarmup after its warm-up; "cosine":
    peak * (1 + cos(pi * f)) / 2; f = (t - start) / (end - start) clipped to [0, 1].
    """

    def __init__(self, shape: str, peak: float, start: int, end: int, power: float = 1.0) -> None:
        if shape not in ("poly", "cosine"):
            raise ValueError(f"lr_schedule: expected 'poly' or 'cosine', received {shape!r}")
        if end <= start:
            raise ValueError(f"Args: warmup_steps={start} leaves no step to decay over with lr_schedule={shape!r}: "
                             f"the run has {end} steps (epoch x steps per epoch, capped by max_steps)")
        self.shape, self.peak, self.start, self.end, self.power = shape, float(peak), int(start), int(end), power

    def __call__(self, step):
        update = keras.ops.cast(step, "float32")
        fraction = keras.ops.clip((update - self.start) / (self.end - self.start), 0.0, 1.0)
        if self.shape == "poly":
            return self.peak * (1.0 - fraction) ** self.power
        # (1 + cos(pi f)) / 2 as cos(pi f / 2) ** 2: the same, without float32's cancellation near the end
        return self.peak * keras.ops.cos(0.5 * math.pi * fraction) ** 2

    def get_config(self) -> dict:
        return {"shape": self.shape, "peak": self.peak, "start": self.start, "end": self.end, "power": self.power}


def make_schedule(lr_schedule: str, lr_values: list[float], boundaries: list[int], warmup_steps: int,
                  total_steps: int) -> keras.optimizers.schedules.LearningRateSchedule:
    """The learning rate of each update count t (the optimizer's `iterations`, which checkpoints hold).

    "piecewise": the seed's lr_values between `boundaries` (absolute update counts, warm-up or not); "poly" /
    "cosine": from lr_values[0] at the end of warm-up to 0 at `total_steps` (lr_values[1:] and boundaries unused).
    `warmup_steps` > 0 puts a linear warm-up to lr_values[0] in front of any of them.
    """
    if lr_schedule == "piecewise":
        after = piecewise_schedule(lr_values, boundaries)
    else:
        after = DecayToZero(lr_schedule, lr_values[0], warmup_steps, total_steps)
    return WarmupSchedule(lr_values[0], warmup_steps, after) if warmup_steps else after


def make_optimizer(name: str, schedule: keras.optimizers.schedules.LearningRateSchedule, variables: list, *,
                   momentum: float, weight_decay: float) -> keras.optimizers.Optimizer:
    """"sgd": momentum SGD (its weight decay is the L2 term the train step adds to the loss); "adamw": AdamW with
    torch's betas and epsilon and decoupled decay `weight_decay` on decayed_variables(variables) only.

    Not built (a LossScaleOptimizer around it builds it). Keras adds AdamW's epsilon to sqrt(v) before the bias
    correction of v, torch after it: torch's 1e-8 is Keras' 1e-8 / sqrt(1 - 0.999 ** t), which only matters for
    gradients below ~1e-6.
    """
    if name == "sgd":
        optimizer = keras.optimizers.SGD(learning_rate=schedule, momentum=momentum)
    elif name == "adamw":
        optimizer = keras.optimizers.AdamW(learning_rate=schedule, weight_decay=weight_decay, beta_1=0.9,
                                           beta_2=0.999, epsilon=1e-8)
        decayed = {id(v) for v in decayed_variables(variables)}
        optimizer.exclude_from_weight_decay(var_list=[v for v in variables if id(v) not in decayed])
    else:
        raise ValueError(f"optimizer: expected 'sgd' or 'adamw', received {name!r}")
    return optimizer
