"""nets.pretrained.onnx_file: insightface's ONNX recognisers read by walking the graph, checked against onnxruntime.

The reference files are written by torch itself (tests/onnx_writer.py in the PyTorch side venv, tests/torch_side.py):
arcface_torch-style iresnet18 and mbf with random weights, exported as torch2onnx.py does (the exporter fuses each
Conv + BN), with every BN kept, with the rest folded and the initializers renamed as onnx-simplifier leaves them, and
with the input normalisation inside the graph. The reference embedding is onnxruntime's on each file; small graphs
for the error cases are built here with onnx.helper.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper, numpy_helper

import nets
from nets import preprocessing
from nets.pretrained import onnx_file
from nets.pretrained.weights import Preprocessing
from torch_side import ONNX_SPEC

log = logging.getLogger(__name__)
ARCHITECTURES = ("iresnet18", "mbf")
EMBEDDING_SIZE = ONNX_SPEC["embedding_size"]
BN_EPSILON = 1e-5
RELATIVE_TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def exported(torch_references) -> Path:
    """The writer's files (the session's one torch run, conftest.py): <arch>.npz, <arch>.onnx, <arch>_unfused.onnx,
    <arch>_folded.onnx, iresnet18_ingraph.onnx."""
    return torch_references / "onnx"


def state_dict(folder: Path, architecture: str) -> dict[str, np.ndarray]:
    with np.load(folder / f"{architecture}.npz") as saved:
        return {key: saved[key] for key in saved.files}


def folded_layers(arrays: dict[str, np.ndarray]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """What each conv / linear computes with its BN, in float64: {weight key: (weight * s, (bias - mean) * s + beta)}.

    In arcface_torch's state-dict order a layer's BN is the first BN after its weight."""
    keys = list(arrays)
    folded = {}
    for position, key in enumerate(keys):
        if not key.endswith(".weight") or arrays[key].ndim not in (2, 4):
            continue
        bn = next(name[:-len(".running_var")] for name in keys[position:] if name.endswith(".running_var"))
        factor = arrays[f"{bn}.weight"] / np.sqrt(arrays[f"{bn}.running_var"].astype(np.float64) + BN_EPSILON)
        bias = arrays.get(key[:-len(".weight")] + ".bias", np.zeros_like(factor))
        weight = arrays[key].astype(np.float64) * factor.reshape((-1,) + (1,) * (arrays[key].ndim - 1))
        folded[key] = (weight, (bias - arrays[f"{bn}.running_mean"]) * factor + arrays[f"{bn}.bias"])
    return folded


def relative_error(ours: np.ndarray, reference: np.ndarray) -> float:
    return float(np.abs(ours - reference).max() / np.abs(reference).max())


# --- what read() returns --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_unfused_export_reads_back_as_the_state_dict(exported, architecture):
    """With every BN kept as a node, the walk names each array exactly as arcface_torch's state dict, in its
    order, without any extra, although it never looks at the initializer names."""
    read = onnx_file.read(exported / f"{architecture}_unfused.onnx")
    expected = state_dict(exported, architecture)
    assert read.layout == "arcface_torch"
    assert read.preprocessing == Preprocessing("RGB", 127.5, 1 / 127.5)
    assert list(read.arrays) == list(expected)
    for key, value in expected.items():
        assert read.arrays[key].dtype == np.float32, key
        assert read.arrays[key].shape == value.shape, key
        np.testing.assert_allclose(read.arrays[key], value, rtol=1e-6, atol=1e-7, err_msg=key)


@pytest.mark.parametrize("variant", ["", "_folded"])
@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_folded_batch_norms_come_back_unfolded_and_equivalent(exported, architecture, variant):
    """The exporter's fused Conv + BN (and the simplifier's Gemm / MatMul + BN) come back as the state dict's names
    and shapes, each folded BN as weight 1, mean 0, var 1 - eps; folding what read() returns gives what folding the
    original state dict gives."""
    path = exported / f"{architecture}{variant}.onnx"
    read = onnx_file.read(path).arrays
    expected = state_dict(exported, architecture)
    assert {key: value.shape for key, value in read.items()} == {key: value.shape for key, value in expected.items()}
    unfolded = [key[:-len(".running_var")] for key, value in read.items()
                if key.endswith(".running_var") and np.all(value == np.float32(1 - BN_EPSILON))]
    batch_norm_nodes = sum(node.op_type == "BatchNormalization" for node in onnx.load(str(path)).graph.node)
    assert len(unfolded) == sum(key.endswith(".running_var") for key in read) - batch_norm_nodes
    for bn in unfolded:
        assert np.all(read[f"{bn}.weight"] == 1) and np.all(read[f"{bn}.running_mean"] == 0), bn
    reference = folded_layers(expected)
    for key, (weight, bias) in folded_layers(read).items():
        assert relative_error(weight, reference[key][0]) < 1e-5, key
        assert relative_error(bias, reference[key][1]) < 1e-5, key


def test_normalisation_inside_the_graph_is_the_preprocessing(exported):
    """A graph that starts with Sub 127.5, Mul 1/128 on raw pixels (as MXNet-converted recognisers do): those are
    the preprocessing, and the network after them is the same as without them."""
    read = onnx_file.read(exported / "iresnet18_ingraph.onnx")
    assert read.preprocessing == Preprocessing("RGB", 127.5, 0.0078125)
    plain = onnx_file.read(exported / "iresnet18.onnx").arrays
    assert list(read.arrays) == list(plain)
    for key, value in plain.items():
        np.testing.assert_array_equal(read.arrays[key], value, err_msg=key)


# --- parity with onnxruntime ----------------------------------------------------------------------------------------

PARITY_FILES = ["iresnet18", "iresnet18_folded", "iresnet18_unfused", "iresnet18_ingraph",
                "mbf", "mbf_folded", "mbf_unfused"]


@pytest.mark.parametrize("name", PARITY_FILES)
def test_load_pretrained_matches_onnxruntime(exported, name):
    """nets.load_pretrained on uint8 RGB pixels gives onnxruntime's embedding of the file fed as insightface feeds
    it: NCHW RGB, (x - 127.5) / 127.5, or raw pixels when the graph normalises them itself."""
    path = exported / f"{name}.onnx"
    pixels = np.random.default_rng(7).integers(0, 256, (3, 112, 112, 3), dtype=np.uint8)
    started = time.perf_counter()
    model = nets.load_pretrained(path)
    log.info("%s: load_pretrained %.2f s", name, time.perf_counter() - started)
    info = preprocessing.deployment_info(model)
    assert info["input_size"] == [112, 112] and info["channel_order"] == "RGB"
    ours = np.asarray(model(pixels))

    blob = pixels.astype(np.float32).transpose(0, 3, 1, 2)
    blob = blob if name.endswith("_ingraph") else (blob - 127.5) / 127.5
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    # one image a run: the mbf export fixes the batch of its x.view(x.size(0), -1) at the traced 1
    reference = np.concatenate([session.run(None, {"data": image[None]})[0] for image in blob])
    assert ours.shape == reference.shape == (3, EMBEDDING_SIZE)
    assert relative_error(reference[0], reference[1]) > 0.05  # the images give different embeddings
    error = relative_error(ours, reference)
    log.info("%s: max relative error %.2e", name, error)
    assert error < RELATIVE_TOLERANCE


# --- recognise and errors -------------------------------------------------------------------------------------------

def tiny_model(nodes: list[onnx.NodeProto], initializers: dict[str, np.ndarray]) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("data", TensorProto.FLOAT,
                                                                             [1, 3, 8, 8])],
                              [helper.make_tensor_value_info(nodes[-1].output[0], TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(value.astype(np.float32), name)
                               for name, value in initializers.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])


def save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, str(path))
    return path


def test_recognise_by_content(exported, tmp_path):
    renamed = shutil.copy(exported / "mbf.onnx", tmp_path / "recogniser.bin")
    not_model = tmp_path / "tensor.onnx"  # a protobuf, starting like a ModelProto, but a TensorProto
    not_model.write_bytes(numpy_helper.from_array(np.arange(6, dtype=np.float32).reshape(2, 3)).SerializeToString())
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x08" + np.random.default_rng(0).bytes(4096))
    assert onnx_file.recognise(exported / "iresnet18_folded.onnx")
    assert onnx_file.recognise(Path(renamed))
    for refused in (exported / "mbf.npz", not_model, garbage, tmp_path / "absent.onnx"):
        assert not onnx_file.recognise(refused), refused


def test_read_refuses_what_is_not_an_onnx_model(tmp_path):
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x08\x07" + b"\xff" * 64)
    with pytest.raises(ValueError, match="not an ONNX model"):
        onnx_file.read(garbage)


def test_an_unexpected_node_is_named(tmp_path):
    """Conv then Relu where arcface_torch has Conv then PReLU: the error names the Relu node and what was expected."""
    weight = np.random.default_rng(0).normal(size=(4, 3, 3, 3))
    model = tiny_model([helper.make_node("Conv", ["data", "w"], ["c"], name="stem_conv", pads=[1, 1, 1, 1]),
                        helper.make_node("Relu", ["c"], ["r"], name="stem_relu")], {"w": weight})
    with pytest.raises(ValueError, match="expected one PRelu node; found Relu node 'stem_relu'"):
        onnx_file.read(save(model, tmp_path / "relu.onnx"))


def test_per_channel_input_normalisation_is_refused(tmp_path):
    """Preprocessing holds one mean: a Sub of a different constant per channel is named, not averaged away."""
    model = tiny_model([helper.make_node("Sub", ["data", "mean"], ["s"], name="minus_mean"),
                        helper.make_node("Conv", ["s", "w"], ["c"], name="stem_conv")],
                       {"mean": np.array([1.0, 2.0, 3.0]).reshape(1, 3, 1, 1), "w": np.ones((4, 3, 3, 3))})
    with pytest.raises(ValueError, match="Sub node 'minus_mean': expected one constant for all channels"):
        onnx_file.read(save(model, tmp_path / "per_channel.onnx"))
