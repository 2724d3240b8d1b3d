"""MTCNN face alignment of a folder of class folders: input_dir/<class>/<image> -> output_dir/<class>/<name>.png.

    python align/align_dataset_mtcnn.py --input_dir=raw --output_dir=aligned --image_size=112 --mode=similarity

MTCNN (the `mtcnn` package, weights inside its wheel) finds the faces; one per image is kept, chosen as the seed did
(largest box, penalised by its distance from the image centre), unless detect_multiple_faces. Mode "similarity"
(default) warps the 5 landmarks onto the ArcFace template, as the InsightFace training data was aligned; mode "box" is
the seed's (facenet's) box + margin crop resized to image_size. A photo larger than detect_max_side (1280) is
searched on a smaller copy, which is several times faster; the face is then cut from the original, at full quality.

Outputs beside the class folders: `bounding_boxes.txt` (one line `<output png> x1 y1 x2 y2` per face written, the
detector's box in input pixels; appended across runs), `failed_images.txt` (`<input path><TAB><reason>` for each
unreadable image or image without a face in this run) and `align_args.json` (the settings; a resumed run must keep
the same geometry). Paths are written as the file system gives them: a name that is not valid UTF-8 keeps its bytes
(surrogateescape), so no line is lost. A file that cannot be read (empty, corrupt, over the pixel limit of
data/image_io.py, a symlink loop) is listed in failed_images.txt and the run goes on. Existing outputs are skipped,
so an interrupted run resumes. Worker processes, each with its own detector, use every core.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import random
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, NoReturn

# config first: run as a script, it quiets TensorFlow's start-up log, which must happen before TensorFlow loads.
from config import Choices, Config, Length, NonNegativeInt, PositiveInt, Range, RequiredPath, run_script

import cv2
import numpy as np
from tqdm import tqdm

from align.detector import (DEFAULT_DETECT_MAX_SIDE, FaceDetector, check_detect_max_side, check_detector_settings,
                            limit_tensorflow_threads, pick_central_face)
from align.warp import crop_box, warp_to_template
from common.files import write_replacing
from data.image_folders import printable_path
from data.image_io import read_rgb

log = logging.getLogger(__name__)

MODES = ("similarity", "box")
BOXES_FILE = "bounding_boxes.txt"
FAILED_FILE = "failed_images.txt"
ARGS_FILE = "align_args.json"
# Fields that change the output pictures (margin in mode "box" only): a resumed run must not mix faces aligned
# differently in one folder.
GEOMETRY_FIELDS = ("image_size", "mode", "margin")


class Args(Config):
    input_dir: RequiredPath = ""  # folder of class folders of images (required)
    output_dir: RequiredPath = ""  # aligned faces go to output_dir/<class>/<name>.png (required)
    image_size: PositiveInt = 112  # side of the square output, pixels (the template is scaled from 112)
    # "similarity": 5-point warp onto the ArcFace template; "box": the seed's box crop
    mode: Annotated[str, Choices(*MODES)] = "similarity"
    margin: NonNegativeInt = 44  # mode "box": pixels added around the detection box (half on each side), as in the seed
    min_face_size: PositiveInt = 20  # smallest face MTCNN looks for, pixels (the seed's minsize)
    # MTCNN searches a copy whose longest side is at most this, >= 12 (faces are still cut from the original); in a
    # larger photo, faces under 12 x longest side / detect_max_side pixels are then missed (41 px at 4352); 0 = off
    detect_max_side: NonNegativeInt = DEFAULT_DETECT_MAX_SIDE
    # MTCNN P-net, R-net, O-net score thresholds (the seed's)
    thresholds: Annotated[list[float], Range(0, 1), Length(3, 3)] = [0.6, 0.7, 0.7]
    # MTCNN image pyramid factor (the seed's)
    scale_factor: Annotated[float, Range(0, 1, low_open=True, high_open=True)] = 0.709
    detect_multiple_faces: bool = False  # True: every face, written as <name>_<i>.png; False: the central face only
    random_order: bool = False  # shuffle the images (lets several runs share one output_dir with less overlap)
    num_workers: NonNegativeInt = 0  # worker processes, each ~0.7 GB with its own detector; 0: one per available core


@dataclass
class ImageResult:
    """What became of one input image: status "aligned", "no_face" or "unreadable"."""

    source: str
    status: str
    written: list[tuple[str, list[int]]] = field(default_factory=list)  # (output png, detector box x1 y1 x2 y2)
    reason: str = ""


@dataclass
class AlignmentSummary:
    total: int = 0  # images found in input_dir
    skipped: int = 0  # already aligned by an earlier run
    aligned: int = 0
    faces_written: int = 0
    no_face: int = 0
    unreadable: int = 0
    name_clashes: int = 0  # left out: another file of the class has the same name up to the extension
    seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        processed = self.aligned + self.no_face + self.unreadable
        return processed / self.seconds if self.seconds > 0 else 0.0


def validate(args: Args) -> None:
    """Raises ValueError/FileNotFoundError naming the Args field that is wrong and what was expected."""
    if not args.input_dir or not args.output_dir:
        raise ValueError("Args: --input_dir=... and --output_dir=... are required")
    if not Path(args.input_dir).is_dir():
        raise FileNotFoundError(f"Args: input_dir {args.input_dir!r} is not a folder")
    if args.mode not in MODES:
        raise ValueError(f"Args: mode={args.mode!r}, expected one of {', '.join(MODES)}")
    if args.image_size <= 0 or args.margin < 0 or args.num_workers < 0:
        raise ValueError(f"Args: image_size={args.image_size} must be > 0, margin={args.margin} and "
                         f"num_workers={args.num_workers} >= 0")
    # Checked here too, before any worker starts, so that a bad value is one clear error rather than each worker's.
    check_detector_settings(args.min_face_size, args.thresholds, args.scale_factor)
    check_detect_max_side(args.detect_max_side)


def list_images(input_dir: Path, output_dir: Path) -> tuple[list[tuple[Path, Path]], list[tuple[Path, Path]]]:
    """(input file, output path without extension) for every file in every class folder, sorted; and the files whose
    output name an earlier file already takes (a.jpg and a.png of one class), which are left out.

    Every non-hidden file counts, as in the seed, so that a stray file is reported as unreadable rather than silently
    ignored.
    """
    entries = [p for p in input_dir.iterdir() if not p.name.startswith(".")]
    for link in (p for p in entries if p.is_symlink() and not p.exists()):
        log.warning("skipping %s: a broken link or a symlink loop, not a class folder", printable_path(link))
    classes = sorted(p for p in entries if p.is_dir())
    if not classes:
        raise ValueError(f"{input_dir}: no class folders found; expected input_dir/<class>/<image>")
    first_source: dict[Path, Path] = {}
    clashes = []
    for folder in classes:
        for image in sorted(folder.iterdir()):
            if image.is_dir() or image.name.startswith("."):  # a broken link or a loop is reported as unreadable
                continue
            stem = output_dir / folder.name / image.stem
            if stem in first_source:
                clashes.append((image, first_source[stem]))
            else:
                first_source[stem] = image
    return [(source, stem) for stem, source in first_source.items()], clashes


def check_same_geometry(args: Args, earlier_args_file: Path) -> None:
    """Raises ValueError when output_dir holds faces of an earlier run aligned with another geometry."""
    if not earlier_args_file.exists():
        return
    earlier = Args.load(earlier_args_file, strict=False)
    fields = GEOMETRY_FIELDS if args.mode == "box" else tuple(key for key in GEOMETRY_FIELDS if key != "margin")
    changed = [f"{key}={getattr(earlier, key)!r} then, {getattr(args, key)!r} now" for key in fields
               if getattr(earlier, key) != getattr(args, key)]
    if changed:
        raise ValueError(f"{earlier_args_file}: this output_dir was aligned with other settings ({'; '.join(changed)});"
                         f" resuming would mix two alignments; choose another output_dir")


def is_done(output_stem: Path) -> bool:
    """Whether an earlier run already wrote this image's face(s)."""
    return output_stem.with_suffix(".png").exists() or output_stem.with_name(output_stem.name + "_0.png").exists()


def write_png(path: Path, rgb: np.ndarray) -> None:
    """Writes through a temporary file, so that an interrupted run never leaves a truncated PNG that resume skips."""
    ok, encoded = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError(f"{path}: OpenCV could not encode a PNG of shape {rgb.shape}")
    write_replacing(path, encoded.tobytes())


def build_detector(args: Args) -> FaceDetector:
    return FaceDetector(args.min_face_size, args.thresholds, args.scale_factor, args.detect_max_side)


def align_image(source: Path, output_stem: Path, detector: FaceDetector, args: Args) -> ImageResult:
    """Detects, aligns and writes the face(s) of one image; a bad image becomes a result, never an exception."""
    try:
        image = read_rgb(source)
    except (OSError, ValueError) as err:
        return ImageResult(str(source), "unreadable", reason=str(err))
    faces = detector.detect(image)  # in the original's pixels, whatever copy was searched
    if not faces:
        return ImageResult(str(source), "no_face", reason="no face detected")
    if args.detect_multiple_faces:
        named = [(output_stem.with_name(f"{output_stem.name}_{i}.png"), face) for i, face in enumerate(faces)]
    else:
        named = [(output_stem.with_suffix(".png"), pick_central_face(faces, image.shape))]
    result = ImageResult(str(source), "aligned")
    for path, face in named:
        try:
            if args.mode == "similarity":
                aligned = warp_to_template(image, face.landmarks, args.image_size)
            else:
                aligned = crop_box(image, face.box, args.margin, args.image_size)
        except ValueError as err:  # a degenerate detection: a box squeezed to nothing at the border, or 1 landmark
            result.reason = str(err)
            continue
        write_png(path, aligned)
        result.written.append((str(path), [int(round(v)) for v in face.box]))
    if not result.written:
        return ImageResult(str(source), "no_face", reason=f"no usable face ({result.reason})")
    return result


# Per-process state of a worker: its own detector (TensorFlow models cannot be shared between processes).
_worker_state: dict[str, object] = {}


def _start_worker(args: Args) -> None:
    limit_tensorflow_threads()
    _worker_state["detector"] = build_detector(args)
    _worker_state["args"] = args


def _align_in_worker(task: tuple[Path, Path]) -> ImageResult:
    return align_image(task[0], task[1], _worker_state["detector"], _worker_state["args"])


def default_num_workers() -> int:
    """Cores this process may run on (its CPU affinity, not the machine's core count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def align_dataset(args: Args, detector: FaceDetector | None = None) -> AlignmentSummary:
    """Aligns every image of args.input_dir into args.output_dir; returns the counts.

    With `detector` given (or one worker), the work runs in this process, with that detector's own settings
    (min_face_size, thresholds, scale_factor, detect_max_side); otherwise in args.num_workers worker
    processes (0: one per core), each building its own detector once.
    """
    validate(args)
    input_dir, output_dir = Path(args.input_dir), Path(args.output_dir)
    images, clashes = list_images(input_dir, output_dir)
    tasks = [(source, stem) for source, stem in images if not is_done(stem)]
    summary = AlignmentSummary(total=len(images) + len(clashes), skipped=len(images) - len(tasks),
                               name_clashes=len(clashes))
    if args.random_order:
        random.shuffle(tasks)
    check_same_geometry(args, output_dir / ARGS_FILE)
    output_dir.mkdir(parents=True, exist_ok=True)
    args.save(output_dir / ARGS_FILE)
    workers = min(args.num_workers or default_num_workers(), max(len(tasks), 1))
    log.info("%d images in %s, %d already aligned, %d to do with %s", summary.total, input_dir, summary.skipped,
                len(tasks), "this process" if detector is not None or workers == 1 else f"{workers} workers")
    start = time.perf_counter()
    # surrogateescape: a file name that is not UTF-8 is written back as its own bytes instead of failing the write.
    with open(output_dir / BOXES_FILE, "a", encoding="utf-8", errors="surrogateescape") as boxes, \
            open(output_dir / FAILED_FILE, "w", encoding="utf-8", errors="surrogateescape") as failed:
        for source, taken_by in clashes:
            failed.write(f"{source}\tnot aligned: its output name is taken by {taken_by}\n")
        for result in tqdm(_results(tasks, args, detector, workers), total=len(tasks), desc="align", unit="img"):
            _record(result, summary, boxes, failed)
    summary.seconds = time.perf_counter() - start
    _log_summary(summary, output_dir)
    return summary


def _results(tasks: list[tuple[Path, Path]], args: Args, detector: FaceDetector | None, workers: int):
    """Yields one ImageResult per task, in the order of the tasks."""
    if not tasks:  # everything was aligned before: no detector (TensorFlow) is needed
        return
    if detector is None and workers == 1:
        detector = build_detector(args)
    if detector is not None:
        for source, stem in tasks:
            yield align_image(source, stem, detector, args)
        return
    # "spawn": a forked child would inherit a TensorFlow runtime that is not fork-safe. An executor rather than a
    # multiprocessing.Pool: a worker that dies (out of memory) stops the run with BrokenProcessPool instead of a hang.
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_start_worker,
                             initargs=(args,)) as pool:
        yield from pool.map(_align_in_worker, tasks, chunksize=4)


def _record(result: ImageResult, summary: AlignmentSummary, boxes, failed) -> None:
    if result.status == "aligned":
        summary.aligned += 1
        summary.faces_written += len(result.written)
        for path, box in result.written:
            boxes.write(f"{path} {' '.join(map(str, box))}\n")
        boxes.flush()
        return
    if result.status == "no_face":
        summary.no_face += 1
    else:
        summary.unreadable += 1
    failed.write(f"{result.source}\t{result.reason}\n")
    failed.flush()
    log.debug("%s: %s", printable_path(Path(result.source)), result.reason)


def _log_summary(summary: AlignmentSummary, output_dir: Path) -> None:
    log.info("Total number of images: %d (%d already aligned before this run)", summary.total, summary.skipped)
    log.info("Number of successfully aligned images: %d (%d faces written)", summary.aligned,
                summary.faces_written)
    log.info("Without a face: %d, unreadable: %d, name clashes: %d (listed in %s)", summary.no_face,
                summary.unreadable, summary.name_clashes, output_dir / FAILED_FILE)
    log.info("%.1f s, %.2f images/s", summary.seconds, summary.images_per_second)


def main(args: Args) -> AlignmentSummary:
    return align_dataset(args)


def cli() -> NoReturn:
    """The `insightface-align` console script: this script's command line, from any folder."""
    run_script(Args, main)


if __name__ == "__main__":
    cli()
