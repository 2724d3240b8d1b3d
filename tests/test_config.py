"""The shared Args behaviour: typed defaults, strict --key=value overrides, args.json round trip."""

from __future__ import annotations

import json

import pytest

from config import Config


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
