"""Training and inference images/s of a backbone (default LResNet50E-IR at 112x112), each as a fraction of the limit
that this machine's own matrix-multiply peak, measured in the same run, sets for that network.

    .venv/bin/python bench/bench_model.py
    .venv/bin/python bench/bench_model.py --quick=true            # a tiny run that checks the script works
    .venv/bin/python bench/bench_model.py --precisions=float32 --xla=both --train_batch_sizes=16,32
    KERAS_BACKEND=jax python bench/bench_model.py                 # JAX (TensorFlow need not be installed)

limit (images/s) = peak (GFLOP/s: a chain of large square matmuls in the compute dtype, best of `matmul_repeats`)
                   / cost per image (GFLOP, counted from the conv and dense layer shapes of the built model).
Forward cost = 2 x MACs. Training cost = forward + weight gradients (= forward) + input gradients (= forward less the
layers that read the image), plus the margin head's 3 x 2 x D x C; normalisation, activations and the optimiser
update are not counted (they are memory-bound and cost little arithmetic). Both the model and the peak report the
best of several rounds, so the fraction compares the two at their least disturbed.

Each figure is also given per CPU-second of the process (FLOP / CPU time): on a machine shared with other jobs that
ratio depends less on how many cores this process got. The inputs are random tensors already on the device: the
input pipelines are timed by bench_input_pipeline.py.

TensorFlow: the training step is training.step.make_train_step (margin head, weight decay, SGD with momentum, loss
scaling for mixed_float16), as train_nets.py runs it; `xla` compiles it with jit_compile. JAX: a jitted stateless
step (keras' stateless_call, jax.value_and_grad, optimizer.stateless_apply) of the same loss; always XLA.
Writes bench/results/model.json (quick runs: bench/results/quick/model.json) and logs a table.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Callable

# config first: run as a script, it quiets TensorFlow's start-up log, which must happen before TensorFlow loads.
from config import (Choices, Config, Length, NonNegativeInt, OptionalPath, PositiveFloat, PositiveInt, Range,
                    registered_backbones, run_script)
from call_timing import time_calls
from timing import write_results

# Keras (and the backend it loads) is imported in the functions that use it: --help and a bad value need neither.
if TYPE_CHECKING:
    import keras

    from losses import MarginHead

REPO = Path(__file__).resolve().parents[1]
log = logging.getLogger("bench_model")
RESULTS = REPO / "bench" / "results"
# The dtype the matmuls of each Keras precision policy run in: that dtype's peak is the policy's limit.
COMPUTE_DTYPES = {"float32": "float32", "mixed_bfloat16": "bfloat16", "mixed_float16": "float16"}
XLA_CHOICES = ("auto", "on", "off", "both")


class Args(Config):
    # nets.get_backbone name
    backbone: Annotated[str, Choices(names=registered_backbones, ignore_case=True)] = "LResNet50E-IR"
    image_size: Annotated[int, Range(16)] = 112  # input height and width
    num_classes: PositiveInt = 85164  # classes of the margin head (the seed's MS1M); its cost is counted in training
    weight_decay: Annotated[float, Range(0)] = 5e-4  # L2 weight decay in the training loss (train_nets.py's default)
    # Keras dtype policies measured
    precisions: Annotated[list[str], Choices(*COMPUTE_DTYPES), Length(1)] = ["float32", "mixed_bfloat16",
                                                                              "mixed_float16"]
    train_batch_sizes: Annotated[list[int], Range(1)] = [16, 32]  # training batch sizes
    inference_batch_sizes: Annotated[list[int], Range(1)] = [32, 64]  # inference batch sizes
    # "on", "off", "both"; auto = both on a GPU, off on a CPU (slower there); JAX is always XLA
    xla: Annotated[str, Choices(*XLA_CHOICES)] = "auto"
    warmup_steps: NonNegativeInt = 2  # untimed steps first (tracing, compilation, allocation)
    steps: PositiveInt = 5  # timed steps per round
    repeats: PositiveInt = 3  # timed rounds; the best round is the figure, the median is recorded too
    seconds_per_config: PositiveFloat = 120.0  # time budget of one configuration: fewer rounds when a step is slow
    matmul_size: NonNegativeInt = 0  # n of the n x n matmuls of the peak; 0 = 4096 on a CPU, 8192 on a GPU
    matmul_repeats: PositiveInt = 5  # timed matmul calls per peak measurement (best kept)
    # the chain of matmuls in one call is made at least this long (GPU launch costs)
    matmul_seconds: PositiveFloat = 0.25
    intra_op_threads: NonNegativeInt = 0  # TensorFlow intra-op threads; 0 = its default (all cores)
    inter_op_threads: NonNegativeInt = 0  # TensorFlow inter-op threads; 0 = its default
    quick: bool = False  # tiny run (ResNet18, batch 2, one step, small matmuls) that only checks the script works
    output_json: OptionalPath = ""  # "" = bench/results/model.json (quick: bench/results/quick/model.json)


def apply_quick(args: Args) -> Args:
    """The --quick=true sizes: every code path once, in well under a minute per precision on this CPU."""
    if args.quick:
        for key, value in {"backbone": "LResNet18E-IR", "num_classes": 100, "train_batch_sizes": [2],
                           "inference_batch_sizes": [2], "warmup_steps": 1, "steps": 1, "repeats": 1,
                           "matmul_size": 512, "matmul_repeats": 2, "matmul_seconds": 0.01}.items():
            args.set(key, value)
    return args


def output_path(args: Config, name: str) -> Path:
    """Where a bench script writes its JSON: `args.output_json`, else bench/results[/quick]/<name> (any Args with
    the fields output_json and quick)."""
    if args.output_json:
        return Path(args.output_json)
    return (RESULTS / "quick" if args.quick else RESULTS) / name


def validate_args(args: Args) -> None:
    unknown = [p for p in args.precisions if p not in COMPUTE_DTYPES]
    if unknown or not args.precisions:
        raise ValueError(f"Args: precisions {unknown} unknown; expected some of {', '.join(COMPUTE_DTYPES)}")
    if args.xla not in XLA_CHOICES:
        raise ValueError(f"Args: xla={args.xla!r}; expected one of {', '.join(XLA_CHOICES)}")
    if min(args.train_batch_sizes + args.inference_batch_sizes + [args.steps, args.repeats]) < 1:
        raise ValueError("Args: batch sizes, steps and repeats must be positive")


# --------------------------------------------------------------------------------------------------------------
# Cost of the network, counted from its layers


@dataclass
class NetworkCost:
    """Multiply-accumulates per image of the conv and dense layers, and what training adds."""

    forward_macs: int  # every conv and dense layer of the backbone
    input_gradient_macs: int  # the same less the layers that read the network's input (no gradient needed there)
    head_macs: int  # embeddings x class weights of the margin head (training only)
    parameters: int

    @property
    def inference_gflop(self) -> float:
        return 2 * self.forward_macs / 1e9

    @property
    def training_gflop(self) -> float:
        # Forward, weight gradients (one MAC per forward MAC) and input gradients, for the backbone and the head.
        backbone = self.forward_macs + self.forward_macs + self.input_gradient_macs
        return 2 * (backbone + 3 * self.head_macs) / 1e9


def _leaf_layers(model: keras.Model):
    import keras

    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _leaf_layers(layer)
        else:
            yield layer


def _kernels(layer: keras.layers.Layer) -> list:
    return [w for w in layer.weights if w.path.rsplit("/", 1)[-1] in ("kernel", "depthwise_kernel", "pointwise_kernel")]


def _counted_layer_types() -> tuple[type, ...]:
    """Layers whose MACs per output position are the size of their kernel(s): every output position of a (grouped,
    depthwise or separable) convolution or a dense layer multiplies the whole kernel once."""
    import keras

    return (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D, keras.layers.DepthwiseConv1D,
            keras.layers.DepthwiseConv2D, keras.layers.SeparableConv1D, keras.layers.SeparableConv2D,
            keras.layers.Dense)


def count_cost(model: keras.Model, head_macs: int) -> NetworkCost:
    """MACs per image of a built functional model; ValueError on a layer with a kernel it cannot count."""
    counted = _counted_layer_types()
    forward = input_gradient = 0
    inputs = {id(tensor) for tensor in model.inputs}
    for layer in _leaf_layers(model):
        kernels = _kernels(layer)
        if not kernels:
            continue
        if not isinstance(layer, counted):
            raise ValueError(f"bench_model: cannot count the MACs of layer {layer.name} ({type(layer).__name__}); "
                             "extend count_cost for it")
        shape = layer.output.shape
        spatial = shape[2:] if getattr(layer, "data_format", "channels_last") == "channels_first" else shape[1:-1]
        macs = math.prod(spatial) * sum(math.prod(k.shape) for k in kernels)
        forward += macs
        if id(layer.input) not in inputs:
            input_gradient += macs
    return NetworkCost(forward, input_gradient, head_macs, int(model.count_params()))


# --------------------------------------------------------------------------------------------------------------
# Backends: the matmul peak and one step of each mode, as a function that returns when the device is done


class TensorFlowBackend:
    """tf.matmul peak; training.step.make_train_step; a tf.function forward pass."""

    name = "tensorflow"

    def __init__(self, args: Args) -> None:
        import tensorflow as tf

        self.tf = tf
        if args.intra_op_threads:
            tf.config.threading.set_intra_op_parallelism_threads(args.intra_op_threads)
        if args.inter_op_threads:
            tf.config.threading.set_inter_op_parallelism_threads(args.inter_op_threads)
        gpus = tf.config.list_physical_devices("GPU")
        self.on_gpu = bool(gpus)
        self.device = (tf.config.experimental.get_device_details(gpus[0]).get("device_name", "GPU") if gpus
                       else cpu_name())
        self.version = tf.__version__

    def matmul_chain(self, dtype: str, size: int) -> Callable[[int], None]:
        tf = self.tf
        # Scaled so that repeated products keep their magnitude (no overflow, no denormals) however long the chain.
        a = tf.cast(tf.random.normal((size, size), stddev=1 / math.sqrt(size)), dtype)
        x = tf.cast(tf.random.normal((size, size)), dtype)

        @tf.function
        def chain(length):
            _, y = tf.while_loop(lambda i, y: i < length, lambda i, y: (i + 1, tf.matmul(a, y)), (0, x))
            return y[0, 0]

        return lambda length: chain(tf.constant(length)).numpy()

    def conv_chain(self, dtype: str, shape: tuple[int, int, int]) -> Callable[[int], None]:
        """A chain of 3x3 'same' convolutions on (batch, spatial, spatial, channels) = `shape` (oneDNN's on a CPU)."""
        tf = self.tf
        batch, spatial, channels = shape
        kernel = tf.cast(tf.random.normal((3, 3, channels, channels), stddev=1 / math.sqrt(9 * channels)), dtype)
        x = tf.cast(tf.random.normal((batch, spatial, spatial, channels)), dtype)

        @tf.function
        def chain(length):
            _, y = tf.while_loop(lambda i, y: i < length, lambda i, y: (i + 1, tf.nn.conv2d(y, kernel, 1, "SAME")),
                                 (0, x))
            return y[0, 0, 0, 0]

        return lambda length: chain(tf.constant(length)).numpy()

    def training_step(self, model: keras.Model, head: MarginHead, precision: str, batch: int, xla: bool,
                      num_classes: int, weight_decay: float) -> Callable[[], None]:
        from training.step import make_train_step

        tf = self.tf
        optimizer = make_optimizer(precision, model.trainable_variables + head.trainable_variables)
        step = make_train_step(tf.distribute.get_strategy(), model, head, optimizer, batch, weight_decay=weight_decay,
                               jit_compile=xla)
        images = tf.random.uniform((batch, *model.input_shape[1:]), -1.0, 1.0)
        labels = tf.random.uniform((batch,), 0, num_classes, dtype=tf.int32)
        return lambda: step(images, labels)["total_loss"].numpy()

    def inference_step(self, model: keras.Model, batch: int, xla: bool) -> Callable[[], None]:
        tf = self.tf
        forward = tf.function(lambda x: model(x, training=False), jit_compile=xla)
        images = tf.random.uniform((batch, *model.input_shape[1:]), -1.0, 1.0)
        return lambda: forward(images).numpy()

    def peak_device_bytes(self) -> int | None:
        """Peak bytes the TensorFlow allocator of the GPU held; None on a CPU (use the process's peak RSS)."""
        return self.tf.config.experimental.get_memory_info("GPU:0")["peak"] if self.on_gpu else None


class JaxBackend:
    """jnp.matmul peak; a jitted stateless training step; a jitted stateless forward pass (always XLA: the `xla`
    argument of the steps is ignored)."""

    name = "jax"

    def __init__(self, args: Args) -> None:
        import jax

        self.jax = jax
        device = jax.devices()[0]
        self.on_gpu = device.platform == "gpu"
        self.device = cpu_name() if device.platform == "cpu" else device.device_kind
        self.version = jax.__version__

    def matmul_chain(self, dtype: str, size: int) -> Callable[[int], None]:
        jax = self.jax
        keys = jax.random.split(jax.random.PRNGKey(0))
        a = (jax.random.normal(keys[0], (size, size)) / math.sqrt(size)).astype(dtype)
        x = jax.random.normal(keys[1], (size, size)).astype(dtype)
        chain = jax.jit(lambda length, a, x: jax.lax.fori_loop(0, length, lambda i, y: a @ y, x)[0, 0],
                        static_argnums=0)
        return lambda length: chain(length, a, x).block_until_ready()

    def conv_chain(self, dtype: str, shape: tuple[int, int, int]) -> Callable[[int], None]:
        """A chain of 3x3 'same' convolutions on (batch, spatial, spatial, channels) = `shape`."""
        jax = self.jax
        batch, spatial, channels = shape
        keys = jax.random.split(jax.random.PRNGKey(0))
        kernel = (jax.random.normal(keys[0], (3, 3, channels, channels)) / math.sqrt(9 * channels)).astype(dtype)
        x = jax.random.normal(keys[1], (batch, spatial, spatial, channels)).astype(dtype)

        def conv(y):
            return jax.lax.conv_general_dilated(y, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))

        chain = jax.jit(lambda length, x: jax.lax.fori_loop(0, length, lambda i, y: conv(y), x)[0, 0, 0, 0],
                        static_argnums=0)
        return lambda length: chain(length, x).block_until_ready()

    def training_step(self, model: keras.Model, head: MarginHead, precision: str, batch: int, xla: bool,
                      num_classes: int, weight_decay: float) -> Callable[[], None]:
        import keras

        from losses import sparse_softmax_cross_entropy
        from training.optim import decayed_variables, weight_decay_loss

        jax = self.jax
        variables = model.trainable_variables + head.trainable_variables
        optimizer = make_optimizer(precision, variables)
        decayed = {id(v) for v in decayed_variables(variables)}
        decayed_positions = [i for i, v in enumerate(variables) if id(v) in decayed]
        model_count = len(model.trainable_variables)
        scale_loss = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)

        def loss_fn(trainable, non_trainable, optimizer_values, images, labels):
            embeddings, non_trainable = model.stateless_call(trainable[:model_count], non_trainable, images,
                                                             training=True)
            logits, _ = head.stateless_call(trainable[model_count:], [], embeddings, labels)
            loss = sparse_softmax_cross_entropy(logits, labels) + weight_decay_loss(
                [trainable[i] for i in decayed_positions], weight_decay)
            if scale_loss:
                # The loss scale is an optimizer variable: read it from the values passed in, as keras' JAX trainer.
                with keras.StatelessScope(state_mapping=list(zip(optimizer.variables, optimizer_values))):
                    loss = optimizer.scale_loss(loss)
            return loss, non_trainable

        gradient = jax.value_and_grad(loss_fn, has_aux=True)

        def step(state, images, labels):
            trainable, non_trainable, optimizer_values = state
            (loss, non_trainable), grads = gradient(trainable, non_trainable, optimizer_values, images, labels)
            trainable, optimizer_values = optimizer.stateless_apply(optimizer_values, grads, trainable)
            return loss, (trainable, non_trainable, optimizer_values)

        # The state is donated to each step (updated in place); copies leave the Keras variables usable.
        compiled = jax.jit(step, donate_argnums=0)
        state = ([self.jax.numpy.copy(v.value) for v in variables],
                 [self.jax.numpy.copy(v.value) for v in model.non_trainable_variables],
                 [self.jax.numpy.copy(v.value) for v in optimizer.variables])
        images = self._images(model, batch)
        labels = jax.random.randint(jax.random.PRNGKey(2), (batch,), 0, num_classes)

        def run() -> None:
            nonlocal state
            loss, state = compiled(state, images, labels)
            loss.block_until_ready()

        return run

    def inference_step(self, model: keras.Model, batch: int, xla: bool) -> Callable[[], None]:
        jax = self.jax
        forward = jax.jit(lambda trainable, non_trainable, x: model.stateless_call(trainable, non_trainable, x,
                                                                                   training=False)[0])
        trainable = [v.value for v in model.trainable_variables]
        non_trainable = [v.value for v in model.non_trainable_variables]
        images = self._images(model, batch)
        return lambda: forward(trainable, non_trainable, images).block_until_ready()

    def peak_device_bytes(self) -> int | None:
        """Peak bytes in use on the GPU (XLA's allocator); None on a CPU (use the process's peak RSS)."""
        return self.jax.devices()[0].memory_stats()["peak_bytes_in_use"] if self.on_gpu else None

    def _images(self, model: keras.Model, batch: int):
        return self.jax.random.uniform(self.jax.random.PRNGKey(1), (batch, *model.input_shape[1:]), minval=-1.0,
                                       maxval=1.0)


def make_backend(args: Args) -> TensorFlowBackend | JaxBackend:
    """The backend of KERAS_BACKEND (tensorflow or jax); ValueError for another."""
    import keras

    backends = {"tensorflow": TensorFlowBackend, "jax": JaxBackend}
    name = keras.backend.backend()
    if name not in backends:
        raise ValueError(f"bench: KERAS_BACKEND={name!r} is not supported; use tensorflow or jax")
    return backends[name](args)


def make_optimizer(precision: str, variables: list) -> keras.optimizers.Optimizer:
    """train_nets.py's optimiser (SGD, momentum 0.9; loss scaling under mixed_float16), built for `variables`."""
    import keras

    optimizer = keras.optimizers.SGD(learning_rate=0.001, momentum=0.9)
    if precision == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    optimizer.build(variables)
    return optimizer


def cpu_name() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux) and its core count."""
    name = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    return f"{name} ({os.cpu_count()} cores)"


# --------------------------------------------------------------------------------------------------------------
# Timing (call_timing.time_calls) and the peak probes


def conv_probe_shapes(matmul_size: int) -> list[tuple[int, int, int]]:
    """(batch, spatial, channels) of the convolution probes: the IR-ResNets' stage shapes at 112x112 (64 channels
    at 56x56, 256 at 14x14), scaled down with the matmul size in quick runs."""
    if matmul_size >= 2048:
        return [(16, 56, 64), (16, 14, 256)]
    return [(2, 8, 16), (2, 4, 32)]


def measure_chain(chain: Callable[[int], None], gflop_per_link: float, repeats: int, min_seconds: float) -> dict:
    """GFLOP/s of a chain made at least `min_seconds` long, best of `repeats` calls, and GFLOP per CPU-second."""
    chain(1)  # compile
    start = time.perf_counter()
    chain(1)
    length = max(1, math.ceil(min_seconds / (time.perf_counter() - start)))
    timing = time_calls(lambda: chain(length), warmup=1, calls=1, rounds=repeats, budget_seconds=float("inf"))
    gflop = gflop_per_link * length
    return {"gflops": gflop / timing.seconds, "median_gflops": gflop / timing.median_seconds,
            "gflops_per_cpu_second": gflop / timing.cpu_seconds, "chain": length}


def measure_peak(backend, dtype: str, size: int, repeats: int, min_seconds: float) -> dict:
    """The machine's peak in `dtype`: the best of several probes, matmuls of n x n for n = size / 4, size / 2 and
    size, and 3x3 convolutions of conv_probe_shapes (on a CPU both run in oneDNN; convolutions can beat its matmul
    there, and one probe alone read below what the network reached). Each probe is kept in "probes"."""
    probes = []
    for n in sorted({max(16, size // 4), max(16, size // 2), size}):
        probes.append({"probe": f"matmul {n}", **measure_chain(backend.matmul_chain(dtype, n), 2 * n**3 / 1e9,
                                                                repeats, min_seconds)})
    for batch, spatial, channels in conv_probe_shapes(size):
        gflop = 2 * batch * spatial**2 * 9 * channels**2 / 1e9
        probes.append({"probe": f"conv3x3 {batch}x{spatial}x{spatial}x{channels}",
                       **measure_chain(backend.conv_chain(dtype, (batch, spatial, channels)), gflop,
                                       repeats, min_seconds)})
    best = max(probes, key=lambda p: p["gflops"])
    return {"dtype": dtype, "gflops": best["gflops"], "median_gflops": best["median_gflops"],
            "gflops_per_cpu_second": max(p["gflops_per_cpu_second"] for p in probes), "best_probe": best["probe"],
            "probes": probes, "time": time.strftime("%H:%M:%S")}


# --------------------------------------------------------------------------------------------------------------
# The run


@dataclass
class Row:
    mode: str  # "training" or "inference"
    precision: str
    xla: bool
    batch: int
    images_per_second: float  # best round
    median_images_per_second: float
    images_per_cpu_second: float
    gflop_per_image: float
    rounds: int
    steps_per_round: int
    limit_images_per_second: float = 0.0
    fraction_of_limit: float = 0.0
    cpu_fraction_of_limit: float = 0.0
    notes: list[str] = field(default_factory=list)


def build_networks(args: Args, precision: str) -> tuple[keras.Model, MarginHead, NetworkCost]:
    """The backbone and margin head under the Keras dtype policy `precision`, and the backbone's cost."""
    import keras

    from losses import MarginHead
    from nets import get_backbone

    keras.mixed_precision.set_global_policy(precision)
    model = get_backbone(args.backbone, image_size=args.image_size, seed=0)
    head = MarginHead(args.num_classes, loss="arcface", seed=0)
    embedding_size = model.output_shape[-1]
    head.build((None, embedding_size))
    return model, head, count_cost(model, head_macs=embedding_size * args.num_classes)


def resolve_xla(choice: str, backend) -> list[bool]:
    if backend.name == "jax":
        return [True]
    if choice == "auto":
        return [False, True] if backend.on_gpu else [False]
    return {"on": [True], "off": [False], "both": [False, True]}[choice]


def measure_precision(args: Args, backend, precision: str, xla_modes: list[bool], bar) -> tuple[list[Row], NetworkCost]:
    """Every inference and training configuration of one precision (one built model)."""
    import keras

    model, head, cost = build_networks(args, precision)
    rows = []
    for xla in xla_modes:
        for mode, batches in (("inference", args.inference_batch_sizes), ("training", args.train_batch_sizes)):
            for batch in batches:
                bar.set_postfix_str(f"{mode} {precision} xla={xla} batch {batch}")
                if mode == "inference":
                    call = backend.inference_step(model, batch, xla)
                    gflop = cost.inference_gflop
                else:
                    call = backend.training_step(model, head, precision, batch, xla, args.num_classes,
                                                 args.weight_decay)
                    gflop = cost.training_gflop
                timing = time_calls(call, args.warmup_steps, args.steps, args.repeats, args.seconds_per_config)
                rows.append(Row(mode, precision, xla, batch, batch / timing.seconds, batch / timing.median_seconds,
                                batch / timing.cpu_seconds, gflop, timing.rounds, timing.calls_per_round))
                bar.update()
    keras.mixed_precision.set_global_policy("float32")
    return rows, cost


def machine_peaks(peaks: dict[str, list[dict]], cpu_threads: int | None) -> dict[str, float]:
    """GFLOP/s per dtype that the limits use: the best matmul of the run; on a CPU at least the best rate per
    CPU-second times the threads, since other jobs on a shared machine can leave the matmul fewer cores than the
    network got (this can only lower the fractions)."""
    result = {}
    for dtype, measurements in peaks.items():
        result[dtype] = max(m["gflops"] for m in measurements)
        if cpu_threads:
            result[dtype] = max(result[dtype], cpu_threads * max(m["gflops_per_cpu_second"] for m in measurements))
    return result


def raise_peaks_to_network(rows: list[Row], peaks: dict[str, list[dict]], limits: dict[str, float]) -> list[str]:
    """A probe that reads below what the network reached measured the probe, not the machine: the peak of each dtype
    becomes at least the network's best GFLOP/s (wall, and per CPU-second), so no fraction exceeds 1. The dtypes
    raised, for the report."""
    raised = []
    for dtype in limits:
        mine = [r for r in rows if COMPUTE_DTYPES[r.precision] == dtype]
        if not mine:
            continue
        network = max(r.images_per_second * r.gflop_per_image for r in mine)
        network_per_cpu = max(r.images_per_cpu_second * r.gflop_per_image for r in mine)
        probe_per_cpu = max(m["gflops_per_cpu_second"] for m in peaks[dtype])
        if network > limits[dtype] or network_per_cpu > probe_per_cpu:
            log.warning("the %s probes read %.0f GFLOP/s (%.0f per CPU-second), the network reached %.0f (%.0f): the "
                        "limit uses the network's", dtype, limits[dtype], probe_per_cpu, network, network_per_cpu)
            raised.append(dtype)
            limits[dtype] = max(limits[dtype], network)
            peaks[dtype].append({"dtype": dtype, "gflops": network, "median_gflops": network,
                                 "gflops_per_cpu_second": network_per_cpu, "best_probe": "the network itself",
                                 "probes": [], "time": time.strftime("%H:%M:%S")})
    return raised


def apply_limits(rows: list[Row], peaks: dict[str, list[dict]], limits: dict[str, float]) -> None:
    """Fills each row's limit (the peak of its compute dtype / its cost) and its fractions."""
    for row in rows:
        dtype = COMPUTE_DTYPES[row.precision]
        best_per_cpu = max(m["gflops_per_cpu_second"] for m in peaks[dtype])
        row.limit_images_per_second = limits[dtype] / row.gflop_per_image
        row.fraction_of_limit = row.images_per_second / row.limit_images_per_second
        row.cpu_fraction_of_limit = row.images_per_cpu_second * row.gflop_per_image / best_per_cpu


def check_targets(rows: list[Row], xla: bool) -> list[dict]:
    """The issue's targets for this project's 2-core CPU, from the rows that exist (batch 16 training, batch 32
    inference, without XLA on TensorFlow)."""

    def find(mode: str, precision: str, batch: int) -> Row | None:
        return next((r for r in rows if (r.mode, r.precision, r.batch, r.xla) == (mode, precision, batch, xla)), None)

    targets = []
    train32, infer32 = find("training", "float32", 16), find("inference", "float32", 32)
    train_bf16 = find("training", "mixed_bfloat16", 16)
    for row, minimum in ((train32, 0.70), (infer32, 0.85)):
        if row:
            targets.append({"target": f"{row.mode} {row.precision} batch {row.batch}: fraction of limit",
                            "value": row.fraction_of_limit, "minimum": minimum,
                            "row": {"mode": row.mode, "precision": row.precision, "batch": row.batch, "xla": xla}})
    if train32 and train_bf16:
        targets.append({"target": "training mixed_bfloat16 / float32 images/s, batch 16",
                        "value": train_bf16.images_per_second / train32.images_per_second, "minimum": 1.3,
                        "row": None})
    for target in targets:
        target["met"] = target["value"] >= target["minimum"]
    return targets


def log_table(rows: list[Row], peaks: dict[str, list[dict]], limits: dict[str, float], cost: NetworkCost) -> None:
    log.info("network: %.2f GFLOP per image forward, %.2f per training image, %d parameters", cost.inference_gflop,
             cost.training_gflop, cost.parameters)
    for dtype, measurements in peaks.items():
        log.info("peak %-8s: %s GFLOP/s (%s GFLOP per CPU-second); limits use %.0f GFLOP/s", dtype,
                 " / ".join(f"{m['gflops']:.0f} ({m.get('best_probe', 'matmul')})" for m in measurements),
                 " / ".join(f"{m['gflops_per_cpu_second']:.0f}" for m in measurements), limits[dtype])
    log.info("%-9s %-14s %-5s %5s %10s %10s %10s %9s %9s", "mode", "precision", "xla", "batch", "img/s",
             "median", "limit", "fraction", "cpu-frac")
    for r in rows:
        log.info("%-9s %-14s %-5s %5d %10.2f %10.2f %10.2f %9.3f %9.3f", r.mode, r.precision, r.xla, r.batch,
                 r.images_per_second, r.median_images_per_second, r.limit_images_per_second, r.fraction_of_limit,
                 r.cpu_fraction_of_limit)


def run_conditions() -> dict:
    """What the figures depend on besides the code: CPU count, load and the environment variables that matter."""
    import keras

    names = ("KERAS_BACKEND", "TF_ENABLE_ONEDNN_OPTS", "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS",
             "OMP_NUM_THREADS", "XLA_FLAGS", "CUDA_VISIBLE_DEVICES")
    return {"cpu_count": os.cpu_count(), "load_average": list(os.getloadavg()),
            "environment": {name: os.environ[name] for name in names if name in os.environ},
            "python": platform.python_version(), "keras": keras.__version__, "time": time.strftime("%Y-%m-%d %H:%M:%S")}


def main(args: Args) -> dict:
    from tqdm import tqdm  # here: gpu_peer.py imports this module's backends where tqdm may not be installed

    apply_quick(args)
    validate_args(args)
    backend = make_backend(args)
    xla_modes = resolve_xla(args.xla, backend)
    matmul_size = args.matmul_size or (8192 if backend.on_gpu else 4096)
    before = run_conditions()
    log.info("%s %s on %s; load average %.2f", backend.name, backend.version, backend.device,
             before["load_average"][0])
    peaks: dict[str, list[dict]] = {}
    rows: list[Row] = []
    per_precision = len(xla_modes) * (len(args.train_batch_sizes) + len(args.inference_batch_sizes))
    with tqdm(total=per_precision * len(args.precisions), unit="config", desc="bench_model") as bar:
        for precision in args.precisions:
            # The peak just before and just after the precision's configurations: the limit is the best of them.
            dtype = COMPUTE_DTYPES[precision]
            peak = functools.partial(measure_peak, backend, dtype, matmul_size, args.matmul_repeats,
                                     args.matmul_seconds)
            peaks.setdefault(dtype, []).append(peak())
            precision_rows, cost = measure_precision(args, backend, precision, xla_modes, bar)
            rows += precision_rows
            peaks[dtype].append(peak())
    after = run_conditions()
    limits = machine_peaks(peaks, None if backend.on_gpu else args.intra_op_threads or os.cpu_count())
    raised = raise_peaks_to_network(rows, peaks, limits)
    apply_limits(rows, peaks, limits)
    log_table(rows, peaks, limits, cost)
    targets = check_targets(rows, xla_modes[0]) if not backend.on_gpu else []
    for target in targets:
        log.info("target %-52s %.3f (minimum %.2f): %s", target["target"], target["value"], target["minimum"],
                 "met" if target["met"] else "MISSED")
    log.info("conditions: %d CPUs, load average %.2f before / %.2f after (1 min)", before["cpu_count"],
             before["load_average"][0], after["load_average"][0])
    report = {"backend": backend.name, "backend_version": backend.version, "device": backend.device,
              "on_gpu": backend.on_gpu, "network": {"backbone": args.backbone, "image_size": args.image_size,
                                                    **asdict(cost), "inference_gflop": cost.inference_gflop,
                                                    "training_gflop": cost.training_gflop},
              "peaks": peaks, "peak_gflops_used": limits,
              "peaks_raised_to_network": raised, "results": [asdict(r) for r in rows], "targets": targets,
              "conditions_before": before, "conditions_after": after, "args": args.to_dict()}
    path = output_path(args, "model.json")
    write_results(path, report)
    return report


if __name__ == "__main__":
    run_script(Args, main)
