"""Training augmentation beyond the seed's flip: random resized crop, colour jitter, greyscale, Gaussian blur, cutout.

    augmentation = Augmentation(crop_prob=0.5, colour_prob=0.3, grey_prob=0.1, blur_prob=0.1, cutout_prob=0.2)
    batches = data.dataset(batch_size=32, epoch=epoch, seed=0, augmentation=augmentation)

Each operation is applied to an image with its own probability (0 = off, every default), on uint8 RGB in the numpy
batch reader (OpenCV releases the GIL; tf.data reads several batches in parallel), before normalisation. The set is
the one insightface's arcface_torch DALI reader (resize jitter, blur, HSV, greyscale) and Keras_insightface
(random crop, brightness/contrast/saturation, cutout) offer. The operations run in this order on each image:

1. crop: a region of `crop_area` of the image's area (uniform) and aspect ratio width/height in `crop_aspect`
   (log-uniform), clipped to the image, at a uniform position, resized back to the image size (bilinear);
2. colour: brightness (x * b), contrast ((x - m) * c + m, m the image's mean luma), saturation
   (g + (x - g) * s, g each pixel's luma), in that order, each factor uniform in [1 - strength, 1 + strength],
   clipped to [0, 255] after each step and rounded at the end; a strength of 0 leaves that step out;
3. greyscale: each channel set to the luma 0.299 R + 0.587 G + 0.114 B (ITU-R BT.601, OpenCV's RGB2GRAY);
4. blur: Gaussian of sigma uniform in `blur_sigma` (OpenCV sizes the kernel from sigma; borders reflected);
5. cutout: one rectangle of `cutout_size` times each side, at a uniform position inside the image, filled with
   mid grey 128 (0 after normalisation) or, with `cutout_fill="noise"`, uniform random bytes.

Every draw comes from the batch's generator `numpy.random.default_rng([seed, epoch, batch])` in one fixed order:
first the B flips (`random(B)`, unchanged from the flip-only pipeline), then one `random((len(DRAW_ROWS), B))` block
whose row r is draw DRAW_ROWS[r] for each image of the batch, then the noise of the noisy cutouts, image by image.
The block is drawn whole whatever is switched on, so an operation's draws do not depend on the others' settings,
and a batch is fixed by (seed, epoch, batch) alone: resuming mid-epoch (`skip_batches`) sees the same images.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, fields
from typing import Any, Mapping

import cv2
import numpy as np

log = logging.getLogger(__name__)

# The uniform [0, 1) draws of each image, in the order of the generator's block (one row each).
DRAW_ROWS = ("crop", "crop_area", "crop_aspect", "crop_x", "crop_y",
             "colour", "brightness", "contrast", "saturation",
             "grey", "blur", "blur_sigma", "cutout", "cutout_x", "cutout_y")
# Cutout's "grey" fill: the middle of [0, 255], which normalises to about 0.
CUTOUT_GREY = 128
CUTOUT_FILLS = ("grey", "noise")
# The Args fields of train_nets.py are these fields with this prefix.
ARGS_PREFIX = "aug_"


@dataclass(frozen=True)
class Augmentation:
    """What each operation does and how often (see the module docstring); the defaults leave images unchanged."""

    crop_prob: float = 0.0
    crop_area: tuple[float, float] = (0.5, 1.0)  # fraction of the image's area
    crop_aspect: tuple[float, float] = (0.75, 1.3333)  # width / height: 3/4 to 4/3
    colour_prob: float = 0.0
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2
    grey_prob: float = 0.0
    blur_prob: float = 0.0
    blur_sigma: tuple[float, float] = (0.5, 1.5)  # pixels
    cutout_prob: float = 0.0
    cutout_size: float = 0.3  # fraction of each side
    cutout_fill: str = "grey"

    def __post_init__(self) -> None:
        for name in ("crop_prob", "colour_prob", "grey_prob", "blur_prob", "cutout_prob",
                     "brightness", "contrast", "saturation"):
            self._check(name, 0 <= getattr(self, name) <= 1, "a number in [0, 1]")
        low, high = self._pair("crop_area")
        self._check("crop_area", 0 < low <= high <= 1, "[low, high] with 0 < low <= high <= 1")
        low, high = self._pair("crop_aspect")
        self._check("crop_aspect", 0 < low <= high and math.isfinite(high), "[low, high] with 0 < low <= high")
        low, high = self._pair("blur_sigma")
        self._check("blur_sigma", 0 < low <= high and math.isfinite(high), "[low, high] with 0 < low <= high")
        self._check("cutout_size", 0 < self.cutout_size <= 1, "a fraction of the side in (0, 1]")
        self._check("cutout_fill", self.cutout_fill in CUTOUT_FILLS, f"one of {', '.join(CUTOUT_FILLS)}")

    @classmethod
    def from_args(cls, values: Mapping[str, Any]) -> Augmentation:
        """The augmentation of a run's `aug_<field>` values (train_nets.py Args.to_dict())."""
        return cls(**{item.name: _plain(values[ARGS_PREFIX + item.name]) for item in fields(cls)})

    @property
    def enabled(self) -> bool:
        """Whether any operation can change an image."""
        return any(probability > 0 for probability in
                   (self.crop_prob, self.colour_prob, self.grey_prob, self.blur_prob, self.cutout_prob))

    def apply(self, images: np.ndarray, rng: np.random.Generator) -> None:
        """Augments the uint8 RGB batch `images` [B, H, W, 3] in place with the draws of `rng` (module docstring)."""
        uniform = dict(zip(DRAW_ROWS, rng.random((len(DRAW_ROWS), len(images)))))
        noisy_cutouts = []
        for row, image in enumerate(images):
            draws = {name: float(values[row]) for name, values in uniform.items()}
            if draws["crop"] < self.crop_prob:
                image[:] = self._crop(image, draws)
            if draws["colour"] < self.colour_prob:
                image[:] = self._jitter_colour(image, draws)
            if draws["grey"] < self.grey_prob:
                cv2.cvtColor(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB, dst=image)
            if draws["blur"] < self.blur_prob:
                image[:] = cv2.GaussianBlur(image, (0, 0), _between(self.blur_sigma, draws["blur_sigma"]))
            if draws["cutout"] < self.cutout_prob:
                region = self._cutout_region(image.shape[:2], draws)
                if self.cutout_fill == "grey":
                    image[region] = CUTOUT_GREY
                else:
                    noisy_cutouts.append((row, region))
        for row, region in noisy_cutouts:  # after the block: noise only for the images that draw it
            patch = images[row][region]
            images[row][region] = rng.integers(0, 256, patch.shape, dtype=np.uint8)

    def _crop(self, image: np.ndarray, draws: dict[str, float]) -> np.ndarray:
        height, width = image.shape[:2]
        area = _between(self.crop_area, draws["crop_area"])
        log_low, log_high = math.log(self.crop_aspect[0]), math.log(self.crop_aspect[1])
        aspect = math.exp(log_low + (log_high - log_low) * draws["crop_aspect"])
        crop_width = min(width, max(1, round(width * math.sqrt(area * aspect))))
        crop_height = min(height, max(1, round(height * math.sqrt(area / aspect))))
        left = int(draws["crop_x"] * (width - crop_width + 1))
        top = int(draws["crop_y"] * (height - crop_height + 1))
        region = image[top:top + crop_height, left:left + crop_width]
        return cv2.resize(region, (width, height), interpolation=cv2.INTER_LINEAR)

    def _jitter_colour(self, image: np.ndarray, draws: dict[str, float]) -> np.ndarray:
        # OpenCV's float32 arithmetic: 5-10x numpy's on a face-sized image (addWeighted = a * x + b * y + c).
        pixels = image.astype(np.float32)
        if self.brightness:
            factor = _between((1 - self.brightness, 1 + self.brightness), draws["brightness"])
            pixels = np.clip(cv2.addWeighted(pixels, factor, pixels, 0.0, 0.0), 0, 255)
        if self.contrast:
            mean = float(cv2.cvtColor(pixels, cv2.COLOR_RGB2GRAY).mean())
            factor = _between((1 - self.contrast, 1 + self.contrast), draws["contrast"])
            pixels = np.clip(cv2.addWeighted(pixels, factor, pixels, 0.0, mean * (1 - factor)), 0, 255)
        if self.saturation:
            grey = cv2.cvtColor(cv2.cvtColor(pixels, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)
            factor = _between((1 - self.saturation, 1 + self.saturation), draws["saturation"])
            pixels = np.clip(cv2.addWeighted(pixels, factor, grey, 1 - factor, 0.0), 0, 255)
        return np.rint(pixels).astype(np.uint8)

    def _cutout_region(self, shape: tuple[int, int], draws: dict[str, float]) -> tuple[slice, slice]:
        height, width = shape
        cut_height = max(1, round(self.cutout_size * height))
        cut_width = max(1, round(self.cutout_size * width))
        top = int(draws["cutout_y"] * (height - cut_height + 1))
        left = int(draws["cutout_x"] * (width - cut_width + 1))
        return slice(top, top + cut_height), slice(left, left + cut_width)

    def _pair(self, name: str) -> tuple[float, float]:
        value = getattr(self, name)
        self._check(name, isinstance(value, (tuple, list)) and len(value) == 2, "[low, high]")
        return float(value[0]), float(value[1])

    def _check(self, name: str, ok: bool, expected: str) -> None:
        if not ok:
            raise ValueError(f"augmentation {name}={getattr(self, name)!r} (Args {ARGS_PREFIX}{name}): "
                             f"expected {expected}")


def _between(bounds: tuple[float, float], fraction: float) -> float:
    """The point `fraction` of the way from bounds[0] to bounds[1]."""
    return bounds[0] + (bounds[1] - bounds[0]) * fraction


def _plain(value: Any) -> Any:
    """A list field as the tuple the frozen dataclass holds."""
    return tuple(value) if isinstance(value, list) else value
