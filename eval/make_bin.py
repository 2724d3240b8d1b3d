"""Identity folder + pairs file -> an InsightFace `.bin` verification set (as lfw.bin, agedb_30.bin, ...).

Run:  python -m eval.make_bin --data_dir=output/aligned --pairs_filepath=output/pairs.txt --output_path=output/my.bin

The `.bin` then serves training validation and eval_ckpt_file.py like the public sets: one file, no folder walk,
images already at the network's size. A file already at `image_size` and in `image_format` is stored byte for byte
(no re-encoding loss); any other is resized (bilinear) and encoded. Pairs with a missing image raise an error
naming them (or, with skip_missing, are left out and counted); pairs with an unreadable image are left out and
counted. The pair order of the pairs file is kept, so the 10 folds stay those of the file.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, NoReturn

import cv2

from common.sizes import image_size_pair
from config import Choices, Config, ImageSize, Range, RequiredPath, run_script
from data.bin_dataset import write_bin
from data.image_io import decode_rgb, decode_to_size
from eval.pairs import load_pair_images

log = logging.getLogger("make_bin")

SUFFIXES_OF_FORMAT = {"jpg": (".jpg", ".jpeg"), "png": (".png",)}


class Args(Config):
    data_dir: RequiredPath = "output/aligned"  # one folder per identity holding its images
    pairs_filepath: RequiredPath = "output/pairs.txt"  # LFW pairs.txt or generate_pairs.py output (see eval/pairs.py)
    output_path: RequiredPath = "output/custom.bin"  # the .bin to write (replaced if it exists)
    image_size: ImageSize = [112, 112]  # [height, width] stored in the .bin (one N: N x N)
    # encoding of images that need re-encoding: "jpg" (as InsightFace's sets) or "png"
    image_format: Annotated[str, Choices(*SUFFIXES_OF_FORMAT)] = "jpg"
    jpeg_quality: Annotated[int, Range(1, 100)] = 95  # JPEG quality (1-100) when image_format is "jpg"
    skip_missing: bool = False  # leave out (and count) pairs whose image files are missing instead of failing


def encode_image(path: Path, image_size: tuple[int, int], image_format: str, jpeg_quality: int) -> bytes:
    """The bytes stored for one image: the file itself when already right, else the resized image re-encoded."""
    encoded = path.read_bytes()
    if path.suffix.lower() in SUFFIXES_OF_FORMAT[image_format] and \
            decode_rgb(encoded, str(path)).shape[:2] == image_size:
        return encoded
    bgr = cv2.cvtColor(decode_to_size(encoded, str(path), image_size), cv2.COLOR_RGB2BGR)
    params = [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality] if image_format == "jpg" else []
    ok, buffer = cv2.imencode(f".{image_format}", bgr, params)
    if not ok:
        raise ValueError(f"{path}: OpenCV could not encode the image as {image_format}")
    return buffer.tobytes()


def main(args: Args) -> Path:
    image_size = image_size_pair(args.image_size)
    pairs = load_pair_images(args.pairs_filepath, args.data_dir,
                             lambda path: encode_image(path, image_size, args.image_format, args.jpeg_quality),
                             args.skip_missing, description="encoding images")
    path = write_bin(args.output_path, pairs.images, pairs.issame.tolist())
    log.info("wrote %d pairs (%d matched) of %s, %d left out, to %s", pairs.num_pairs, int(pairs.issame.sum()),
                args.pairs_filepath, pairs.num_listed - pairs.num_pairs, path)
    return path


def cli() -> NoReturn:
    """The `insightface-make-bin` console script: this script's command line, from any folder."""
    run_script(Args, main)


if __name__ == "__main__":
    cli()
