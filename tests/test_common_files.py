"""common.files: a write that fails part-way leaves the earlier file (or folder) exactly as it was and no temporary
file beside it; a finished write replaces it whole."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from common.files import replacing, write_replacing

EARLIER = bytes(range(256)) * 4  # every byte value: a text round trip would change some


@pytest.fixture
def earlier_file(tmp_path: Path) -> Path:
    path = tmp_path / "report.json"
    with open(path, "wb") as stream:  # written without the module under test
        stream.write(EARLIER)
    return path


def test_a_finished_write_replaces_the_file_with_the_new_bytes_and_leaves_nothing_beside_it(earlier_file):
    write_replacing(earlier_file, "é\n")
    assert earlier_file.read_bytes() == b"\xc3\xa9\n"  # UTF-8 of U+00E9
    assert os.listdir(earlier_file.parent) == [earlier_file.name]


def test_a_write_that_raises_part_way_leaves_the_earlier_file_byte_identical_and_no_temporary(earlier_file):
    with pytest.raises(RuntimeError, match="disk full"):
        with replacing(earlier_file) as temporary:
            temporary.write_bytes(b"half a rep")
            raise RuntimeError("disk full")
    assert earlier_file.read_bytes() == EARLIER
    assert os.listdir(earlier_file.parent) == [earlier_file.name]


def test_text_that_cannot_be_encoded_leaves_the_earlier_file_byte_identical_and_no_temporary(earlier_file):
    with pytest.raises(UnicodeEncodeError):
        write_replacing(earlier_file, "valid start " * 1000 + "\udcff")  # a lone surrogate, after text was written
    assert earlier_file.read_bytes() == EARLIER
    assert os.listdir(earlier_file.parent) == [earlier_file.name]


def test_a_temporary_left_by_a_killed_run_is_removed_by_the_next_write(earlier_file):
    (earlier_file.parent / (earlier_file.name + ".tmp")).write_bytes(b"left by a killed run")
    write_replacing(earlier_file, b"new")
    assert earlier_file.read_bytes() == b"new"
    assert os.listdir(earlier_file.parent) == [earlier_file.name]


def _folder(path: Path, files: dict[str, bytes]) -> Path:
    path.mkdir()
    for name, content in files.items():
        (path / name).write_bytes(content)
    return path


def _contents(path: Path) -> dict[str, bytes]:
    return {item.name: item.read_bytes() for item in path.iterdir()}


def test_a_folder_swap_replaces_the_whole_folder(tmp_path):
    model = _folder(tmp_path / "saved_model", {"saved_model.pb": b"old graph", "stale.txt": b"only in the old one"})
    with replacing(model) as temporary:
        _folder(temporary, {"saved_model.pb": b"new graph", "fingerprint.pb": b"new"})
    assert _contents(model) == {"saved_model.pb": b"new graph", "fingerprint.pb": b"new"}
    assert os.listdir(tmp_path) == ["saved_model"]  # neither the temporary nor the previous folder is left


def test_a_folder_swap_that_raises_part_way_leaves_the_earlier_folder_as_it_was(tmp_path):
    model = _folder(tmp_path / "saved_model", {"saved_model.pb": b"old graph"})
    with pytest.raises(KeyboardInterrupt):
        with replacing(model) as temporary:
            _folder(temporary, {"saved_model.pb": b"half"})
            raise KeyboardInterrupt
    assert _contents(model) == {"saved_model.pb": b"old graph"}
    assert os.listdir(tmp_path) == ["saved_model"]
