"""eval.pairs (pairs files: LFW and explicit formats, paths, errors, writer) and eval.make_bin."""

from __future__ import annotations

import logging
import os
import pickle

import cv2
import numpy as np
import pytest

from eval.make_bin import Args as MakeBinArgs
from eval.make_bin import main as make_bin
from eval.pairs import Pair, read_pairs, resolve_pair_paths, write_pairs


def write_image(path, seed, size=(12, 10)):
    """A small random colour image written with OpenCV (BGR on disk); returns it as RGB."""
    rgb = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), rgb[:, :, ::-1])
    return rgb


# --- The real LFW pairs.txt ----------------------------------------------------------------------------------------

def test_reads_the_real_lfw_pairs_file(lfw_pairs):
    lines = lfw_pairs.read_text().splitlines()
    pairs_file = read_pairs(lfw_pairs)
    assert (pairs_file.num_folds, pairs_file.pairs_per_fold) == (10, 300)
    assert len(pairs_file.pairs) == 6000 == len(lines) - 1
    for line, pair in zip(lines[1:], pairs_file.pairs):
        fields = line.split("\t")
        expected = (fields[0], int(fields[1]), fields[0], int(fields[2])) if len(fields) == 3 else \
            (fields[0], int(fields[1]), fields[2], int(fields[3]))
        assert (pair.name1, pair.image1, pair.name2, pair.image2) == expected
    assert pairs_file.pairs[0] == Pair("Abel_Pacheco", 1, "Abel_Pacheco", 4)
    # The official layout: each block of 600 lines = 300 matched, then 300 mismatched.
    np.testing.assert_array_equal(pairs_file.issame, np.tile(np.r_[np.ones(300, bool), np.zeros(300, bool)], 10))


def test_lfw_numbered_images_resolve_to_name_0001_with_jpg_or_png(lfw_pairs, tmp_path):
    lines = lfw_pairs.read_text().splitlines()
    subset = lines[1:21] + lines[301:321]  # 20 matched and 20 mismatched lines of fold 1
    (tmp_path / "pairs.txt").write_text("\n".join(["1\t20", *subset]) + "\n")
    written = {}  # (name, number) -> the file written for it, alternately .jpg and .png
    expected_paths = []
    for line in subset:
        fields = line.split("\t")
        images = [(fields[0], fields[1]), (fields[0], fields[2])] if len(fields) == 3 else \
            [(fields[0], fields[1]), (fields[2], fields[3])]
        for name, number in images:
            if (name, number) not in written:
                extension = ".png" if len(written) % 2 else ".jpg"
                written[(name, number)] = tmp_path / "lfw" / name / f"{name}_{int(number):04d}{extension}"
                write_image(written[(name, number)], seed=len(written))
            expected_paths.append(written[(name, number)])
    resolved = resolve_pair_paths(read_pairs(tmp_path / "pairs.txt").pairs, tmp_path / "lfw")
    assert resolved.paths == expected_paths
    np.testing.assert_array_equal(resolved.issame, np.r_[np.ones(20, bool), np.zeros(20, bool)])
    assert resolved.num_skipped == 0


# --- The fork's explicit format ----------------------------------------------------------------------------------

def test_explicit_file_names_without_header_keep_the_first_pair(tmp_path):
    (tmp_path / "pairs.txt").write_text(
        "ALL VIS_1\ta 1.png\tb.png\n"
        "ALL VIS_1\ta 1.png\tALL VIS_2\tc.png\n"
        "\n"
        "ALL VIS_2\tc.png\td.jpg\n")
    pairs_file = read_pairs(tmp_path / "pairs.txt")
    assert pairs_file.num_folds is None
    assert pairs_file.pairs == [Pair("ALL VIS_1", "a 1.png", "ALL VIS_1", "b.png"),
                                Pair("ALL VIS_1", "a 1.png", "ALL VIS_2", "c.png"),
                                Pair("ALL VIS_2", "c.png", "ALL VIS_2", "d.jpg")]
    for name, file in [("ALL VIS_1", "a 1.png"), ("ALL VIS_1", "b.png"), ("ALL VIS_2", "c.png"),
                       ("ALL VIS_2", "d.jpg")]:
        write_image(tmp_path / "data" / name / file, seed=len(file))
    resolved = resolve_pair_paths(pairs_file.pairs, tmp_path / "data")
    assert [p.relative_to(tmp_path / "data").as_posix() for p in resolved.paths] == [
        "ALL VIS_1/a 1.png", "ALL VIS_1/b.png", "ALL VIS_1/a 1.png", "ALL VIS_2/c.png", "ALL VIS_2/c.png",
        "ALL VIS_2/d.jpg"]
    assert resolved.issame.tolist() == [True, False, True]


def test_whitespace_separated_lines_are_read_like_facenet(tmp_path):
    (tmp_path / "pairs.txt").write_text("2 1\nAnn 1 2\nAnn 3 Bob 1\nCid 1 2\nCid 2 Dan 4\n")
    pairs_file = read_pairs(tmp_path / "pairs.txt")
    assert (pairs_file.num_folds, pairs_file.pairs_per_fold) == (2, 1)
    assert pairs_file.pairs[1] == Pair("Ann", 3, "Bob", 1)


# --- Errors ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("bad_line, reason", [
    ("Ann\t1\t2\t3\t4", "found 5"),
    ("Ann\t1\t\tBob\t2", "empty field"),  # VictorZhang's generator: a trailing or doubled tab
    ("Ann\t1\tAnn\t2", "same identity 'Ann' twice"),
    ("Ann", "found 1"),
])
def test_a_malformed_line_names_file_line_and_content(tmp_path, bad_line, reason):
    path = tmp_path / "pairs.txt"
    path.write_text(f"10\t300\nAnn\t1\t2\n{bad_line}\n")
    with pytest.raises(ValueError) as error:
        read_pairs(path)
    message = str(error.value)
    assert f"{path}:3:" in message and reason in message and repr(bad_line) in message


def test_missing_images_are_counted_and_listed_or_skipped(tmp_path, caplog):
    (tmp_path / "pairs.txt").write_text("Ann\t1\t2\nAnn\t1\tBob\t1\nAnn\ta.png\tb.png\n")
    write_image(tmp_path / "data" / "Ann" / "Ann_0001.jpg", seed=1)
    write_image(tmp_path / "data" / "Ann" / "Ann_0002.png", seed=2)
    write_image(tmp_path / "data" / "Ann" / "a.png", seed=3)
    pairs = read_pairs(tmp_path / "pairs.txt").pairs
    with pytest.raises(FileNotFoundError) as error:
        resolve_pair_paths(pairs, tmp_path / "data")
    message = str(error.value)
    assert "2 images of 2 of 3 pairs are missing" in message
    assert str(tmp_path / "data" / "Bob" / "Bob_0001.(jpg|jpeg|png|bmp)") in message
    assert str(tmp_path / "data" / "Ann" / "b.png") in message
    with caplog.at_level(logging.WARNING):
        resolved = resolve_pair_paths(pairs, tmp_path / "data", skip_missing=True)
    assert resolved.num_skipped == 2 and resolved.pairs == [pairs[0]]
    assert resolved.paths == [tmp_path / "data" / "Ann" / "Ann_0001.jpg", tmp_path / "data" / "Ann" / "Ann_0002.png"]
    assert "skipped those pairs" in caplog.text


def test_a_missing_pairs_file_or_folder_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="pairs file not found"):
        read_pairs(tmp_path / "nope.txt")
    with pytest.raises(FileNotFoundError, match="dataset folder not found"):
        resolve_pair_paths([Pair("a", 1, "a", 2)], tmp_path / "nope")


def test_header_count_mismatch_repeats_and_self_pairs_are_reported(tmp_path, caplog):
    (tmp_path / "pairs.txt").write_text("2\t300\nAnn\t1\t2\nAnn\t2\t1\nAnn\t3\t3\n")
    with caplog.at_level(logging.WARNING):
        read_pairs(tmp_path / "pairs.txt")
    assert "= 1200 pairs, the file holds 3" in caplog.text
    assert "line 3 repeats line 2" in caplog.text
    assert "1 pairs compare an image with itself (lines [4])" in caplog.text


# --- Writer ------------------------------------------------------------------------------------------------------

def test_written_pairs_read_back_identically(tmp_path):
    pairs = [Pair("Ann", "a.png", "Ann", "b.png"), Pair("Ann", "a.png", "Bob", "c.png"),
             Pair("Cid", 1, "Cid", 2), Pair("Cid", 1, "Dan", 7)]
    path = write_pairs(tmp_path / "out" / "pairs.txt", pairs, num_folds=2, pairs_per_fold=1)
    assert path.read_text() == "2\t1\nAnn\ta.png\tb.png\nAnn\ta.png\tBob\tc.png\nCid\t1\t2\nCid\t1\tDan\t7\n"
    pairs_file = read_pairs(path)
    assert pairs_file.pairs == pairs and (pairs_file.num_folds, pairs_file.pairs_per_fold) == (2, 1)
    # Written again: replaced, not appended to (the seed's generators appended).
    write_pairs(path, pairs, num_folds=2, pairs_per_fold=1)
    assert len(read_pairs(path).pairs) == 4


@pytest.mark.parametrize("pairs, message", [
    ([Pair("An\tn", "a.png", "An\tn", "b.png"), Pair("Ann", "a.png", "Bob", "c.png")], "tab"),
    ([Pair("Ann", "12", "Ann", "b.png"), Pair("Ann", "a.png", "Bob", "c.png")], "all digits"),
    ([Pair("Ann", "a.png", "Bob", "c.png"), Pair("Ann", "a.png", "Ann", "b.png")], "breaks the LFW layout"),
    ([Pair("Ann", "a.png", "Ann", "a.png"), Pair("Ann", "a.png", "Bob", "c.png")], "with itself"),
    ([Pair("Ann", "a.png", "Ann", "b.png")], "need 2 pairs"),
])
def test_writer_refuses_what_the_format_cannot_carry(tmp_path, pairs, message):
    with pytest.raises(ValueError, match=message):
        write_pairs(tmp_path / "pairs.txt", pairs, num_folds=1, pairs_per_fold=1)
    assert not (tmp_path / "pairs.txt").exists()


def test_all_digit_names_are_written_and_read_back_as_names(tmp_path):
    # Identity names are never read as numbers; only image fields are (CASIA-WebFace folders are 0000045, ...).
    pairs = [Pair("0000045", "001.jpg", "0000045", "002.jpg"), Pair("0000045", "001.jpg", "00001", "003.jpg"),
             Pair("00001", 1, "00001", 2), Pair("7", 3, "00001", 4)]
    path = write_pairs(tmp_path / "pairs.txt", pairs, num_folds=2, pairs_per_fold=1)
    assert read_pairs(path).pairs == pairs


def test_writer_refuses_repeated_pairs(tmp_path):
    pairs = [Pair("Ann", "a.png", "Ann", "b.png"), Pair("Ann", "a.png", "Bob", "c.png"),
             Pair("Ann", "b.png", "Ann", "a.png"), Pair("Bob", "c.png", "Ann", "a.png")]
    with pytest.raises(ValueError, match="2 pairs are repeated"):
        write_pairs(tmp_path / "pairs.txt", pairs, num_folds=2, pairs_per_fold=1)


# --- make_bin ----------------------------------------------------------------------------------------------------

def test_make_bin_packs_the_pairs_in_file_order(tmp_path):
    data = tmp_path / "data"
    stored = {("Ann", "a.png"): write_image(data / "Ann" / "a.png", 1, (8, 6)),
              ("Ann", "b.png"): write_image(data / "Ann" / "b.png", 2, (8, 6)),
              ("Bob", "c.png"): write_image(data / "Bob" / "c.png", 3, (8, 6)),
              ("Bob", "d.png"): write_image(data / "Bob" / "d.png", 4, (16, 12))}  # needs resizing
    (data / "Bob" / "e.png").write_bytes(b"not an image")
    (tmp_path / "pairs.txt").write_text("Ann\ta.png\tb.png\nAnn\ta.png\tBob\tc.png\nBob\tc.png\te.png\n"
                                        "Bob\tc.png\td.png\n")
    output = make_bin(MakeBinArgs(data_dir=str(data), pairs_filepath=str(tmp_path / "pairs.txt"),
                                  output_path=str(tmp_path / "set.bin"), image_size=[8, 6], image_format="png"))
    with open(output, "rb") as stream:
        encoded, issame = pickle.load(stream)
    assert list(issame) == [True, False, True]  # the pair with the unreadable e.png is left out
    decoded = [cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1] for b in encoded]
    order = [("Ann", "a.png"), ("Ann", "b.png"), ("Ann", "a.png"), ("Bob", "c.png"), ("Bob", "c.png"),
             ("Bob", "d.png")]
    for image, key in zip(decoded[:5], order[:5]):
        np.testing.assert_array_equal(image, stored[key])  # already 8x6 PNG: stored byte for byte
    assert encoded[0] == (data / "Ann" / "a.png").read_bytes()
    expected_resized = cv2.resize(stored[("Bob", "d.png")], (6, 8), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(decoded[5], expected_resized)  # PNG is lossless


def test_make_bin_jpeg_output_is_readable_by_the_bin_loader(tmp_path):
    from data.bin_dataset import load_bin

    data = tmp_path / "data"
    ramp = np.linspace(0, 255, 16)
    stored = []
    for k, name in enumerate(["Ann", "Ann", "Bob"]):  # smooth images, which JPEG keeps well
        rgb = np.stack(np.broadcast_arrays(ramp[:, None], ramp[None, :], np.full((16, 16), 60.0 * k)), -1)
        stored.append(rgb.astype(np.uint8))
        (data / name).mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(data / name / f"{k}.png"), stored[-1][:, :, ::-1])
    (tmp_path / "pairs.txt").write_text("1\t1\nAnn\t0.png\t1.png\nAnn\t0.png\tBob\t2.png\n")
    output = make_bin(MakeBinArgs(data_dir=str(data), pairs_filepath=str(tmp_path / "pairs.txt"),
                                  output_path=str(tmp_path / "set.bin"), image_size=[16, 16], jpeg_quality=100))
    images, issame = load_bin(output, (16, 16))
    assert images.shape == (4, 16, 16, 3) and issame.tolist() == [True, False]
    for image, k in zip(images, [0, 1, 0, 2]):
        assert np.mean(np.abs(image.astype(int) - stored[k].astype(int))) < 3  # JPEG at quality 100


# --- Hostile pairs files: one line naming file:line, never a read outside the dataset folder -----------------------


@pytest.mark.parametrize("line", [
    "..\t1\t2",  # the folder above the dataset, as an identity
    "Ann\t../../secret/s.png\t1",  # climbs out of the identity folder
    "Ann\t1\tsecret\t..\\..\\secret\\s.png",  # the same with Windows separators
    "Ann\t{outside}\tBob\t1",  # an absolute path as a file name
    "{outside_folder}\t1\t2",  # an absolute path as an identity
    "Ann\tC:\\secret\\s.png\t1",  # a Windows drive
])
def test_a_pairs_file_never_reads_outside_its_dataset_folder(tmp_path, line):
    """Every path in these lines names a real image outside data/: before the check, they resolved and were read."""
    outside = tmp_path / "secret" / "s.png"
    write_image(outside, seed=9)
    write_image(tmp_path / "secret" / "secret_0001.jpg", seed=8)
    write_image(tmp_path / "secret" / "secret_0002.jpg", seed=7)
    for name, number in (("Ann", 1), ("Ann", 2), ("Bob", 1)):
        write_image(tmp_path / "data" / "sub" / name / f"{name}_{number:04d}.jpg", seed=number)
    path = tmp_path / "pairs.txt"
    path.write_text(line.format(outside=outside, outside_folder=tmp_path / "secret") + "\n")
    with pytest.raises(ValueError) as error:
        resolve_pair_paths(read_pairs(path).pairs, tmp_path / "data" / "sub", skip_missing=True)
    assert str(error.value).startswith(f"{path}:1: ") and "outside the dataset folder" in str(error.value)


def test_pairs_built_in_code_are_held_to_the_dataset_folder_too(tmp_path):
    write_image(tmp_path / "secret" / "s.png", seed=1)
    write_image(tmp_path / "data" / "Ann" / "a.png", seed=2)
    with pytest.raises(ValueError, match="outside the dataset folder"):
        resolve_pair_paths([Pair("Ann", "a.png", "Ann", "../../secret/s.png")], tmp_path / "data")
    with pytest.raises(ValueError, match="outside the dataset folder"):
        write_pairs(tmp_path / "pairs.txt", [Pair("..", "a.png", "..", "b.png"), Pair("A", "a.png", "B", "b.png")],
                    num_folds=1, pairs_per_fold=1)


HOSTILE_PAIRS_FILES = {  # content -> what the one-line error says
    "empty": (b"", "no pairs found"),
    "blank lines only": (b"\n \n\t\n", "no pairs found"),
    "binary junk": (bytes(range(256)) * 8, ":2: not UTF-8 text"),
    "NUL bytes": (b"Ann\x001\x002\n", ":1: expected 3 fields"),
    "Latin-1 name": (b"Ann\t1\t2\nAndr\xe9\t1\t2\n", ":2: not UTF-8 text (byte 0xe9)"),
    "header: more folds than pairs": (b"10\t300\nAnn\t1\t2\nAnn\t1\tBob\t1\n", ":1: the header announces 10 folds"),
    "header: 10^20 folds": (b"99999999999999999999\t1\nAnn\t1\t2\n", ":1: the header announces 99999999999999999999"),
    "five fields": (b"Ann\t1\tBob\t2\textra\n", ":1: expected 3 fields"),
    "one identity twice in a mismatched line": (b"Ann\t1\tAnn\t2\n", ":1: a mismatched"),
    "empty field": (b"Ann\t\t2\n", ":1: empty field"),
}


@pytest.mark.parametrize("content, message", HOSTILE_PAIRS_FILES.values(), ids=HOSTILE_PAIRS_FILES.keys())
def test_a_hostile_pairs_file_ends_in_one_line_naming_the_file(tmp_path, content, message):
    path = tmp_path / "pairs.txt"
    path.write_bytes(content)
    with pytest.raises(ValueError) as error:
        read_pairs(path)
    text = str(error.value)
    assert text.startswith(str(path)) and message in text and "\n" not in text, text


def test_a_header_with_more_folds_than_the_readable_pairs_names_the_file(tmp_path):
    """Skipping missing images can leave fewer pairs than the header's folds: one line, not a KFold error."""
    from eval.sets import load_pairs_set

    for name, number in (("Ann", 1), ("Ann", 2)):
        write_image(tmp_path / "data" / name / f"{name}_{number:04d}.jpg", seed=number)
    path = tmp_path / "pairs.txt"
    path.write_text("2\t1\nAnn\t1\t2\nAnn\t1\tBob\t1\n")
    with pytest.raises(ValueError, match=r"pairs.txt: its header announces 2 folds, but only 1 pairs"):
        load_pairs_set(tmp_path / "data", path, image_size=(12, 10), skip_missing=True)


def test_load_pair_images_keeps_the_readable_pairs_in_file_order_and_reads_each_file_once(tmp_path):
    from eval.pairs import load_pair_images

    for name, image in (("Ann", "a.png"), ("Ann", "b.png"), ("Bob", "c.png"), ("Cy", "d.png")):
        write_image(tmp_path / "data" / name / image, seed=len(image))
    path = tmp_path / "pairs.txt"
    path.write_text("2\t1\nAnn\ta.png\tb.png\nAnn\ta.png\tBob\tc.png\nCy\td.png\tBob\tc.png\n"
                    "Bob\tc.png\tAnn\tb.png\n")
    reads = []

    def read(image_path):
        reads.append(image_path)
        if image_path.name == "d.png":
            raise ValueError("unreadable")
        return f"pixels of {image_path.parent.name}/{image_path.name}"

    pairs = load_pair_images(path, tmp_path / "data", read)
    expected = ["Ann/a.png", "Ann/b.png", "Ann/a.png", "Bob/c.png", "Bob/c.png", "Ann/b.png"]
    assert pairs.paths == [tmp_path / "data" / name for name in expected]
    assert pairs.images == [f"pixels of {name}" for name in expected]
    assert pairs.issame.tolist() == [True, False, False] and pairs.num_pairs == 3
    assert pairs.num_folds == 2 and pairs.num_listed == 4
    assert sorted(reads) == sorted(set(reads)) and len(reads) == 4

    path.write_text("1\t4\nAnn\ta.png\tb.png\n")  # a View-1 header: one set, no folds to cross-validate over
    assert load_pair_images(path, tmp_path / "data", read).num_folds is None
    path.write_text("Cy\td.png\tAnn\ta.png\n")
    with pytest.raises(ValueError, match="no pair has two readable images"):
        load_pair_images(path, tmp_path / "data", read)


def test_a_failed_write_keeps_the_earlier_pairs_file_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    path = tmp_path / "pairs.txt"
    path.write_text("the user's file\n")
    pairs = [Pair("Ann", "a.png", "Ann", "b.png"), Pair("Ann", "a.png", "Bob", "c.png")]

    def disk_full(source, target):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", disk_full)  # the last step of every write (common.files)
    with pytest.raises(OSError, match="No space left"):
        write_pairs(path, pairs, num_folds=1, pairs_per_fold=1)
    monkeypatch.undo()
    with pytest.raises(ValueError, match="not UTF-8"):  # a name from undecodable file-name bytes
        write_pairs(path, [Pair("Andr\udce9", "a.png", "Andr\udce9", "b.png"), pairs[1]], num_folds=1,
                    pairs_per_fold=1)
    assert path.read_text() == "the user's file\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pairs.txt"]
