"""Tests of align/: the similarity warp against known transforms, MTCNN alignment of real faces end to end (the
scikit-image astronaut; the Yale faces when present), bad inputs, resume, the box mode, and detection on a
bounded-size copy of a large photo."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from skimage import data as skimage_data

from align.align_dataset_mtcnn import Args, align_dataset, build_detector
from align.detector import Face, FaceDetector, detection_plan, pick_central_face, template_eye_error, to_original
from align.warp import crop_box, estimate_similarity, margin_box, warp_to_template

REPO = Path(__file__).resolve().parents[1]
# The ArcFace 112x112 reference points, typed from insightface's published template (not imported from the code).
TEMPLATE_112 = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655],
                         [70.7299, 92.2041]])
EYE_TOLERANCE_PX = 3.0


@pytest.fixture(scope="module")
def detector() -> FaceDetector:
    return FaceDetector()


def write_image(path: Path, rgb_or_grey: np.ndarray) -> Path:
    """Writes with OpenCV (BGR order on disk), independently of the code under test."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = rgb_or_grey
    if image.ndim == 3 and image.shape[2] == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    elif image.ndim == 3 and image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_RGBA2BGRA)
    assert cv2.imwrite(str(path), image)
    return path


def read_png(path: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def redetected_eyes(aligned: np.ndarray, detector: FaceDetector, padding: int = 56) -> np.ndarray:
    """Eye centres [2, 2] found by running MTCNN again on the aligned face padded with its replicated border."""
    padded = np.pad(aligned, ((padding, padding), (padding, padding), (0, 0)), mode="edge")
    faces = detector.detect(padded)
    assert faces, "no face found again in the aligned image"
    largest = max(faces, key=lambda face: (face.box[2] - face.box[0]) * (face.box[3] - face.box[1]))
    return largest.landmarks[:2] - padding


def similarity_matrix(scale: float, angle: float, shift: tuple[float, float]) -> np.ndarray:
    cos, sin = np.cos(angle), np.sin(angle)
    return np.array([[scale * cos, -scale * sin, shift[0]], [scale * sin, scale * cos, shift[1]]])


def apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ matrix[:, :2].T + matrix[:, 2]


def least_squares_similarity(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Reference fit: x' = a x - b y + tx, y' = b x + a y + ty as a linear least-squares problem; [2, 3] matrix."""
    rows = []
    for (x, y) in source:
        rows += [[x, -y, 1, 0], [y, x, 0, 1]]
    (a, b, tx, ty), *_ = np.linalg.lstsq(np.array(rows), np.asarray(target).reshape(-1), rcond=None)
    return np.array([[a, -b, tx], [b, a, ty]])


# ---------------------------------------------------------------------------------------------------------- warp


@pytest.mark.parametrize("scale, angle, shift", [(1.0, 0.0, (0.0, 0.0)), (0.37, 0.4, (12.5, -40.0)),
                                                 (2.5, -2.9, (-100.0, 3.25))])
def test_estimate_similarity_recovers_a_known_transform(scale, angle, shift):
    rng = np.random.default_rng(0)
    source = rng.uniform(-200, 200, size=(5, 2))
    expected = similarity_matrix(scale, angle, shift)
    np.testing.assert_allclose(estimate_similarity(source, apply(expected, source)), expected, atol=1e-9)


def test_estimate_similarity_is_the_least_squares_fit_of_noisy_points():
    rng = np.random.default_rng(1)
    source = rng.uniform(0, 300, size=(5, 2))
    target = apply(similarity_matrix(0.4, 0.2, (10.0, 20.0)), source) + rng.normal(0, 2.0, size=(5, 2))
    expected = least_squares_similarity(source, target)
    np.testing.assert_allclose(estimate_similarity(source, target), expected, atol=1e-9)


def test_estimate_similarity_rejects_bad_points():
    with pytest.raises(ValueError, match="point sets"):
        estimate_similarity(np.zeros((5, 2)), np.zeros((4, 2)))
    with pytest.raises(ValueError, match="coincide"):
        estimate_similarity(np.ones((5, 2)), TEMPLATE_112)


def blob_centres(image: np.ndarray) -> np.ndarray:
    """Intensity-weighted centres of the bright blobs of a grey image, [N, 2] (x, y)."""
    count, labels = cv2.connectedComponents((image > 20).astype(np.uint8))
    ys, xs = np.mgrid[:image.shape[0], :image.shape[1]]
    weights = image.astype(np.float64)
    return np.array([[(xs * weights)[labels == k].sum() / weights[labels == k].sum(),
                      (ys * weights)[labels == k].sum() / weights[labels == k].sum()] for k in range(1, count)])


@pytest.mark.parametrize("image_size", [112, 224])
def test_warp_puts_the_landmarks_on_the_template_scaled_to_the_size(image_size):
    # Five Gaussian dots where a known similarity transform sends the template; the warp must bring them back.
    template = TEMPLATE_112 * image_size / 112
    forward = similarity_matrix(1.7, 0.3, (60.0, 25.0))
    landmarks = apply(forward, template)
    ys, xs = np.mgrid[:500, :500]
    picture = sum(np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * 3.0 ** 2)) for x, y in landmarks)
    picture = np.repeat((255 * picture).astype(np.uint8)[:, :, None], 3, axis=2)
    warped = warp_to_template(picture, landmarks, image_size)
    assert warped.shape == (image_size, image_size, 3)
    centres = blob_centres(warped[:, :, 0])
    assert len(centres) == 5
    nearest = np.linalg.norm(template[:, None, :] - centres[None, :, :], axis=2).min(axis=1)
    assert nearest.max() < 0.3


def test_margin_box_and_crop_follow_the_seed():
    image = np.arange(200 * 300 * 3, dtype=np.uint32).reshape(200, 300, 3).astype(np.uint8)
    box = np.array([10.7, 50.2, 120.9, 190.6])
    # The seed: [max(x1 - margin/2, 0), max(y1 - margin/2, 0), min(x2 + margin/2, W), min(y2 + margin/2, H)], int32.
    assert margin_box(box, 44, image.shape) == (0, 28, 142, 200)
    crop = crop_box(image, box, 44, 96)
    np.testing.assert_array_equal(crop, cv2.resize(image[28:200, 0:142], (96, 96), interpolation=cv2.INTER_LINEAR))
    with pytest.raises(ValueError, match="empty"):
        crop_box(image, np.array([400.0, 10.0, 450.0, 60.0]), 0, 96)


def test_pick_central_face_penalises_the_distance_from_the_centre():
    def face(x1, y1, x2, y2):
        return Face(box=np.array([x1, y1, x2, y2], float), score=0.99, landmarks=np.zeros((5, 2)))

    central = face(180, 130, 220, 170)  # area 1600, centred in a 400x300 image
    corner = face(0, 0, 60, 60)  # area 3600, centre (30, 30): squared offset 170^2 + 120^2 = 43300
    near = face(150, 100, 210, 160)  # area 3600, centre (180, 130): squared offset 20^2 + 20^2 = 800
    assert pick_central_face([corner, central], (300, 400, 3)) is central  # 1600 > 3600 - 86600
    assert pick_central_face([central, near, corner], (300, 400, 3)) is near  # 3600 - 1600 > 1600


# ---------------------------------------------------------------------------------------------------- real faces


def test_astronaut_is_aligned_with_the_eyes_on_the_template(tmp_path, detector):
    astronaut = skimage_data.astronaut()
    write_image(tmp_path / "in" / "eileen" / "astronaut.png", astronaut)
    summary = align_dataset(Args(input_dir=str(tmp_path / "in"), output_dir=str(tmp_path / "out")), detector)
    assert (summary.total, summary.aligned, summary.no_face, summary.unreadable) == (1, 1, 0, 0)
    aligned = read_png(tmp_path / "out" / "eileen" / "astronaut.png")
    assert aligned.shape == (112, 112, 3)
    eyes = redetected_eyes(aligned, detector)
    # Her head is turned, so even a perfect 5-point least-squares fit leaves her eyes ~2.5 px off the template: the
    # warp must put them where that fit sends them (up to MTCNN's re-detection noise) and near the template.
    original = detector.detect(astronaut)[0].landmarks
    fitted_eyes = apply(least_squares_similarity(original, TEMPLATE_112), original[:2])
    assert np.linalg.norm(eyes - fitted_eyes, axis=1).max() <= 2.0
    assert np.linalg.norm(eyes - TEMPLATE_112[:2], axis=1).max() <= 4.0
    assert template_eye_error(aligned, detector, padding=56) == pytest.approx(
        np.linalg.norm(eyes - TEMPLATE_112[:2], axis=1).max(), abs=1e-9)
    line = (tmp_path / "out" / "bounding_boxes.txt").read_text().split()
    assert line[0] == str(tmp_path / "out" / "eileen" / "astronaut.png") and len(line) == 5


def test_box_mode_crops_the_margin_box(tmp_path, detector):
    astronaut = skimage_data.astronaut()
    write_image(tmp_path / "in" / "eileen" / "astronaut.png", astronaut)
    args = Args(input_dir=str(tmp_path / "in"), output_dir=str(tmp_path / "out"), mode="box", image_size=96)
    assert align_dataset(args, detector).aligned == 1
    cropped = read_png(tmp_path / "out" / "eileen" / "astronaut.png")
    # The seed's crop of MTCNN's box, computed here: box grown by margin/2 = 22 px, clipped, truncated, resized.
    x1, y1, x2, y2 = detector.detect(astronaut)[0].box
    height, width = astronaut.shape[:2]
    left, top = int(max(x1 - 22, 0)), int(max(y1 - 22, 0))
    right, bottom = int(min(x2 + 22, width)), int(min(y2 + 22, height))
    expected = cv2.resize(astronaut[top:bottom, left:right], (96, 96), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(cropped, expected)


def test_bad_inputs_are_counted_and_listed_and_resume_skips_done_images(tmp_path, detector):
    astronaut = skimage_data.astronaut()
    folder = tmp_path / "in" / "mixed"
    write_image(folder / "grey.png", cv2.cvtColor(astronaut, cv2.COLOR_RGB2GRAY))
    write_image(folder / "rgba.png", np.dstack([astronaut, np.full(astronaut.shape[:2], 200, np.uint8)]))
    write_image(folder / "flat.png", np.full((160, 120, 3), 128, np.uint8))
    write_image(folder / "noise.png", np.random.default_rng(0).integers(0, 256, (160, 160, 3), dtype=np.uint8))
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG")
    write_image(folder / "flat.jpg", np.full((50, 50, 3), 0, np.uint8))  # same output name as flat.png
    args = Args(input_dir=str(tmp_path / "in"), output_dir=str(tmp_path / "out"))

    first = align_dataset(args, detector)
    assert (first.total, first.aligned, first.no_face, first.unreadable, first.name_clashes) == (6, 2, 2, 1, 1)
    out = tmp_path / "out" / "mixed"
    assert sorted(p.name for p in out.iterdir()) == ["grey.png", "rgba.png"]
    for name in ("grey.png", "rgba.png"):
        assert read_png(out / name).shape == (112, 112, 3)
    failed = (tmp_path / "out" / "failed_images.txt").read_text()
    for name in ("flat.png", "noise.png", "corrupt.jpg", "flat.jpg"):
        assert str(folder / name) in failed

    done_at = (out / "grey.png").stat().st_mtime_ns
    (out / "rgba.png").unlink()
    second = align_dataset(args, detector)
    assert (second.skipped, second.aligned, second.no_face, second.unreadable) == (1, 1, 2, 1)
    assert (out / "grey.png").stat().st_mtime_ns == done_at
    assert (out / "rgba.png").exists()
    with pytest.raises(ValueError, match="image_size=112 then, 96 now"):
        align_dataset(Args(input_dir=str(tmp_path / "in"), output_dir=str(tmp_path / "out"), image_size=96), detector)


def test_multiple_faces_are_written_with_an_index(tmp_path, detector):
    face = skimage_data.astronaut()[20:260, 120:330]
    two_people = np.hstack([face, np.full((face.shape[0], 60, 3), 255, np.uint8), face])
    write_image(tmp_path / "in" / "crew" / "pair.png", two_people)
    args = Args(input_dir=str(tmp_path / "in"), output_dir=str(tmp_path / "multi"), detect_multiple_faces=True)
    assert align_dataset(args, detector).faces_written == 2
    assert sorted(p.name for p in (tmp_path / "multi" / "crew").iterdir()) == ["pair_0.png", "pair_1.png"]
    args = Args(input_dir=str(tmp_path / "in"), output_dir=str(tmp_path / "single"))
    assert align_dataset(args, detector).faces_written == 1
    assert [p.name for p in (tmp_path / "single" / "crew").iterdir()] == ["pair.png"]


def test_worker_processes_give_the_same_faces_as_this_process(tmp_path, detector):
    folder = tmp_path / "in" / "crew"
    write_image(folder / "astronaut.png", skimage_data.astronaut())
    write_image(folder / "flipped.png", skimage_data.astronaut()[:, ::-1])
    write_image(folder / "flat.png", np.full((80, 80, 3), 90, np.uint8))
    pooled = align_dataset(Args(input_dir=str(tmp_path / "in"), output_dir=str(tmp_path / "pool"), num_workers=2))
    assert (pooled.aligned, pooled.no_face, pooled.unreadable) == (2, 1, 0)
    align_dataset(Args(input_dir=str(tmp_path / "in"), output_dir=str(tmp_path / "here")), detector)
    for name in ("astronaut.png", "flipped.png"):
        # Same detector, one TensorFlow thread instead of several: equal up to float rounding.
        pooled_face, local_face = (read_png(tmp_path / run / "crew" / name).astype(int) for run in ("pool", "here"))
        assert np.abs(pooled_face - local_face).max() <= 2


class SqueezedFaceDetector:
    """Stands in for MTCNN: one face whose box was clipped to a zero-width strip at the right border."""

    def detect(self, rgb):
        width = rgb.shape[1]
        return [Face(box=np.array([width - 1.0, 10.0, width - 1.0, 40.0]), score=0.9, landmarks=np.zeros((5, 2)))]


def test_a_degenerate_detection_is_counted_not_fatal(tmp_path):
    write_image(tmp_path / "in" / "edge" / "a.png", np.full((60, 60, 3), 70, np.uint8))
    write_image(tmp_path / "in" / "edge" / "b.png", np.full((60, 60, 3), 70, np.uint8))
    args = Args(input_dir=str(tmp_path / "in"), output_dir=str(tmp_path / "out"), mode="box", margin=0)
    summary = align_dataset(args, SqueezedFaceDetector())
    assert (summary.total, summary.aligned, summary.no_face) == (2, 0, 2)
    assert "empty" in (tmp_path / "out" / "failed_images.txt").read_text()


def test_args_are_checked(tmp_path):
    (tmp_path / "in").mkdir()
    with pytest.raises(ValueError, match="mode"):
        align_dataset(Args(input_dir=str(tmp_path / "in"), output_dir=str(tmp_path / "out"), mode="crop"))
    with pytest.raises(ValueError, match="no class folders"):
        align_dataset(Args(input_dir=str(tmp_path / "in"), output_dir=str(tmp_path / "out")))
    with pytest.raises(FileNotFoundError, match="missing"):
        align_dataset(Args(input_dir=str(tmp_path / "missing"), output_dir=str(tmp_path / "out")))
    (tmp_path / "in" / "someone").mkdir()
    with pytest.raises(ValueError, match="thresholds"):
        align_dataset(Args(input_dir=str(tmp_path / "in"), output_dir=str(tmp_path / "out"), thresholds=[0.6, 0.7]))
    args = Args.from_cli(["--input_dir=a", "--output_dir=b", "--mode=box", "--thresholds=0.5,0.6,0.7"])
    assert (args.mode, args.thresholds, args.image_size, args.margin) == ("box", [0.5, 0.6, 0.7], 112, 44)


# ------------------------------------------------------------------------------------ large photo, bounded copy

BIG_SHAPE = (3000, 4000)  # height, width: a 12-megapixel photo
ASTRONAUT_AT = (1750, 1200)  # (x, y) of the astronaut's top-left corner on it: her face near the centre


class RecordingDetector:
    """Passes detections through and keeps them, so a test sees the landmarks the aligner warped with."""

    def __init__(self, detector: FaceDetector) -> None:
        self.detector, self.faces = detector, []

    def detect(self, rgb):
        self.faces = self.detector.detect(rgb)
        return self.faces


def textured_canvas(shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    """Blotches of colour, large and small, as a photo's background has."""
    rng = np.random.default_rng(seed)
    height, width = shape
    coarse, fine = (cv2.resize(rng.integers(0, 256, (height // step, width // step, 3), dtype=np.uint8),
                               (width, height), interpolation=cv2.INTER_CUBIC) for step in (250, 16))
    return cv2.addWeighted(coarse, 0.6, fine, 0.4, 0)


@pytest.fixture(scope="module")
def big_photo(tmp_path_factory, detector):
    """The astronaut pasted at native resolution onto a textured 4000x3000 photo, aligned with the default Args
    (detect_max_side 1280); the original pixels (read back from the PNG), the detections and the output."""
    folder = tmp_path_factory.mktemp("big")
    photo = textured_canvas(BIG_SHAPE)
    x0, y0 = ASTRONAUT_AT
    astronaut = skimage_data.astronaut()
    photo[y0:y0 + astronaut.shape[0], x0:x0 + astronaut.shape[1]] = astronaut
    original = read_png(write_image(folder / "in" / "crew" / "photo.bmp", photo))  # BMP: no time spent compressing
    args = Args(input_dir=str(folder / "in"), output_dir=str(folder / "out"))
    recorder = RecordingDetector(build_detector(args))
    summary = align_dataset(args, recorder)
    # The full-resolution reference: MTCNN on the astronaut's own 512x512 image, shifted to where she was pasted
    # (MTCNN looks at local windows; on the whole photo at full resolution it finds her landmarks within 0.8 px of
    # these, at 8x the cost).
    reference = detector.detect(astronaut)[0]
    return dict(original=original, summary=summary, faces=recorder.faces, max_side=recorder.detector.detect_max_side,
                reference_box=reference.box + [x0, y0, x0, y0], reference_landmarks=reference.landmarks + [x0, y0],
                aligned=read_png(folder / "out" / "crew" / "photo.png"),
                boxes_line=(folder / "out" / "bounding_boxes.txt").read_text().split())


def test_detection_plan_bounds_the_copy_and_keeps_the_smallest_face_at_12_px():
    scale, min_face = detection_plan((2903, 4352, 3), 1280, 20)
    assert scale == pytest.approx(1280 / 4352) and min_face == 12.0  # 20 x 0.294 = 5.9 px would upsample the copy
    assert detection_plan((2903, 4352, 3), 1280, 100) == pytest.approx((1280 / 4352, 100 * 1280 / 4352))
    assert detection_plan((4352, 2000, 3), 2176, 20) == pytest.approx((0.5, 12.0))  # portrait: the height counts
    assert detection_plan((960, 1280, 3), 1280, 20) == (1.0, 20.0)  # within the limit: never upscaled
    assert detection_plan((2903, 4352, 3), 0, 20) == (1.0, 20.0)  # 0: full resolution
    with pytest.raises(ValueError, match="detect_max_side=5"):
        detection_plan((100, 100, 3), 5, 20)


def test_points_of_a_resized_copy_map_back_to_the_original():
    # A Gaussian dot at a known sub-pixel spot, shrunk by 3.125 x 3.2 (OpenCV's INTER_AREA): its centroid on the
    # copy, mapped back, must land on the spot (a half-pixel convention error would miss by ~1 px).
    spot = np.array([613.3, 402.7])
    ys, xs = np.mgrid[:768, :1000]
    dot = np.exp(-((xs - spot[0]) ** 2 + (ys - spot[1]) ** 2) / (2 * 12.0 ** 2))
    copy = cv2.resize(dot, (320, 240), interpolation=cv2.INTER_AREA)
    copy_ys, copy_xs = np.mgrid[:240, :320]
    centroid = np.array([[(copy_xs * copy).sum(), (copy_ys * copy).sum()]]) / copy.sum()
    np.testing.assert_allclose(to_original(centroid, 1000 / 320, 768 / 240)[0], spot, atol=0.05)


def test_a_large_photo_is_searched_on_a_copy_and_the_face_found_where_full_resolution_finds_it(big_photo):
    assert big_photo["max_side"] == 1280 and big_photo["summary"].aligned == 1
    face = pick_central_face(big_photo["faces"], BIG_SHAPE)
    np.testing.assert_allclose(face.landmarks, big_photo["reference_landmarks"], atol=3.0)
    np.testing.assert_allclose(face.box, big_photo["reference_box"], atol=4.0)
    # bounding_boxes.txt holds the box in the original's pixels, not the copy's.
    assert [int(v) for v in big_photo["boxes_line"][1:]] == [int(round(v)) for v in face.box]


def test_the_face_from_a_large_photo_is_warped_from_its_original_pixels(big_photo):
    original, aligned = big_photo["original"], big_photo["aligned"]
    face = pick_central_face(big_photo["faces"], BIG_SHAPE)

    def warp(image, landmarks):  # the test's own fit and OpenCV's bilinear warp
        return cv2.warpAffine(image, least_squares_similarity(landmarks, TEMPLATE_112), (112, 112),
                              flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0).astype(int)

    assert np.abs(aligned.astype(int) - warp(original, face.landmarks)).max() <= 1
    # Close to the face cut with the full-resolution landmarks: every output pixel is sampled within a few original
    # pixels of where that cut samples it (one pixel of the searched copy is 3.1 original pixels).
    sampled_at = [cv2.invertAffineTransform(least_squares_similarity(landmarks, TEMPLATE_112))
                  for landmarks in (face.landmarks, big_photo["reference_landmarks"])]
    grid = np.stack(np.meshgrid(np.arange(112.0), np.arange(112.0)), axis=-1).reshape(-1, 2)
    bounded, full = (apply(matrix, grid) for matrix in sampled_at)
    assert np.linalg.norm(bounded - full, axis=1).max() <= 5.0
    full_cut = warp(original, big_photo["reference_landmarks"])
    assert np.corrcoef(aligned.reshape(-1), full_cut.reshape(-1))[0, 1] > 0.9
    # Cut from the searched copy, upscaled, the same face is visibly blurred: the output is not that.
    height, width = BIG_SHAPE
    upscaled = cv2.resize(cv2.resize(original, (1280, 960), interpolation=cv2.INTER_AREA), (width, height),
                          interpolation=cv2.INTER_LINEAR)
    from_copy = warp(upscaled, face.landmarks)
    sharpness = [cv2.Laplacian(image.astype(np.float64), cv2.CV_64F).var() for image in (aligned, from_copy)]
    assert sharpness[0] > 1.5 * sharpness[1]
    assert np.abs(aligned.astype(int) - from_copy).mean() > 3.0


def test_detect_max_side_is_checked(tmp_path):
    (tmp_path / "in" / "someone").mkdir(parents=True)
    with pytest.raises(ValueError, match="detect_max_side"):
        Args(input_dir=str(tmp_path / "in"), output_dir=str(tmp_path / "out"), detect_max_side=-1)
    with pytest.raises(ValueError, match="detect_max_side=11"):
        align_dataset(Args(input_dir=str(tmp_path / "in"), output_dir=str(tmp_path / "out"), detect_max_side=11))
    assert Args.from_cli(["--input_dir=a", "--output_dir=b", "--detect_max_side=0"]).detect_max_side == 0


# ---------------------------------------------------------------------------------------------------- Yale, slow


@pytest.mark.slow
def test_yale_faces_script_with_workers(tmp_path, yale_faces, detector):
    """The command line with 2 worker processes on the 15 subjects of real, uncropped Yale faces."""
    output = tmp_path / "yale"
    command = [sys.executable, str(REPO / "align" / "align_dataset_mtcnn.py"), f"--input_dir={yale_faces}",
               f"--output_dir={output}", "--image_size=112", "--mode=similarity", "--num_workers=2"]
    completed = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600,
                               env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert completed.returncode == 0, completed.stderr[-3000:]
    inputs = sorted(p.relative_to(yale_faces).with_suffix(".png") for p in yale_faces.glob("*/*") if p.is_file())
    written = [output / p for p in inputs if (output / p).exists()]
    assert len(written) >= 0.95 * len(inputs)
    eye_errors = np.array([np.linalg.norm(redetected_eyes(read_png(p), detector) - TEMPLATE_112[:2], axis=1).max()
                           for p in written])
    # Both eyes within 3 px of the template for at least 95% of the faces (the 5-point least-squares fit itself
    # leaves a few faces, whose proportions differ from the template's, just above 3 px).
    assert np.percentile(eye_errors, 95) <= EYE_TOLERANCE_PX
