"""Runs inside the PyTorch side venv (tests/torch_side.py), never in ours: writes insightface-style ONNX recognisers.

    python onnx_writer.py SPEC OUT

SPEC is a JSON file {"embedding_size": int, "seed": int}. For each architecture (iresnet18, mbf) it writes, with
random weights (BN statistics included):
    OUT/<arch>.npz          the state dict (torch names, numpy arrays; num_batches_tracked left out),
    OUT/<arch>.onnx         exported as arcface_torch's torch2onnx.py does (TorchScript exporter, opset 11, input
                            "data", 1x3x112x112, batch dimension renamed "None" afterwards),
    OUT/<arch>_unfused.onnx the same export with every BatchNormalization kept as a node (training=PRESERVE),
    OUT/<arch>_folded.onnx  the first file as onnx-simplifier leaves it: every BatchNormalization that follows a Conv,
                            Gemm or MatMul folded into it (a MatMul becomes a Gemm with bias), initializers renamed
                            onnx::<Op>_<n>,
and OUT/iresnet18_ingraph.onnx: the iresnet18 with its input normalisation inside the graph (Sub 127.5, Mul 1/128 on
raw pixels), as insightface's MXNet-converted recognisers start.

The networks are arcface_torch's iresnet / mobilefacenet as tests/torch_writer.py declares them (same module names,
so the same state_dict keys); this script runs beside it, as a sibling module.
"""

import json
import sys
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from torch_writer import IResNet, MobileFaceNet


class InGraphNormalisation(nn.Module):
    """Raw 0-255 pixels in, the network's (x - 127.5) / 128 applied as the graph's first Sub and Mul."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net((x - 127.5) * 0.0078125)


def randomise(net, generator):
    """Random weights that keep activations in a sane range through the network, and non-trivial BN statistics."""
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                fan_in = module.weight[0].numel()
                module.weight.normal_(0, (1.0 / fan_in) ** 0.5, generator=generator)
                if module.bias is not None:
                    module.bias.normal_(0, 0.1, generator=generator)
            elif isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.weight.uniform_(0.5, 1.5, generator=generator)
                module.bias.normal_(0, 0.1, generator=generator)
                module.running_mean.normal_(0, 0.1, generator=generator)
                module.running_var.uniform_(0.5, 2.0, generator=generator)
            elif isinstance(module, nn.PReLU):
                module.weight.uniform_(0.1, 0.3, generator=generator)
    return net.eval()


def export(net, path, training=torch.onnx.TrainingMode.EVAL):
    """torch2onnx.py's convert_onnx: TorchScript exporter, opset 11, input "data", then the batch dim renamed.

    `training=PRESERVE` (the network is in eval mode either way) keeps the exporter from fusing Conv + BN."""
    example = torch.from_numpy(((np.random.randint(0, 255, (1, 3, 112, 112)) / 255.0 - 0.5) / 0.5).astype("float32"))
    torch.onnx.export(net, example, str(path), input_names=["data"], keep_initializers_as_inputs=False,
                      verbose=False, opset_version=11, dynamo=False, training=training)
    model = onnx.load(str(path))
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "None"
    onnx.save(model, str(path))


def fold_batch_norms(model):
    """What onnx-simplifier does to these graphs: each BatchNormalization fed only by a Conv / Gemm / MatMul is folded
    into it (weight scaled per output channel, a bias added), then every initializer gets a meaningless name."""
    graph = model.graph
    weights = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    producer = {output: node for node in graph.node for output in node.output}
    users = {}
    for node in graph.node:
        for name in node.input:
            users[name] = users.get(name, 0) + 1
    kept = []
    for node in graph.node:
        source = producer.get(node.input[0]) if node.op_type == "BatchNormalization" else None
        if source is None or source.op_type not in ("Conv", "Gemm", "MatMul") or users[node.input[0]] != 1:
            kept.append(node)
            continue
        gamma, beta, mean, var = (weights[name] for name in node.input[1:5])
        epsilon = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-5)
        factor = gamma / np.sqrt(var + epsilon)
        weight = weights[source.input[1]]
        bias = weights[source.input[2]] if len(source.input) > 2 else np.zeros_like(mean)
        trans_b = next((a.i for a in source.attribute if a.name == "transB"), 0)
        if source.op_type == "Conv":
            weight = weight * factor[:, None, None, None]
        elif source.op_type == "Gemm" and trans_b:
            weight = weight * factor[:, None]
        else:  # MatMul or Gemm without transB: B is (in, out)
            weight = weight * factor[None, :]
        if source.op_type == "MatMul":
            source.op_type = "Gemm"
        weights[source.input[1]] = weight.astype(np.float32)
        bias_name = source.input[1] + "_folded_bias"
        weights[bias_name] = ((bias - mean) * factor + beta).astype(np.float32)
        del source.input[2:]
        source.input.append(bias_name)
        source.output[0] = node.output[0]
    del graph.node[:]
    graph.node.extend(kept)
    renamed = {}
    for node in graph.node:
        for position, name in enumerate(node.input):
            if name in weights:
                renamed.setdefault(name, f"onnx::{node.op_type}_{len(renamed) + 1000}")
                node.input[position] = renamed[name]
    del graph.initializer[:]
    graph.initializer.extend(numpy_helper.from_array(weights[old], new) for old, new in renamed.items())
    onnx.checker.check_model(model)
    return model


def state_arrays(net):
    return {name: tensor.detach().numpy() for name, tensor in net.state_dict().items()
            if not name.endswith("num_batches_tracked")}


def main(spec_path, out):
    spec = json.loads(Path(spec_path).read_text())
    torch.set_num_threads(1)  # a 1-image trace needs no more; more threads only contend on a busy CI machine
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(spec["seed"])
    nets = {"iresnet18": IResNet((2, 2, 2, 2), spec["embedding_size"]), "mbf": MobileFaceNet(spec["embedding_size"])}
    for name, net in nets.items():
        randomise(net, generator)
        np.savez(out / f"{name}.npz", **state_arrays(net))
        export(net, out / f"{name}.onnx")
        export(net, out / f"{name}_unfused.onnx", training=torch.onnx.TrainingMode.PRESERVE)
        onnx.save(fold_batch_norms(onnx.load(str(out / f"{name}.onnx"))), str(out / f"{name}_folded.onnx"))
    export(InGraphNormalisation(nets["iresnet18"]), out / "iresnet18_ingraph.onnx")


if __name__ == "__main__":
    main(*sys.argv[1:])
