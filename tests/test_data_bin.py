"""data.bin_dataset: `.bin` verification sets, loaded with a restricted unpickler."""

from __future__ import annotations

import io
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data.bin_dataset import UnsafePickleError, load_bin, write_bin

CALLS: list[str] = []


def record_call(text: str) -> str:
    """A function a hostile pickle asks to run; it must never be called."""
    CALLS.append(text)
    return text


class RunsFunction:
    def __reduce__(self):
        return record_call, ("ran",)


class RunsShell:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def encode_png(rgb: np.ndarray) -> bytes:
    stream = io.BytesIO()
    Image.fromarray(rgb).save(stream, format="PNG")
    return stream.getvalue()


def encode_jpeg(rgb: np.ndarray) -> bytes:
    stream = io.BytesIO()
    Image.fromarray(rgb).save(stream, format="JPEG", quality=90)
    return stream.getvalue()


def pil_rgb(encoded: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(encoded)).convert("RGB"))


@pytest.fixture(scope="module")
def pairs() -> tuple[list[bytes], list[bool]]:
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (112, 112, 3), dtype=np.uint8) for _ in range(6)]
    encoded = [encode_png(image) if k % 2 else encode_jpeg(image) for k, image in enumerate(images)]
    return encoded, [True, False, True]


def assert_loaded(path: Path, encoded: list[bytes], issame: list[bool]) -> None:
    images, flags = load_bin(path)
    assert images.dtype == np.uint8 and images.shape == (len(encoded), 112, 112, 3)
    assert flags.dtype == bool and flags.tolist() == list(issame)
    for image, data in zip(images, encoded):
        # OpenCV and Pillow decode JPEG with different IDCTs: values may differ by 1-2.
        np.testing.assert_allclose(image.astype(int), pil_rgb(data).astype(int), atol=2)


def test_round_trip(tmp_path, pairs):
    encoded, issame = pairs
    path = write_bin(tmp_path / "custom.bin", encoded, issame)
    assert_loaded(path, encoded, issame)


@pytest.mark.parametrize("protocol", [2, 4, pickle.HIGHEST_PROTOCOL])
def test_reads_insightface_style_pickles(tmp_path, pairs, protocol):
    encoded, issame = pairs
    path = tmp_path / "lfw.bin"
    path.write_bytes(pickle.dumps((encoded, issame), protocol=protocol))  # protocol 2 stores bytes via _codecs.encode
    assert_loaded(path, encoded, issame)


def test_reads_python2_pickle_of_str(tmp_path, pairs):
    """A Python-2 `.bin`: images as BINSTRING ('T') opcodes, which Python 3 reads as bytes with encoding='bytes'."""
    encoded, issame = pairs
    body = b"\x80\x02]q\x00(" + b"".join(b"T" + struct.pack("<I", len(data)) + data for data in encoded) + b"e"
    body += b"]q\x01(" + b"".join(b"\x88" if flag else b"\x89" for flag in issame) + b"e\x86q\x02."
    path = tmp_path / "agedb_30.bin"
    path.write_bytes(body)
    assert_loaded(path, encoded, issame)


@pytest.mark.parametrize("numpy_module", [b"numpy._core.multiarray", b"numpy.core.multiarray"])  # numpy 2 / 1
def test_reads_numpy_issame(tmp_path, pairs, numpy_module):
    encoded, issame = pairs
    path = tmp_path / "np.bin"
    data = pickle.dumps((encoded, np.array(issame)), protocol=2)
    assert b"cnumpy._core.multiarray\n" in data
    path.write_bytes(data.replace(b"cnumpy._core.multiarray\n", b"c" + numpy_module + b"\n"))
    assert_loaded(path, encoded, issame)


def test_resizes_to_image_size(tmp_path, pairs):
    encoded, issame = pairs
    small = encode_png(np.full((50, 60, 3), 77, dtype=np.uint8))
    path = write_bin(tmp_path / "sizes.bin", [small, *encoded[1:]], issame)
    images, _ = load_bin(path, image_size=(112, 112))
    assert images.shape == (6, 112, 112, 3) and (images[0] == 77).all()


def test_function_call_is_refused_and_never_runs(tmp_path, pairs):
    encoded, issame = pairs
    path = tmp_path / "evil.bin"
    path.write_bytes(pickle.dumps((encoded, [RunsFunction(), *issame[1:]]), protocol=2))
    with pytest.raises(UnsafePickleError, match=r"refused to load .*record_call"):
        load_bin(path)
    assert CALLS == []


def test_shell_command_is_refused_and_never_runs(tmp_path, pairs):
    encoded, issame = pairs
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.bin"
    path.write_bytes(pickle.dumps([RunsShell(marker), encoded, issame]))
    with pytest.raises(UnsafePickleError, match=r"refused to load (posix|os)\.system"):
        load_bin(path)
    assert not marker.exists()


def test_codecs_encode_other_than_latin1_is_refused(tmp_path):
    path = tmp_path / "evil.bin"
    # _codecs.encode('x', 'rot13'): allowed name, refused argument.
    path.write_bytes(b"\x80\x02c_codecs\nencode\nq\x00X\x01\x00\x00\x00xX\x05\x00\x00\x00rot13\x86R.")
    with pytest.raises(UnsafePickleError, match="latin-1"):
        load_bin(path)


def test_corrupt_image_is_named(tmp_path, pairs):
    encoded, issame = pairs
    path = tmp_path / "bad.bin"
    path.write_bytes(pickle.dumps(([*encoded[:3], encoded[3][:40], *encoded[4:]], issame)))
    with pytest.raises(ValueError, match="image 3"):
        load_bin(path)


def test_not_a_bin(tmp_path):
    path = tmp_path / "garbage.bin"
    path.write_bytes(b"\x00\x01garbage")
    with pytest.raises(ValueError, match="garbage.bin"):
        load_bin(path)
    path.write_bytes(pickle.dumps(([b"a", b"b", b"c"], [True])))
    with pytest.raises(ValueError, match="3 images for 1 pairs"):
        load_bin(path)
    with pytest.raises(FileNotFoundError):
        load_bin(tmp_path / "missing.bin")


def test_writer_refuses_what_cannot_be_evaluated(tmp_path, pairs):
    encoded, issame = pairs
    with pytest.raises(ValueError, match="2 images per pair"):
        write_bin(tmp_path / "x.bin", encoded[:5], issame)
    with pytest.raises(ValueError, match="image 1"):
        write_bin(tmp_path / "x.bin", [encoded[0], b"not an image", *encoded[2:]], issame)
    assert not (tmp_path / "x.bin").exists()


def test_a_failed_write_keeps_the_earlier_bin_and_leaves_no_temporary_file(tmp_path, pairs, monkeypatch):
    encoded, issame = pairs
    path = write_bin(tmp_path / "set.bin", encoded, issame)
    before = path.read_bytes()

    def disk_full(obj, stream, protocol=None):
        stream.write(b"half a pickle")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pickle, "dump", disk_full)
    with pytest.raises(OSError, match="No space left"):
        write_bin(path, encoded[:2], issame[:1])
    assert [p.name for p in tmp_path.iterdir()] == ["set.bin"] and path.read_bytes() == before


# --- against mxnet 1.9.1 itself (a side venv: tests/side_venv.py, tests/mxnet_writer.py) ---------------------------

@pytest.fixture(scope="module")
def mxnet_bin(tmp_path_factory, pairs, mxnet_files) -> dict:
    """mx.bin / mx_protocol2.bin written as InsightFace's lfw2pack.py does (grey PNG added), ours.bin written by
    write_bin, and what mxnet decoded and loaded."""
    folder = tmp_path_factory.mktemp("mxnet_bin")
    encoded, issame = pairs
    grey = np.random.default_rng(3).integers(0, 256, (112, 112), dtype=np.uint8)
    encoded = [*encoded, encode_png(grey), encode_jpeg(np.dstack([grey] * 3))]
    issame = [*issame, False]
    for number, data in enumerate(encoded):
        (folder / f"image{number}").write_bytes(data)
    ours = write_bin(folder / "ours" / "ours.bin", encoded, issame)
    spec = {"images": [str(folder / f"image{number}") for number in range(len(encoded))], "issame": issame,
            "ours": str(ours)}
    return {"folder": folder, "encoded": encoded, "issame": issame, **mxnet_files("bin", spec, folder)}


def mxnet_pixels(decoded: list) -> np.ndarray:
    return np.stack([np.frombuffer(pixels, dtype=np.uint8).reshape(shape) for shape, pixels in decoded])


@pytest.mark.parametrize("name", ["mx.bin", "mx_protocol2.bin"])
def test_reads_the_bin_insightface_writes_with_the_pixels_mxnet_decodes(mxnet_bin, name):
    images, issame = load_bin(mxnet_bin["folder"] / name, image_size=None)
    assert issame.tolist() == mxnet_bin["issame"]
    np.testing.assert_array_equal(images, mxnet_pixels(mxnet_bin["decoded"]))


def test_insightface_loads_what_write_bin_writes(mxnet_bin):
    loaded = mxnet_bin["ours"]
    assert loaded["issame"] == mxnet_bin["issame"]
    np.testing.assert_array_equal(mxnet_pixels(loaded["decoded"]), mxnet_pixels(mxnet_bin["decoded"]))
