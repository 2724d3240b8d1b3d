"""Alignment benchmark on real, uncropped faces (a folder of class folders, e.g. the Yale faces database in
./datasets/yale_faces): throughput per worker count, share of images aligned, and how close MTCNN finds the eyes of
the aligned faces to the ArcFace template.

    .venv/bin/python bench/bench_align.py [--input_dir=...] [--worker_counts=1,2]

Writes bench/results/align.json. Throughput counts the whole run, worker start-up (TensorFlow import, ~3 s per
process) included; the start-up alone is timed on a folder of one image per worker, so the steady rate is also
given, with the CPU time per image (all processes), which does not depend on what else runs on the machine.
"""

from __future__ import annotations

import logging
import os
import resource
import tempfile
import time
from pathlib import Path
from typing import Annotated

import numpy as np

from align.align_dataset_mtcnn import Args as AlignArgs, align_dataset
from align.detector import FaceDetector, template_eye_error
from config import Config, Length, PositiveFloat, Range, RequiredPath, run_script
from data.image_io import read_rgb
from timing import write_results

REPO = Path(__file__).resolve().parents[1]
log = logging.getLogger("bench_align")


class Args(Config):
    # folder of class folders of real, uncropped face photos (not shipped: the Yale faces database fits)
    input_dir: RequiredPath = "./datasets/yale_faces"
    # num_workers values timed (1: this process, all TensorFlow threads)
    worker_counts: Annotated[list[int], Range(1), Length(1)] = [1, 2]
    eye_tolerance_px: PositiveFloat = 3.0  # an aligned face counts as "eyes on template" within this distance
    output_json: RequiredPath = str(REPO / "bench" / "results" / "align.json")


def cpu_seconds() -> float:
    """CPU time (user + system) of this process and of its finished worker processes."""
    own, workers = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + workers.ru_utime + workers.ru_stime


def timed_run(input_dir: Path, output_dir: Path, **overrides) -> tuple[float, float, object]:
    """Wall seconds, CPU seconds (all processes) and the summary of one alignment run."""
    start, cpu_start = time.perf_counter(), cpu_seconds()
    summary = align_dataset(AlignArgs(input_dir=str(input_dir), output_dir=str(output_dir), **overrides))
    return time.perf_counter() - start, cpu_seconds() - cpu_start, summary


def startup_folder(input_dir: Path, work: Path, copies: int) -> Path:
    """`copies` copies of the first image in one class folder (one per worker), to time a run's fixed start-up."""
    first = next(p for p in sorted(input_dir.glob("*/*")) if p.is_file())
    folder = work / "class"
    folder.mkdir(parents=True)
    for i in range(copies):
        (folder / f"{i}{first.suffix}").write_bytes(first.read_bytes())
    return work


def throughput(input_dir: Path, work: Path, workers: int) -> dict:
    seconds, cpu, summary = timed_run(input_dir, work / f"out_{workers}", num_workers=workers)
    startup, startup_cpu, _ = timed_run(startup_folder(input_dir, work / f"startup_in_{workers}", workers),
                           work / f"startup_out_{workers}", num_workers=workers)
    processed = summary.aligned + summary.no_face + summary.unreadable
    return {"num_workers": workers, "images": processed, "aligned": summary.aligned, "seconds": seconds,
            "images_per_s": processed / seconds, "startup_s": startup,
            "steady_images_per_s": (processed - workers) / max(seconds - startup, 1e-9),
            "cpu_s_per_image": (cpu - startup_cpu) / max(processed - workers, 1)}


def eye_statistics(aligned_dir: Path, detector: FaceDetector, tolerance: float) -> dict:
    """Distance (px) of MTCNN's eyes, detected again in each aligned face, from the template's eyes."""
    errors = [template_eye_error(read_rgb(path), detector) for path in sorted(aligned_dir.glob("*/*.png"))]
    found = np.array([e for e in errors if e is not None])
    return {"faces": len(errors), "found_again": len(found), "mean_px": float(found.mean()),
            "median_px": float(np.median(found)), "p95_px": float(np.percentile(found, 95)),
            "max_px": float(found.max()), "within_tolerance": float((found <= tolerance).mean())}


def main(args: Args) -> dict:
    input_dir = Path(args.input_dir)
    if not input_dir.is_dir():
        raise FileNotFoundError(f"Args: input_dir {input_dir} is not a folder")
    results: dict = {"input_dir": str(input_dir), "cpu_cores": len(os.sched_getaffinity(0)), "throughput": []}
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        for workers in args.worker_counts:
            results["throughput"].append(throughput(input_dir, work, workers))
        _, _, box_summary = timed_run(input_dir, work / "box", mode="box")
        detector = FaceDetector()
        similarity_dir = work / f"out_{args.worker_counts[0]}"
        results["total_images"] = box_summary.total
        results["aligned_share"] = results["throughput"][0]["aligned"] / box_summary.total
        results["eyes_similarity"] = eye_statistics(similarity_dir, detector, args.eye_tolerance_px)
        results["eyes_box"] = eye_statistics(work / "box", detector, args.eye_tolerance_px)
    report(results)
    write_results(args.output_json, results)
    return results


def report(results: dict) -> None:
    log.info("%d images in %s, %.1f%% aligned, %d CPU cores", results["total_images"], results["input_dir"],
                100 * results["aligned_share"], results["cpu_cores"])
    log.info("| workers | images/s (whole run) | start-up s | steady images/s | CPU s per image (steady) |")
    for row in results["throughput"]:
        log.info("| %d | %.2f | %.1f | %.2f | %.3f |", row["num_workers"], row["images_per_s"], row["startup_s"],
                    row["steady_images_per_s"], row["cpu_s_per_image"])
    log.info("| mode | faces found again | eye error mean / median / p95 / max px | both eyes within tolerance |")
    for mode in ("similarity", "box"):
        eyes = results[f"eyes_{mode}"]
        log.info("| %s | %d/%d | %.2f / %.2f / %.2f / %.2f | %.1f%% |", mode, eyes["found_again"], eyes["faces"],
                    eyes["mean_px"], eyes["median_px"], eyes["p95_px"], eyes["max_px"],
                    100 * eyes["within_tolerance"])


if __name__ == "__main__":
    run_script(Args, main)
