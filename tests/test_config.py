"""The shared Args behaviour: typed defaults, strict --key=value overrides, args.json round trip."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

from typing import Annotated

import pytest

from config import (Choices, Config, ImageSize, ImageSizeOrNetwork, Length, NonNegativeInt, OptionalPath, PositiveInt,
                    Range, RequiredPath, help_text)

REPO = Path(__file__).resolve().parents[1]


class Args(Config):
    net_depth: int = 50  # depth
    lr: float = 0.1  # learning rate
    use_flip: bool = True  # a flag
    name: str = "run"  # a string
    lr_steps: list[int] = [40000, 60000]  # a list
    image_size: list[int] = [112, 112]
    restore_path: str | None = None  # optional


class ChildArgs(Args):
    num_gpus: int = 2  # added by a subclass


def test_defaults_are_copied_per_instance():
    a, b = Args(), Args()
    a.lr_steps.append(1)
    assert b.lr_steps == [40000, 60000]
    assert Args.lr_steps == [40000, 60000]


def test_cli_parses_each_type():
    args = Args.from_cli(["--net_depth=100", "--lr=0.5", "--use_flip=false", "--name=my run",
                          "--lr_steps=[1, 2, 3]", "--image_size=96,96", "--restore_path=/x/y.ckpt"])
    assert args.net_depth == 100 and args.lr == 0.5 and args.use_flip is False
    assert args.name == "my run" and args.lr_steps == [1, 2, 3] and args.image_size == [96, 96]
    assert args.restore_path == "/x/y.ckpt"
    assert Args.from_cli(["--restore_path=None"]).restore_path is None
    assert Args.from_cli(["--lr_steps=16"]).lr_steps == [16]
    assert isinstance(Args.from_cli(["--lr=1"]).lr, float)


@pytest.mark.parametrize("argv, fragments", [
    (["--net_depht=50"], ["net_depht", "50", "net_depth"]),
    (["--net_depth=fifty"], ["net_depth", "fifty", "int"]),
    (["--net_depth=5.5"], ["net_depth", "5.5", "int"]),
    (["--use_flip=maybe"], ["use_flip", "maybe", "bool"]),
    (["--lr_steps=[1, 'a']"], ["lr_steps", "list[int]"]),
    (["net_depth=50"], ["--key=value", "net_depth=50"]),
])
def test_cli_errors_name_key_value_and_type(argv, fragments):
    with pytest.raises(ValueError) as err:
        Args.from_cli(argv)
    for fragment in fragments:
        assert fragment in str(err.value)


def test_bool_is_not_an_int_and_int_is_not_a_bool():
    with pytest.raises(ValueError):
        Args(net_depth=True)
    with pytest.raises(ValueError):
        Args(use_flip=1)


def test_save_and_load_round_trip(tmp_path):
    args = ChildArgs.from_cli(["--num_gpus=4", "--lr_steps=[7]"])
    path = args.save(tmp_path / "out" / "args.json")
    assert json.loads(path.read_text())["num_gpus"] == 4
    assert ChildArgs.load(path) == args
    # A base-class script reads a subclass's args.json when asked to ignore the extra keys.
    assert Args.load(path, strict=False).lr_steps == [7]
    with pytest.raises(ValueError, match="num_gpus"):
        Args.load(path)


def test_load_reports_the_file_on_bad_content(tmp_path):
    bad = tmp_path / "args.json"
    bad.write_text('{"net_depth": "fifty"}')
    with pytest.raises(ValueError, match="args.json.*net_depth"):
        Args.load(bad)
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="args.json"):
        Args.load(bad)


def test_subclass_inherits_fields_in_order():
    assert list(ChildArgs.fields())[:2] == ["net_depth", "lr"]
    assert list(ChildArgs.fields())[-1] == "num_gpus"


# ------------------------------------------------------------------------- list[str] items, image sizes, --help


class ScriptArgs(Config):
    ckpt_index_list: list[str] = ["10000"]  # checkpoint suffixes
    image_size: ImageSize = [112, 112]  # a square or [height, width]
    eval_size: ImageSizeOrNetwork = []  # [] = the network's size
    weights: list[float] = [1.0]


@pytest.mark.parametrize("text, expected", [
    ("[10000,20000]", ["10000", "20000"]), ("100,200", ["100", "200"]), ("[100]", ["100"]), ("100", ["100"]),
    ("[]", []), ("[710000.ckpt]", ["710000.ckpt"]), ("[ lfw , cfp_fp ]", ["lfw", "cfp_fp"]),
    ("['lfw','agedb_30']", ["lfw", "agedb_30"]), ("['a,b', c]", ["a,b", "c"]), ("[0.50]", ["0.50"]),
])
def test_list_of_str_takes_items_as_written(text, expected):
    assert ScriptArgs.from_cli([f"--ckpt_index_list={text}"]).ckpt_index_list == expected


def test_list_of_float_items_are_numbers():
    assert ScriptArgs.from_cli(["--weights=[0.5,2]"]).weights == [0.5, 2.0]
    assert ScriptArgs.from_cli(["--weights=0.25"]).weights == [0.25]
    with pytest.raises(ValueError, match="weights"):
        ScriptArgs.from_cli(["--weights=[0.5,x]"])


@pytest.mark.parametrize("value, expected", [(48, [48, 48]), ([48], [48, 48]), ([112, 96], [112, 96])])
def test_image_size_one_value_is_a_square(value, expected):
    assert ScriptArgs(image_size=value).image_size == expected
    assert ScriptArgs(eval_size=value).eval_size == expected


@pytest.mark.parametrize("value", [0, -3, [0, 5], [1, 2, 3], [], "48", 48.0, True, [True, 2]])
def test_image_size_rejects_anything_but_one_or_two_positive_ints(value):
    with pytest.raises(ValueError, match="image_size"):
        ScriptArgs(image_size=value)


def test_image_size_or_network_takes_the_empty_list_and_round_trips(tmp_path):
    assert ScriptArgs.from_cli(["--eval_size=[]"]).eval_size == []
    args = ScriptArgs.from_cli(["--image_size=64", "--eval_size=[96,80]"])
    assert ScriptArgs.load(args.save(tmp_path / "args.json")) == args
    assert json.loads((tmp_path / "args.json").read_text())["image_size"] == [64, 64]


def test_help_text_has_each_fields_type_default_and_comment():
    text = help_text(ChildArgs)
    rows = {line.split()[0]: line for line in text.splitlines() if line.startswith("  --")}
    assert set(rows) == {f"--{key}" for key in ChildArgs.fields()} | {"--debug", "--help"}
    assert "int" in rows["--net_depth"] and " 50 " in rows["--net_depth"] and "depth" in rows["--net_depth"]
    assert "[40000,60000]" in rows["--lr_steps"] and "a list" in rows["--lr_steps"]
    assert "added by a subclass" in rows["--num_gpus"] and "optional" in rows["--restore_path"]


# ---------------------------------------------------------------------------------- run_script, in a subprocess

RUN = """
import os, sys
from config import Config, run_script
class Args(Config):
    steps: int = 1  # steps
def main(args):
    print("TF_CPP_MIN_LOG_LEVEL=" + os.environ.get("TF_CPP_MIN_LOG_LEVEL", "unset"), flush=True)
    if args.steps == 7:
        raise FileNotFoundError("no such dataset: /data/x")
    if args.steps == 8:
        raise KeyboardInterrupt
    if args.steps == 9:
        raise RuntimeError("a bug")
    return args.steps
run_script(Args, main, sys.argv[1:])
"""


def _run_script(*argv: str, **env: str) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "INSIGHTFACE_TF_DEBUG")}
    return subprocess.run([sys.executable, "-c", RUN, *argv], cwd=REPO, env={**environment, **env},
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("argv, status, message", [
    (["--steps=0"], 0, None), (["--steps=3"], 3, None),  # main's int result is the exit status (bench/run_all.py)
    (["--steps=x"], 2, "steps='x' is not a valid int"), (["--stpes=1"], 2, "unknown key 'stpes'"),
    (["--steps=7"], 1, "FileNotFoundError: no such dataset: /data/x"), (["--steps=8"], 1, "KeyboardInterrupt"),
])
def test_run_script_exit_status_and_one_line(argv, status, message):
    result = _run_script(*argv)
    assert result.returncode == status, result.stderr
    assert "Traceback" not in result.stderr
    if message is not None:
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], result.stderr


def test_run_script_keeps_the_traceback_of_a_bug_and_with_debug():
    assert "Traceback" in _run_script("--steps=9").stderr
    assert "Traceback" in _run_script("--steps=7", "--debug").stderr
    assert "Traceback" in _run_script("--steps=7", INSIGHTFACE_TF_DEBUG="1").stderr


def test_run_script_quiets_tensorflow_unless_the_user_chose():
    assert "TF_CPP_MIN_LOG_LEVEL=3" in _run_script().stdout
    assert "TF_CPP_MIN_LOG_LEVEL=1" in _run_script(TF_CPP_MIN_LOG_LEVEL="1").stdout
    assert "TF_CPP_MIN_LOG_LEVEL=unset" in _run_script("--debug").stdout


# ---------------------------------------------------------------------------- declared ranges, choices, paths


class RuledArgs(Config):
    steps: PositiveInt = 1  # steps
    interval: NonNegativeInt = 0  # 0 = never
    rate: Annotated[float, Range(0, 1, high_open=True)] = 0.5
    seed: Annotated[int, Range(0, 2**32 - 1)] = 3
    norm: Annotated[str, Choices("bn", "gn")] = "bn"
    lrs: Annotated[list[float], Range(0, low_open=True), Length(1)] = [0.1]
    scale: Annotated[float, Range(0, low_open=True)] | None = None
    out: RequiredPath = "out"
    restore: OptionalPath = ""
    names: list[RequiredPath] = []
    backbone: Annotated[str, Choices("", names=lambda: ["ResNet50"], ignore_case=True)] = ""


@pytest.mark.parametrize("key, value", [
    ("steps", 0), ("steps", -1), ("interval", -1), ("rate", 1.0), ("rate", -0.1), ("rate", float("nan")),
    ("seed", 2**32), ("norm", "BN"), ("norm", ""), ("lrs", []), ("lrs", [0.1, 0.0]), ("lrs", [float("inf")]),
    ("scale", 0.0), ("scale", float("-inf")), ("out", ""), ("out", "a\0b"), ("restore", "a\0b"), ("names", [""]),
    ("backbone", "resnet51"),
])
def test_a_value_outside_its_declared_rule_is_refused_naming_key_value_and_rule(key, value):
    with pytest.raises(ValueError) as err:
        RuledArgs(**{key: value})
    assert f"Args: {key}={value!r} is not a valid" in str(err.value) and "(expected " in str(err.value)


@pytest.mark.parametrize("key, value", [
    ("steps", 1), ("interval", 0), ("rate", 0.0), ("rate", 0.999), ("seed", 2**32 - 1), ("norm", "gn"),
    ("lrs", [1e-9, 5.0]), ("scale", None), ("scale", 64.0), ("restore", ""), ("names", ["lfw", "cfp_fp"]),
    ("backbone", "resnet50"), ("backbone", "ResNet50"),
])
def test_a_value_inside_its_declared_rule_is_kept(key, value):
    assert getattr(RuledArgs(**{key: value}), key) == value


def test_the_command_line_and_args_json_apply_the_same_rules(tmp_path):
    with pytest.raises(ValueError, match=r"steps='0' is not a valid int \(expected >= 1\)"):
        RuledArgs.from_cli(["--steps=0"])
    path = RuledArgs().save(tmp_path / "args.json")
    path.write_text(path.read_text().replace('"norm": "bn"', '"norm": "ln"'))
    with pytest.raises(ValueError, match=rf"^{path}: Args: norm='ln' is not a valid str \(expected one of bn, gn\)$"):
        RuledArgs.load(path)


def test_a_required_path_left_empty_is_refused_and_a_given_bad_value_is_named_first():
    class Needs(Config):
        input_dir: RequiredPath = ""  # required
        steps: PositiveInt = 1

    with pytest.raises(ValueError, match="input_dir=''"):
        Needs()
    with pytest.raises(ValueError, match="steps='0'"):
        Needs.from_cli(["--steps=0"])
    assert Needs.from_cli(["--input_dir=faces"]).input_dir == "faces"


def test_help_shows_what_each_field_allows():
    rows = {line.split()[0]: line for line in help_text(RuledArgs).splitlines() if line.startswith("  --")}
    assert rows["--steps"].endswith("steps [allowed: >= 1]")
    assert rows["--interval"].endswith("0 = never [allowed: >= 0]")
    assert "[allowed: >= 0 and < 1]" in rows["--rate"] and "<= 4294967295" in rows["--seed"]
    assert "[allowed: one of bn, gn]" in rows["--norm"] and "[allowed: > 0; 1 or more items]" in rows["--lrs"]
    assert "[allowed: > 0, or None]" in rows["--scale"] and "[allowed: a non-empty path]" in rows["--out"]


# ------------------------------------------------------------------------------------------------ renamed fields
class _Renamed(Config):
    RENAMED = {"eval_datasets": "eval_bins"}

    eval_bins: list[str] = []
    seed: int = 1


def test_an_earlier_field_name_is_accepted_everywhere_a_name_is_given(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="config.fields"):
        from_cli = _Renamed.from_cli(["--eval_datasets=[lfw,cfp_fp]"])
    assert from_cli.eval_bins == ["lfw", "cfp_fp"] and "eval_datasets is now called eval_bins" in caplog.text
    assert _Renamed(eval_datasets=["lfw"]).eval_bins == ["lfw"]
    (tmp_path / "args.json").write_text(json.dumps({"eval_datasets": ["agedb_30"], "seed": 4}))
    loaded = _Renamed.load(tmp_path / "args.json")
    assert (loaded.eval_bins, loaded.seed) == (["agedb_30"], 4)
    assert "eval_datasets" not in loaded.to_dict()  # saved under the field's name only


def test_a_field_given_under_both_names_is_refused():
    assert _Renamed.from_cli(["--eval_bins=[lfw]", "--eval_bins=[cfp_fp]"]).eval_bins == ["cfp_fp"]  # the last wins
    with pytest.raises(ValueError, match="eval_bins is given twice, as --eval_bins and as --eval_datasets"):
        _Renamed.from_cli(["--eval_bins=[lfw]", "--eval_datasets=[cfp_fp]"])
    with pytest.raises(ValueError, match="eval_datasets .* and eval_bins are both given"):
        _Renamed(eval_bins=["lfw"], eval_datasets=["cfp_fp"])


def test_the_scripts_take_the_seed_names_of_renamed_fields():
    import eval_ckpt_file
    import train_nets

    assert train_nets.Args.from_cli(["--eval_datasets=[lfw]"]).eval_bins == ["lfw"]
    args = eval_ckpt_file.Args.from_cli(["--eval_datasets=[lfw]", "--nrof_folds=5"])
    assert (args.eval_bins, args.num_folds) == (["lfw"], 5)
