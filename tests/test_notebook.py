"""Runs notebooks/InsightFace_TF_colab.ipynb top to bottom in TINY mode with nbclient, as CI does, so it cannot rot.

The kernel is this interpreter (a kernelspec written into tmp_path), so a fresh `make setup-test` is all it needs; the
notebook's parameters cell is replaced (the papermill convention: the cell tagged "parameters") to skip the install
and the Drive mount, shrink the job and write into tmp_path. The install cell is run on its own, with `%pip` replaced
by a recorder (nothing is downloaded) and, to stand for Colab's other TensorFlow, a shadowing tensorflow 0.0 dist-info.
"""

from __future__ import annotations

import ast
import json
import shlex
import subprocess
import sys
import zipfile
from pathlib import Path

import cv2
import nbformat
import pytest
from ipykernel.kernelspec import write_kernel_spec
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, DeadKernelError
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "InsightFace_TF_colab.ipynb"
KERNEL_NAME = "insightface-tf-test"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def ci_parameters(output_dir: Path) -> dict[str, object]:
    """The values CI runs the notebook with: no install, no Drive, the tiny job, outputs in a temporary folder."""
    return {"REPO_URL": "", "REPO_DIR": str(REPO), "RUN_INSTALL": False, "MOUNT_DRIVE": False, "TINY": True,
            "RAW_FACES_DIR": "", "TRAIN_DIR": "", "OUTPUT_DIR": str(output_dir), "RUN_EXPORT": True}


def parameters_cell(notebook: nbformat.NotebookNode) -> nbformat.NotebookNode:
    cells = [cell for cell in notebook.cells if "parameters" in cell.metadata.get("tags", [])]
    assert len(cells) == 1, "the notebook needs exactly one cell tagged 'parameters'"
    return cells[0]


def this_python_kernel(tmp_path: Path) -> AsyncKernelManager:
    """A kernel manager that starts ipykernel on sys.executable, whatever kernels the machine has registered."""
    kernels = tmp_path / "kernels"
    write_kernel_spec(kernels / KERNEL_NAME)  # argv = [sys.executable, "-m", "ipykernel_launcher", ...]
    specs = KernelSpecManager(kernel_dirs=[str(kernels)])
    return AsyncKernelManager(kernel_name=KERNEL_NAME, kernel_spec_manager=specs)


def execute(notebook: nbformat.NotebookNode, tmp_path: Path) -> None:
    """Runs `notebook` in place on this interpreter's kernel, started in tmp_path (outside the repository, as on
    Colab); what ran, outputs included, is kept in tmp_path/executed.ipynb for a look after a failure."""
    monkeypatch = pytest.MonkeyPatch()
    # Connection files and the IPython profile go to tmp_path, not to the user's home.
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    client = NotebookClient(notebook, km=this_python_kernel(tmp_path), timeout=600,
                            resources={"metadata": {"path": str(tmp_path)}})
    try:
        client.execute()
    finally:
        monkeypatch.undo()
        nbformat.write(notebook, tmp_path / "executed.ipynb")


def assignments(parameters: dict[str, object]) -> str:
    return "\n".join(f"{name} = {value!r}" for name, value in parameters.items())


@pytest.fixture(scope="module")
def executed(tmp_path_factory: pytest.TempPathFactory) -> tuple[nbformat.NotebookNode, Path]:
    """The notebook after a TINY run (outputs in the returned folder)."""
    tmp_path = tmp_path_factory.mktemp("notebook")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    output_dir = tmp_path / "output"
    parameters_cell(notebook).source = assignments(ci_parameters(output_dir))
    execute(notebook, tmp_path)
    return notebook, output_dir


def test_stored_notebook_is_valid_and_without_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    code_cells = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(cell.outputs == [] and cell.execution_count is None for cell in code_cells)


def test_ci_sets_every_parameter_of_the_notebook_and_colab_defaults_install():
    source = parameters_cell(nbformat.read(NOTEBOOK, as_version=4)).source
    defaults = {node.targets[0].id: ast.literal_eval(node.value) for node in ast.parse(source).body
                if isinstance(node, ast.Assign)}
    assert defaults.keys() == ci_parameters(Path("unused")).keys()
    assert (defaults["RUN_INSTALL"], defaults["MOUNT_DRIVE"], defaults["TINY"]) == (True, False, False)


def test_every_cell_ran_without_error(executed):
    notebook, _ = executed
    code_cells = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(cell.execution_count is not None for cell in code_cells)
    errors = [out for cell in code_cells for out in cell.outputs if out.output_type == "error"]
    assert errors == []


def test_aligned_faces_are_112_pixel_images_of_each_example_person(executed):
    _, output_dir = executed
    people = sorted(p.name for p in (output_dir / "example_photos").iterdir())
    aligned = sorted((output_dir / "aligned").glob("*/*.png"))
    assert sorted({p.parent.name for p in aligned}) == people
    for path in aligned:
        assert cv2.imread(str(path)).shape == (112, 112, 3)


def test_report_counts_the_pairs_file_and_holds_an_accuracy(executed):
    _, output_dir = executed
    lines = (output_dir / "pairs.txt").read_text().splitlines()
    folds, per_fold = map(int, lines[0].split())
    assert len(lines) - 1 == folds * 2 * per_fold  # header + matched and mismatched lines of every fold
    (report,) = json.loads((output_dir / "eval" / "my_faces" / "report.json").read_text())
    assert (report["num_pairs"], report["num_folds"]) == (len(lines) - 1, folds)
    assert 0.0 <= report["accuracy_mean"] <= 1.0
    assert report["accuracy_mean"] == pytest.approx(sum(report["accuracy_per_fold"]) / folds)


def test_plots_are_written_and_shown_inline(executed):
    notebook, output_dir = executed
    for name in ("my_faces", "synthetic_heldout"):
        (hardest_pairs,) = (output_dir / "eval" / name).glob("*/*_hardest_pairs.png")
        for png in (output_dir / "eval" / name / "roc.png", hardest_pairs):
            assert png.read_bytes().startswith(PNG_SIGNATURE)
    shown = {cell.id: sum("image/png" in out.get("data", {}) for out in cell.outputs)
             for cell in notebook.cells if cell.cell_type == "code"}
    # photos, aligned faces, synthetic identities, the loss curve, then ROC + hardest pairs of both sets
    expected = {"faces": 1, "align": 1, "train_data": 1, "loss": 1, "plots": 4}
    assert {cell_id: count for cell_id, count in shown.items() if count} == expected


def test_export_wrote_a_checked_keras_file(executed):
    _, output_dir = executed
    (entry,) = json.loads((output_dir / "export" / "export_report.json").read_text())
    assert entry["format"] == "keras"
    assert zipfile.is_zipfile(entry["path"])  # the .keras format is a zip archive
    assert entry["max_relative_difference"] <= entry["tolerance"]


def test_training_is_the_demos_job(executed):
    # TINY shrinks the sizes and steps only: the network, the loss and its learning rates are demo.py's.
    import demo

    _, output_dir = executed
    trained = json.loads((output_dir / "run" / "ckpt" / "args.json").read_text())
    job = ("net_depth", "loss", "lr_values", "seed")
    assert {name: trained[name] for name in job} == {name: getattr(demo.Args(), name) for name in job}
    assert trained["lr_steps_scaled"] is False  # as demo.py: plain step numbers


# --- the install cell, run on its own -------------------------------------------------------------------------------

# Runs before the install cell: `%pip` only records its line (and, if it "installs", removes the stand-in for Colab's
# TensorFlow); the stand-in is a tensorflow 0.0 dist-info put first on sys.path, so the pinned one looks missing.
RECORDING_PIP = '''
import pathlib, shutil, sys

if pathlib.Path({shadow!r}).exists():
    sys.path.insert(0, {shadow!r})


def recording_pip(line):
    with open({pip_log!r}, "a") as log:
        log.write(line + "\\n")
    if {pip_installs!r}:
        shutil.rmtree({shadow!r}, ignore_errors=True)


get_ipython().register_magic_function(recording_pip, "line", "pip")
'''
ALIVE = "'the kernel went on'"
# What the notebook must leave alone on Colab: the test tools and the Jupyter stack of Colab's runtime.
NOT_FOR_COLAB = {"pytest", "pytest-xdist", "execnet", "nbclient", "nbformat", "ipykernel", "ipython", "jupyter-client",
                 "tornado", "notebook"}


def run_install_cell(tmp_path: Path, colab_tensorflow: bool, pip_installs: bool) -> nbformat.NotebookNode:
    """parameters (RUN_INSTALL, the checkout as REPO_DIR), the recording %pip, the install cell, then one more cell."""
    shadow = tmp_path / "colab_site"
    if colab_tensorflow:
        (shadow / "tensorflow-0.0.dist-info").mkdir(parents=True)
        (shadow / "tensorflow-0.0.dist-info" / "METADATA").write_text(
            "Metadata-Version: 2.1\nName: tensorflow\nVersion: 0.0\n")
    stored = nbformat.read(NOTEBOOK, as_version=4)
    parameters = ci_parameters(tmp_path / "output") | {"RUN_INSTALL": True}
    cells = [nbformat.v4.new_code_cell(assignments(parameters)),
             nbformat.v4.new_code_cell(RECORDING_PIP.format(shadow=str(shadow), pip_log=str(tmp_path / "pip.log"),
                                                            pip_installs=pip_installs)),
             next(cell for cell in stored.cells if cell.get("id") == "install"),
             nbformat.v4.new_code_cell(ALIVE)]
    return nbformat.v4.new_notebook(cells=cells, metadata=stored.metadata)


def pip_lines(tmp_path: Path) -> list[list[str]]:
    log = tmp_path / "pip.log"
    return [shlex.split(line) for line in log.read_text().splitlines()] if log.exists() else []


def requirement_names(path: Path) -> set[str]:
    """Every package a requirements file names, through its `-r` includes."""
    names = set()
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line.startswith("-r"):
            names |= requirement_names(path.parent / line[2:].strip())
        elif line:
            names.add(Requirement(line).name.lower())
    return names


def pinned_tensorflow() -> str:
    (pin,) = [line for line in (REPO / "requirements.txt").read_text().splitlines() if line.startswith("tensorflow==")]
    return pin


def cell_text(cell: nbformat.NotebookNode) -> str:
    return "".join(out.get("text", "") for out in cell.outputs if out.output_type == "stream")


def test_install_cell_with_the_pins_met_installs_nothing_and_goes_on(tmp_path):
    notebook = run_install_cell(tmp_path, colab_tensorflow=False, pip_installs=False)
    execute(notebook, tmp_path)  # raises on an error in any cell
    assert pip_lines(tmp_path) == []
    assert "nothing to do" in cell_text(notebook.cells[2])
    assert notebook.cells[3].outputs[0]["data"]["text/plain"] == ALIVE


def test_install_cell_installs_the_runtime_only_then_ends_the_kernel(tmp_path):
    notebook = run_install_cell(tmp_path, colab_tensorflow=True, pip_installs=True)
    with pytest.raises(DeadKernelError):
        execute(notebook, tmp_path)
    (command,) = pip_lines(tmp_path)
    assert command == ["install", "-q", "-r", str(REPO / "requirements.txt")]
    assert requirement_names(REPO / "requirements.txt") & NOT_FOR_COLAB == set()
    assert pinned_tensorflow() in cell_text(notebook.cells[2])  # says what it installs for, and why it restarts
    assert "run all cells again" in cell_text(notebook.cells[2])
    assert notebook.cells[3].execution_count is None  # Run all stopped at the restart


def test_install_cell_stops_with_what_pip_left_unmet_instead_of_restarting(tmp_path):
    notebook = run_install_cell(tmp_path, colab_tensorflow=True, pip_installs=False)
    with pytest.raises(CellExecutionError, match="still not installed after pip install") as error:
        execute(notebook, tmp_path)
    assert pinned_tensorflow() in str(error.value)
    assert len(pip_lines(tmp_path)) == 1
    assert notebook.cells[3].execution_count is None


def test_the_install_cell_logs_with_common_logs_which_needs_only_the_standard_library():
    # The install cell imports common/ before anything is installed; -S: no site-packages, the standard library only.
    subprocess.run([sys.executable, "-S", "-c", "from common.logs import setup_logging; setup_logging()"], cwd=REPO,
                   check=True)
