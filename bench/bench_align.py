"""Alignment benchmark on real, uncropped faces (a folder of class folders, e.g. the Yale faces database in
./datasets/yale_faces): throughput per worker count, share of images aligned, and how close MTCNN finds the eyes of
the aligned faces to the ArcFace template. Then the large-photo case: a few of those faces scaled up onto textured
4352x2903 photos (the size of in-the-wild camera photos), aligned with MTCNN at full resolution (detect_max_side 0)
and on a copy bounded to detect_max_side, in the same run: images/s of each, the ratio, and how far apart the two
runs put the boxes.

    .venv/bin/python bench/bench_align.py [--input_dir=...] [--worker_counts=1,2] [--large_photos=6]

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

import cv2
import numpy as np

from align.align_dataset_mtcnn import BOXES_FILE, Args as AlignArgs, align_dataset
from align.detector import FaceDetector, template_eye_error
from config import Config, Length, NonNegativeInt, PositiveFloat, PositiveInt, Range, RequiredPath, run_script
from data.image_io import read_rgb
from timing import write_results

REPO = Path(__file__).resolve().parents[1]
log = logging.getLogger("bench_align")
LARGE_PHOTO_SHAPE = (2903, 4352)  # height, width: the largest in-the-wild photos of the report in issue 16
FACE_UPSCALE = 4  # a Yale face (~120 px wide in its 320x243 image) becomes ~480 px wide, a portrait-sized face


class Args(Config):
    # folder of class folders of real, uncropped face photos (not shipped: the Yale faces database fits)
    input_dir: RequiredPath = "./datasets/yale_faces"
    # num_workers values timed (1: this process, all TensorFlow threads)
    worker_counts: Annotated[list[int], Range(1), Length(1)] = [1, 2]
    eye_tolerance_px: PositiveFloat = 3.0  # an aligned face counts as "eyes on template" within this distance
    # large photos made from the input's faces, aligned at full resolution and on a bounded copy; 0 = skip that case
    large_photos: NonNegativeInt = 6
    detect_max_side: PositiveInt = 1280  # the bounded copy's longest side in the large-photo case
    output_json: RequiredPath = str(REPO / "bench" / "results" / "align.json")


def cpu_seconds() -> float:
    """CPU time (user + system) of this process and of its finished worker processes."""
    own, workers = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + workers.ru_utime + workers.ru_stime


def timed_run(input_dir: Path, output_dir: Path, detector: FaceDetector | None = None,
              **overrides) -> tuple[float, float, object]:
    """Wall seconds, CPU seconds (all processes) and the summary of one alignment run (in this process with
    `detector` given)."""
    start, cpu_start = time.perf_counter(), cpu_seconds()
    summary = align_dataset(AlignArgs(input_dir=str(input_dir), output_dir=str(output_dir), **overrides), detector)
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


def textured_canvas(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Colour blotches, large and small, standing in for a photo's background."""
    height, width = shape
    coarse, fine = (cv2.resize(rng.integers(0, 256, (height // step, width // step, 3), dtype=np.uint8),
                               (width, height), interpolation=cv2.INTER_CUBIC) for step in (300, 12))
    return cv2.addWeighted(coarse, 0.6, fine, 0.4, 0)


def make_large_photos(input_dir: Path, folder: Path, count: int, seed: int = 0) -> Path:
    """`count` of the input's images, spread over its classes, each scaled up FACE_UPSCALE times and pasted at a
    random spot of a textured LARGE_PHOTO_SHAPE canvas, written as folder/large/<i>.png; returns `folder`."""
    rng = np.random.default_rng(seed)
    sources = [p for p in sorted(input_dir.glob("*/*")) if p.is_file()]
    (folder / "large").mkdir(parents=True)
    height, width = LARGE_PHOTO_SHAPE
    for i, source in enumerate(sources[j] for j in np.linspace(0, len(sources) - 1, count).astype(int)):
        face = read_rgb(source)
        face = cv2.resize(face, (face.shape[1] * FACE_UPSCALE, face.shape[0] * FACE_UPSCALE),
                          interpolation=cv2.INTER_CUBIC)
        photo = textured_canvas(LARGE_PHOTO_SHAPE, rng)
        top, left = rng.integers(0, height - face.shape[0]), rng.integers(0, width - face.shape[1])
        photo[top:top + face.shape[0], left:left + face.shape[1]] = face
        cv2.imwrite(str(folder / "large" / f"{i}.png"), cv2.cvtColor(photo, cv2.COLOR_RGB2BGR))
    return folder


def read_boxes(output_dir: Path) -> dict[str, np.ndarray]:
    """Output file name -> box (x1 y1 x2 y2) from an alignment run's bounding_boxes.txt."""
    rows = [line.split() for line in (output_dir / BOXES_FILE).read_text().splitlines()]
    return {Path(row[0]).name: np.array(row[1:], dtype=float) for row in rows}


def box_agreement(full: dict[str, np.ndarray], bounded: dict[str, np.ndarray]) -> dict:
    """How many photos got the same face from both runs (box centres within a quarter of the full-resolution box's
    width; otherwise one run chose another face, e.g. a face-like patch of background), and for those, how far apart
    the boxes' sides are, in pixels and as a share of the box width."""
    same = []
    for name in sorted(full.keys() & bounded.keys()):
        width = full[name][2] - full[name][0]
        centres = [(box[:2] + box[2:]) / 2 for box in (full[name], bounded[name])]
        if np.linalg.norm(centres[0] - centres[1]) < width / 4:
            same.append((np.abs(full[name] - bounded[name]).max(), width))
    differences = np.array(same).reshape(-1, 2)
    return {"photos_in_both": len(full.keys() & bounded.keys()), "same_face": len(same),
            "box_median_difference_px": float(np.median(differences[:, 0])) if same else None,
            "box_median_difference_of_width": float(np.median(differences[:, 0] / differences[:, 1])) if same else None}


def large_photo_speed(input_dir: Path, work: Path, count: int, detect_max_side: int, eye_detector: FaceDetector,
                      tolerance: float) -> dict:
    """The large photos aligned in this process at full resolution, then on a copy bounded to detect_max_side; with
    the eye check of each run's faces (as for the input's faces) and how the two runs' boxes agree."""
    photos = make_large_photos(input_dir, work / "large_in", count)
    runs = {}
    for side in (0, detect_max_side):
        detector = FaceDetector(detect_max_side=side)
        detector.detect(read_rgb(photos / "large" / "0.png"))  # untimed: builds the models' graphs for this size
        seconds, cpu, summary = timed_run(photos, work / f"large_out_{side}", detector)
        runs[side] = {"detect_max_side": side, "images": summary.total, "aligned": summary.aligned,
                      "seconds": seconds, "images_per_s": summary.total / seconds,
                      "cpu_s_per_image": cpu / summary.total,
                      "eyes": eye_statistics(work / f"large_out_{side}", eye_detector, tolerance)}
    return {"photo_shape": list(LARGE_PHOTO_SHAPE), "full_resolution": runs[0], "bounded": runs[detect_max_side],
            "speedup": runs[detect_max_side]["images_per_s"] / runs[0]["images_per_s"],
            "cpu_ratio": runs[0]["cpu_s_per_image"] / runs[detect_max_side]["cpu_s_per_image"],
            **box_agreement(read_boxes(work / "large_out_0"), read_boxes(work / f"large_out_{detect_max_side}"))}


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
        if args.large_photos:
            results["large_photos"] = large_photo_speed(input_dir, work, args.large_photos, args.detect_max_side,
                                                        detector, args.eye_tolerance_px)
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
    if "large_photos" in results:
        report_large_photos(results["large_photos"])


def report_large_photos(large: dict) -> None:
    log.info("Large photos (%dx%d), this process:", large["photo_shape"][1], large["photo_shape"][0])
    log.info("| detect_max_side | aligned | images/s | CPU s per image | eye error median / max px |")
    for run in (large["full_resolution"], large["bounded"]):
        log.info("| %d | %d/%d | %.3f | %.2f | %.2f / %.2f |", run["detect_max_side"], run["aligned"], run["images"],
                 run["images_per_s"], run["cpu_s_per_image"], run["eyes"]["median_px"], run["eyes"]["max_px"])
    log.info("bounded / full resolution: %.1fx images/s, %.1fx less CPU per image", large["speedup"],
             large["cpu_ratio"])
    if large["same_face"]:
        log.info("same face chosen in %d of %d photos; their boxes' sides differ by %.1f px (median), %.1f%% of the "
                 "box width", large["same_face"], large["photos_in_both"], large["box_median_difference_px"],
                 100 * large["box_median_difference_of_width"])


if __name__ == "__main__":
    run_script(Args, main)
