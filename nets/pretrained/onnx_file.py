"""insightface's ONNX recognisers -> arcface_torch's state-dict names.

Covers arcface_torch's torch2onnx.py exports (the buffalo_l / antelopev2 w600k_r50, glintr100, w600k_mbf files are
such exports), with or without onnx-simplifier, and MXNet-converted files whose graph normalises its input itself.
The names inside the file are not used: the exporter fuses each BatchNorm into the Conv before it and onnx-simplifier
renames the initializers (onnx::Conv_123). Instead the graph is walked from its input along the data flow, and each
Conv / BatchNormalization / PRelu / Gemm (or MatMul + Add) is named by its place in arcface_torch's iresnet or
mobilefacenet. A BatchNorm folded into the layer before it comes back unfolded as an exactly equivalent BatchNorm
(weight 1, bias = the folded bias, mean 0, variance 1 - eps), so the network fine-tunes like any other.

Preprocessing: arcface_torch's (RGB, (x - 127.5) / 127.5) unless the graph starts with Sub / Mul / Div / Add by
constants on its input (MXNet-converted recognisers): the file then takes raw 0-255 pixels, and those constants are
the preprocessing. insightface feeds every ONNX recogniser RGB (cv2.dnn.blobFromImages(swapRB=True)).
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import numpy_helper

from nets.pretrained.weights import ARCFACE_TORCH_BN_EPSILON, ImportedWeights, Preprocessing, running_var_for_epsilon

log = logging.getLogger(__name__)

# onnx writes a ModelProto's fields in field-number order: ir_version (field 1, a varint) comes first.
_MODEL_PROTO_FIRST_BYTE = b"\x08"
# Nodes that hand their first input on unchanged at inference.
_PASS_THROUGH = ("Identity", "Dropout")
# Nodes that read only a tensor's shape (the dynamic-batch Reshape of x.view(x.size(0), -1)), not its values.
_SHAPE_READERS = ("Shape",)
_WEIGHTED = ("Conv", "BatchNormalization", "PRelu", "Gemm", "MatMul")
_INPUT_AFFINE = ("Sub", "Mul", "Div", "Add")


def recognise(path: Path) -> bool:
    """Whether `path` holds an ONNX ModelProto with a graph (by content; any suffix)."""
    try:
        with open(path, "rb") as stream:
            if stream.read(1) != _MODEL_PROTO_FIRST_BYTE:
                return False
        _load(Path(path), load_external_data=False)
    except (OSError, ValueError):
        return False
    return True


def read(path: Path) -> ImportedWeights:
    """The recogniser in the ONNX file `path` as arcface_torch iresnet / mobilefacenet arrays + its preprocessing.

    Raises:
        ValueError: not an ONNX model, or a node the walk does not expect (the message names it and what was
            expected).
    """
    started = time.perf_counter()
    model = _load(Path(path), load_external_data=True)
    graph = _Graph(model.graph)
    preprocessing, tensor = _input_normalisation(graph)
    walker = _Walker(graph)
    architecture = _mobilefacenet if graph.has_grouped_conv() else _iresnet
    graph.check_walked_to_output(architecture(walker, tensor))
    log.info("read %s: %s, %d arrays, %s, in %.2f s", path, architecture.__name__.strip("_"), len(walker.arrays),
             preprocessing, time.perf_counter() - started)
    return ImportedWeights(layout="arcface_torch", arrays=walker.arrays, preprocessing=preprocessing,
                           source=str(path))


def _load(path: Path, load_external_data: bool) -> onnx.ModelProto:
    try:
        # format given: onnx would otherwise pick a text format by the suffix (.json, .txt)
        model = onnx.load_model(str(path), format="protobuf", load_external_data=load_external_data)
    except DecodeError as error:
        raise ValueError(f"{path}: not an ONNX model ({error})") from error
    if model.ir_version <= 0 or not model.HasField("graph") or not model.graph.node:
        raise ValueError(f"{path}: not an ONNX model (a protobuf without an ir_version and a graph of nodes)")
    return model


def _node_text(node: onnx.NodeProto) -> str:
    return f"{node.op_type} node {node.name or '(unnamed)'!r}"


def _attribute(node: onnx.NodeProto, name: str, default):
    for attribute in node.attribute:
        if attribute.name == name:
            return onnx.helper.get_attribute_value(attribute)
    return default


class _Graph:
    """A GraphProto's data flow: the nodes consuming each tensor, its constants, and which nodes the walk has read."""

    def __init__(self, graph: onnx.GraphProto):
        self.nodes = list(graph.node)
        self.constants = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
        for node in self.nodes:
            if node.op_type == "Constant":
                self.constants[node.output[0]] = self._constant_node_value(node)
        self.consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for node in self.nodes:
            if node.op_type not in _SHAPE_READERS:
                for name in node.input[:1] if node.op_type == "Reshape" else node.input:
                    self.consumers[name].append(node)
        inputs = [value.name for value in graph.input if value.name not in self.constants]
        if len(inputs) != 1:
            raise ValueError(f"expected a graph with one image input; it has {inputs}")
        self.input = inputs[0]
        self.outputs = [value.name for value in graph.output]
        self.walked: set[int] = set()

    @staticmethod
    def _constant_node_value(node: onnx.NodeProto) -> np.ndarray:
        for attribute in node.attribute:
            if attribute.name in ("value", "value_float", "value_floats", "value_int", "value_ints"):
                value = onnx.helper.get_attribute_value(attribute)
                return numpy_helper.to_array(value) if attribute.name == "value" else np.asarray(value)
        raise ValueError(f"{_node_text(node)}: expected a tensor or number value")

    def data_consumers(self, tensor: str) -> list[onnx.NodeProto]:
        """The nodes reading `tensor`'s values, looking through Identity / Dropout."""
        found = []
        for node in self.consumers.get(tensor, []):
            if node.op_type in _PASS_THROUGH:
                self.walked.add(id(node))
                found += self.data_consumers(node.output[0])
            else:
                found.append(node)
        return found

    def next(self, tensor: str, ops: tuple[str, ...]) -> onnx.NodeProto:
        """The one node of a type in `ops` that reads `tensor` (others may read it too: a branch), marked walked."""
        consumers = self.data_consumers(tensor)
        matching = [node for node in consumers if node.op_type in ops]
        if len(matching) != 1:
            found = ", ".join(_node_text(node) for node in consumers) or "nothing (the graph ends)"
            raise ValueError(f"after tensor {tensor!r} expected one {' or '.join(ops)} node; found {found}")
        self.walked.add(id(matching[0]))
        return matching[0]

    def reads(self, tensor: str, op: str) -> bool:
        return any(node.op_type == op for node in self.data_consumers(tensor))

    def constant(self, node: onnx.NodeProto, position: int) -> np.ndarray | None:
        """Input `position` of `node` as float32, None when absent; ValueError when it is not a constant."""
        if position >= len(node.input) or not node.input[position]:
            return None
        name = node.input[position]
        if name not in self.constants:
            raise ValueError(f"{_node_text(node)}: expected input {position} ({name!r}) to be a constant")
        return np.asarray(self.constants[name], dtype=np.float32)

    def has_grouped_conv(self) -> bool:
        return any(node.op_type == "Conv" and _attribute(node, "group", 1) > 1 for node in self.nodes)

    def check_walked_to_output(self, tensor: str) -> None:
        if self.outputs != [tensor]:
            raise ValueError(f"expected the walk to end at the graph's only output {self.outputs}; it ended at "
                             f"{tensor!r}")
        left = [_node_text(node) for node in self.nodes if node.op_type in _WEIGHTED and id(node) not in self.walked]
        if left:
            raise ValueError(f"nodes off the recogniser's path (not an arcface_torch iresnet / mobilefacenet?): "
                             f"{', '.join(left)}")


class _Walker:
    """Reads layers off the graph into `arrays` under arcface_torch's names; each method returns its output tensor."""

    def __init__(self, graph: _Graph):
        self.graph = graph
        self.arrays: dict[str, np.ndarray] = {}

    def conv(self, tensor: str, conv_name: str, bn_name: str) -> str:
        """A bias-free conv and its BN (a conv bias, the exporter's folded BN, goes into the BN)."""
        node = self.graph.next(tensor, ("Conv",))
        if any(step != 1 for step in _attribute(node, "dilations", [1])) or \
                _attribute(node, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            raise ValueError(f"{_node_text(node)}: expected an undilated conv with explicit pads")
        weight = self.graph.constant(node, 1)
        self.arrays[f"{conv_name}.weight"] = weight
        return self._bias_then_batch_norm(node.output[0], self.graph.constant(node, 2), weight.shape[0], bn_name)

    def batch_norm(self, tensor: str, name: str) -> str:
        node = self.graph.next(tensor, ("BatchNormalization",))
        weight, bias, mean, variance = (self.graph.constant(node, position).astype(np.float64)
                                        for position in range(1, 5))
        epsilon = float(_attribute(node, "epsilon", ARCFACE_TORCH_BN_EPSILON))
        self.arrays.update({f"{name}.weight": weight.astype(np.float32), f"{name}.bias": bias.astype(np.float32),
                            f"{name}.running_mean": mean.astype(np.float32),
                            f"{name}.running_var": running_var_for_epsilon(variance, epsilon)})
        return node.output[0]

    def prelu(self, tensor: str, name: str) -> str:
        node = self.graph.next(tensor, ("PRelu",))
        self.arrays[f"{name}.weight"] = self.graph.constant(node, 1).reshape(-1)  # exported as (C, 1, 1)
        return node.output[0]

    def flatten(self, tensor: str) -> str:
        node = self.graph.next(tensor, ("Flatten", "Reshape"))
        if node.op_type == "Flatten" and _attribute(node, "axis", 1) != 1:
            raise ValueError(f"{_node_text(node)}: expected axis 1 (keep the batch dimension)")
        shape = self.graph.constants.get(node.input[1]) if node.op_type == "Reshape" else None
        if shape is not None and shape.size != 2:
            raise ValueError(f"{_node_text(node)}: expected a reshape to (batch, features); found shape "
                             f"{shape.tolist()}")
        return node.output[0]

    def add(self, tensor: str, other: str) -> str:
        """The Add joining a residual branch `tensor` with its shortcut `other`."""
        node = self.graph.next(tensor, ("Add",))
        if sorted(node.input) != sorted((tensor, other)):
            raise ValueError(f"{_node_text(node)}: expected it to add {tensor!r} and the shortcut {other!r}; "
                             f"it adds {list(node.input)}")
        return node.output[0]

    def linear(self, tensor: str, fc_name: str, bn_name: str, has_bias: bool) -> str:
        """The embedding layer (Gemm, or MatMul + Add) and the BatchNorm1d after it, possibly folded into it."""
        node = self.graph.next(tensor, ("Gemm", "MatMul"))
        weight = self.graph.constant(node, 1)
        if node.op_type == "Gemm":
            if _attribute(node, "transA", 0):
                raise ValueError(f"{_node_text(node)}: expected transA=0")
            weight = weight * _attribute(node, "alpha", 1.0)
            weight = weight if _attribute(node, "transB", 0) else weight.T
            bias = self.graph.constant(node, 2)
            bias = None if bias is None else np.broadcast_to(bias * _attribute(node, "beta", 1.0), weight.shape[:1])
            output = node.output[0]
        else:
            weight = weight.T  # MatMul's B is (in, out)
            output, bias = self._constant_add(node.output[0])
        self.arrays[f"{fc_name}.weight"] = np.ascontiguousarray(weight, dtype=np.float32)
        return self._bias_then_batch_norm(output, bias, weight.shape[0], bn_name,
                                          bias_name=f"{fc_name}.bias" if has_bias else None)

    def _constant_add(self, tensor: str) -> tuple[str, np.ndarray | None]:
        """MatMul's bias: an Add of a constant right after it, if there is one."""
        consumers = self.graph.data_consumers(tensor)
        if len(consumers) != 1 or consumers[0].op_type != "Add":
            return tensor, None
        node = self.graph.next(tensor, ("Add",))
        position = 1 if node.input[0] == tensor else 0
        return node.output[0], self.graph.constant(node, position).reshape(-1)

    def _bias_then_batch_norm(self, tensor: str, bias: np.ndarray | None, channels: int, bn_name: str,
                              bias_name: str | None = None) -> str:
        """The BN after a layer whose output may carry `bias`. When the architecture has no bias there (bias_name
        None), the bias moves into the BN: BN(x + b) with mean m is BN(x) with mean m - b, and with no BN node at
        all (folded by the exporter) it becomes weight 1, bias b, mean 0, variance 1 - eps."""
        bias = np.zeros(channels, np.float32) if bias is None else bias.astype(np.float32)
        followed_by_bn = self.graph.reads(tensor, "BatchNormalization") and len(self.graph.data_consumers(tensor)) == 1
        if followed_by_bn:
            if bias_name:
                self.arrays[bias_name] = bias
            tensor = self.batch_norm(tensor, bn_name)
            if not bias_name:
                self.arrays[f"{bn_name}.running_mean"] = self.arrays[f"{bn_name}.running_mean"] - bias
            return tensor
        if bias_name:
            self.arrays[bias_name] = np.zeros(channels, np.float32)
        self.arrays.update({f"{bn_name}.weight": np.ones(channels, np.float32), f"{bn_name}.bias": bias,
                            f"{bn_name}.running_mean": np.zeros(channels, np.float32),
                            f"{bn_name}.running_var": np.full(channels, 1 - ARCFACE_TORCH_BN_EPSILON, np.float32)})
        return tensor


def _input_normalisation(graph: _Graph) -> tuple[Preprocessing, str]:
    """The Sub / Mul / Div / Add by constants that start the graph, as a Preprocessing, and the tensor after them.

    Without any, the file expects arcface_torch's normalised input, and its preprocessing is arcface_torch's."""
    scale, offset = 1.0, 0.0  # the graph so far computes scale * pixels + offset
    tensor = graph.input
    while len(consumers := graph.data_consumers(tensor)) == 1 and consumers[0].op_type in _INPUT_AFFINE:
        node = graph.next(tensor, _INPUT_AFFINE)
        if node.input[0] != tensor and node.op_type in ("Sub", "Div"):
            raise ValueError(f"{_node_text(node)}: expected the input as the first operand (x - c or x / c)")
        value = _uniform_constant(graph, node, 1 if node.input[0] == tensor else 0)
        if node.op_type == "Sub":
            offset -= value
        elif node.op_type == "Add":
            offset += value
        else:
            factor = value if node.op_type == "Mul" else 1.0 / value
            scale, offset = scale * factor, offset * factor
        tensor = node.output[0]
    if tensor == graph.input:
        return Preprocessing(), tensor
    return Preprocessing(channel_order="RGB", mean=-offset / scale, scale=scale), tensor


def _uniform_constant(graph: _Graph, node: onnx.NodeProto, position: int) -> float:
    """The one number a Sub / Mul / ... applies to every channel (Preprocessing has one mean and one scale)."""
    value = graph.constant(node, position)
    if value.size == 0 or not np.all(value == value.flat[0]):
        raise ValueError(f"{_node_text(node)}: expected one constant for all channels; found {value.tolist()}")
    return float(value.flat[0])


def _iresnet(walker: _Walker, tensor: str) -> str:
    """arcface_torch IResNet: conv1, bn1, prelu, layer1-4 of IBasicBlocks (each layer's first block with a
    downsample conv), bn2, flatten, fc, features."""
    tensor = walker.prelu(walker.conv(tensor, "conv1", "bn1"), "prelu")
    layer, block = 0, 0
    while walker.graph.reads(tensor, "Add") or walker.graph.reads(tensor, "Conv"):
        has_downsample = walker.graph.reads(tensor, "Conv")
        layer, block = (layer + 1, 0) if has_downsample else (layer, block + 1)
        if layer == 0:
            raise ValueError(f"after tensor {tensor!r} expected layer1's first block, with a downsample Conv")
        tensor = _iresnet_block(walker, tensor, f"layer{layer}.{block}", has_downsample)
    tensor = walker.flatten(walker.batch_norm(tensor, "bn2"))
    return walker.linear(tensor, "fc", "features", has_bias=True)


def _iresnet_block(walker: _Walker, tensor: str, prefix: str, has_downsample: bool) -> str:
    """IBasicBlock: bn1, conv1, bn2, prelu, conv2, bn3, + the input (or its downsample conv + BN)."""
    residual = walker.batch_norm(tensor, f"{prefix}.bn1")
    residual = walker.prelu(walker.conv(residual, f"{prefix}.conv1", f"{prefix}.bn2"), f"{prefix}.prelu")
    residual = walker.conv(residual, f"{prefix}.conv2", f"{prefix}.bn3")
    shortcut = walker.conv(tensor, f"{prefix}.downsample.0", f"{prefix}.downsample.1") if has_downsample else tensor
    return walker.add(residual, shortcut)


def _mobilefacenet(walker: _Walker, tensor: str) -> str:
    """arcface_torch MobileFaceNet: layers.0 ConvBlock, layers.1 ConvBlock (blocks[0] == 1) or Residual, then three
    DepthWise + Residual pairs (layers.2-7), conv_sep, and GDC (features: LinearBlock, Flatten, Linear, BN1d)."""
    tensor = _conv_block(walker, tensor, "layers.0")
    first: Callable[[_Walker, str, str], str] = _residual if walker.graph.reads(tensor, "Add") else _conv_block
    tensor = first(walker, tensor, "layers.1")
    for index in (2, 4, 6):
        tensor = _residual(walker, _depthwise(walker, tensor, f"layers.{index}"), f"layers.{index + 1}")
    tensor = _conv_block(walker, tensor, "conv_sep")
    tensor = walker.flatten(_conv_block(walker, tensor, "features.layers.0", activation=False))
    return walker.linear(tensor, "features.layers.2", "features.layers.3", has_bias=False)


def _conv_block(walker: _Walker, tensor: str, prefix: str, activation: bool = True) -> str:
    """ConvBlock (conv, BN, PReLU in .layers.0-2) or, without activation, LinearBlock (conv, BN)."""
    tensor = walker.conv(tensor, f"{prefix}.layers.0", f"{prefix}.layers.1")
    return walker.prelu(tensor, f"{prefix}.layers.2") if activation else tensor


def _depthwise(walker: _Walker, tensor: str, prefix: str) -> str:
    """DepthWise: 1x1 ConvBlock, grouped 3x3 ConvBlock, 1x1 LinearBlock."""
    tensor = _conv_block(walker, tensor, f"{prefix}.layers.0")
    tensor = _conv_block(walker, tensor, f"{prefix}.layers.1")
    return _conv_block(walker, tensor, f"{prefix}.layers.2", activation=False)


def _residual(walker: _Walker, tensor: str, prefix: str) -> str:
    """Residual: DepthWise blocks each added to its input, as many as the graph holds."""
    block = 0
    while walker.graph.reads(tensor, "Add"):
        tensor = walker.add(_depthwise(walker, tensor, f"{prefix}.layers.{block}"), tensor)
        block += 1
    return tensor
