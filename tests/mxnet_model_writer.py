"""Runs inside the mxnet 1.9.1 side venv (tests/side_venv.py), never in ours: model-zoo-style MXNet models.

    python mxnet_model_writer.py model SPEC OUT   for each of SPEC["models"] ({arch, units, embedding, seed}), in
        OUT/<arch>: builds the symbol of insightface's fresnet.py (residual_unit_v3, version_input 1, output "E") or
        fmobilefacenet.py (output "GDC") with random weights; saves model-symbol.json + model-0000.params with
        mx.model.save_checkpoint; loads them back with mx.model.load_checkpoint and runs the fc1 output as
        insightface's face_model does on the pixels of SPEC["pixels"] (NCHW RGB 0-255, .npy) -> embedding.npy;
        every loaded array -> params.npz ("arg:name" / "aux:name"); the same arrays saved under numpy shape
        semantics -> v3.params.
    python mxnet_model_writer.py load SPEC OUT    mx.nd.load of each file of SPEC["params"] -> OUT/<its name>.npz
        (shows that mxnet itself accepts a file written by hand in an older layout).
    python mxnet_model_writer.py model,load SPEC OUT   both from one SPEC, under one mxnet import (seconds each).

The layer names are those of insightface's symbol code (fetched from github:deepinsight/insightface,
recognition/arcface_mxnet/symbol/); SPEC is a JSON file.
"""

import json
import sys
from pathlib import Path

import mxnet as mx
import numpy as np

BN_MOMENTUM = 0.9
INSIGHTFACE_EPS = 2e-5
STORED_FIX_GAMMA = 3.0  # what a fix_gamma BN stores; mxnet must ignore it


def prelu(data, name):
    return mx.sym.LeakyReLU(data=data, act_type="prelu", name=name)


def batchnorm(data, name, fix_gamma=False, eps=INSIGHTFACE_EPS):
    return mx.sym.BatchNorm(data=data, fix_gamma=fix_gamma, eps=eps, momentum=BN_MOMENTUM, name=name)


def conv(data, filters, kernel, stride, pad, name, groups=1):
    return mx.sym.Convolution(data=data, num_filter=filters, kernel=(kernel, kernel), stride=(stride, stride),
                              pad=(pad, pad), num_group=groups, no_bias=True, name=name)


def ir_unit(data, filters, stride, dim_match, name):
    """fresnet.residual_unit_v3 without SE and without the bottleneck."""
    body = batchnorm(data, f"{name}_bn1")
    body = conv(body, filters, 3, 1, 1, f"{name}_conv1")
    body = prelu(batchnorm(body, f"{name}_bn2"), f"{name}_relu1")
    body = batchnorm(conv(body, filters, 3, stride, 1, f"{name}_conv2"), f"{name}_bn3")
    shortcut = data if dim_match else batchnorm(conv(data, filters, 1, stride, 0, f"{name}_conv1sc"), f"{name}_sc")
    return body + shortcut


def iresnet_symbol(units, embedding):
    """fresnet.resnet with version_input 1, output "E" (+ the fc7 classifier of a training checkpoint)."""
    data = mx.sym.identity(data=mx.sym.Variable("data"), name="id")
    body = (data - 127.5) * 0.0078125  # named _minusscalar0, _mulscalar0 by mxnet
    body = prelu(batchnorm(conv(body, 64, 3, 1, 1, "conv0"), "bn0"), "relu0")
    for stage, (count, filters) in enumerate(zip(units, (64, 128, 256, 512)), start=1):
        for unit in range(1, count + 1):
            body = ir_unit(body, filters, 2 if unit == 1 else 1, unit != 1, f"stage{stage}_unit{unit}")
    body = mx.sym.Dropout(data=batchnorm(body, "bn1"), p=0.4)
    fc1 = batchnorm(mx.sym.FullyConnected(data=body, num_hidden=embedding, name="pre_fc1"), "fc1", fix_gamma=True)
    return mx.sym.FullyConnected(data=fc1, num_hidden=10, no_bias=True, name="fc7")


def mbf_conv(data, filters, kernel, stride, pad, name, groups=1, act=True):
    """fmobilefacenet's Conv / Linear: conv2d + batchnorm (mxnet's default eps and fix_gamma=False) [+ PReLU]."""
    body = conv(data, filters, kernel, stride, pad, f"{name}_conv2d", groups)
    body = mx.sym.BatchNorm(data=body, fix_gamma=False, momentum=BN_MOMENTUM, name=f"{name}_batchnorm")
    return prelu(body, f"{name}_relu") if act else body


def depthwise(data, out, stride, groups, name):
    """fmobilefacenet's DResidual."""
    body = mbf_conv(data, groups, 1, 1, 0, f"{name}_conv_sep")
    body = mbf_conv(body, groups, 3, stride, 1, f"{name}_conv_dw", groups=groups)
    return mbf_conv(body, out, 1, 1, 0, f"{name}_conv_proj", act=False)


def residual(data, blocks, out, groups, name):
    for block in range(blocks):
        data = depthwise(data, out, 1, groups, f"{name}_block{block}") + data
    return data


def mobilefacenet_symbol(blocks, embedding):
    """fmobilefacenet.get_symbol with output "GDC"."""
    body = (mx.sym.Variable("data") - 127.5) * 0.0078125
    body = mbf_conv(body, 64, 3, 2, 1, "conv_1")
    body = (mbf_conv(body, 64, 3, 1, 1, "conv_2_dw", groups=64) if blocks[0] == 1
            else residual(body, blocks[0], 64, 64, "res_2"))
    body = residual(depthwise(body, 64, 2, 128, "dconv_23"), blocks[1], 64, 128, "res_3")
    body = residual(depthwise(body, 128, 2, 256, "dconv_34"), blocks[2], 128, 256, "res_4")
    body = residual(depthwise(body, 128, 2, 512, "dconv_45"), blocks[3], 128, 256, "res_5")
    body = mbf_conv(body, 512, 1, 1, 0, "conv_6sep")
    body = mbf_conv(body, 512, 7, 1, 0, "conv_6dw7_7", groups=512, act=False)
    body = mx.sym.FullyConnected(data=body, num_hidden=embedding, name="pre_fc1")
    return batchnorm(body, "fc1", fix_gamma=True)


def random_params(symbol, input_shape, seed):
    """Weights that keep the activations of a deep random network in range, and BN statistics far from 0 / 1."""
    rng = np.random.default_rng(seed)
    arg_shapes, _, aux_shapes = symbol.infer_shape(data=input_shape)
    ops = {node["name"]: node["op"] for node in json.loads(symbol.tojson())["nodes"]}
    args, auxs = {}, {}
    for name, shape in zip(symbol.list_arguments(), arg_shapes):
        layer, _, kind = name.rpartition("_")
        if name == "data":
            continue
        if kind == "weight":
            value = rng.normal(0, np.sqrt(1.5 / np.prod(shape[1:])), shape)
        elif kind == "gamma" and ops.get(layer) == "LeakyReLU":
            value = rng.uniform(0.05, 0.4, shape)
        elif kind == "gamma":
            value = np.full(shape, STORED_FIX_GAMMA) if layer == "fc1" else rng.uniform(0.6, 1.4, shape)
        else:  # beta, bias
            value = rng.normal(0, 0.1, shape)
        args[name] = mx.nd.array(value.astype(np.float32))
    for name, shape in zip(symbol.list_auxiliary_states(), aux_shapes):
        value = rng.normal(0, 0.1, shape) if name.endswith("moving_mean") else rng.uniform(0.5, 1.5, shape)
        if name == "fc1_moving_var":  # small, so that the embedding shows an eps off by 1e-5
            value = rng.uniform(1e-4, 1e-3, shape)
        auxs[name] = mx.nd.array(value.astype(np.float32))
    return args, auxs


def embed(prefix, pixels):
    """insightface's face_model: the fc1 output of the loaded checkpoint, on NCHW RGB pixels."""
    symbol, args, auxs = mx.model.load_checkpoint(str(prefix), 0)
    module = mx.mod.Module(symbol=symbol.get_internals()["fc1_output"], context=mx.cpu(), label_names=None)
    module.bind(data_shapes=[("data", pixels.shape)], for_training=False)
    module.set_params(args, auxs, allow_extra=True)
    module.forward(mx.io.DataBatch(data=(mx.nd.array(pixels),)), is_train=False)
    return module.get_outputs()[0].asnumpy(), args, auxs


def write_models(spec, out):
    pixels = np.load(spec["pixels"]).astype(np.float32)
    for model in spec["models"]:
        (out / model["arch"]).mkdir(exist_ok=True)
        write_model(model, pixels, out / model["arch"])


def write_model(spec, pixels, out):
    build = iresnet_symbol if spec["arch"] == "iresnet" else mobilefacenet_symbol
    symbol = build(spec["units"], spec["embedding"])
    args, auxs = random_params(symbol, pixels.shape, spec["seed"])
    prefix = out / "model"
    mx.model.save_checkpoint(str(prefix), 0, symbol, args, auxs)
    embedding, loaded_args, loaded_auxs = embed(prefix, pixels)
    np.save(out / "embedding.npy", embedding)
    arrays = {**{f"arg:{name}": value.asnumpy() for name, value in loaded_args.items()},
              **{f"aux:{name}": value.asnumpy() for name, value in loaded_auxs.items()}}
    np.savez(out / "params.npz", **arrays)
    with mx.util.np_shape(True):
        mx.nd.save(str(out / "v3.params"), {name: mx.nd.array(value) for name, value in arrays.items()})


def load_params(spec, out):
    for path in spec["params"]:
        loaded = mx.nd.load(path)
        np.savez(out / f"{Path(path).name}.npz", **{name: value.asnumpy() for name, value in loaded.items()})


MODES = {"model": write_models, "load": load_params}


def main(modes, spec_path, out):
    spec = json.loads(Path(spec_path).read_text())
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for mode in modes.split(","):
        MODES[mode](spec, out)


if __name__ == "__main__":
    main(*sys.argv[1:])
