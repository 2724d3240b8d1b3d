"""Runs inside the PyTorch side venv (tests/torch_side.py), never in ours: both writers under one torch import.

    python torch_references.py SPEC OUT

SPEC is a JSON file {"backbones": tests/torch_writer.py's list of jobs, "onnx": tests/onnx_writer.py's spec}; the
backbone files go to OUT/backbones, the ONNX files to OUT/onnx (each as that writer lays them out). Importing torch
costs several seconds on a busy machine: one run serves test_pretrained_torch.py and test_pretrained_onnx.py.
"""

import json
import sys
from pathlib import Path

import onnx_writer
import torch_writer


def main(spec_path, out):
    spec = json.loads(Path(spec_path).read_text())
    out = Path(out)
    for name, writer in (("backbones", torch_writer), ("onnx", onnx_writer)):
        part = out / f"{name}_spec.json"
        part.write_text(json.dumps(spec[name]))
        writer.main(part, out / name)


if __name__ == "__main__":
    main(*sys.argv[1:])
