"""The Partial FC head against the full margin head: step time and memory of the head alone, per class count.

    .venv/bin/python bench/bench_partial_fc.py
    .venv/bin/python bench/bench_partial_fc.py --quick=true        # 20k classes, three configurations: checks it works
    .venv/bin/python bench/bench_partial_fc.py --class_counts=[100000] --sample_rates=[0.1] --replica_counts=[2]

A head step is what the class weights cost per training step with the backbone left out: random embeddings [B, D]
(a tf.Variable, so that their gradient is computed, as the backbone would need it) and random labels; the ArcFace
logits, the softmax cross-entropy, the gradients to the class weights and to the embeddings, and the momentum-SGD
update, in one tf.function. The full head is losses.MarginHead with Keras SGD (momentum 0.9) on one device; the
Partial FC head is losses.partial_fc.PartialFC (sample, rows, loss, apply, as training.step.make_train_step calls
them) at each sample rate, on one device or sharded over N replicas of train_nets_mgpu_new.make_strategy (logical
CPU devices when there is no GPU). Each configuration runs in a fresh spawned process: logical devices must be set
before TensorFlow starts, and the peak resident set of the process is then that configuration's alone.
Writes bench/results/partial_fc.json (quick runs: bench/results/quick/partial_fc.json) and logs a table.
"""

from __future__ import annotations

import itertools
import logging
import multiprocessing
import resource
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import TYPE_CHECKING, Annotated, Callable

# config first: run as a script, it quiets TensorFlow's start-up log, which must happen before TensorFlow loads.
from config import Config, NonNegativeInt, OptionalPath, PositiveFloat, PositiveInt, Range, run_script  # noqa: E402
import numpy as np  # noqa: E402

from bench_model import cpu_name, output_path, run_conditions  # noqa: E402
from call_timing import time_calls  # noqa: E402
from timing import write_results  # noqa: E402

if TYPE_CHECKING:  # TensorFlow is imported where it is used: --help and a bad value need none of it
    import tensorflow as tf

log = logging.getLogger("bench_partial_fc")
MIB = 2**20
FULL = "full"
LEARNING_RATE = 0.1
MOMENTUM = 0.9  # train_nets.py's SGD


class Args(Config):
    class_counts: Annotated[list[int], Range(2)] = [100000, 360000, 1000000]  # C of each group of configurations
    batch_size: PositiveInt = 128  # global batch B (split over the replicas)
    embedding_size: PositiveInt = 512  # D
    # Partial FC sample rates measured at every class count and replica count
    sample_rates: Annotated[list[float], Range(0, 1, low_open=True)] = [1.0, 0.3, 0.1]
    replica_counts: Annotated[list[int], Range(1)] = [1, 2]  # N of the Partial FC configurations
    # configurations whose step touches more class centres than this (C, or C x sample_rate) are skipped: on this
    # 2-core, 23 GiB machine the full head at 1M classes would need ~18 GiB and ~20 s a step (sample rate 1.0: more)
    dense_class_limit: PositiveInt = 400000
    warmup_steps: PositiveInt = 2  # untimed steps first (tracing, allocation)
    steps: PositiveInt = 10  # timed steps per configuration (fewer when they would exceed seconds_per_config)
    seconds_per_config: PositiveFloat = 15.0  # time budget of the timed steps of one configuration
    seed: NonNegativeInt = 0  # of the labels, the embeddings and the heads
    quick: bool = False  # 20k classes; the full head and sample rate 0.1 on 1 and 2 replicas; 3 timed steps
    output_json: OptionalPath = ""  # "" = bench/results/partial_fc.json (quick: bench/results/quick/partial_fc.json)


def apply_quick(args: Args) -> Args:
    if args.quick:
        for key, value in {"class_counts": [20000], "sample_rates": [0.1], "steps": 3, "warmup_steps": 1}.items():
            args.set(key, value)
    return args


def validate_args(args: Args) -> None:
    for replicas in args.replica_counts:
        if args.batch_size % replicas:
            raise ValueError(f"Args: batch_size={args.batch_size} must be divisible by every replica count "
                             f"(replica_counts={args.replica_counts})")
        if min(args.class_counts) < replicas:
            raise ValueError(f"Args: class_counts {args.class_counts} must be at least every replica count")


def configurations(args: Args) -> list[dict]:
    """Per class count: the full head on one device, then Partial FC at every replica count and sample rate."""
    configs = []
    for classes in args.class_counts:
        configs.append({"head": FULL, "num_classes": classes, "replicas": 1, "sample_rate": None})
        configs += [{"head": "partial_fc", "num_classes": classes, "replicas": replicas, "sample_rate": rate}
                    for replicas in args.replica_counts for rate in args.sample_rates]
    return configs


def touched_classes(config: dict) -> int:
    """Class centres one step computes logits for and updates, over all replicas."""
    return int(config["num_classes"] * (config["sample_rate"] or 1.0))


def analytic_bytes(num_classes: int, embedding_size: int, replicas: int) -> int:
    """float32 class weights and one momentum slot of the largest shard (shard_ranges: the first gets the extra)."""
    rows = -(-num_classes // replicas)
    return 2 * rows * embedding_size * 4


# --------------------------------------------------------------------------------------------------------------
# What runs in a child process


def random_embeddings(args: dict) -> np.ndarray:
    rng = np.random.default_rng(args["seed"])
    return rng.standard_normal((args["batch_size"], args["embedding_size"])).astype(np.float32)


def step_labels(args: dict, iteration: tf.Tensor) -> tf.Tensor:
    """The global batch's labels of step `iteration`, new every step (the same labels every step would be learnt
    within a few steps: loss and gradients 0) and drawn on the device, so that no input transfer is timed."""
    import tensorflow as tf

    seed = tf.stack([tf.constant(args["seed"], tf.int64), tf.cast(iteration, tf.int64)])
    return tf.random.stateless_uniform([args["batch_size"]], seed=seed, maxval=args["num_classes"], dtype=tf.int32)


def counted(step: Callable[[tf.Tensor], tf.Tensor]) -> Callable[[], tf.Tensor]:
    """A call without arguments that runs step(iteration) at iterations 0, 1, 2, ..."""
    import tensorflow as tf

    counter = itertools.count()
    return lambda: step(tf.constant(next(counter), tf.int64))


def full_head_step(args: dict) -> tuple[Callable[[], tf.Tensor], list[int]]:
    """(step, head bytes): MarginHead + Keras SGD as make_train_step's full-head branch, without the metrics."""
    import keras
    import tensorflow as tf

    from losses import MarginHead
    from training.step import smoothed_cross_entropy

    embeddings = tf.Variable(random_embeddings(args))
    head = MarginHead(args["num_classes"], loss="arcface", seed=args["seed"])
    head.build((None, args["embedding_size"]))
    optimizer = keras.optimizers.SGD(learning_rate=LEARNING_RATE, momentum=MOMENTUM)
    optimizer.build(head.trainable_variables)
    weights = head.embedding_weights

    @tf.function
    def step(iteration: tf.Tensor) -> tf.Tensor:
        labels = step_labels(args, iteration)
        with tf.GradientTape() as tape:
            logits = head(embeddings, labels)
            loss = tf.reduce_sum(smoothed_cross_entropy(labels, logits, 0.0)) / args["batch_size"]
        weights_grad, embeddings_grad = tape.gradient(loss, [weights, embeddings])
        optimizer.apply_gradients([(weights_grad, weights)])
        # The embeddings' gradient is returned so that it is computed (the backbone would need it).
        return tf.stack([loss, tf.reduce_sum(tf.square(embeddings_grad)), float(args["num_classes"])])

    momentum_bytes = sum(int(np.prod(v.shape)) * 4 for v in optimizer.variables if len(v.shape) == 2)
    return counted(step), [int(np.prod(weights.shape)) * 4 + momentum_bytes]


def partial_fc_step(args: dict) -> tuple[Callable[[], tf.Tensor], list[int]]:
    """(step, bytes per replica): PartialFC's sample / rows / loss / apply inside strategy.run, as make_train_step's
    partial_fc branch, on the replicas' own embeddings and labels (plain variables on each replica's device)."""
    import tensorflow as tf

    from losses.partial_fc import PartialFC

    replicas, batch = args["replicas"], args["batch_size"]
    if replicas > 1:
        from train_nets_mgpu_new import make_strategy

        strategy = make_strategy(replicas)  # first TensorFlow call of the process: sets the logical devices
        devices = list(strategy.extended.worker_devices)
    else:
        strategy, devices = tf.distribute.get_strategy(), [None]
    embeddings_value, local = random_embeddings(args), batch // replicas
    embeddings = []
    for index, device in enumerate(devices):
        with tf.device(device):
            embeddings.append(tf.Variable(embeddings_value[index * local:(index + 1) * local]))
    head = PartialFC(args["num_classes"], args["embedding_size"], loss="arcface", sample_rate=args["sample_rate"],
                     seed=args["seed"], devices=devices, momentum=MOMENTUM)

    def replica_step(iteration: tf.Tensor) -> tf.Tensor:
        replica = tf.get_static_value(tf.distribute.get_replica_context().replica_id_in_sync_group)
        replica_embeddings = embeddings[int(replica)]
        replica_labels = step_labels(args, iteration)[int(replica) * local:(int(replica) + 1) * local]
        sample = head.sample(replica_labels, iteration)
        with tf.GradientTape() as tape:
            rows = head.rows(sample)
            out = head.loss(replica_embeddings, replica_labels, rows, sample, batch)
        rows_grad, embeddings_grad = tape.gradient(out["loss"], [rows, replica_embeddings])
        head.apply(sample, rows_grad, LEARNING_RATE, iteration)
        return tf.stack([out["loss"] / replicas, tf.reduce_sum(tf.square(embeddings_grad)), out["sampled"]])

    @tf.function
    def step(iteration: tf.Tensor) -> tf.Tensor:
        return strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(replica_step, args=(iteration,)), axis=None)

    return counted(step), head.replica_bytes()


def measure(args: dict) -> dict:
    """Child: warm-up and timed head steps of one configuration; times, bytes and the peak resident set."""
    start = time.perf_counter()
    step, variable_bytes = full_head_step(args) if args["head"] == FULL else partial_fc_step(args)
    build_seconds = time.perf_counter() - start
    outputs = []
    timing = time_calls(lambda: outputs.append(step().numpy()), args["warmup_steps"], 1, args["steps"],
                        args["seconds_per_config"])
    loss, embeddings_grad_square, sampled = outputs[-1]
    if not (np.isfinite(loss) and embeddings_grad_square > 0):
        raise RuntimeError(f"bench_partial_fc: {args['head']} at {args['num_classes']} classes gave loss {loss} and "
                           f"an embeddings gradient of squared norm {embeddings_grad_square}")
    return {"median_ms": timing.median_seconds * 1e3, "best_ms": timing.seconds * 1e3,
            "cpu_ms": timing.cpu_seconds * 1e3, "timed_steps": timing.rounds, "build_seconds": build_seconds,
            "loss": float(loss), "sampled_classes": float(sampled), "variable_bytes_per_replica": variable_bytes,
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def in_child(config: dict) -> dict | None:
    """measure(config) in a fresh spawned process; None when it died (e.g. the kernel's out-of-memory killer)."""
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context, max_tasks_per_child=1) as pool:
        try:
            return pool.submit(measure, config).result()
        except BrokenProcessPool:
            return None


# --------------------------------------------------------------------------------------------------------------


def run_configuration(args: Args, config: dict) -> dict:
    child_args = {**config, "batch_size": args.batch_size, "embedding_size": args.embedding_size, "seed": args.seed,
                  "warmup_steps": args.warmup_steps, "steps": args.steps,
                  "seconds_per_config": args.seconds_per_config}
    analytic = analytic_bytes(config["num_classes"], args.embedding_size, config["replicas"])
    if touched_classes(config) > args.dense_class_limit:
        log.info("skipping %s: %d class centres a step > dense_class_limit", config, touched_classes(config))
        return {**config, "analytic_bytes_per_replica": analytic, "skipped": "dense_class_limit"}
    log.info("measuring %s", config)
    result = in_child(child_args)
    return {**config, "analytic_bytes_per_replica": analytic, **(result or {"died": True})}


def add_ratios(results: list[dict]) -> None:
    """Each configuration's median step time as a ratio to the full head's at the same class count (same run)."""
    full = {r["num_classes"]: r.get("median_ms") for r in results if r["head"] == FULL}
    for r in results:
        reference = full.get(r["num_classes"])
        r["ratio_to_full"] = r["median_ms"] / reference if reference and "median_ms" in r else None


def log_table(results: list[dict]) -> None:
    log.info("%9s %-12s %3s %8s %10s %9s %12s %12s %10s %8s", "classes", "head", "N", "rate", "median ms",
             "/ full", "MiB/replica", "(variables)", "peak RSS", "sampled")
    for r in results:
        rate = "-" if r["sample_rate"] is None else f"{r['sample_rate']:g}"
        if "median_ms" not in r:
            state = "skipped (dense_class_limit)" if r.get("skipped") else "died (out of memory?)"
            log.info("%9d %-12s %3d %8s  %s", r["num_classes"], r["head"], r["replicas"], rate, state)
            continue
        ratio = "-" if r["ratio_to_full"] is None else f"{r['ratio_to_full']:.3f}"
        variables = "/".join(f"{b / MIB:.0f}" for b in r["variable_bytes_per_replica"])
        log.info("%9d %-12s %3d %8s %10.1f %9s %12.0f %12s %10.0f %8.0f", r["num_classes"], r["head"], r["replicas"],
                 rate, r["median_ms"], ratio, r["analytic_bytes_per_replica"] / MIB, variables,
                 r["peak_rss_bytes"] / MIB, r["sampled_classes"])


def main(args: Args) -> dict:
    apply_quick(args)
    validate_args(args)
    before = run_conditions()
    start = time.perf_counter()
    results = [run_configuration(args, config) for config in configurations(args)]
    add_ratios(results)
    log_table(results)
    report = {"device": cpu_name(), "results": results, "seconds": time.perf_counter() - start,
              "conditions_before": before, "conditions_after": run_conditions(), "args": args.to_dict()}
    write_results(output_path(args, "partial_fc.json"), report)
    return report


if __name__ == "__main__":
    run_script(Args, main)
