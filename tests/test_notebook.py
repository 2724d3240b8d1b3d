"""Runs notebooks/InsightFace_TF_colab.ipynb top to bottom in TINY mode with nbclient, as CI does, so it cannot rot.

The kernel is this interpreter (a kernelspec written into tmp_path), so a fresh `make setup` is all it needs; the
notebook's parameters cell is replaced (the papermill convention: the cell tagged "parameters") to skip the install
and the Drive mount, shrink the job and write into tmp_path.
"""

from __future__ import annotations

import ast
import json
import zipfile
from pathlib import Path

import cv2
import nbformat
import pytest
from ipykernel.kernelspec import write_kernel_spec
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient

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


@pytest.fixture(scope="module")
def executed(tmp_path_factory: pytest.TempPathFactory) -> tuple[nbformat.NotebookNode, Path]:
    """The notebook after a TINY run (outputs in the returned folder)."""
    tmp_path = tmp_path_factory.mktemp("notebook")
    monkeypatch = pytest.MonkeyPatch()
    # Connection files and the IPython profile go to tmp_path, not to the user's home.
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    output_dir = tmp_path / "output"
    parameters_cell(notebook).source = "\n".join(f"{name} = {value!r}"
                                                 for name, value in ci_parameters(output_dir).items())
    # The kernel starts outside the repository, as on Colab: the notebook's set-up cell must move there itself.
    client = NotebookClient(notebook, km=this_python_kernel(tmp_path), timeout=600,
                            resources={"metadata": {"path": str(tmp_path)}})
    try:
        client.execute()
    finally:
        monkeypatch.undo()
        nbformat.write(notebook, tmp_path / "executed.ipynb")  # what ran, outputs included, for a look after a failure
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
