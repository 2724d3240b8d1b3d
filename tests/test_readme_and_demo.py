"""The README stays the manual: its first two commands, every Args field documented; the demo runs end to end."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

import config
from strict_json import load_strict_json

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = ["train_nets", "train_nets_mgpu_new", "eval_ckpt_file", "generate_pairs", "demo", "export",
           "align.align_dataset_mtcnn", "data.synthetic", "data.mx2tfrecords", "eval.make_bin"]


def _readme() -> str:
    return (REPO / "README.md").read_text()


def test_first_two_commands_are_demo_and_test_and_ci_runs_the_second():
    commands = re.findall(r"^(make \w+)", _readme(), flags=re.M)
    assert commands[:2] == ["make demo", "make test"]
    assert "make test" in (REPO / ".ci" / "run").read_text()


# Where each script's Args table starts: the first `| field | default | meaning |` table after this README text.
TABLE_AFTER = {
    "train_nets": "### `train_nets.py` Args",
    "train_nets_mgpu_new": "`train_nets_mgpu_new.py` Args: every field of `train_nets.py`",
    "eval_ckpt_file": "### `eval_ckpt_file.py` Args",
    "generate_pairs": "### `generate_pairs.py`",
    "demo": "### `demo.py` Args",
    "export": "### Export for deployment",
    "align.align_dataset_mtcnn": "## Aligning a dataset",
    "data.synthetic": "### Synthetic identities (`data/synthetic.py`)",
    "data.mx2tfrecords": "### TFRecords and `data/mx2tfrecords.py`",
    "eval.make_bin": "### `eval/make_bin.py`",
}
TABLE_HEADER = re.compile(r"^\| (Args )?field \| default \| meaning \|$")


def readme_table(marker: str) -> dict[str, str]:
    """field -> default cell (backticks removed) of the first Args table after `marker` in the README."""
    lines = _readme()[_readme().index(marker):].splitlines()
    start = next(i for i, line in enumerate(lines) if TABLE_HEADER.match(line)) + 2  # header and |---| rows
    rows = {}
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        name, default = (cell.strip().strip("`") for cell in line.split("|")[1:3])
        assert name not in rows, f"README table after {marker!r} lists {name} twice"
        rows[name] = default
    return rows


def readme_default(args_class, name: str, text: str):
    """The value the README's default cell stands for: a Python literal ("./out", [0.1], None), else the text as
    typed on the command line (output/aligned, saved_model,keras); "(required)" is the empty required path."""
    if text == "(required)":
        return ""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        # the parser of --key=value alone: Args.from_cli would also refuse the empty defaults of required paths
        return config._parse_cli_value(text, args_class.fields()[name])


def test_readme_default_parsing_reads_each_spelling():
    import generate_pairs

    assert readme_default(generate_pairs.Args, "data_dir", "output/aligned") == "output/aligned"
    assert readme_default(generate_pairs.Args, "image_extensions", ".png,.jpg") == [".png", ".jpg"]
    assert readme_default(generate_pairs.Args, "data_dir", '"./x"') == "./x"
    assert readme_default(generate_pairs.Args, "num_folds", "10") == 10


@pytest.mark.parametrize("module", SCRIPTS)
def test_readme_args_table_matches_the_args(module):
    """Each script's README table has exactly its Args fields, each with the Args default as the README writes it.
    train_nets_mgpu_new's table lists only what it adds or changes; the rest must be train_nets' fields and
    defaults."""
    args_class = importlib.import_module(module).Args
    rows = readme_table(TABLE_AFTER[module])
    expected = {name: getattr(args_class, name) for name in args_class.fields()}
    if module == "train_nets_mgpu_new":
        import train_nets

        base = {name: getattr(train_nets.Args, name) for name in train_nets.Args.fields()}
        unlisted = {name for name in expected if name not in rows}
        assert unlisted <= set(base), f"{sorted(unlisted - set(base))} are neither in its table nor train_nets'"
        changed = {name: (expected[name], base[name]) for name in unlisted if expected[name] != base[name]}
        assert not changed, f"defaults other than train_nets' but not in its table (own, train_nets'): {changed}"
        expected = {name: value for name, value in expected.items() if name in rows}
    assert set(rows) == set(expected), (f"README table of {module}: missing {sorted(set(expected) - set(rows))}, "
                                        f"not in Args {sorted(set(rows) - set(expected))}")
    wrong = {name: (text, expected[name]) for name, text in rows.items()
             if readme_default(args_class, name, text) != expected[name]}
    assert not wrong, f"README defaults of {module} (README text, Args default): {wrong}"


def test_demo_runs_end_to_end_on_tiny_settings(tmp_path):
    import demo

    result = demo.main(demo.Args(output_dir=str(tmp_path), num_train_identities=4, num_eval_identities=6,
                                 images_per_identity=6, image_size=32, batch_size=8, max_steps=4,
                                 lr_steps=[3], pairs_per_fold=3))
    assert result["step"] == 4
    assert 0.0 <= result["untrained"] <= 1.0 and 0.0 <= result["trained"] <= 1.0
    assert (tmp_path / "eval" / "roc.png").is_file()
    (report,) = load_strict_json(tmp_path / "eval" / "report.json")
    assert report["accuracy_mean"] == result["trained"]
