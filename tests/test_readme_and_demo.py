"""The README stays the manual: its first two commands, every Args field documented; the demo runs end to end."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = ["train_nets", "train_nets_mgpu_new", "eval_ckpt_file", "generate_pairs", "demo", "export",
           "align.align_dataset_mtcnn", "data.synthetic", "data.mx2tfrecords", "eval.make_bin"]


def _readme() -> str:
    return (REPO / "README.md").read_text()


def test_first_two_commands_are_demo_and_test_and_ci_runs_the_second():
    commands = re.findall(r"^(make \w+)", _readme(), flags=re.M)
    assert commands[:2] == ["make demo", "make test"]
    assert "make test" in (REPO / ".ci" / "run").read_text()


@pytest.mark.parametrize("module", SCRIPTS)
def test_every_args_field_is_in_the_readme(module):
    args_class = importlib.import_module(module).Args
    missing = [field for field in args_class.fields() if f"`{field}`" not in _readme()]
    assert not missing, f"{module}.Args fields not documented in README.md: {missing}"


def test_demo_runs_end_to_end_on_tiny_settings(tmp_path):
    import demo

    result = demo.main(demo.Args(output_dir=str(tmp_path), num_train_identities=4, num_eval_identities=6,
                                 images_per_identity=6, image_size=32, batch_size=8, max_steps=4,
                                 lr_steps=[3], pairs_per_fold=3))
    assert result["step"] == 4
    assert 0.0 <= result["untrained"] <= 1.0 and 0.0 <= result["trained"] <= 1.0
    assert (tmp_path / "eval" / "report.json").is_file() and (tmp_path / "eval" / "roc.png").is_file()
