"""Verification benchmark: the protocol on 6,000 pairs (LFW's size) against the seed's loop algorithm, and one
validation of a demo-sized set embedding each distinct image once against embedding every pair's two images.

    .venv/bin/python bench/bench_eval.py [--num_pairs=6000] [--repeats=20] [--validation_repeats=1]

Times `verify` (accuracy, VAL@FAR, AUC, EER: everything) and the straightforward per-threshold, per-fold reference of
tests/test_verification.py on the same embeddings, checks they agree to 1e-9. Then times eval.sets.run_verification
with the demo's network (IR-ResNet-18 at 48x48, untrained) on validation_images images in validation_pairs pairs (the
demo's held-out set: 55 and 540), once on the set as loaded (distinct images) and once on the same pairs stored per
pair (2P images, what validation embedded before), checks the reports agree, and gives the speed-up. Prints a table
and writes bench/results/eval.json.
"""

from __future__ import annotations

import logging
import platform
import time
from pathlib import Path
from typing import Annotated

import numpy as np

from config import Config, PositiveInt, Range, RequiredPath, run_script
from timing import median_seconds, tests_module, write_results
from eval.sets import VerificationSet, run_verification
from eval.verification import verify

REPO = Path(__file__).resolve().parents[1]


_reference = tests_module("test_verification")
noisy_pairs, reference_evaluate = _reference.noisy_pairs, _reference.reference_evaluate
log = logging.getLogger("bench_eval")


class Args(Config):
    num_pairs: Annotated[int, Range(20)] = 6000  # pairs evaluated (LFW: 6,000)
    embedding_size: PositiveInt = 512  # embedding dimension
    repeats: PositiveInt = 20  # timed runs of the vectorised protocol (the median is reported)
    validation_images: Annotated[int, Range(4)] = 55  # distinct images of the timed validation set (the demo's: 55)
    validation_pairs: Annotated[int, Range(20)] = 540  # pairs over those images (the demo's: 540)
    validation_batch_size: PositiveInt = 32  # images per network call (validation uses the training batch_size)
    validation_repeats: PositiveInt = 1  # timed validations of each kind, after one untimed (the median is reported)
    output_json: RequiredPath = str(REPO / "bench" / "results" / "eval.json")


def validation_set(num_images: int, num_pairs: int, image_size: int, seed: int = 0) -> VerificationSet:
    """Random images of num_images // 5 identities in num_pairs pairs, matched and mismatched in turn (every
    contiguous fold holds both classes); images repeat across pairs as in a small held-out set."""
    rng = np.random.default_rng(seed)
    identity = np.arange(num_images) % max(2, num_images // 5)
    images = rng.integers(0, 256, (num_images, image_size, image_size, 3), dtype=np.uint8)
    rows, issame = [], []
    for k in range(num_pairs):
        same = k % 2 == 0
        while True:
            first, second = rng.choice(num_images, 2, replace=False)
            if (identity[first] == identity[second]) == same:
                break
        rows.append((first, second))
        issame.append(same)
    return VerificationSet("demo_sized", images, np.array(issame), pair_rows=np.array(rows))


def time_validation(args: Args) -> dict:
    """Seconds of one validation on the distinct images and on the same pairs stored per pair, and their ratio."""
    import keras

    from nets.spec import NetworkSpec
    from training.validation import embedding_function

    image_size = 48
    keras.utils.set_random_seed(0)
    model = NetworkSpec.from_mapping({"net_depth": 18, "image_size": [image_size, image_size]}).build()
    embed = embedding_function(model)
    distinct = validation_set(args.validation_images, args.validation_pairs, image_size)
    per_pair = VerificationSet("per_pair", distinct.images[distinct.pair_rows.reshape(-1)], distinct.issame)
    reports = {}

    def validate(vset: VerificationSet) -> None:
        reports[vset.name] = run_verification(embed, vset, batch_size=args.validation_batch_size, step=0)

    before = median_seconds(lambda: validate(per_pair), args.validation_repeats)
    after = median_seconds(lambda: validate(distinct), args.validation_repeats)
    difference = float(np.max(np.abs(np.subtract(reports["per_pair"]["distances"],
                                                  reports["demo_sized"]["distances"]))))
    same_accuracy = reports["per_pair"]["accuracy_per_fold"] == reports["demo_sized"]["accuracy_per_fold"]
    log.info("%-34s %12s", f"validation, {distinct.num_pairs} pairs", "seconds")
    log.info("%-34s %12.3f", f"per pair ({per_pair.images.shape[0]} images)", before)
    log.info("%-34s %12.3f", f"distinct ({distinct.images.shape[0]} images)", after)
    log.info("speed-up %.1fx; same per-fold accuracy: %s; largest distance difference %.3g", before / after,
             same_accuracy, difference)
    return {"images": int(distinct.images.shape[0]), "pairs": distinct.num_pairs, "image_size": image_size,
            "net_depth": 18, "batch_size": args.validation_batch_size, "per_pair_seconds": before,
            "distinct_seconds": after, "speedup": before / after, "same_accuracy_per_fold": same_accuracy,
            "max_distance_difference": difference}


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
    summary["validation"] = time_validation(args)
    output = Path(args.output_json)
    write_results(output, summary)
    return summary


if __name__ == "__main__":
    run_script(Args, main)
