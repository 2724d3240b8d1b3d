"""Reading one image file as RGB uint8 with numpy/OpenCV: every reader of the project (training batches, evaluation
sets, alignment, .bin packing, export calibration) decodes through `decode_rgb`.

All give 3-channel RGB: grey is replicated and the alpha channel of RGBA is dropped, as the seed's
`decode_*(channels=3)` did. A JPEG's EXIF orientation is applied (a phone photo stored sideways comes out upright).

Hostile input is refused before OpenCV decodes it: the dimensions are read from the header (JPEG, PNG and BMP here;
WebP, TIFF and the other formats by PIL, which reads headers lazily), and an image of more than `MAX_IMAGE_PIXELS`
pixels (a decompression bomb: a 1 MB PNG can declare 10^9 pixels) raises `ImageDecodeError`, as does every other
decode failure (empty, truncated, corrupt, not an image), naming the file.
"""

from __future__ import annotations

import io
import os
import struct
import warnings
from pathlib import Path

import cv2
import numpy as np

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
MAX_PIXELS_ENV = "INSIGHTFACE_TF_MAX_IMAGE_PIXELS"
# Largest width x height decoded: 100 megapixels (a 108-MP phone photo needs the variable) decode to 300 MB of RGB.
# Override with INSIGHTFACE_TF_MAX_IMAGE_PIXELS, or by assigning data.image_io.MAX_IMAGE_PIXELS.
MAX_IMAGE_PIXELS = int(os.environ.get(MAX_PIXELS_ENV, 100_000_000))

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# JPEG start-of-frame markers (they carry the dimensions): C0-CF except DHT (C4), JPG (C8) and DAC (CC).
_JPEG_FRAME_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# JPEG markers without a length field: TEM, RST0-7, SOI, EOI.
_JPEG_STANDALONE_MARKERS = frozenset([0x01, *range(0xD0, 0xDA)])
_EXIF_ORIENTATION_TAG = 0x0112


class ImageDecodeError(ValueError):
    """An image that cannot or must not be decoded (corrupt, truncated, unknown format, over the pixel limit); the
    message names its file. A ValueError, so callers that skip bad samples and count them catch it as such."""


def _png_size(data: memoryview) -> tuple[int, int]:
    if len(data) < 24 or bytes(data[12:16]) != b"IHDR":
        raise ValueError("truncated PNG header (no IHDR chunk)")
    return struct.unpack_from(">II", data, 16)


def _bmp_size(data: memoryview) -> tuple[int, int]:
    if len(data) < 26:
        raise ValueError("truncated BMP header")
    if struct.unpack_from("<I", data, 14)[0] == 12:  # OS/2 BITMAPCOREHEADER: 16-bit sizes
        return struct.unpack_from("<HH", data, 18)
    width, height = struct.unpack_from("<ii", data, 18)
    return abs(width), abs(height)  # a negative height marks a top-down bitmap


def _exif_orientation(segment: memoryview) -> int:
    """The orientation (1..8) in a JPEG APP1 segment's payload; 1 (as stored) when it has none or is malformed."""
    if bytes(segment[:6]) != b"Exif\0\0" or len(segment) < 14:
        return 1
    tiff = segment[6:]
    order = {b"II": "<", b"MM": ">"}.get(bytes(tiff[:2]))
    if order is None:
        return 1
    ifd = struct.unpack_from(order + "I", tiff, 4)[0]
    if ifd + 2 > len(tiff):
        return 1
    count = struct.unpack_from(order + "H", tiff, ifd)[0]
    for entry in range(ifd + 2, min(ifd + 2 + 12 * count, len(tiff) - 11), 12):
        tag, kind = struct.unpack_from(order + "HH", tiff, entry)
        if tag == _EXIF_ORIENTATION_TAG and kind == 3:  # SHORT
            value = struct.unpack_from(order + "H", tiff, entry + 8)[0]
            return value if 1 <= value <= 8 else 1
    return 1


def _jpeg_header(data: memoryview) -> tuple[int, int, int]:
    """(width, height, EXIF orientation) from the markers before the first start-of-frame."""
    orientation = 1
    offset = 2
    while offset + 4 <= len(data):
        if data[offset] != 0xFF:
            raise ValueError(f"corrupt JPEG: no marker at offset {offset}")
        marker = data[offset + 1]
        if marker == 0xFF:  # fill byte
            offset += 1
            continue
        if marker in _JPEG_STANDALONE_MARKERS:
            offset += 2
            continue
        length = struct.unpack_from(">H", data, offset + 2)[0]
        if marker in _JPEG_FRAME_MARKERS:
            if offset + 9 > len(data):
                break
            height, width = struct.unpack_from(">HH", data, offset + 5)
            return width, height, orientation
        if marker == 0xDA:  # start of scan before any frame header
            raise ValueError("corrupt JPEG: image data before the frame header")
        if marker == 0xE1 and orientation == 1:
            try:
                orientation = _exif_orientation(data[offset + 4:offset + 2 + length])
            except struct.error:  # a damaged EXIF block does not make the picture unreadable
                orientation = 1
        offset += 2 + length
    raise ValueError("truncated JPEG header (no frame header)")


def image_header(encoded: bytes | bytearray | memoryview) -> tuple[str, int, int, int]:
    """(format, width, height, EXIF orientation 1..8) of encoded image bytes, read from the header only: JPEG, PNG
    and BMP by this module, other formats (WebP, TIFF, ...) by PIL.

    Raises ValueError when the bytes are no image format known to PIL or the header is truncated.
    """
    data = memoryview(encoded).cast("B")
    if bytes(data[:2]) == b"\xff\xd8":
        return ("JPEG", *_jpeg_header(data))
    if bytes(data[:8]) == _PNG_SIGNATURE:
        return ("PNG", *_png_size(data), 1)
    if bytes(data[:2]) == b"BM":
        return ("BMP", *_bmp_size(data), 1)
    if len(data) == 0:
        raise ValueError("empty (0 bytes)")
    return _other_format_header(data)


def _other_format_header(data: memoryview) -> tuple[str, int, int, int]:
    """(format, width, height, 1) of another format OpenCV decodes (WebP, TIFF, ...), from PIL's lazy header read:
    `Image.open` parses the header and decodes no pixel."""
    from PIL import Image, UnidentifiedImageError

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit is applied by the caller
        try:
            with Image.open(io.BytesIO(bytes(data))) as image:
                return (str(image.format), *image.size, 1)
        except Image.DecompressionBombError as err:
            raise ValueError(f"the header declares too many pixels (a decompression bomb?): {err}") from None
        except (UnidentifiedImageError, OSError, SyntaxError):
            raise ValueError(f"not an image format OpenCV reads (starts with {bytes(data[:8])!r})") from None


def check_header(encoded: bytes | bytearray | memoryview, source: str = "<bytes>",
                 max_pixels: int | None = None) -> tuple[str, int, int, int]:
    """(format, width, height, EXIF orientation) of an image that may be decoded; ImageDecodeError naming `source`
    when its header is unreadable, declares no pixel or more than `max_pixels` (default: MAX_IMAGE_PIXELS)."""
    limit = MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    try:
        header = image_header(encoded)
    except (ValueError, struct.error) as err:
        raise ImageDecodeError(f"{source}: not a decodable image: {err}") from None
    width, height = header[1], header[2]
    if width == 0 or height == 0:
        raise ImageDecodeError(f"{source}: the header declares an empty {width}x{height} image")
    if width * height > limit:
        raise ImageDecodeError(f"{source}: the header declares {width}x{height} = {width * height:,} pixels, over "
                               f"the limit of {limit:,} (a decompression bomb?); raise {MAX_PIXELS_ENV} to read it")
    return header


def _apply_orientation(image: np.ndarray, orientation: int) -> np.ndarray:
    """The image as EXIF orientation `orientation` says it is to be shown (the inverse of how it was stored)."""
    oriented = {
        2: lambda a: a[:, ::-1],  # mirrored
        3: lambda a: a[::-1, ::-1],  # rotated 180
        4: lambda a: a[::-1],  # flipped top-bottom
        5: lambda a: a.swapaxes(0, 1),  # transposed
        6: lambda a: np.rot90(a, -1),  # stored rotated 90 counter-clockwise: turn it clockwise
        7: lambda a: a.swapaxes(0, 1)[::-1, ::-1],  # transverse
        8: lambda a: np.rot90(a, 1),
    }.get(orientation)
    return image if oriented is None else np.ascontiguousarray(oriented(image))


def decode_rgb(encoded: bytes, source: str = "<bytes>", max_pixels: int | None = None) -> np.ndarray:
    """Decodes encoded image bytes to RGB uint8 [H, W, 3], EXIF orientation applied (JPEG).

    Raises ImageDecodeError (a ValueError) naming `source` when they are not a decodable image or declare more than
    `max_pixels` (default: MAX_IMAGE_PIXELS) pixels; the size is checked before anything is decoded.
    """
    orientation = check_header(encoded, source, max_pixels)[3]
    try:
        array = cv2.imdecode(np.frombuffer(encoded, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error as err:
        raise ImageDecodeError(f"{source}: OpenCV cannot decode it: {str(err).strip().splitlines()[-1]}") from None
    if array is None or array.size == 0:
        raise ImageDecodeError(f"{source}: not a decodable image (corrupt or truncated)")
    if array.dtype != np.uint8:
        # 16-bit PNGs: keep the 8 most significant bits.
        array = (array >> 8).astype(np.uint8) if array.dtype == np.uint16 else array.astype(np.uint8)
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    elif array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    else:
        array = cv2.cvtColor(array[:, :, :3], cv2.COLOR_BGR2RGB)
    return _apply_orientation(array, orientation)


def decode_to_size(encoded: bytes, source: str, image_size: tuple[int, int] | None) -> np.ndarray:
    """Decodes encoded image bytes to RGB uint8 [H, W, 3], resized (bilinear) to `image_size` = (height, width) when
    given and different; ImageDecodeError naming `source` when undecodable (see `decode_rgb`)."""
    image = decode_rgb(encoded, source)
    if image_size is not None and image.shape[:2] != tuple(image_size):
        height, width = image_size
        image = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
    return image


def read_rgb(path: str | Path, image_size: tuple[int, int] | None = None) -> np.ndarray:
    """Reads an image file as RGB uint8 [H, W, 3], resized (bilinear) to `image_size` = (height, width) if given.

    Raises FileNotFoundError for a missing file, OSError naming it for an unreadable one and ImageDecodeError (a
    ValueError) naming it for one that is not a decodable image.
    """
    path = Path(path)
    try:
        encoded = path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"image file not found: {path}") from None
    except OSError as err:  # a folder, a symlink loop, no permission
        raise OSError(f"{path}: cannot read the image file ({err.strerror or err})") from None
    return decode_to_size(encoded, str(path), image_size)
