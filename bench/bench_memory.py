"""Training memory: peak memory per training image of a backbone, and the seed's max-batch-size test.

    .venv/bin/python bench/bench_memory.py
    .venv/bin/python bench/bench_memory.py --quick=true           # a tiny run that checks the script works
    KERAS_BACKEND=jax python bench/bench_memory.py

1. Per training image: bench_model's training step of the backbone (LResNet50E-IR, margin head, SGD with momentum)
   at a few batch sizes, each in a fresh child process. The peak memory of each child (CPU: its peak resident set;
   GPU: the peak bytes its allocator held) against the batch size is fitted by a line: the slope is the memory per
   training image (activations kept for the backward pass, gradients of them), the intercept the weights, optimiser
   state and runtime.
2. The seed's max-batch-size test (its test/benchmark/tensorlayer_batchsize_test.py): nine 3x3 convolutions
   (64, 64, 64/2, 128, 128, 128/2, 256, 256, 256/2) on 28x28x1 inputs, dense 10, softmax cross-entropy, SGD lr 0.1,
   with and without batch norm and PReLU after each convolution (random data of MNIST's shape). The largest batch
   that trains within a memory cap: on a GPU the cap (default 12 GiB, the seed's Titan Xp) is the memory limit of the
   logical device under TensorFlow (an out-of-memory error = does not fit), under JAX the peak bytes in use are
   compared with it. On a CPU nothing fails before the shared machine runs out of memory, so a batch fits when the
   child's peak resident set stays within the cap (default 3 GiB, runtime included), and the search is bounded by
   `max_probes` per variant and `seconds_budget`: the result is a bracket [largest batch that fits, smallest that
   does not], found by predicting the limit from the memory slope of two small batches, then verifying and
   narrowing it in child processes.
Writes bench/results/memory.json (quick runs: bench/results/quick/memory.json) and logs a table.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import resource
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

# JAX would otherwise reserve most of the GPU in every process, this one included; the peaks are read per process.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

# config first: run as a script, it quiets TensorFlow's start-up log, which must happen before TensorFlow loads.
from config import (Choices, Config, Length, NonNegativeInt, OptionalPath, PositiveFloat, PositiveInt, Range,
                    registered_backbones, run_script)  # noqa: E402
import numpy as np  # noqa: E402
from tqdm import tqdm  # noqa: E402

from bench_model import Args as ModelArgs, build_networks, make_backend, output_path, run_conditions  # noqa: E402
from timing import write_results  # noqa: E402

if TYPE_CHECKING:  # Keras (and its backend) is imported where it is used: --help and a bad value need none of it
    import keras

REPO = Path(__file__).resolve().parents[1]
log = logging.getLogger("bench_memory")
GIB = 2**30
MIB = 2**20
# The seed's test net: (filters, stride) of its nine convolutions.
SEED_NET_CONVS = ((64, 1), (64, 1), (64, 2), (128, 1), (128, 1), (128, 2), (256, 1), (256, 1), (256, 2))
# name -> (batch norm, PReLU) after every convolution.
SEED_VARIANTS = {"plain": (False, False), "bn": (True, False), "prelu": (False, True), "bn+prelu": (True, True)}
# The seed's findings on a 12 GB Titan Xp (TensorFlow 1 + TensorLayer): lower and upper bound of the max batch.
SEED_TITAN_XP = {"plain": (8000, 9000), "bn": (5000, 6000), "prelu": (3000, 4000), "bn+prelu": (2000, 3000)}


class Args(Config):
    # nets.get_backbone name of part 1
    backbone: Annotated[str, Choices(names=registered_backbones, ignore_case=True)] = "LResNet50E-IR"
    # Keras dtype policy of part 1
    precision: Annotated[str, Choices("float32", "mixed_bfloat16", "mixed_float16")] = "float32"
    num_classes: PositiveInt = 85164  # part 1: classes of the margin head (the seed's MS1M)
    cpu_batch_sizes: Annotated[list[int], Range(1)] = [4, 8, 16, 32]  # part 1 batch sizes on a CPU
    gpu_batch_sizes: Annotated[list[int], Range(1)] = [32, 64, 128, 256]  # part 1 batch sizes on a GPU
    steps: PositiveInt = 2  # training steps per child process (the peak is reached in the first; the second confirms)
    # part 2 variants (SEED_VARIANTS)
    seed_variants: Annotated[list[str], Choices(*SEED_VARIANTS)] = ["plain", "bn", "prelu", "bn+prelu"]
    # part 2 on a CPU: a batch fits when the child's peak resident set stays within this
    cpu_cap_gib: PositiveFloat = 3.0
    gpu_cap_gib: PositiveFloat = 12.0  # part 2 on a GPU: the device memory allowed (the seed's 12 GB Titan Xp)
    # part 2: small batches whose memory predicts the largest
    slope_batch_sizes: Annotated[list[int], Range(1), Length(2, 2)] = [64, 256]
    # part 2 stops when the bracket is narrower than this fraction of the batch
    resolution: Annotated[float, Range(0, 1, low_open=True, high_open=True)] = 0.05
    max_probes: NonNegativeInt = 4  # part 2: child processes per variant after the slope batches
    seconds_budget: PositiveFloat = 900.0  # part 2: no new probe after this long (a CPU run is slow at large batches)
    skip_backbone: bool = False  # run part 2 only
    quick: bool = False  # tiny run: ResNet18 at batches 1 and 2, one variant with a 1.5 GiB cap, one probe
    output_json: OptionalPath = ""  # "" = bench/results/memory.json (quick: bench/results/quick/memory.json)


def apply_quick(args: Args) -> Args:
    if args.quick:
        for key, value in {"backbone": "LResNet18E-IR", "num_classes": 100, "cpu_batch_sizes": [1, 2],
                           "gpu_batch_sizes": [2, 4], "steps": 1, "seed_variants": ["bn+prelu"], "cpu_cap_gib": 1.5,
                           "slope_batch_sizes": [8, 32], "max_probes": 1, "resolution": 0.25}.items():
            args.set(key, value)
    return args


# --------------------------------------------------------------------------------------------------------------
# What runs in a child process


def _peak_bytes(backend) -> int:
    """The GPU allocator's peak when on a GPU, else this process's peak resident set (Linux: ru_maxrss in KiB)."""
    device_peak = backend.peak_device_bytes()
    return device_peak if device_peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _is_out_of_memory(error: Exception) -> bool:
    text = f"{type(error).__name__} {error}"
    return "ResourceExhausted" in text or "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower()


def _limit_gpu_memory(cap_bytes: int) -> None:
    """Under TensorFlow, makes the first GPU a logical device of `cap_bytes` (before the runtime starts)."""
    import keras

    if keras.backend.backend() != "tensorflow":
        return
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        tf.config.set_logical_device_configuration(
            gpus[0], [tf.config.LogicalDeviceConfiguration(memory_limit=cap_bytes // MIB)])


def backbone_probe(model_args: dict, precision: str, batch: int, steps: int) -> dict:
    """Child: `steps` training steps of the backbone at `batch`; its peak memory."""
    args = ModelArgs(**model_args)
    backend = make_backend(args)
    model, head, _ = build_networks(args, precision)
    step = backend.training_step(model, head, precision, batch, False, args.num_classes, args.weight_decay)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return {"batch": batch, "peak_bytes": _peak_bytes(backend), "seconds": time.perf_counter() - start}


def seed_test_net(batch_norm: bool, prelu: bool) -> keras.Model:
    """The seed's max-batch-size test net (a linear conv stack when neither batch norm nor PReLU is used)."""
    import keras

    inputs = keras.Input((28, 28, 1))
    x = inputs
    for index, (filters, stride) in enumerate(SEED_NET_CONVS):
        x = keras.layers.Conv2D(filters, 3, strides=stride, padding="same", kernel_initializer="glorot_uniform",
                                name=f"conv{index}")(x)
        if batch_norm:
            x = keras.layers.BatchNormalization(name=f"bn{index}")(x)
        if prelu:
            x = keras.layers.PReLU(shared_axes=[1, 2], name=f"prelu{index}")(x)
    outputs = keras.layers.Dense(10, name="logits")(keras.layers.Flatten()(x))
    return keras.Model(inputs, outputs, name="seed_batch_size_test")


def seed_net_probe(variant: str, batch: int, steps: int, gpu_cap_bytes: int) -> dict:
    """Child: `steps` SGD steps of the seed's test net at `batch`; its peak memory, or out_of_memory."""
    import keras

    _limit_gpu_memory(gpu_cap_bytes)
    backend = make_backend(ModelArgs())
    model = seed_test_net(*SEED_VARIANTS[variant])
    # Without XLA under TensorFlow, as the seed's TF1 graph; the JAX backend always compiles.
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.1),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  jit_compile="auto" if backend.name == "jax" else False)
    rng = np.random.default_rng(batch)
    images = rng.random((batch, 28, 28, 1), dtype=np.float32)
    labels = rng.integers(0, 10, batch)
    start = time.perf_counter()
    try:
        for _ in range(steps):
            model.train_on_batch(images, labels)
    except Exception as error:  # the device's out-of-memory error type differs between backends
        if not _is_out_of_memory(error):
            raise
        return {"batch": batch, "peak_bytes": None, "out_of_memory": True, "seconds": time.perf_counter() - start}
    return {"batch": batch, "peak_bytes": _peak_bytes(backend), "out_of_memory": False,
            "seconds": time.perf_counter() - start}


def in_child(function, *args) -> dict | None:
    """Runs function(*args) in a fresh spawned process (fresh peak counters); None when the process died (e.g. the
    kernel's out-of-memory killer)."""
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context, max_tasks_per_child=1) as pool:
        try:
            return pool.submit(function, *args).result()
        except BrokenProcessPool:
            return None


# --------------------------------------------------------------------------------------------------------------
# Part 1: memory per training image


def fit_line(points: list[tuple[int, int]]) -> tuple[float, float]:
    """Least-squares slope and intercept of (batch, bytes) points."""
    batches, peaks = zip(*points)
    slope, intercept = np.polyfit(np.asarray(batches, float), np.asarray(peaks, float), 1)
    return float(slope), float(intercept)


def measure_backbone(args: Args, on_gpu: bool, bar: tqdm) -> dict:
    batches = args.gpu_batch_sizes if on_gpu else args.cpu_batch_sizes
    model_args = ModelArgs(backbone=args.backbone, num_classes=args.num_classes).to_dict()
    probes = []
    for batch in batches:
        bar.set_postfix_str(f"{args.backbone} batch {batch}")
        result = in_child(backbone_probe, model_args, args.precision, batch, args.steps)
        if result is None:
            raise RuntimeError(f"bench_memory: the child process training {args.backbone} at batch {batch} died "
                               "(out of memory?); choose smaller batch sizes")
        probes.append(result)
        bar.update()
    slope, intercept = fit_line([(p["batch"], p["peak_bytes"]) for p in probes])
    return {"backbone": args.backbone, "precision": args.precision, "probes": probes,
            "bytes_per_image": slope, "intercept_bytes": intercept}


# --------------------------------------------------------------------------------------------------------------
# Part 2: the seed's max-batch-size test


@dataclass
class Bracket:
    largest_fitting: int = 0
    smallest_failing: int | None = None

    def narrow_enough(self, resolution: float) -> bool:
        return (self.smallest_failing is not None and self.largest_fitting > 0
                and self.smallest_failing - self.largest_fitting <= max(1, resolution * self.largest_fitting))

    def add(self, batch: int, fits: bool) -> None:
        if fits:
            self.largest_fitting = max(self.largest_fitting, batch)
        elif self.smallest_failing is None or batch < self.smallest_failing:
            self.smallest_failing = batch


def next_batch(points: list[tuple[int, int]], bracket: Bracket, cap_bytes: int, resolution: float) -> int:
    """The batch whose memory the line through the two measured points nearest the cap predicts at the cap, kept a
    quarter of the bracket away from its ends so that every probe narrows it (a safeguarded secant)."""
    nearest = sorted(points, key=lambda point: abs(point[1] - cap_bytes))[:2]
    slope, intercept = fit_line(nearest) if len({b for b, _ in nearest}) == 2 else (0.0, 0.0)
    low = bracket.largest_fitting
    high = bracket.smallest_failing
    predicted = (cap_bytes - intercept) / slope if slope > 0 else 2 * max(low, 1)
    if high is None:
        return int(max(predicted, low * (1 + 2 * resolution), low + 1))
    margin = (high - low) / 4
    return int(min(max(predicted, low + margin), high - margin))


def max_batch(variant: str, args: Args, cap_bytes: int, gpu_cap_bytes: int, deadline: float, bar: tqdm) -> dict:
    """The bracket of the largest batch of the seed's test net (one variant) that fits in `cap_bytes`."""
    bracket, probes, points = Bracket(), [], []

    def probe(batch: int) -> None:
        bar.set_postfix_str(f"{variant} batch {batch}")
        result = in_child(seed_net_probe, variant, batch, args.steps, gpu_cap_bytes)
        result = result or {"batch": batch, "peak_bytes": None, "out_of_memory": True, "seconds": None}
        result["fits"] = not result["out_of_memory"] and result["peak_bytes"] <= cap_bytes
        probes.append(result)
        bracket.add(batch, result["fits"])
        if result["peak_bytes"] is not None:
            points.append((batch, result["peak_bytes"]))
        bar.update()

    for batch in args.slope_batch_sizes:
        probe(batch)
    for _ in range(args.max_probes):
        if bracket.narrow_enough(args.resolution) or time.monotonic() > deadline:
            break
        probe(next_batch(points, bracket, cap_bytes, args.resolution))
    slope, intercept = fit_line(points) if len({b for b, _ in points}) >= 2 else (None, None)
    return {"variant": variant, "batch_norm": SEED_VARIANTS[variant][0], "prelu": SEED_VARIANTS[variant][1],
            **asdict(bracket), "bracket_closed": bracket.narrow_enough(args.resolution), "bytes_per_image": slope,
            "intercept_bytes": intercept, "seed_titan_xp": SEED_TITAN_XP[variant], "probes": probes}


# --------------------------------------------------------------------------------------------------------------


def log_tables(report: dict) -> None:
    if report["backbone"]:
        part1 = report["backbone"]
        log.info("%s training (%s), peak memory per child:", part1["backbone"], part1["precision"])
        for p in part1["probes"]:
            log.info("  batch %4d: %8.0f MiB  (%.1f s)", p["batch"], p["peak_bytes"] / MIB, p["seconds"])
        log.info("  => %.1f MiB per training image + %.0f MiB", part1["bytes_per_image"] / MIB,
                 part1["intercept_bytes"] / MIB)
    seed = report["seed_test"]
    log.info("seed's max-batch-size test within %.1f GiB (%s):", seed["cap_bytes"] / GIB, seed["cap_kind"])
    log.info("  %-9s %9s %9s %8s %12s %16s", "variant", "fits", "fails", "closed", "MiB/image", "seed Titan Xp")
    for v in seed["variants"]:
        per_image = f"{v['bytes_per_image'] / MIB:.3f}" if v["bytes_per_image"] else "-"
        log.info("  %-9s %9d %9s %8s %12s %16s", v["variant"], v["largest_fitting"], v["smallest_failing"] or "-",
                 v["bracket_closed"], per_image, "%d-%d" % v["seed_titan_xp"])


def main(args: Args) -> dict:
    apply_quick(args)
    unknown = [v for v in args.seed_variants if v not in SEED_VARIANTS]
    if unknown:
        raise ValueError(f"Args: seed_variants {unknown} unknown; expected some of {', '.join(SEED_VARIANTS)}")
    backend = make_backend(ModelArgs())  # lists the device; the runtime itself starts only in the children
    before = run_conditions()
    cap_bytes = int((args.gpu_cap_gib if backend.on_gpu else args.cpu_cap_gib) * GIB)
    gpu_cap_bytes = int(args.gpu_cap_gib * GIB)
    total = (0 if args.skip_backbone else len(args.gpu_batch_sizes if backend.on_gpu else args.cpu_batch_sizes))
    total += len(args.seed_variants) * (len(args.slope_batch_sizes) + args.max_probes)
    with tqdm(total=total, unit="probe", desc="bench_memory") as bar:
        backbone = None if args.skip_backbone else measure_backbone(args, backend.on_gpu, bar)
        deadline = time.monotonic() + args.seconds_budget
        variants = [max_batch(v, args, cap_bytes, gpu_cap_bytes, deadline, bar) for v in args.seed_variants]
    cap_kind = ("GPU memory limit" if backend.on_gpu else
                "peak resident set of the child process, runtime included (CPU: bounded by the cap and the budget)")
    report = {"backend": backend.name, "device": backend.device, "on_gpu": backend.on_gpu, "backbone": backbone,
              "seed_test": {"cap_bytes": cap_bytes, "cap_kind": cap_kind, "variants": variants},
              "conditions_before": before, "conditions_after": run_conditions(), "args": args.to_dict()}
    log_tables(report)
    path = output_path(args, "memory.json")
    write_results(path, report)
    return report


if __name__ == "__main__":
    run_script(Args, main)
