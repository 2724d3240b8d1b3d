"""The PyTorch side venv (tests/side_venv.py): the reference that writes arcface_torch's files (backbone.pth state
dicts, torch.onnx exports) for the pretrained-model importers' tests. PyTorch is never a dependency of the toolkit.

torch 2.13.0 is pinned because this machine kind holds its CPU build for Python 3.11 on disk (pip takes it without a
download); any other version would fetch a CUDA build of several GB.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from side_venv import side_venv_python

TORCH_VENV = "torch-2.13-venv"
TORCH_REQUIREMENTS = ["torch==2.13.0", "numpy==2.4.6", "onnx==1.23.2"]
TORCH_CHECK = "import torch, onnx, numpy; assert torch.__version__.startswith('2.13.0')"
REFERENCES_WRITER = Path(__file__).resolve().parent / "torch_references.py"
# What test_pretrained_torch.py reads: tests/torch_writer.py's jobs, each written into backbones/<its name>/.
BACKBONE_JOBS = [
    {"name": "iresnet18", "kind": "backbone", "arch": "iresnet18", "num_features": 64, "images": 2},
    {"name": "mbf", "kind": "backbone", "arch": "mbf", "num_features": 64, "images": 2, "seed": 1},
    {"name": "iresnet18_legacy", "kind": "backbone", "arch": "iresnet18", "num_features": 32, "legacy": True,
     "seed": 2},
    {"name": "iresnet18_half", "kind": "backbone", "arch": "iresnet18", "num_features": 32, "half": True, "seed": 3},
    {"name": "iresnet18_checkpoint", "kind": "backbone", "arch": "iresnet18", "num_features": 32,
     "checkpoint": True, "seed": 4},
    {"name": "views", "kind": "views"},
    {"name": "views_legacy", "kind": "views", "legacy": True},
]
# What test_pretrained_onnx.py reads: tests/onnx_writer.py's spec, its files written into onnx/.
ONNX_SPEC = {"embedding_size": 64, "seed": 0}


def torch_python() -> Path:
    """The side venv's python, built on first use; SideVenvUnavailable (tests skip with it) when it cannot be."""
    return side_venv_python(TORCH_VENV, TORCH_REQUIREMENTS, TORCH_CHECK, max_python=(3, 11))


def write_references(python: Path, out: Path) -> None:
    """Both writers' files under `out` (backbones/, onnx/) in one side-venv run: one torch import, not one per file."""
    out.mkdir(parents=True, exist_ok=True)
    spec = out / "spec.json"
    spec.write_text(json.dumps({"backbones": BACKBONE_JOBS, "onnx": ONNX_SPEC}))
    done = subprocess.run([str(python), str(REFERENCES_WRITER), str(spec), str(out)], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, f"torch reference writer failed:\n{done.stdout}\n{done.stderr}"
