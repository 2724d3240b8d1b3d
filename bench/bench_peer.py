"""Our LResNet50E-IR (Keras on TensorFlow) against the PyTorch IR-ResNet50 of bench/peer_iresnet.py, side by side in
one run on the same machine: training and inference images/s per precision and batch size, and the ratio ours /
PyTorch; then the deploy path, onnxruntime on our ONNX export, against PyTorch inference.

    .venv/bin/python bench/bench_peer.py
    .venv/bin/python bench/bench_peer.py --quick=true        # depth 18 at 32x32, one step: checks that it works

The two networks have the same structure and weight count (the peer replaces arcface_torch's first-stage downsample
by the seed's strided subsample; the run refuses to compare networks whose counts differ). Both train with an
ArcFace head (s 64, m 0.5) of `num_classes` classes and SGD with momentum 0.9 and weight decay 5e-4; ours is
training.step.make_train_step, what train_nets.py runs (L2 in the loss, its accuracy metrics), PyTorch's is
forward, loss, backward, optimizer.step. float32 and bf16 (Keras mixed_bfloat16, torch.autocast bfloat16); the
inputs are random tensors already in memory.

PyTorch is never a requirement of the project: the peer runs in the side venv of tests/torch_side.py (built on first
use; torch's CPU build) as `peer_iresnet.py SPEC OUT`, and this script reads its JSON. `step_parts` also times our
step without its L2 term and a bare step (no L2, no metrics) to show what the step adds to the network.
Writes bench/results/peer.json (quick: bench/results/quick/peer.json).
"""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Callable

# config first: run as a script, it quiets TensorFlow's start-up log, which must happen before TensorFlow loads.
from config import Choices, Config, Length, NonNegativeInt, OptionalPath, PositiveFloat, PositiveInt, Range, run_script
from bench_model import TensorFlowBackend, cpu_name, make_optimizer, output_path, run_conditions
from call_timing import time_calls
from timing import tests_module, write_results

# Keras is imported in the functions that use it: --help and a bad value need no Keras (gpu_peer.py no TensorFlow).
if TYPE_CHECKING:
    import keras

    from losses import MarginHead

REPO = Path(__file__).resolve().parents[1]
log = logging.getLogger("bench_peer")
PEER_SCRIPT = REPO / "bench" / "peer_iresnet.py"
TORCH_PRECISIONS = {"float32": "float32", "mixed_bfloat16": "bfloat16"}  # Keras policy -> torch.autocast dtype
PEER_TIMEOUT_S = 3600


class Args(Config):
    depth: Annotated[int, Choices(18, 34, 50, 100)] = 50  # IR-ResNet depth of both networks (LResNet<depth>E-IR)
    image_size: Annotated[int, Range(16)] = 112  # input height and width (a multiple of 16)
    num_classes: PositiveInt = 1000  # classes of the ArcFace head of both training steps
    weight_decay: Annotated[float, Range(0)] = 5e-4  # L2 of our step, weight_decay of PyTorch's SGD
    dropout_rate: Annotated[float, Range(0, 1)] = 0.4  # dropout before the fc of both (the seed's)
    # Keras dtype policies measured (PyTorch: autocast to the same compute dtype)
    precisions: Annotated[list[str], Choices(*TORCH_PRECISIONS), Length(1)] = ["float32", "mixed_bfloat16"]
    train_batch_sizes: Annotated[list[int], Range(1)] = [16, 32]  # training batch sizes
    inference_batch_sizes: Annotated[list[int], Range(1)] = [16, 32]  # inference batch sizes
    warmup_steps: NonNegativeInt = 2  # untimed calls first (tracing, allocation)
    steps: PositiveInt = 3  # timed calls per round
    repeats: PositiveInt = 3  # timed rounds; the best round is the figure
    seconds_per_config: PositiveFloat = 60.0  # time budget of one configuration: fewer rounds when a call is slow
    onnx: bool = True  # also time onnxruntime on our float32 ONNX export (inference batch sizes)
    step_parts: bool = True  # also time our float32 step without L2 and a bare step, at the first training batch
    torch_channels_last: bool = False  # the peer in channels_last memory format (arcface_torch uses NCHW)
    intra_op_threads: NonNegativeInt = 0  # TensorFlow intra-op threads; 0 = its default (all cores)
    inter_op_threads: NonNegativeInt = 0  # TensorFlow inter-op threads; 0 = its default
    threads: NonNegativeInt = 0  # PyTorch's threads (torch.set_num_threads); 0 = its default (all cores)
    quick: bool = False  # tiny run (depth 18 at 32x32, batch 2, one step) that only checks the script works
    output_json: OptionalPath = ""  # "" = bench/results/peer.json (quick: bench/results/quick/peer.json)


def apply_quick(args: Args) -> Args:
    if args.quick:
        for key, value in {"depth": 18, "image_size": 32, "num_classes": 10, "train_batch_sizes": [2],
                           "inference_batch_sizes": [2], "warmup_steps": 1, "steps": 1, "repeats": 1}.items():
            args.set(key, value)
    return args


def validate_args(args: Args) -> None:
    if args.image_size % 16:
        raise ValueError(f"Args: image_size={args.image_size}; expected a multiple of 16 (the networks halve it 4 "
                         "times)")


# --------------------------------------------------------------------------------------------------------------
# The PyTorch half, in the side venv


def torch_spec(args: Args) -> dict:
    """What peer_iresnet.py's worker times."""
    return {"depth": args.depth, "image_size": args.image_size, "num_classes": args.num_classes,
            "dropout": args.dropout_rate, "downsample_first_stage": False, "device": "cpu",
            "precisions": [TORCH_PRECISIONS[p] for p in args.precisions],
            "train_batch_sizes": args.train_batch_sizes, "inference_batch_sizes": args.inference_batch_sizes,
            "warmup_steps": args.warmup_steps, "steps": args.steps, "repeats": args.repeats,
            "seconds_per_config": args.seconds_per_config, "channels_last": args.torch_channels_last,
            "threads": args.threads}


def torch_python() -> Path:
    """The side venv's python (tests/torch_side.py; built on first use)."""
    tests_module("side_venv")
    return tests_module("torch_side").torch_python()


def run_peer(python: Path | str, spec: dict) -> dict:
    """Runs peer_iresnet.py's worker with `python`; its JSON. RuntimeError with its last output when it fails."""
    with tempfile.TemporaryDirectory() as folder:
        spec_path, out_path = Path(folder) / "spec.json", Path(folder) / "out.json"
        spec_path.write_text(json.dumps(spec))
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        done = subprocess.run([str(python), str(PEER_SCRIPT), str(spec_path), str(out_path)], capture_output=True,
                              text=True, timeout=PEER_TIMEOUT_S, env=env)
        if done.returncode != 0:
            raise RuntimeError(f"bench: {PEER_SCRIPT.name} failed ({done.returncode}): {done.stderr[-3000:]}")
        return json.loads(out_path.read_text())


# --------------------------------------------------------------------------------------------------------------
# Our half


def weight_count(model: keras.Model) -> int:
    """Every weight, frozen ones included, without batch-norm moving statistics (PyTorch keeps those as buffers)."""
    return sum(math.prod(w.shape) for w in model.weights
               if not w.path.endswith(("moving_mean", "moving_variance")))


def bare_training_step(model: keras.Model, head, batch: int, num_classes: int) -> Callable[[], None]:
    """Forward, ArcFace loss, gradients and the SGD update, nothing else (no L2 term, no accuracy metrics)."""
    import tensorflow as tf

    from losses import sparse_softmax_cross_entropy

    variables = model.trainable_variables + head.trainable_variables
    optimizer = make_optimizer("float32", variables)
    images = tf.random.uniform((batch, *model.input_shape[1:]), -1.0, 1.0)
    labels = tf.random.uniform((batch,), 0, num_classes, dtype=tf.int32)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            loss = sparse_softmax_cross_entropy(head(model(images, training=True), labels), labels)
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss

    return lambda: step().numpy()


def onnx_inference(model: keras.Model, batch: int, folder: Path) -> Callable[[], None]:
    """onnxruntime (CPU) on our float32 ONNX export (deploy.formats), on a batch of random images."""
    import numpy as np

    from deploy import formats

    path = folder / "network.onnx"
    if not path.exists():
        formats.save(model, "onnx", path)
    infer = formats.load_runner("onnx", path)
    images = np.random.default_rng(0).uniform(-1, 1, (batch, *model.input_shape[1:])).astype(np.float32)
    return lambda: infer(images)


def build_networks(depth: int, image_size: int, dropout_rate: float, num_classes: int,
                   precision: str) -> tuple[keras.Model, MarginHead]:
    """LResNet<depth>E-IR and its ArcFace head under the Keras dtype policy `precision` (left set: the caller
    resets it)."""
    import keras

    from losses import MarginHead
    from nets import get_backbone

    keras.mixed_precision.set_global_policy(precision)
    model = get_backbone(f"LResNet{depth}E-IR", image_size=image_size, dropout_rate=dropout_rate, seed=0)
    head = MarginHead(num_classes, loss="arcface", seed=0)
    head.build((None, model.output_shape[-1]))
    return model, head


def measure_ours(args: Args, backend: TensorFlowBackend) -> tuple[list[dict], int]:
    """Our rows (mode, precision, batch, images/s) and the network's weight count."""
    import keras

    rows = []
    for precision in args.precisions:
        model, head = build_networks(args.depth, args.image_size, args.dropout_rate, args.num_classes, precision)
        for mode, batches in (("inference", args.inference_batch_sizes), ("training", args.train_batch_sizes)):
            for batch in batches:
                call = (backend.inference_step(model, batch, False) if mode == "inference" else
                        backend.training_step(model, head, precision, batch, False, args.num_classes,
                                              args.weight_decay))
                rows.append(_row(mode, precision, batch, call, args))
        if precision == "float32":
            rows += measure_extras(args, backend, model, head)
        keras.mixed_precision.set_global_policy("float32")
    return rows, weight_count(model)


def measure_extras(args: Args, backend: TensorFlowBackend, model: keras.Model, head) -> list[dict]:
    """float32 only: onnxruntime on our export; our step without L2 and a bare step."""
    rows = []
    if args.onnx:
        with tempfile.TemporaryDirectory() as folder:
            for batch in args.inference_batch_sizes:
                rows.append(_row("inference onnxruntime", "float32", batch, onnx_inference(model, batch, Path(folder)),
                                 args))
    if args.step_parts:
        batch = args.train_batch_sizes[0]
        rows.append(_row("training without L2", "float32", batch,
                         backend.training_step(model, head, "float32", batch, False, args.num_classes, 0.0), args))
        rows.append(_row("training bare step", "float32", batch,
                         bare_training_step(model, head, batch, args.num_classes), args))
    return rows


def _row(mode: str, precision: str, batch: int, call: Callable[[], object], args: Args) -> dict:
    timing = time_calls(call, args.warmup_steps, args.steps, args.repeats, args.seconds_per_config)
    log.info("ours %s %s batch %d: %.2f img/s", mode, precision, batch, batch / timing.seconds)
    return {"mode": mode, "precision": precision, "batch": batch, "images_per_second": batch / timing.seconds,
            "median_images_per_second": batch / timing.median_seconds}


# --------------------------------------------------------------------------------------------------------------
# Side by side


def compare(ours: list[dict], peer: list[dict]) -> list[dict]:
    """One row per our figure, with PyTorch's figure of the same mode (training or inference), dtype and batch."""
    by_key = {(r["mode"], r["precision"], r["batch"]): r["images_per_second"] for r in peer}
    table = []
    for row in ours:
        mode = "training" if row["mode"].startswith("training") else "inference"
        torch_ips = by_key.get((mode, TORCH_PRECISIONS[row["precision"]], row["batch"]))
        table.append({**row, "torch_images_per_second": torch_ips,
                      "ratio": row["images_per_second"] / torch_ips if torch_ips else None})
    return table


def log_table(table: list[dict]) -> None:
    log.info("%-24s %-15s %5s %10s %10s %8s", "ours", "precision", "batch", "ours img/s", "torch", "ratio")
    for r in table:
        log.info("%-24s %-15s %5d %10.2f %10.2f %8.3f", r["mode"], r["precision"], r["batch"], r["images_per_second"],
                 r["torch_images_per_second"] or float("nan"), r["ratio"] or float("nan"))


def main(args: Args) -> dict:
    apply_quick(args)
    validate_args(args)
    backend = TensorFlowBackend(args)
    if backend.on_gpu:
        log.warning("bench_peer: a GPU is visible, but the peer runs PyTorch's CPU build; use bench/gpu_peer.py")
    before = run_conditions()
    python = torch_python()
    start = time.perf_counter()
    peer = run_peer(python, torch_spec(args))
    log.info("PyTorch %s (%d threads) done in %.0f s", peer["torch"], peer["threads"], time.perf_counter() - start)
    ours, weights = measure_ours(args, backend)
    if weights != peer["parameters"]:
        raise RuntimeError(f"bench: the networks differ: ours has {weights} weights, PyTorch's {peer['parameters']}")
    log.info("weights: ours %d, PyTorch %d (backbone, without BN moving statistics)", weights, peer["parameters"])
    table = compare(ours, peer["results"])
    log_table(table)
    after = run_conditions()
    report = {"device": cpu_name(), "tensorflow": backend.version, "torch": peer["torch"],
              "torch_threads": peer["threads"], "weights": {"ours": weights, "torch": peer["parameters"]},
              "results": table, "torch_results": peer["results"], "conditions_before": before,
              "conditions_after": after, "args": args.to_dict()}
    write_results(output_path(args, "peer.json"), report)
    return report


if __name__ == "__main__":
    run_script(Args, main)
