"""Every script's command line, run as a user runs it (a fresh `python ...` process from the repository root):
the README's commands parse, --help, one clear line for a bad value or an expected error, --debug, a single image
size, and TensorFlow's start-up log kept quiet without hiding our own lines."""

from __future__ import annotations

import importlib
import json
import inspect
import os
import re
import shlex
import subprocess
import sys
import typing
from pathlib import Path
from typing import Annotated

import pytest

from config import Choices, Length, Range
from config.fields import _ImageSizeRule, _PathRule, cli_text

REPO = Path(__file__).resolve().parents[1]
# An absl/TSL C++ log record ("I0000 00:00:1796123710.191372    9794 port.cc:153] ...") and absl's pre-init banner.
ABSL_RECORD = re.compile(r"^[IWEF]\d{4} [\d:.]+\s+\d+ [\w.]+:\d+\] ", re.M)
ABSL_BANNER = "All log messages before absl::InitializeLog()"
# Scripts whose import alone (TensorFlow, Keras) takes over ~10 s on a loaded 2-core machine.
HEAVY = {"bench/bench_model.py", "bench/bench_memory.py"}
# Scripts whose --help and bad values load no TensorFlow, Keras, JAX or PyTorch (each costs seconds per run): they
# import those where they are used.
NO_TENSORFLOW_SCRIPTS = ["bench/bench_input_pipeline.py", "bench/bench_partial_fc.py", "bench/bench_peer.py",
                         "bench/gpu_peer.py", "data/mx2tfrecords.py", "training/reshard_head.py"]
HEAVY_PACKAGES = {"tensorflow", "keras", "jax", "torch"}


def _scripts() -> list[str]:
    """Every file of the repository with a `class Args` and a __main__ block, found by reading the files."""
    found = []
    for path in sorted(REPO.rglob("*.py")):
        relative = path.relative_to(REPO)
        if relative.parts[0] in {".venv", "tests", "config"}:
            continue
        text = path.read_text()
        if re.search(r"^class Args\(", text, re.M) and 'if __name__ == "__main__":' in text:
            found.append(relative.as_posix())
    return found


SCRIPTS = _scripts()


def _module(script: str) -> str:
    return script.removesuffix(".py").removesuffix("/__main__").replace("/", ".")


# Scripts inside a package that the README runs by their path all the same: the seed's file name.
RUN_BY_PATH = {"align/align_dataset_mtcnn.py"}


def _command(script: str) -> list[str]:
    """How the README runs it: by path a top-level script, a bench/ script (bench/ is no package) and the seed's
    file names, with -m a module of a package."""
    if "/" not in script or script.startswith("bench/") or script in RUN_BY_PATH:
        return [sys.executable, script]
    return [sys.executable, "-m", _module(script)]


def _run(argv: list[str], env: dict[str, str] | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    environment = {key: value for key, value in os.environ.items()
                   if key not in ("TF_CPP_MIN_LOG_LEVEL", "INSIGHTFACE_TF_DEBUG")}
    return subprocess.run(argv, cwd=REPO, env={**environment, **(env or {})}, capture_output=True, text=True,
                          timeout=timeout)


def _param(script: str):
    return pytest.param(script, marks=pytest.mark.slow) if script in HEAVY else script


def _args_class(script: str):
    if script.startswith("bench/") and str(REPO / "bench") not in sys.path:
        sys.path.append(str(REPO / "bench"))  # bench scripts import their helpers (timing.py) as top-level modules
    return importlib.import_module(script.removesuffix(".py").replace("/", ".")).Args


def _source_comments(args_class) -> dict[str, list[str]]:
    """Field -> its comment lines, read line by line from the files defining the class and its bases: the `# ...`
    lines right above the field (section banners `# --- x ---` aside) and the comment beside it."""
    comments: dict[str, list[str]] = {}
    for klass in reversed(args_class.__mro__):
        if "__annotations__" not in vars(klass) or klass.__module__ == "config":
            continue
        above: list[str] = []
        for line in inspect.getsource(klass).splitlines():
            stripped = line.strip()
            if stripped.startswith("#"):
                above = [] if stripped.startswith("# ---") else [*above, stripped.lstrip("# ")]
                continue
            field = re.match(r"^    (\w+): ", line)
            if field:
                beside = re.search(r"#\s*(.*)$", line)
                comments[field.group(1)] = above + ([beside.group(1).strip()] if beside else [])
            above = []
    return comments


# ------------------------------------------------------------------------------------------ README commands parse


def _readme_commands() -> list[tuple[str, list[str]]]:
    """(script, its --key=value arguments) for every `python <script> ...` in the code blocks and inline code of
    README.md and every docs/*.md page, continuation lines joined."""
    readme = "\n".join(page.read_text() for page in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))])
    blocks = re.findall(r"^```[^\n]*\n(.*?)^```", readme, re.M | re.S)
    snippets = [line for block in blocks for line in block.replace("\\\n", " ").splitlines()]
    snippets += re.findall(r"`([^`\n]*python[^`\n]*)`", readme)
    commands = []
    for snippet in snippets:
        try:
            words = shlex.split(snippet, comments=True)
        except ValueError:
            continue
        for i, word in enumerate(words[:-1]):
            if word.split("/")[-1] not in ("python", "python3"):
                continue
            if words[i + 1] == "-m" and i + 2 < len(words):
                target, rest = next((s for s in SCRIPTS if _module(s) == words[i + 2]), None), words[i + 3:]
            else:
                target, rest = words[i + 1], words[i + 2:]
            if target in SCRIPTS:
                commands.append((target, [w for w in rest if w.startswith("--")]))
    return commands


README_COMMANDS = _readme_commands()


def test_the_readme_has_commands_for_the_main_scripts():
    scripts = {script for script, _ in README_COMMANDS}
    assert {"train_nets.py", "eval_ckpt_file.py", "generate_pairs.py", "export.py", "nets/__main__.py",
            "align/align_dataset_mtcnn.py", "eval/make_bin.py", "data/mx2tfrecords.py"} <= scripts


@pytest.mark.parametrize("script, argv", README_COMMANDS, ids=[" ".join([s, *a])[:80] for s, a in README_COMMANDS])
def test_every_readme_command_parses_with_its_scripts_args(script, argv):
    args_class = _args_class(script)
    args = args_class.from_cli(argv)
    for item in argv:
        key = item[2:].split("=", 1)[0]
        assert hasattr(args, key)


def test_the_readme_eval_example_gives_the_checkpoint_indices_as_strings():
    argv = next(a for s, a in README_COMMANDS if s == "eval_ckpt_file.py" and "--ckpt_index_list=[10000,20000]" in a)
    assert _args_class("eval_ckpt_file.py").from_cli(argv).ckpt_index_list == ["10000", "20000"]


# ------------------------------------------------------------------------------------------------------ --help


@pytest.mark.parametrize("script", [_param(s) for s in SCRIPTS])
def test_help_lists_every_field_with_its_type_default_and_comment(script):
    """Also shows each script's start quiet; for nets/__main__.py that is `python -m nets`, which imports the nets
    package (Keras) before nets/__main__.py: config, imported first by nets/__init__.py, quiets TensorFlow in time."""
    result = _run([*_command(script), "--help"])
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    args_class = _args_class(script)
    comments = _source_comments(args_class)
    rows = {line.split()[0]: line for line in result.stdout.splitlines() if line.startswith("  --")}
    for key, tp in args_class.fields().items():
        assert f"--{key}" in rows, f"--{key} missing from {script} --help"
        row = rows[f"--{key}"]
        assert all(comment in row for comment in comments[key]), (key, comments[key], row)
        default = getattr(args_class, key)
        base = typing.get_args(tp)[0] if typing.get_origin(tp) is Annotated else tp
        if base in (int, float, bool):
            assert f" {base.__name__} " in row and f" {default} " in row, row
        for rule in _rules(tp):
            assert "[allowed: " in row and rule.detail in row, (key, rule.detail, row)
    assert not ABSL_RECORD.search(result.stderr) and ABSL_BANNER not in result.stderr, result.stderr[-2000:]


def _imported_packages(import_log: str) -> set[str]:
    """The top-level packages that `python -X importtime` lists as imported ("import time: self | total | name")."""
    return {line.rsplit("|", 1)[1].strip().split(".")[0] for line in import_log.splitlines()
            if line.startswith("import time:") and line.count("|") == 2}


def _a_refused_argument(script: str) -> str:
    """`--key=value` for the first field of the script with a number the declared rules refuse."""
    args_class = _args_class(script)
    for key, tp in args_class.fields().items():
        numbers = [value for value in _refused_values(tp) if not isinstance(value, str)]
        if numbers:
            return f"--{key}={cli_text(numbers[0])}"
    raise AssertionError(f"{script}: no field with a numeric rule")


@pytest.mark.parametrize("script", NO_TENSORFLOW_SCRIPTS)
def test_help_and_a_bad_value_load_no_tensorflow(script):
    help_run = _run([sys.executable, "-X", "importtime", *_command(script)[1:], "--help"])
    assert help_run.returncode == 0 and "--help" in help_run.stdout, help_run.stderr[-2000:]
    argument = _a_refused_argument(script)
    bad_run = _run([sys.executable, "-X", "importtime", *_command(script)[1:], argument])
    errors = [line for line in bad_run.stderr.splitlines() if not line.startswith("import time:")]
    assert bad_run.returncode == 2 and len(errors) == 1 and argument[2:].split("=")[0] in errors[0], errors
    for run in (help_run, bad_run):
        imported = _imported_packages(run.stderr)
        assert "config" in imported, "no import log: -X importtime did not run"
        assert not imported & HEAVY_PACKAGES, f"{script} {run.args[-1]} imported {imported & HEAVY_PACKAGES}"


def test_dash_h_is_help_too():
    result = _run([sys.executable, "generate_pairs.py", "-h"])
    assert result.returncode == 0 and "--pairs_per_fold" in result.stdout


# ------------------------------------------------------------------------------------------ bad values and errors


@pytest.mark.parametrize("argv, key, value, expected", [
    ([sys.executable, "generate_pairs.py", "--num_folds=ten"], "num_folds", "ten", "int"),
    ([sys.executable, "eval_ckpt_file.py", "--skip_missing=perhaps"], "skip_missing", "perhaps", "bool"),
    ([sys.executable, "align/align_dataset_mtcnn.py", "--thresholds=[0.6,x]"], "thresholds", "[0.6,x]",
     "list[float]"),
    ([sys.executable, "-m", "eval.make_bin", "--image_size=[1,2,3]"], "image_size", "[1,2,3]", "image size"),
    ([sys.executable, "export.py", "--no_such_key=1"], "no_such_key", "1", "known keys"),
])
def test_a_bad_value_is_one_line_naming_key_value_and_type(argv, key, value, expected):
    result = _run(argv)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert key in lines[0] and repr(value) in lines[0] and expected in lines[0], lines[0]


def test_an_expected_error_while_running_is_one_line_and_exit_1(tmp_path):
    result = _run([sys.executable, "generate_pairs.py", f"--data_dir={tmp_path / 'missing'}",
                   f"--pairs_filepath={tmp_path / 'pairs.txt'}"])
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "missing" in lines[0] and "Traceback" not in result.stderr, result.stderr
    assert not (tmp_path / "pairs.txt").exists()


@pytest.mark.parametrize("how", ["option", "environment"])
def test_debug_shows_the_traceback(tmp_path, how):
    argv = [sys.executable, "generate_pairs.py", f"--data_dir={tmp_path / 'missing'}"]
    result = _run(argv + ["--debug"] if how == "option" else argv, env={"INSIGHTFACE_TF_DEBUG": "1"} if
                  how == "environment" else None)
    assert result.returncode != 0
    assert "Traceback" in result.stderr and "missing" in result.stderr


# ----------------------------------------------------------------------------------------------- image sizes


def _image_size_scripts() -> list[str]:
    """The scripts whose image_size is a list [height, width] (not an int side), read from their source."""
    return [script for script in SCRIPTS
            if re.search(r"^    image_size: ImageSize", (REPO / script).read_text(), re.M)
            or "class Args(train_nets.Args)" in (REPO / script).read_text()]


def test_the_scripts_with_a_list_image_size_are_found():
    assert {"train_nets.py", "train_nets_mgpu_new.py", "eval_ckpt_file.py", "nets/__main__.py",
            "eval/make_bin.py"} <= set(_image_size_scripts())


@pytest.mark.parametrize("script", _image_size_scripts())
def test_a_single_image_size_means_a_square(script):
    args_class = _args_class(script)
    assert args_class(image_size=48).image_size == [48, 48]
    assert args_class(image_size=[48]).image_size == [48, 48]
    assert args_class(image_size=[112, 96]).image_size == [112, 96]
    for text in ("48", "[48]", "48,48"):
        assert args_class.from_cli([f"--image_size={text}"]).image_size == [48, 48]
    for bad in ("0", "[48,0]", "[1,2,3]", "-5", "48.5", "big", "[True]"):
        with pytest.raises(ValueError, match="image_size"):
            args_class.from_cli([f"--image_size={bad}"])
    with pytest.raises(ValueError, match="image_size"):
        args_class(image_size=[1, 2, 3])


def test_only_eval_takes_an_empty_image_size_for_the_networks_own():
    assert _args_class("eval_ckpt_file.py").from_cli(["--image_size=[]"]).image_size == []
    assert _args_class("eval_ckpt_file.py")().image_size == []
    with pytest.raises(ValueError, match="image_size"):
        _args_class("train_nets.py").from_cli(["--image_size=[]"])


def test_nets_command_builds_a_square_network_from_one_size():
    result = _run([sys.executable, "-m", "nets", "--net_depth=18", "--image_size=48"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "(None, 48, 48, 3)" in result.stderr


# ------------------------------------------------------------------------------------- TensorFlow's log output


def test_a_tensorflow_log_line_is_printed_once_when_tensorflow_was_imported_first():
    program = ("import tensorflow as tf\nfrom common.logs import setup_logging\nsetup_logging()\n"
               "tf.get_logger().info('Reduce to one device then broadcast')\n"
               "import logging\nlogging.getLogger('train_nets').warning('our own warning')\n")
    result = _run([sys.executable, "-c", program])
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stderr.count("Reduce to one device then broadcast") == 1, result.stderr[-2000:]
    assert result.stderr.count("our own warning") == 1


@pytest.mark.parametrize("how", [{"env": {"TF_CPP_MIN_LOG_LEVEL": "0"}}, {"argv": ["--debug"]}])
def test_tensorflow_start_up_log_is_kept_when_asked_for(how):
    """The help test above shows it hidden by default; a user's TF_CPP_MIN_LOG_LEVEL or --debug keeps it. `python -m
    nets --help` loads TensorFlow (the nets package imports Keras), as few --help runs do."""
    result = _run([sys.executable, "-m", "nets", "--help", *how.get("argv", [])], env=how.get("env"))
    assert result.returncode == 0
    assert ABSL_RECORD.search(result.stderr), result.stderr[-2000:]


@pytest.mark.slow
def test_multi_gpu_run_prints_each_tensorflow_line_once_and_no_cxx_start_up_log(tmp_path):
    from data import synthetic

    faces = synthetic.generate(tmp_path / "faces", num_identities=5, images_per_identity=8, seed=0, image_size=32)
    result = _run([sys.executable, "train_nets_mgpu_new.py", "--net_depth=18", "--image_size=32", "--batch_size=8",
                   "--validate_interval=0", f"--train_dataset_dir={faces}", "--num_gpus=2", "--max_steps=1",
                   "--ckpt_interval=0", f"--ckpt_path={tmp_path}/ckpt", f"--summary_path={tmp_path}/summary",
                   f"--log_file_path={tmp_path}/logs"], timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    reduce_lines = [line for line in result.stderr.replace("\r", "\n").splitlines() if "Reduce to" in line]
    ours = [line for line in reduce_lines if re.search(r"\d{2}:\d{2}:\d{2},\d{3} INFO tensorflow: Reduce to", line)]
    assert reduce_lines and len(ours) == len(reduce_lines), reduce_lines[:4]
    assert "no GPU: running 2 replicas" in result.stderr  # our own warning still shows
    assert not ABSL_RECORD.search(result.stderr) and ABSL_BANNER not in result.stderr


# ------------------------------------------------------------------------- every field declares what it allows


def _rules(tp) -> list:
    """The rules (Range, Choices, Length, path) declared on a field type, at any depth (list items, T | None)."""
    found = list(typing.get_args(tp)[1:]) if typing.get_origin(tp) is Annotated else []
    inner = typing.get_args(tp)[:1] if typing.get_origin(tp) is Annotated else typing.get_args(tp)
    return found + [rule for member in inner for rule in _rules(member)]


def _leaves(tp, rules: tuple = ()) -> list[tuple[type, tuple]]:
    """(scalar type, the rules that cover it) for each int/float/str a field can hold."""
    if typing.get_origin(tp) is Annotated:
        base, *own = typing.get_args(tp)
        return _leaves(base, rules + tuple(own))
    if typing.get_args(tp):
        return [leaf for member in typing.get_args(tp) if member is not type(None) for leaf in _leaves(member, rules)]
    return [(tp, rules)]


ALL_FIELDS = [(script, key) for script in SCRIPTS for key in _args_class(script).fields()]


@pytest.mark.parametrize("script, key", ALL_FIELDS, ids=[f"{s}:{k}" for s, k in ALL_FIELDS])
def test_every_number_has_a_range_and_every_string_its_choices_or_is_a_path(script, key):
    tp = _args_class(script).fields()[key]
    for leaf, rules in _leaves(tp):
        kinds = {type(rule) for rule in rules}
        if leaf in (int, float):
            assert kinds & {Range, Choices, _ImageSizeRule}, f"{script}: {key} ({leaf.__name__}) has no Range"
        elif leaf is str:
            assert kinds & {Choices, _PathRule}, f"{script}: {key} (str) declares neither Choices nor a path type"


def _refused_values(tp) -> list:
    """Values just outside what the rules of `tp` allow, built from the declared bounds (not from the checks)."""
    values = []
    for leaf, rules in _leaves(tp):
        listed = typing.get_origin(typing.get_args(tp)[0] if typing.get_origin(tp) is Annotated else tp) is list
        for rule in rules:
            if isinstance(rule, Range) and rule.low is not None:
                below = rule.low if rule.low_open else (rule.low - 1 if leaf is int else rule.low - 1e-6)
                values.append(leaf(below))
            if isinstance(rule, Range) and rule.high is not None:
                above = rule.high if rule.high_open else (rule.high + 1 if leaf is int else rule.high + 1e-6)
                values.append(leaf(above))
            if isinstance(rule, Choices):
                values.append("no-such-choice" if leaf is str else -12345)
            if isinstance(rule, _PathRule):
                values.append("a\0b")
                if rule.required:
                    values.append("")
        values = [[value] if listed else value for value in values]
        if listed and any(isinstance(rule, Length) and rule.low > 0 for rule in rules):
            values.append([])
    return values


def _valid_args(script: str) -> dict:
    """Values for the fields a user must give (an empty RequiredPath default)."""
    return {key: "some/folder" for key, tp in _args_class(script).fields().items()
            if getattr(_args_class(script), key) == "" and any(isinstance(r, _PathRule) and r.required
                                                                for r in _rules(tp))}


@pytest.mark.parametrize("script, key", ALL_FIELDS, ids=[f"{s}:{k}" for s, k in ALL_FIELDS])
def test_a_value_outside_the_declared_rules_is_refused_by_args_naming_key_and_value(script, key):
    args_class = _args_class(script)
    args_class(**_valid_args(script))  # the defaults satisfy their own rules
    for value in _refused_values(args_class.fields()[key]):
        with pytest.raises(ValueError) as err:
            args_class(**{**_valid_args(script), key: value})
        message = str(err.value)
        assert "\n" not in message and f"{key}={value!r}" in message and "expected" in message, message


def test_required_paths_are_refused_when_left_empty():
    with pytest.raises(ValueError, match="input_dir=''.*non-empty path"):
        _args_class("align/align_dataset_mtcnn.py").from_cli(["--output_dir=out"])


def test_choices_match_the_libraries_they_stand_for():
    """The literal choices of the Args (kept literal so a script's --help needs no Keras) are the libraries' own."""
    from deploy.formats import FORMATS
    from eval.embeddings import FLIP_MODES
    from losses.margins import LOSSES
    from nets.norms import NORMS
    from nets.resnet_ir import STAGE_UNITS, UNIT_TYPES, WIDTHS

    expected = {"net_depth": tuple(STAGE_UNITS), "unit_type": UNIT_TYPES, "norm": NORMS, "net_width": WIDTHS,
                "width": WIDTHS, "loss": LOSSES, "flip": FLIP_MODES, "formats": tuple(FORMATS)}
    checked = 0
    for script, key in ALL_FIELDS:
        if key in expected:
            (choices,) = [rule for rule in _rules(_args_class(script).fields()[key]) if isinstance(rule, Choices)]
            assert set(choices.values) == set(expected[key]), (script, key)
            checked += 1
    assert checked >= 10


def test_a_hand_edited_args_json_with_a_bad_value_names_the_file_and_key(tmp_path):
    args_class = _args_class("train_nets.py")
    path = args_class().save(tmp_path / "args.json")
    for key, bad in [("saver_maxkeep", 0), ("grad_accum_steps", -1), ("norm", "batchnorm"), ("ckpt_path", "")]:
        values = {**args_class().to_dict(), key: bad}
        path.write_text(json.dumps(values))
        with pytest.raises(ValueError) as err:
            args_class.load(path)
        assert str(err.value).startswith(f"{path}: ") and f"{key}={bad!r}" in str(err.value), str(err.value)


@pytest.mark.parametrize("argv, key, value", [
    ([sys.executable, "train_nets.py", "--grad_accum_steps=0"], "grad_accum_steps", "0"),
    ([sys.executable, "train_nets.py", "--ckpt_path="], "ckpt_path", ""),
    ([sys.executable, "train_nets.py", "--mixed_precision=fp16"], "mixed_precision", "fp16"),
    ([sys.executable, "-m", "nets", "--norm=layer"], "norm", "layer"),
    ([sys.executable, "eval_ckpt_file.py", "--flip=mirror"], "flip", "mirror"),
    ([sys.executable, "generate_pairs.py", "--num_folds=0"], "num_folds", "0"),
    ([sys.executable, "-m", "eval.make_bin", "--jpeg_quality=101"], "jpeg_quality", "101"),
    ([sys.executable, "align/align_dataset_mtcnn.py", "--input_dir=a", "--output_dir=b", "--thresholds=[0.6,0.7]"],
     "thresholds", "[0.6,0.7]"),
])
def test_the_command_line_refuses_an_out_of_range_value_in_one_line(argv, key, value):
    result = _run(argv)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"{key}={value!r}" in lines[0] and "expected" in lines[0], result.stderr[-2000:]
