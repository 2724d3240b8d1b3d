"""Verification protocol benchmark: eval.verification on 6,000 pairs (LFW's size) against the seed's loop algorithm.

    .venv/bin/python bench/bench_eval.py [--num_pairs=6000] [--repeats=20]

Times `verify` (accuracy, VAL@FAR, AUC, EER: everything) and the straightforward per-threshold, per-fold reference of
tests/test_verification.py on the same embeddings, checks they agree to 1e-9, prints a table and writes
bench/results/eval.json.
"""

from __future__ import annotations

import importlib.util
import logging
import platform
import time
from pathlib import Path
from types import ModuleType
from typing import Annotated

import numpy as np

from config import Config, PositiveInt, Range, RequiredPath, run_script
from timing import median_seconds, write_results
from eval.verification import verify

REPO = Path(__file__).resolve().parents[1]


def _tests_module(name: str) -> ModuleType:
    """A module of tests/, loaded from its file: tests/ is not an installed package, and the bench compares the
    vectorised protocol with the tests' own reference implementation."""
    spec = importlib.util.spec_from_file_location(name, REPO / "tests" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_reference = _tests_module("test_verification")
noisy_pairs, reference_evaluate = _reference.noisy_pairs, _reference.reference_evaluate
log = logging.getLogger("bench_eval")


class Args(Config):
    num_pairs: Annotated[int, Range(20)] = 6000  # pairs evaluated (LFW: 6,000)
    embedding_size: PositiveInt = 512  # embedding dimension
    repeats: PositiveInt = 20  # timed runs of the vectorised protocol (the median is reported)
    output_json: RequiredPath = str(REPO / "bench" / "results" / "eval.json")


def main(args: Args) -> dict:
    # Noise giving ~87% accuracy, so thresholds and the VAL interpolation matter.
    embeddings, issame = noisy_pairs(args.num_pairs, dim=args.embedding_size, noise=3.0, seed=0)
    verify(embeddings, issame)  # warm-up
    fast = median_seconds(lambda: verify(embeddings, issame), args.repeats)
    start = time.perf_counter()
    expected = reference_evaluate(embeddings, issame)
    naive = time.perf_counter() - start
    result = verify(embeddings, issame)
    differences = {
        "accuracy": float(np.max(np.abs(result.accuracy - expected["accuracy"]))),
        "tpr": float(np.max(np.abs(result.tpr - expected["tpr"]))),
        "fpr": float(np.max(np.abs(result.fpr - expected["fpr"]))),
        "val": abs(result.val - expected["val"]), "far": abs(result.far - expected["far"]),
    }
    summary = {
        "num_pairs": args.num_pairs, "embedding_size": args.embedding_size, "machine": platform.processor() or
        platform.machine(), "verify_seconds_median": fast, "reference_loop_seconds": naive,
        "speedup": naive / fast, "max_abs_difference": differences, "agree_to_1e-9": max(differences.values()) <= 1e-9,
        "accuracy": result.accuracy_mean, "val": result.val, "auc": result.auc, "eer": result.eer,
    }
    log.info("%-34s %12s", "protocol on %d pairs" % args.num_pairs, "seconds")
    log.info("%-34s %12.4f", "eval.verification.verify (median)", fast)
    log.info("%-34s %12.4f", "seed's loop algorithm (reference)", naive)
    log.info("speed-up %.0fx; largest difference %.3g (accuracy %.5f, VAL %.5f, AUC %.5f, EER %.5f)",
                naive / fast, max(differences.values()), result.accuracy_mean, result.val, result.auc, result.eer)
    output = Path(args.output_json)
    write_results(output, summary)
    return summary


if __name__ == "__main__":
    run_script(Args, main)
