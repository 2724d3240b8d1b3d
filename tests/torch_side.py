"""The PyTorch side venv (tests/side_venv.py): the reference that writes arcface_torch's files (backbone.pth state
dicts, torch.onnx exports) for the pretrained-model importers' tests. PyTorch is never a dependency of the toolkit.

torch 2.13.0 is pinned because this machine kind holds its CPU build for Python 3.11 on disk (pip takes it without a
download); any other version would fetch a CUDA build of several GB.
"""

from __future__ import annotations

from pathlib import Path

from side_venv import side_venv_python

TORCH_VENV = "torch-2.13-venv"
TORCH_REQUIREMENTS = ["torch==2.13.0", "numpy==2.4.6", "onnx==1.23.2"]
TORCH_CHECK = "import torch, onnx, numpy; assert torch.__version__.startswith('2.13.0')"


def torch_python() -> Path:
    """The side venv's python, built on first use; SideVenvUnavailable (tests skip with it) when it cannot be."""
    return side_venv_python(TORCH_VENV, TORCH_REQUIREMENTS, TORCH_CHECK, max_python=(3, 11))
