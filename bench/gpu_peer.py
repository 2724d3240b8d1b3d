"""For a GPU machine that has PyTorch and JAX but no TensorFlow: our Keras IR-ResNets under KERAS_BACKEND=jax
against the PyTorch IR-ResNets of bench/peer_iresnet.py (arcface_torch's iresnet50/100, with the seed's
first-stage subsample so the weight counts are equal) on the same GPU: training and inference images/s in bf16 at
batch 128, and the ratio ours / PyTorch. A few minutes in all.

    pip install keras==3.15.1                                  # when the machine has no Keras
    KERAS_BACKEND=jax python bench/gpu_peer.py                 # iresnet50 and 100; bench/results/gpu_peer.json
    KERAS_BACKEND=jax python bench/gpu_peer.py --quick=true --torch_python=PATH   # CPU check: depth 18, 32x32

The PyTorch half runs first, in a child process (`torch_python`, default this Python), so that it has the GPU to
itself; then ours runs here: bench_model's jitted stateless JAX step (forward, ArcFace head, L2 weight decay,
SGD with momentum; mixed_bfloat16) and forward pass. PyTorch: torch.autocast bfloat16, cuDNN benchmark mode, in
NCHW (arcface_torch's layout) and in channels_last. This script imports nothing that needs TensorFlow
(nets, losses, training.optim, config and common are Keras-only); it checks that none was imported. It refuses to
run under another Keras backend (KERAS_BACKEND must be set before Keras loads, so the script cannot set it).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Annotated

# config first: run as a script, it quiets TensorFlow's start-up log. Keras (on JAX) is imported where it is used:
# --help and a bad value need none of it.
from config import Choices, Config, Length, NonNegativeInt, OptionalPath, PositiveFloat, PositiveInt, Range, run_script
from bench_model import JaxBackend, output_path, run_conditions
from bench_peer import build_networks, run_peer, weight_count
from call_timing import time_calls
from timing import write_results

log = logging.getLogger("gpu_peer")
MEMORY_FORMATS = {"nchw": False, "channels_last": True}


class Args(Config):
    depths: Annotated[list[int], Choices(18, 34, 50, 100), Length(1)] = [50, 100]  # IR-ResNet depths measured
    image_size: Annotated[int, Range(16)] = 112  # input height and width (a multiple of 16)
    batch_size: PositiveInt = 128  # images per step, training and inference
    num_classes: PositiveInt = 1000  # classes of the ArcFace head
    weight_decay: Annotated[float, Range(0)] = 5e-4  # L2 of our step, weight_decay of PyTorch's SGD
    dropout_rate: Annotated[float, Range(0, 1)] = 0.4  # dropout before the fc of both
    # PyTorch memory formats measured (the ratio is given against each)
    torch_formats: Annotated[list[str], Choices(*MEMORY_FORMATS), Length(1)] = ["nchw", "channels_last"]
    warmup_steps: NonNegativeInt = 3  # untimed calls (compilation, cuDNN autotuning)
    steps: PositiveInt = 10  # timed calls per round
    repeats: PositiveInt = 3  # timed rounds; the best is the figure
    seconds_per_config: PositiveFloat = 30.0  # time budget of one configuration
    torch_python: OptionalPath = ""  # the Python that has torch; "" = this one
    quick: bool = False  # depth 18 at 32x32, batch 2, one step: checks the script on a CPU
    output_json: OptionalPath = ""  # "" = bench/results/gpu_peer.json (quick: bench/results/quick/gpu_peer.json)


def apply_quick(args: Args) -> Args:
    if args.quick:
        for key, value in {"depths": [18], "image_size": 32, "batch_size": 2, "num_classes": 10, "warmup_steps": 1,
                           "steps": 1, "repeats": 1}.items():
            args.set(key, value)
    return args


def torch_spec(args: Args, depth: int, device: str, channels_last: bool) -> dict:
    return {"depth": depth, "image_size": args.image_size, "num_classes": args.num_classes,
            "dropout": args.dropout_rate, "downsample_first_stage": False, "device": device,
            "precisions": ["bfloat16"], "train_batch_sizes": [args.batch_size],
            "inference_batch_sizes": [args.batch_size], "warmup_steps": args.warmup_steps, "steps": args.steps,
            "repeats": args.repeats, "seconds_per_config": args.seconds_per_config, "channels_last": channels_last,
            "threads": 0}


def measure_ours(args: Args, backend: JaxBackend, depth: int) -> tuple[dict, int]:
    """{mode: images/s} of our LResNet<depth>E-IR, mixed_bfloat16, and its weight count."""
    import keras

    model, head = build_networks(depth, args.image_size, args.dropout_rate, args.num_classes, "mixed_bfloat16")
    calls = {"inference": backend.inference_step(model, args.batch_size, True),
             "training": backend.training_step(model, head, "mixed_bfloat16", args.batch_size, True,
                                               args.num_classes, args.weight_decay)}
    figures = {}
    for mode, call in calls.items():
        timing = time_calls(call, args.warmup_steps, args.steps, args.repeats, args.seconds_per_config)
        figures[mode] = args.batch_size / timing.seconds
        log.info("ours (keras %s, jax) depth %d %s: %.1f img/s", keras.__version__, depth, mode, figures[mode])
    keras.mixed_precision.set_global_policy("float32")
    return figures, weight_count(model)


def main(args: Args) -> dict:
    import keras

    apply_quick(args)
    if keras.backend.backend() != "jax":
        raise ValueError(f"gpu_peer: KERAS_BACKEND={keras.backend.backend()!r}; this script measures Keras on jax")
    # JAX takes GPU memory as it needs it, not 75% up front: read when JAX starts its backend, just below.
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    backend = JaxBackend(args)
    device = "cuda" if backend.on_gpu else "cpu"
    if not backend.on_gpu:
        log.warning("gpu_peer: JAX sees no GPU (%s): the figures are CPU ones", backend.device)
    before = run_conditions()
    rows = []
    for depth in args.depths:
        peers = {}
        for name in args.torch_formats:
            start = time.perf_counter()
            peers[name] = run_peer(args.torch_python or sys.executable,
                                   torch_spec(args, depth, device, MEMORY_FORMATS[name]))
            log.info("PyTorch %s depth %d %s done in %.0f s", peers[name]["torch"], depth, name,
                     time.perf_counter() - start)
        ours, weights = measure_ours(args, backend, depth)
        torch_weights = next(iter(peers.values()))["parameters"]
        if weights != torch_weights:
            raise RuntimeError(f"gpu_peer: depth {depth}: ours has {weights} weights, PyTorch's {torch_weights}")
        for mode, images_per_second in ours.items():
            torch_figures = {name: next(r["images_per_second"] for r in peer["results"] if r["mode"] == mode)
                             for name, peer in peers.items()}
            rows.append({"depth": depth, "mode": mode, "ours": images_per_second, "torch": torch_figures,
                         "ratio": {name: images_per_second / value for name, value in torch_figures.items()}})
    imported_tensorflow = "tensorflow" in sys.modules
    if imported_tensorflow:
        log.warning("gpu_peer: something imported TensorFlow; it should not be needed here")
    log.info("%-6s %-10s %10s  %s", "depth", "mode", "ours img/s", "PyTorch img/s (ratio ours / PyTorch)")
    for r in rows:
        log.info("%-6d %-10s %10.1f  %s", r["depth"], r["mode"], r["ours"],
                 ", ".join(f"{name} {value:.1f} ({r['ratio'][name]:.2f}x)" for name, value in r["torch"].items()))
    report = {"device": backend.device, "jax": backend.version, "keras": keras.__version__,
              "torch": next(iter(peers.values()))["torch"], "torch_device": next(iter(peers.values()))["device_name"],
              "precision": "bfloat16", "batch_size": args.batch_size, "weights_equal": True,
              "imported_tensorflow": imported_tensorflow, "results": rows, "conditions_before": before,
              "conditions_after": run_conditions(), "args": args.to_dict()}
    write_results(output_path(args, "gpu_peer.json"), report)
    return report


if __name__ == "__main__":
    run_script(Args, main)
