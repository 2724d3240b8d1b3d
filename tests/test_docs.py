"""README.md and docs/: the generated Args reference equals the sources (checked as a user runs the generator), every
link and repository path they name exists, and the README stays a front page."""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
GENERATOR = REPO / "tools" / "args_reference.py"
REFERENCE = REPO / "docs" / "args.md"
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
# The scripts docs/args.md documents (heading as written there -> module).
DOCUMENTED = {"demo.py": "demo", "align/align_dataset_mtcnn.py": "align.align_dataset_mtcnn",
              "generate_pairs.py": "generate_pairs", "train_nets.py": "train_nets",
              "train_nets_mgpu_new.py": "train_nets_mgpu_new", "eval_ckpt_file.py": "eval_ckpt_file",
              "export.py": "export", "recognize.py": "recognize", "identify.py": "identify",
              "python -m eval.make_bin": "eval.make_bin",
              "python -m data.mx2tfrecords": "data.mx2tfrecords", "python -m data.synthetic": "data.synthetic",
              "python -m nets": "nets.__main__", "python -m training.reshard_head": "training.reshard_head"}


def _generator(*argv: str) -> subprocess.CompletedProcess:
    # PYTHONPATH: the repository's packages, for a checkout where `pip install -e .` has not run.
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "tools/args_reference.py", *argv], cwd=REPO, env=environment,
                          capture_output=True, text=True, timeout=300)


def _generator_module():
    spec = importlib.util.spec_from_file_location("args_reference", GENERATOR)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------------------------------------ the Args reference


def test_the_committed_args_reference_is_what_the_generator_writes():
    result = _generator("--check")
    assert result.returncode == 0, f"docs/args.md is stale: run python tools/args_reference.py\n{result.stderr}"


def test_check_fails_naming_the_stale_script_and_writes_nothing(tmp_path):
    committed = REFERENCE.read_text()
    section = committed.index("## `train_nets.py`")
    row = committed.index("| `momentum` |", section)
    stale = committed[:row] + committed[row:].replace("`0.9`", "`0.8`", 1)
    copy = tmp_path / "args.md"
    copy.write_text(stale)
    result = _generator("--check", f"--file={copy}")
    assert result.returncode == 1
    assert "train_nets.py" in result.stderr and "demo.py" not in result.stderr
    assert copy.read_text() == stale


def test_a_field_without_a_comment_is_an_error_naming_it(tmp_path, monkeypatch):
    (tmp_path / "undocumented_args.py").write_text(
        "from config import Config\n\n\nclass Args(Config):\n"
        "    documented: int = 1  # has a meaning\n"
        "    bare: int = 2\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    generator = _generator_module()
    with pytest.raises(generator.UndocumentedField, match=r"undocumented\.py: .*\bbare\b") as raised:
        generator.script_table("undocumented.py", "undocumented_args")
    assert "documented," not in str(raised.value)


def _reference_tables() -> dict[str, list[list[str]]]:
    """Heading -> the rows (cells, backticks stripped) of its table in docs/args.md, group rows included."""
    tables: dict[str, list[list[str]]] = {}
    heading = None
    for line in REFERENCE.read_text().splitlines():
        match = re.match(r"^## `(.+)`$", line)
        if match:
            heading = match.group(1)
            tables[heading] = []
        elif heading and line.startswith("| ") and not line.startswith("| field |"):
            cells = [cell.strip() for cell in re.split(r"(?<!\\)\|", line)[1:-1]]
            tables[heading].append([cell.strip("`").replace("\\|", "|") for cell in cells])
    return tables


def _banner_titles(path: Path) -> list[str]:
    """The `# --- title ---` lines of the file's `class Args` body, read as plain text."""
    body = re.search(r"^class Args\(.*?(?=^\S)", path.read_text() + "\nEND", re.M | re.S).group(0)
    return re.findall(r"^\s+# -{3} (.+?) -{3}\s*$", body, re.M)


@pytest.mark.parametrize("heading", list(DOCUMENTED))
def test_each_reference_table_lists_the_args_fields_with_defaults_that_parse_back(heading):
    """Read independently of the generator: every field of the script (for train_nets_mgpu_new, those it adds or
    changes), each default cell typed back on the command line gives the Args default, every meaning filled in, and
    the banner sections of the source as group rows, in order."""
    args_class = importlib.import_module(DOCUMENTED[heading]).Args
    rows = _reference_tables()[heading]
    fields = {row[0]: row for row in rows if not row[0].startswith("**")}
    expected = set(args_class.fields())
    if heading == "train_nets_mgpu_new.py":
        import train_nets

        base = train_nets.Args
        expected = {name for name in expected
                    if name not in base.fields() or getattr(args_class, name) != getattr(base, name)}
        assert {"num_gpus", "multi_worker", "batch_size"} <= expected
    assert set(fields) == expected
    # Required paths without a default (align's input_dir) get a value, so that the Args build.
    filled = [f"--{row[0]}=x" for row in fields.values() if row[2] == "a non-empty path" and row[3] == '""']
    for name, (_, _, _, default, meaning) in fields.items():
        value = "" if default == '""' else getattr(args_class.from_cli([*filled, f"--{name}={default}"]), name)
        assert value == getattr(args_class, name), f"{heading} {name}: {default!r}"
        assert meaning, f"{heading} {name} has no meaning"
    source = Path(sys.modules[args_class.__module__].__file__)
    assert [row[0].strip("*") for row in rows if row[0].startswith("**")] == _banner_titles(source)


# ------------------------------------------------------------------------------------ links, paths, the front page


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation other than - and _ dropped, spaces to -."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.M | re.S)
    return {_slug(line.lstrip("#")) for line in text.splitlines() if re.match(r"^#{1,6} ", line)}


def _prose(page: Path) -> str:
    """The page without its code blocks and without the seed's column of the seed file map (the seed's names)."""
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.M | re.S)
    before, marker, table_and_after = text.partition("| seed file | here |")
    table, blank, after = table_and_after.partition("\n\n")
    return before + re.sub(r"^\| [^|]*\|", "|", table, flags=re.M) + after


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_every_relative_link_and_anchor_exists(page):
    for target in re.findall(r"\]\(([^)\s]+)\)", _prose(page)):
        if re.match(r"^[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        assert linked.exists(), f"{page.name}: link {target} points at nothing"
        if anchor and linked.suffix == ".md":
            assert anchor in _anchors(linked), f"{page.name}: no heading {anchor!r} in {linked.name}"


def _ignored(path: str) -> bool:
    """Under a folder .gitignore names (written by the scripts, as bench/results/)."""
    patterns = [line.strip().strip("/") for line in (REPO / ".gitignore").read_text().splitlines() if line.strip()]
    return any(path == pattern or path.startswith(pattern + "/") for pattern in patterns if "*" not in pattern)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_every_repository_path_named_exists_and_nothing_points_outside(page):
    text = page.read_text()
    assert "../shared" not in text and "shared/data" not in text
    folders = {entry.name for entry in REPO.iterdir() if entry.is_dir() and not entry.name.startswith(".")}
    for token in re.findall(r"`([^`\s]+)`", _prose(page)):
        path = token.rstrip("/")
        if re.fullmatch(r"[\w.-]+(/[\w.-]+)+", path) and path.split("/")[0] in folders - {"output", ".venv"}:
            assert (REPO / path).exists() or _ignored(path), f"{page.name}: `{token}` is not in the repository"


def test_the_readme_is_a_front_page_that_links_every_docs_page():
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    for page in (REPO / "docs").glob("*.md"):
        assert f"](docs/{page.name})" in readme, f"README.md does not link docs/{page.name}"
