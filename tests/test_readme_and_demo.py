"""The README's first two commands are `make demo` and `make test` (CI runs the second); the demo runs end to end.
The Args reference that replaced the README's hand-written tables is checked in test_docs.py."""

from __future__ import annotations

import re
from pathlib import Path

from strict_json import load_strict_json

REPO = Path(__file__).resolve().parents[1]


def _readme() -> str:
    return (REPO / "README.md").read_text()


def test_first_two_commands_are_demo_and_test_and_ci_runs_the_second():
    commands = re.findall(r"^(make \w+)", _readme(), flags=re.M)
    assert commands[:2] == ["make demo", "make test"]
    assert "make test" in (REPO / ".ci" / "run").read_text()


def test_demo_runs_end_to_end_on_tiny_settings(tmp_path):
    import demo

    result = demo.main(demo.Args(output_dir=str(tmp_path), num_train_identities=4, num_eval_identities=6,
                                 images_per_identity=6, image_size=32, batch_size=8, max_steps=4,
                                 warmup_steps=1, pairs_per_fold=3))
    assert result["step"] == 4
    assert 0.0 <= result["untrained"] <= 1.0 and 0.0 <= result["trained"] <= 1.0
    assert (tmp_path / "eval" / "roc.png").is_file()
    (report,) = load_strict_json(tmp_path / "eval" / "report.json")
    assert report["accuracy_mean"] == result["trained"]
