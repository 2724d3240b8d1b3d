"""Synthetic face-like identities, drawn procedurally: the embedded default data of the demo and the tests.

Each identity has fixed traits (face outline and proportions, skin tone, eye/brow/nose/mouth geometry and colours,
ears, hair style and colour, maybe glasses, a beard or a mole). Each image of it varies what varies between photos of
one person: pose (in-plane rotation, shift, scale, a little yaw), expression (smile, open mouth, eye opening, brow
raise), lighting (gain, colour cast, directional shading), background, blur, noise and JPEG quality. Skin and hair
colours come from shared palettes and the lighting varies per image, so the mean colour of an image says little
about its identity: a network has to look at shapes.

    python -m data.synthetic --output_dir=output/synthetic_faces --num_identities=100 --images_per_identity=20

writes `<output_dir>/id_00000/0000.jpg ...` (a folder-per-identity dataset, see data/image_folders.py) and
`synthetic.json` with the parameters. The same parameters always give the same files.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import cv2
import numpy as np
from tqdm import tqdm

from config import Config, PositiveInt, Range, RequiredPath, run_script

log = logging.getLogger(__name__)

MANIFEST = "synthetic.json"
_SUPERSAMPLE = 3  # shapes are drawn at 3x the image size and shrunk, which anti-aliases every edge
_FRAMING = 1.3  # zoom that makes the face fill the crop, as in ArcFace-aligned 112x112 images

_SKIN_LIGHT = np.array([236.0, 200.0, 178.0])
_SKIN_DARK = np.array([92.0, 62.0, 48.0])
_HAIR_COLOURS = np.array([[25, 20, 18], [70, 45, 30], [120, 80, 45], [200, 160, 95], [150, 60, 30], [150, 150, 150]],
                         dtype=np.float64)
_IRIS_COLOURS = np.array([[70, 45, 25], [40, 25, 15], [70, 110, 160], [80, 120, 80], [110, 115, 120]],
                         dtype=np.float64)


class Args(Config):
    output_dir: RequiredPath = "output/synthetic_faces"  # folder to create: <output_dir>/<identity>/<image>.jpg
    num_identities: PositiveInt = 100  # identities (folders)
    images_per_identity: PositiveInt = 20  # images per identity
    # the same seed gives the same data set; another seed gives other identities
    seed: Annotated[int, Range(0, 2**32 - 1)] = 0
    image_size: Annotated[int, Range(16, 4096)] = 112  # square image side in pixels


@dataclass(frozen=True)
class Identity:
    """The fixed traits of one synthetic person; lengths are fractions of the image side."""

    face_width: float  # half width of the face outline
    face_height: float  # half height
    face_squareness: float  # superellipse exponent: 2 = ellipse, larger = squarer
    jaw_taper: float  # width of the chin relative to the cheeks
    skin: np.ndarray  # RGB
    eye_spacing: float  # half distance between the eye centres
    eye_y: float  # eye line, relative to the face centre (negative = up)
    eye_width: float  # half width of an eye
    eye_aspect: float  # eye height / width
    iris: np.ndarray  # RGB
    brow_gap: float  # brow height above the eye line
    brow_thickness: float
    brow_tilt: float  # outer end up (>0) or down (<0)
    brow_arch: float
    nose_length: float
    nose_width: float
    mouth_y: float  # relative to the face centre
    mouth_width: float  # half width
    lip_thickness: float
    lips: np.ndarray  # RGB
    ear_size: float
    hair: np.ndarray  # RGB
    hair_style: int  # 0 bald, 1 short, 2 long, 3 fringe
    hairline: float  # relative to the face centre
    glasses: int  # 0 none, 1 round, 2 rectangular
    glasses_colour: np.ndarray
    beard: bool
    mole: tuple[float, float] | None  # position relative to the face centre


@dataclass(frozen=True)
class Variation:
    """What changes between two images of one identity."""

    rotation: float  # degrees
    scale: float
    shift: tuple[float, float]  # fraction of the image side
    yaw: float  # -1..1, turns the features sideways
    smile: float
    mouth_open: float
    eye_open: float
    brow_raise: float
    gaze: float
    gain: float
    cast: np.ndarray  # per-channel gain
    light_angle: float  # radians
    light_strength: float
    background: tuple[np.ndarray, np.ndarray]
    blur: float  # Gaussian sigma in pixels, 0 = none
    noise: float  # Gaussian sigma in grey levels
    jpeg_quality: int


def random_identity(rng: np.random.Generator) -> Identity:
    """Draws the traits of one identity."""
    skin = _SKIN_LIGHT + rng.uniform(0, 1) * (_SKIN_DARK - _SKIN_LIGHT) + rng.normal(0, 6, 3)
    hair = _HAIR_COLOURS[rng.integers(len(_HAIR_COLOURS))] + rng.normal(0, 10, 3)
    return Identity(
        face_width=rng.uniform(0.25, 0.33), face_height=rng.uniform(0.34, 0.42),
        face_squareness=rng.uniform(1.9, 3.0), jaw_taper=rng.uniform(0.55, 0.95), skin=np.clip(skin, 30, 250),
        eye_spacing=rng.uniform(0.10, 0.15), eye_y=rng.uniform(-0.10, -0.03), eye_width=rng.uniform(0.040, 0.062),
        eye_aspect=rng.uniform(0.35, 0.62),
        iris=np.clip(_IRIS_COLOURS[rng.integers(len(_IRIS_COLOURS))] + rng.normal(0, 8, 3), 0, 255),
        brow_gap=rng.uniform(0.045, 0.08), brow_thickness=rng.uniform(0.010, 0.026), brow_tilt=rng.uniform(-0.03, 0.03),
        brow_arch=rng.uniform(0.0, 0.025), nose_length=rng.uniform(0.08, 0.15), nose_width=rng.uniform(0.025, 0.05),
        mouth_y=rng.uniform(0.16, 0.24), mouth_width=rng.uniform(0.055, 0.10), lip_thickness=rng.uniform(0.008, 0.022),
        lips=np.clip(skin * rng.uniform(0.6, 0.85) + np.array([45.0, 0.0, 5.0]), 0, 255),
        ear_size=rng.uniform(0.04, 0.07), hair=np.clip(hair, 0, 255), hair_style=int(rng.integers(4)),
        hairline=rng.uniform(-0.30, -0.20), glasses=int(rng.choice(3, p=[0.7, 0.15, 0.15])),
        glasses_colour=rng.uniform(10, 120, 3), beard=bool(rng.uniform() < 0.2),
        mole=(rng.uniform(-0.2, 0.2), rng.uniform(-0.05, 0.25)) if rng.uniform() < 0.3 else None,
    )


def random_variation(rng: np.random.Generator) -> Variation:
    """Draws the pose, expression, lighting and capture of one image."""
    return Variation(
        rotation=rng.normal(0, 5), scale=rng.uniform(0.92, 1.08), shift=(rng.normal(0, 0.025), rng.normal(0, 0.025)),
        yaw=rng.uniform(-0.5, 0.5), smile=rng.uniform(-0.3, 1.0), mouth_open=max(0.0, rng.uniform(-0.6, 1.0)),
        eye_open=rng.uniform(0.55, 1.1), brow_raise=rng.uniform(-0.008, 0.015), gaze=rng.uniform(-0.3, 0.3),
        gain=rng.uniform(0.7, 1.3), cast=rng.uniform(0.9, 1.1, 3), light_angle=rng.uniform(0, 2 * np.pi),
        light_strength=rng.uniform(0.0, 0.35), background=(rng.uniform(20, 235, 3), rng.uniform(20, 235, 3)),
        blur=rng.uniform(0.0, 1.2) if rng.uniform() < 0.5 else 0.0, noise=rng.uniform(1.0, 6.0),
        jpeg_quality=int(rng.integers(75, 96)),
    )


class _Canvas:
    """An RGB float image drawn in coordinates that are fractions of the image side (0..1)."""

    def __init__(self, size: int, background: tuple[np.ndarray, np.ndarray]) -> None:
        self.size = size
        ramp = np.linspace(0.0, 1.0, size)[:, None, None]
        self.pixels = np.broadcast_to(background[0] * (1 - ramp) + background[1] * ramp, (size, size, 3)).copy()

    def points(self, xy: np.ndarray) -> np.ndarray:
        return np.round(np.asarray(xy) * self.size).astype(np.int32).reshape(-1, 1, 2)

    def length(self, value: float) -> int:
        return max(1, int(round(value * self.size)))

    def mask(self) -> np.ndarray:
        return np.zeros((self.size, self.size), dtype=np.uint8)

    def fill_polygon(self, mask: np.ndarray, xy: np.ndarray) -> np.ndarray:
        cv2.fillPoly(mask, [self.points(xy)], 255)
        return mask

    def fill_ellipse(self, mask: np.ndarray, centre: tuple[float, float], axes: tuple[float, float],
                     angle: float = 0.0) -> np.ndarray:
        cv2.ellipse(mask, (int(round(centre[0] * self.size)), int(round(centre[1] * self.size))),
                    (self.length(axes[0]), self.length(axes[1])), angle, 0, 360, 255, -1)
        return mask

    def stroke(self, mask: np.ndarray, xy: np.ndarray, thickness: float) -> np.ndarray:
        cv2.polylines(mask, [self.points(xy)], False, 255, self.length(thickness))
        return mask

    def paint(self, mask: np.ndarray, colour: np.ndarray, opacity: float = 1.0) -> None:
        x, y, width, height = cv2.boundingRect(mask)  # blend only where the mask is, for speed
        if width == 0:
            return
        region = self.pixels[y:y + height, x:x + width]
        alpha = (mask[y:y + height, x:x + width].astype(np.float64) * (opacity / 255.0))[:, :, None]
        region += (np.asarray(colour, dtype=np.float64) - region) * alpha


def _curve(start: tuple[float, float], middle: tuple[float, float], end: tuple[float, float],
           steps: int = 16) -> np.ndarray:
    """Quadratic Bezier through `middle` at t=1/2 (so `middle` is a point of the curve)."""
    control = 2 * np.asarray(middle) - 0.5 * (np.asarray(start) + np.asarray(end))
    t = np.linspace(0, 1, steps)[:, None]
    return (1 - t) ** 2 * np.asarray(start) + 2 * (1 - t) * t * control + t ** 2 * np.asarray(end)


def _face_outline(person: Identity, centre: tuple[float, float]) -> np.ndarray:
    angles = np.linspace(0, 2 * np.pi, 96, endpoint=False)
    cos, sin = np.cos(angles), np.sin(angles)
    exponent = 2.0 / person.face_squareness
    x = np.sign(cos) * np.abs(cos) ** exponent * person.face_width
    y = np.sign(sin) * np.abs(sin) ** exponent * person.face_height
    x *= np.where(sin > 0, 1 - (1 - person.jaw_taper) * sin ** 2, 1.0)  # narrower towards the chin
    return np.stack([centre[0] + x, centre[1] + y], axis=1)


def _draw_hair_back(canvas: _Canvas, person: Identity, centre: tuple[float, float]) -> None:
    if person.hair_style == 2:
        canvas.paint(canvas.fill_ellipse(canvas.mask(), (centre[0], centre[1] + 0.02),
                                         (person.face_width * 1.35, person.face_height * 1.15)), person.hair)


def _draw_head(canvas: _Canvas, person: Identity, centre: tuple[float, float], view: Variation) -> np.ndarray:
    """Ears, face, beard and hair; returns the face mask (features are clipped to it)."""
    ear_y = centre[1] + person.eye_y + 0.03
    for side in (-1, 1):
        ear_x = centre[0] + side * person.face_width * (1.0 - 0.08 * side * view.yaw)
        canvas.paint(canvas.fill_ellipse(canvas.mask(), (ear_x, ear_y), (person.ear_size * 0.55, person.ear_size)),
                     person.skin * 0.92)
    face = canvas.fill_polygon(canvas.mask(), _face_outline(person, centre))
    canvas.paint(face, person.skin)
    if person.beard:
        jaw = canvas.fill_ellipse(canvas.mask(), (centre[0], centre[1] + person.face_height * 0.75),
                                  (person.face_width * 0.95, person.face_height * 0.5))
        canvas.paint(np.minimum(jaw, face), person.hair, opacity=0.85)
    if person.hair_style in (1, 2, 3):
        hairline = centre[1] + person.hairline + (0.08 if person.hair_style == 3 else 0.0)
        cap = canvas.fill_ellipse(canvas.mask(), (centre[0], centre[1] - person.face_height * 0.45),
                                  (person.face_width * 1.08, person.face_height * 0.7))
        rows = (np.arange(canvas.size) / canvas.size)[:, None]
        cap[np.broadcast_to(rows > hairline, cap.shape)] = 0
        canvas.paint(cap, person.hair)
    return face


def _draw_eyes(canvas: _Canvas, person: Identity, centre: tuple[float, float], view: Variation,
               face: np.ndarray) -> None:
    shift = view.yaw * person.face_width * 0.25
    for side in (-1, 1):
        foreshortening = 1.0 - 0.25 * max(0.0, side * view.yaw)  # the eye turning away looks narrower
        width = person.eye_width * foreshortening
        height = max(person.eye_width * person.eye_aspect * view.eye_open, 0.004)
        eye = (centre[0] + side * person.eye_spacing * foreshortening + shift, centre[1] + person.eye_y)
        sclera = canvas.fill_ellipse(canvas.mask(), eye, (width, height))
        canvas.paint(np.minimum(sclera, face), np.array([235.0, 232.0, 228.0]))
        iris_centre = (eye[0] + view.gaze * width * 0.4, eye[1])
        iris = canvas.fill_ellipse(canvas.mask(), iris_centre, (width * 0.45, width * 0.45))
        canvas.paint(np.minimum(iris, sclera), person.iris)
        pupil = canvas.fill_ellipse(canvas.mask(), iris_centre, (width * 0.18, width * 0.18))
        canvas.paint(np.minimum(pupil, sclera), np.array([15.0, 12.0, 12.0]))
        lid = _curve((eye[0] - width, eye[1]), (eye[0], eye[1] - height), (eye[0] + width, eye[1]))
        canvas.paint(canvas.stroke(canvas.mask(), lid, 0.006), person.skin * 0.45)
        brow_y = eye[1] - person.brow_gap - view.brow_raise
        inner = (eye[0] - side * width * 0.9, brow_y)
        outer = (eye[0] + side * width * 1.25, brow_y - person.brow_tilt)
        top = (eye[0] + side * width * 0.2, brow_y - person.brow_arch)
        canvas.paint(canvas.stroke(canvas.mask(), _curve(inner, top, outer), person.brow_thickness),
                     person.hair * 0.8)
        if person.glasses:
            frame = canvas.mask()
            radius = person.eye_width * 1.6
            if person.glasses == 1:
                cv2.circle(frame, tuple(canvas.points(eye)[0, 0]), canvas.length(radius), 255, canvas.length(0.008))
            else:
                corner = canvas.points((eye[0] - radius, eye[1] - radius * 0.75))[0, 0]
                opposite = canvas.points((eye[0] + radius, eye[1] + radius * 0.75))[0, 0]
                cv2.rectangle(frame, tuple(corner), tuple(opposite), 255, canvas.length(0.008))
            canvas.paint(frame, person.glasses_colour)
    if person.glasses:
        bridge = np.array([[centre[0] + shift - person.eye_spacing + person.eye_width * 1.6, centre[1] + person.eye_y],
                           [centre[0] + shift + person.eye_spacing - person.eye_width * 1.6, centre[1] + person.eye_y]])
        canvas.paint(canvas.stroke(canvas.mask(), bridge, 0.008), person.glasses_colour)


def _draw_nose_and_mouth(canvas: _Canvas, person: Identity, centre: tuple[float, float], view: Variation) -> None:
    shift = view.yaw * person.face_width * 0.3
    tip = (centre[0] + shift * 1.3, centre[1] + person.eye_y + 0.03 + person.nose_length)
    bridge = np.array([[centre[0] + shift * 0.7, centre[1] + person.eye_y + 0.02], tip])
    canvas.paint(canvas.stroke(canvas.mask(), bridge, 0.007), person.skin * 0.75)
    base = _curve((tip[0] - person.nose_width, tip[1] - 0.01), (tip[0], tip[1] + 0.012),
                  (tip[0] + person.nose_width, tip[1] - 0.01))
    canvas.paint(canvas.stroke(canvas.mask(), base, 0.008), person.skin * 0.6)
    for side in (-1, 1):
        nostril = canvas.fill_ellipse(canvas.mask(), (tip[0] + side * person.nose_width * 0.5, tip[1]),
                                      (person.nose_width * 0.25, person.nose_width * 0.12))
        canvas.paint(nostril, person.skin * 0.35)
    mouth_y = centre[1] + person.mouth_y
    mouth_x = centre[0] + shift
    width = person.mouth_width * (1 + 0.15 * view.smile)
    corners_y = mouth_y - 0.012 * view.smile
    opening = view.mouth_open * 0.025
    left, right = (mouth_x - width, corners_y), (mouth_x + width, corners_y)
    upper = _curve(left, (mouth_x, mouth_y - person.lip_thickness), right)
    lower = _curve(right, (mouth_x, mouth_y + opening + person.lip_thickness * 1.3), left)
    canvas.paint(canvas.fill_polygon(canvas.mask(), np.concatenate([upper, lower])), person.lips)
    if opening > 0.004:
        inside_top = _curve(left, (mouth_x, mouth_y), right)
        inside_bottom = _curve(right, (mouth_x, mouth_y + opening), left)
        canvas.paint(canvas.fill_polygon(canvas.mask(), np.concatenate([inside_top, inside_bottom])),
                     np.array([60.0, 20.0, 25.0]))
    else:
        canvas.paint(canvas.stroke(canvas.mask(), _curve(left, (mouth_x, mouth_y + 0.004), right), 0.004),
                     person.lips * 0.55)
    if person.mole is not None:
        mole = (centre[0] + person.mole[0] + shift, centre[1] + person.mole[1])
        canvas.paint(canvas.fill_ellipse(canvas.mask(), mole, (0.008, 0.008)), person.skin * 0.4)


def _apply_pose(pixels: np.ndarray, view: Variation) -> np.ndarray:
    """Rotates, scales and shifts the drawn image about its centre; `_FRAMING` makes the face fill the crop."""
    size = pixels.shape[0]
    matrix = cv2.getRotationMatrix2D((size / 2, size / 2), view.rotation, view.scale * _FRAMING)
    matrix[:, 2] += np.asarray(view.shift) * size
    return cv2.warpAffine(pixels, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def _apply_camera(pixels: np.ndarray, view: Variation, rng: np.random.Generator) -> np.ndarray:
    """Lighting, blur and noise on an RGB float image; returns uint8."""
    size = pixels.shape[0]
    coordinates = np.arange(size) / size - 0.5
    ramp = np.cos(view.light_angle) * coordinates[None, :] + np.sin(view.light_angle) * coordinates[:, None]
    shading = 1.0 + view.light_strength * 2 * ramp
    pixels = pixels * (view.gain * shading)[:, :, None] * view.cast
    if view.blur > 0:
        pixels = cv2.GaussianBlur(pixels, (0, 0), view.blur)
    pixels = pixels + rng.normal(0, view.noise, pixels.shape)
    return np.clip(np.round(pixels), 0, 255).astype(np.uint8)


def render(person: Identity, view: Variation, image_size: int, rng: np.random.Generator) -> np.ndarray:
    """One RGB uint8 [image_size, image_size, 3] image of `person` as seen in `view`."""
    canvas = _Canvas(image_size * _SUPERSAMPLE, view.background)
    centre = (0.5, 0.53)
    _draw_hair_back(canvas, person, centre)
    face = _draw_head(canvas, person, centre, view)
    _draw_eyes(canvas, person, centre, view, face)
    _draw_nose_and_mouth(canvas, person, centre, view)
    posed = _apply_pose(canvas.pixels, view)
    small = cv2.resize(posed, (image_size, image_size), interpolation=cv2.INTER_AREA)
    return _apply_camera(small, view, rng)


def encode_jpeg(rgb: np.ndarray, quality: int) -> bytes:
    ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("OpenCV could not encode a JPEG")
    return encoded.tobytes()


def _check_output_dir(output_dir: Path, manifest: dict) -> bool:
    """True when `output_dir` already holds this exact data set; FileExistsError when it holds anything else."""
    manifest_path = output_dir / MANIFEST
    if manifest_path.is_file() and json.loads(manifest_path.read_text()) == manifest:
        return True
    if output_dir.exists() and any(output_dir.iterdir()):
        raise FileExistsError(f"{output_dir} is not empty and does not hold a synthetic data set generated with "
                              f"{manifest}; choose another output_dir or delete it")
    return False


def generate(output_dir: str | Path, num_identities: int, images_per_identity: int, seed: int = 0,
             image_size: int = 112) -> Path:
    """Writes `num_identities` folders of `images_per_identity` JPEGs each; returns `output_dir`.

    Deterministic: the same arguments give the same bytes (identity k and its image j come from the seeds
    (seed, k) and (seed, k, j), so a larger data set extends a smaller one of the same seed). When `output_dir`
    already holds the data set of the same arguments, nothing is written again.
    """
    if num_identities < 1 or images_per_identity < 1 or image_size < 16 or seed < 0:
        raise ValueError(f"generate: num_identities={num_identities}, images_per_identity={images_per_identity}, "
                         f"image_size={image_size}, seed={seed}; expected >= 1, >= 1, >= 16 and >= 0")
    output_dir = Path(output_dir)
    manifest = {"generator": "data.synthetic", "num_identities": num_identities,
                "images_per_identity": images_per_identity, "seed": seed, "image_size": image_size}
    if _check_output_dir(output_dir, manifest):
        log.info("%s already holds this synthetic data set", output_dir)
        return output_dir
    for identity in tqdm(range(num_identities), desc="synthetic identities", unit="id"):
        person = random_identity(np.random.default_rng([seed, identity]))
        folder = output_dir / f"id_{identity:05d}"
        folder.mkdir(parents=True, exist_ok=True)
        for index in range(images_per_identity):
            rng = np.random.default_rng([seed, identity, index])
            view = random_variation(rng)
            image = render(person, view, image_size, rng)
            (folder / f"{index:04d}.jpg").write_bytes(encode_jpeg(image, view.jpeg_quality))
    # Written last: a folder without it is an interrupted run, never mistaken for a complete one.
    (output_dir / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    log.info("wrote %d identities x %d images to %s", num_identities, images_per_identity, output_dir)
    return output_dir


def main(args: Args) -> None:
    generate(args.output_dir, args.num_identities, args.images_per_identity, args.seed, args.image_size)


if __name__ == "__main__":
    run_script(Args, main)
