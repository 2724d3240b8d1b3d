"""nets.pretrained.build and nets.load_pretrained: arcface_torch's iresnet and mbf state dicts become our networks.

The reference is a float64 numpy forward pass written here from torch's semantics (NCHW, conv padding 1 on each side,
grouped / depthwise convolutions, BN in eval mode with eps 1e-5, per-channel PReLU, flatten C, H, W, linear layers),
sharing no code with the importer, on random state dicts named as arcface_torch's modules name their arrays. The
input size is inferred from the fc (512 * 2 * 2 -> 32x32) and the global depthwise kernel (2x2 -> 32x32), so the
networks are the real architectures at a small input.
"""

from __future__ import annotations

import sys
import types

import keras
import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view

import nets
import nets.pretrained
from deploy.preprocessing import with_preprocessing as seed_with_preprocessing
from nets.preprocessing import deployment_info
from nets.pretrained.build import build_from_weights
from nets.pretrained.weights import ImportedWeights, Preprocessing

EPS = 1e-5
SIDE = 2  # the last map: 2x2, so the input is 32x32
IRESNET18_UNITS = (2, 2, 2, 2)
IRESNET_PLANES = (64, 128, 256, 512)
EMBEDDING = 64
TOLERANCE = 1e-4


# --- reference: torch semantics in float64 numpy ----------------------------------------------------------------

def conv(x, sd, name, stride=1, padding=0, groups=1):
    """torch.nn.functional.conv2d on NCHW, weight (O, C / groups, kh, kw), plus `name.bias` when the dict has one."""
    weight = sd[f"{name}.weight"]
    x = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    out_channels, group_channels, kh, kw = weight.shape
    windows = sliding_window_view(x, (kh, kw), axis=(2, 3))[:, :, ::stride, ::stride]  # N, C, Ho, Wo, kh, kw
    n, _, ho, wo = windows.shape[:4]
    windows = windows.reshape(n, groups, group_channels, ho, wo, kh, kw)
    weight = weight.reshape(groups, out_channels // groups, group_channels, kh, kw)
    y = np.einsum("ngchwij,gocij->ngohw", windows, weight, optimize=True).reshape(n, out_channels, ho, wo)
    if f"{name}.bias" in sd:
        y = y + sd[f"{name}.bias"][None, :, None, None]
    return y


def batch_norm(x, sd, name):
    """BatchNorm1d / 2d in eval mode over axis 1; absent from a folded dict (then the identity)."""
    if f"{name}.weight" not in sd:
        return x
    shape = (1, -1) + (1,) * (x.ndim - 2)
    mean, var = sd[f"{name}.running_mean"].reshape(shape), sd[f"{name}.running_var"].reshape(shape)
    weight, bias = sd[f"{name}.weight"].reshape(shape), sd[f"{name}.bias"].reshape(shape)
    return (x - mean) / np.sqrt(var + EPS) * weight + bias


def prelu(x, sd, name):
    alpha = sd[f"{name}.weight"].reshape(1, -1, 1, 1)
    return np.where(x > 0, x, alpha * x)


def linear(x, sd, name):
    y = x @ sd[f"{name}.weight"].T
    return y + sd[f"{name}.bias"] if f"{name}.bias" in sd else y


def iresnet_forward(sd, x, units=IRESNET18_UNITS):
    """arcface_torch's IResNet.forward (backbones/iresnet.py) on NCHW float64."""
    x = prelu(batch_norm(conv(x, sd, "conv1", 1, 1), sd, "bn1"), sd, "prelu")
    for stage, count in enumerate(units, start=1):
        for index in range(count):
            p, stride = f"layer{stage}.{index}", 2 if index == 0 else 1
            out = conv(batch_norm(x, sd, f"{p}.bn1"), sd, f"{p}.conv1", 1, 1)
            out = prelu(batch_norm(out, sd, f"{p}.bn2"), sd, f"{p}.prelu")
            out = batch_norm(conv(out, sd, f"{p}.conv2", stride, 1), sd, f"{p}.bn3")
            identity = x
            if f"{p}.downsample.0.weight" in sd:
                identity = batch_norm(conv(x, sd, f"{p}.downsample.0", stride), sd, f"{p}.downsample.1")
            x = out + identity
    x = batch_norm(x, sd, "bn2").reshape(len(x), -1)  # torch.flatten: C, H, W
    return batch_norm(linear(x, sd, "fc"), sd, "features")


def conv_block(x, sd, prefix, stride=1, padding=0, groups=1, activation=True):
    """mobilefacenet's ConvBlock (conv, BN, PReLU) or LinearBlock (conv, BN)."""
    x = batch_norm(conv(x, sd, f"{prefix}.layers.0", stride, padding, groups), sd, f"{prefix}.layers.1")
    return prelu(x, sd, f"{prefix}.layers.2") if activation else x


def depthwise_block(x, sd, prefix, stride, residual):
    """mobilefacenet's DepthWise: 1x1 ConvBlock, depthwise 3x3 ConvBlock (padding 1), 1x1 LinearBlock."""
    groups = sd[f"{prefix}.layers.1.layers.0.weight"].shape[0]
    out = conv_block(x, sd, f"{prefix}.layers.0")
    out = conv_block(out, sd, f"{prefix}.layers.1", stride, 1, groups)
    out = conv_block(out, sd, f"{prefix}.layers.2", activation=False)
    return x + out if residual else out


def mbf_forward(sd, x, residual_units=(4, 6, 2)):
    """arcface_torch's MobileFaceNet.forward (backbones/mobilefacenet.py, blocks (1, 4, 6, 2)) on NCHW float64."""
    x = conv_block(x, sd, "layers.0", 2, 1)
    x = conv_block(x, sd, "layers.1", 1, 1, groups=64)
    for (depthwise, residual), units in zip(((2, 3), (4, 5), (6, 7)), residual_units):
        x = depthwise_block(x, sd, f"layers.{depthwise}", 2, residual=False)
        for index in range(units):
            x = depthwise_block(x, sd, f"layers.{residual}.layers.{index}", 1, residual=True)
    x = conv_block(x, sd, "conv_sep")
    x = conv_block(x, sd, "features.layers.0", groups=x.shape[1], activation=False).reshape(len(x), -1)
    return batch_norm(linear(x, sd, "features.layers.2"), sd, "features.layers.3")


# --- random state dicts with arcface_torch's names ---------------------------------------------------------------

def add_conv(sd, rng, name, out_channels, in_per_group, kernel):
    fan_in = in_per_group * kernel * kernel
    sd[f"{name}.weight"] = rng.normal(0, np.sqrt(1.0 / fan_in), (out_channels, in_per_group, kernel, kernel))


def add_bn(sd, rng, name, channels, weight=None):
    # Small variances (as trained networks have) make the epsilon matter: 2e-5 instead of 1e-5 fails the parity.
    variance = rng.uniform(0.005, 0.05, channels)
    gain = rng.uniform(0.5, 1.5, channels) * np.sqrt(variance)
    sd[f"{name}.weight"] = gain if weight is None else np.full(channels, weight)
    sd[f"{name}.bias"] = rng.normal(0, 0.1, channels)
    sd[f"{name}.running_mean"] = rng.normal(0, 0.1, channels)
    sd[f"{name}.running_var"] = variance
    sd[f"{name}.num_batches_tracked"] = np.array(7, np.int64)  # torch's counter: ignored by the importer


def add_prelu(sd, rng, name, channels):
    sd[f"{name}.weight"] = rng.uniform(0.0, 0.5, channels)


def iresnet_state_dict(seed=0, units=IRESNET18_UNITS):
    rng = np.random.default_rng(seed)
    sd = {}
    add_conv(sd, rng, "conv1", 64, 3, 3)
    add_bn(sd, rng, "bn1", 64)
    add_prelu(sd, rng, "prelu", 64)
    inplanes = 64
    for stage, (count, planes) in enumerate(zip(units, IRESNET_PLANES), start=1):
        for index in range(count):
            p = f"layer{stage}.{index}"
            add_bn(sd, rng, f"{p}.bn1", inplanes)
            add_conv(sd, rng, f"{p}.conv1", planes, inplanes, 3)
            add_bn(sd, rng, f"{p}.bn2", planes)
            add_prelu(sd, rng, f"{p}.prelu", planes)
            add_conv(sd, rng, f"{p}.conv2", planes, planes, 3)
            add_bn(sd, rng, f"{p}.bn3", planes)
            if index == 0:  # stride 2: arcface_torch's downsample, in layer1 too (64 -> 64)
                add_conv(sd, rng, f"{p}.downsample.0", planes, inplanes, 1)
                add_bn(sd, rng, f"{p}.downsample.1", planes)
            inplanes = planes
    add_bn(sd, rng, "bn2", 512)
    sd["fc.weight"] = rng.normal(0, np.sqrt(1.0 / (512 * SIDE * SIDE)), (EMBEDDING, 512 * SIDE * SIDE))
    sd["fc.bias"] = rng.normal(0, 0.1, EMBEDDING)
    add_bn(sd, rng, "features", EMBEDDING, weight=1.0)  # arcface_torch fixes it at 1.0
    return sd


# (stem channels, stages as (DepthWise index, Residual index, in, out, DepthWise groups, units, Residual groups)):
# arcface_torch's get_mbf (scale 2, blocks (1, 4, 6, 2)), and the MXNet zoo's fmobilefacenet width in its names.
MBF_WIDTHS = {
    "arcface_torch": (128, ((2, 3, 128, 128, 128, 4, 128), (4, 5, 128, 256, 256, 6, 256),
                            (6, 7, 256, 256, 512, 2, 256))),
    "mxnet_zoo": (64, ((2, 3, 64, 64, 128, 4, 128), (4, 5, 64, 128, 256, 6, 256), (6, 7, 128, 128, 512, 2, 256))),
}


def mbf_state_dict(seed=0, width="arcface_torch"):
    """arcface_torch's MobileFaceNet(num_features=EMBEDDING) at `width`; GDC over a SIDE x SIDE map."""
    rng = np.random.default_rng(seed)
    sd = {}

    def block(prefix, in_channels, out_channels, kernel=1, groups=1, activation=True):
        add_conv(sd, rng, f"{prefix}.layers.0", out_channels, in_channels // groups, kernel)
        add_bn(sd, rng, f"{prefix}.layers.1", out_channels)
        if activation:
            add_prelu(sd, rng, f"{prefix}.layers.2", out_channels)

    def depthwise(prefix, in_channels, out_channels, groups):
        block(f"{prefix}.layers.0", in_channels, groups)
        block(f"{prefix}.layers.1", groups, groups, 3, groups)
        block(f"{prefix}.layers.2", groups, out_channels, activation=False)

    stem, stages = MBF_WIDTHS[width]
    block("layers.0", 3, stem, 3)
    block("layers.1", stem, stem, 3, groups=64)
    for depthwise_index, residual_index, channels_in, channels, groups, units, residual_groups in stages:
        depthwise(f"layers.{depthwise_index}", channels_in, channels, groups)
        for index in range(units):
            depthwise(f"layers.{residual_index}.layers.{index}", channels, channels, residual_groups)
    block("conv_sep", stages[-1][3], 512)
    block("features.layers.0", 512, 512, SIDE, groups=512, activation=False)
    sd["features.layers.2.weight"] = rng.normal(0, np.sqrt(1.0 / 512), (EMBEDDING, 512))
    add_bn(sd, rng, "features.layers.3", EMBEDDING)
    return sd


def imported(sd, preprocessing=None):
    arrays = {name: np.asarray(value, np.float32 if value.dtype.kind == "f" else value.dtype)
              for name, value in sd.items()}
    return ImportedWeights("arcface_torch", arrays, preprocessing or Preprocessing(), "test arrays")


def nchw_float64(images_nhwc):
    return np.asarray(images_nhwc, np.float64).transpose(0, 3, 1, 2)


def relative_difference(actual, reference):
    return float(np.max(np.abs(np.asarray(actual, np.float64) - reference)) / np.max(np.abs(reference)))


@pytest.fixture(scope="module")
def inputs():
    return np.random.default_rng(1).normal(0, 1, (2, 16 * SIDE, 16 * SIDE, 3)).astype(np.float32)


# --- tests --------------------------------------------------------------------------------------------------------

def test_iresnet18_equals_the_torch_forward(inputs):
    """Depth from the layer{k}.{i} keys, input size from fc: our resnet_ir with the arcface_torch options (BN eps
    1e-5, projection shortcut in layer1 too, fc rows permuted from the NCHW flatten) computes arcface_torch's."""
    sd = iresnet_state_dict()
    model = build_from_weights(imported(sd))
    assert model.name == "iresnet18" and model.input_shape == (None, 32, 32, 3)
    assert model.output_shape == (None, EMBEDDING)
    reference = iresnet_forward(sd, nchw_float64(inputs))
    assert relative_difference(model(inputs, training=False), reference) < TOLERANCE
    # The options are the arcface_torch ones (a wrong epsilon, padding or flatten order fails the parity above).
    assert model.get_layer("bn0").epsilon == 1e-5 and model.get_layer("E_BN2").epsilon == 1e-5


@pytest.mark.parametrize("width", MBF_WIDTHS)
def test_mbf_equals_the_torch_forward(inputs, width):
    """arcface_torch's mbf: 128-channel stem, grouped (64) second conv, DepthWise / Residual stages, GDC, linear
    and BatchNorm1d; the structure read from the shapes. At the MXNet zoo's width (64 channels, the second conv
    depthwise) it is the paper's MobileFaceNet, our builder's default stages."""
    sd = mbf_state_dict(width=width)
    model = build_from_weights(imported(sd))
    assert model.name == "mbf" and model.input_shape == (None, 32, 32, 3)
    if width == "arcface_torch":
        assert model.get_layer("conv2_grouped").groups == 64
    else:
        assert isinstance(model.get_layer("conv2_dw"), keras.layers.DepthwiseConv2D)
        assert model.count_params() == nets.get_mobilefacenet(image_size=32, embedding_size=EMBEDDING).count_params()
    reference = mbf_forward(sd, nchw_float64(inputs))
    assert relative_difference(model(inputs, training=False), reference) < TOLERANCE


def fold(sd, pairs):
    """The dict an exporter writes when it folds each BN into the conv / linear before it (weight scaled, bias)."""
    folded = dict(sd)
    for layer, bn in pairs:
        factor = folded.pop(f"{bn}.weight") / np.sqrt(folded.pop(f"{bn}.running_var") + EPS)
        shift = folded.pop(f"{bn}.bias") - folded.pop(f"{bn}.running_mean") * factor
        folded.pop(f"{bn}.num_batches_tracked")
        weight = folded[f"{layer}.weight"]
        folded[f"{layer}.weight"] = weight * factor.reshape((-1,) + (1,) * (weight.ndim - 1))
        folded[f"{layer}.bias"] = folded.get(f"{layer}.bias", 0.0) * factor + shift
    return folded


def test_unfolded_batch_norms_equal_the_folded_convolutions(inputs):
    """A dict whose BNs an exporter folded (conv weight scaled, a bias added), given back unfolded as the readers do
    (BN weight 1, bias = the folded bias, mean 0, var 1 - eps), computes the folded network, and that equals the
    original: no conv bias is needed in our builder."""
    sd = iresnet_state_dict(seed=2)
    pairs = [("conv1", "bn1")]
    for stage, count in enumerate(IRESNET18_UNITS, start=1):
        for index in range(count):
            p = f"layer{stage}.{index}"
            pairs += [(f"{p}.conv1", f"{p}.bn2"), (f"{p}.conv2", f"{p}.bn3")]
            if index == 0:
                pairs.append((f"{p}.downsample.0", f"{p}.downsample.1"))
    folded = fold(sd, pairs)
    x = nchw_float64(inputs)
    folded_reference = iresnet_forward(folded, x)
    assert relative_difference(folded_reference, iresnet_forward(sd, x)) < 1e-10  # folding is exact
    unfolded = dict(folded)
    for layer, bn in pairs:
        bias = unfolded.pop(f"{layer}.bias")
        unfolded.update({f"{bn}.weight": np.ones(len(bias)), f"{bn}.bias": bias,
                         f"{bn}.running_mean": np.zeros(len(bias)), f"{bn}.running_var": np.full(len(bias), 1 - EPS)})
    assert set(unfolded) <= set(sd)  # the same names as a trained dict: no conv bias left
    model = build_from_weights(imported(unfolded))
    assert relative_difference(model(inputs, training=False), folded_reference) < TOLERANCE


@pytest.mark.parametrize("change", ["missing", "extra"])
def test_a_missing_or_extra_array_is_refused_by_name(change):
    sd = iresnet_state_dict()
    if change == "missing":
        del sd["layer3.1.bn2.running_var"]
        name = "layer3.1.bn2.running_var"
    else:
        sd["layer2.0.se.fc1.weight"] = np.zeros((8, 128))
        name = "layer2.0.se.fc1.weight"
    with pytest.raises(ValueError, match=rf"{'missing' if change == 'missing' else 'not used'}: .*{name}"):
        build_from_weights(imported(sd))


def test_a_wrong_shape_or_an_unknown_architecture_is_refused_with_what_was_found():
    sd = iresnet_state_dict()
    sd["layer2.1.conv1.weight"] = sd["layer2.1.conv1.weight"][:, :64]
    with pytest.raises(ValueError, match=r"layer2\.1\.conv1\.weight .*block2\.unit_2\.bottleneck_v1\.conv1"):
        build_from_weights(imported(sd))
    with pytest.raises(ValueError, match=r"arrays found under backbone, head; accepted: .*iresnet50.*mbf"):
        build_from_weights(imported({"backbone.conv.weight": np.zeros((1,)), "head.weight": np.zeros((1,))}))
    deeper = iresnet_state_dict(units=(2, 3, 2, 2))
    with pytest.raises(ValueError, match=r"\(2, 3, 2, 2\) units per stage; accepted: \(2, 2, 2, 2\) \(iresnet18\)"):
        build_from_weights(imported(deeper))
    with pytest.raises(ValueError, match="unknown weights layout 'mxnet'"):
        build_from_weights(ImportedWeights("mxnet", {}, Preprocessing(), "x"))


@pytest.fixture
def fake_reader(monkeypatch):
    """A reader module for files starting with b"FAKE", registered first in READERS: load_pretrained's dispatch
    and wrapping, tested before (and independently of) the real readers."""
    module = types.ModuleType("fake_recogniser_reader")
    module.weights = None
    module.recognise = lambda path: path.is_file() and path.read_bytes().startswith(b"FAKE")
    module.read = lambda path: module.weights
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setattr(nets.pretrained, "READERS", {module.__name__: "fake", **nets.pretrained.READERS})
    return module


@pytest.mark.parametrize("preprocessing", [Preprocessing("RGB", 127.5, 1 / 127.5),
                                           Preprocessing("BGR", 127.5, 1 / 128)], ids=["arcface_torch", "seed"])
def test_load_pretrained_wraps_its_own_preprocessing(tmp_path, fake_reader, preprocessing):
    """load_pretrained: RGB pixels (uint8 or float) in, the file's own preprocessing inside, the raw embedding out;
    deployment_info reports the numbers."""
    sd = iresnet_state_dict(seed=3)
    fake_reader.weights = imported(sd, preprocessing)
    path = tmp_path / "model.bin"
    path.write_bytes(b"FAKE")
    model = nets.load_pretrained(path)
    info = deployment_info(model)
    assert info["channel_order"] == preprocessing.channel_order
    assert info["mean"] == preprocessing.mean and info["scale"] == pytest.approx(preprocessing.scale, rel=1e-12)
    assert info["input_size"] == [32, 32] and model.input_shape == (None, 32, 32, 3)
    assert not info["l2_normalized"] and info["network"].name == "iresnet18"

    pixels = np.random.default_rng(4).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    ordered = pixels[..., ::-1] if preprocessing.channel_order == "BGR" else pixels
    reference = iresnet_forward(sd, (nchw_float64(ordered) - preprocessing.mean) * preprocessing.scale)
    assert relative_difference(model(pixels), reference) < TOLERANCE
    assert relative_difference(model(pixels.astype(np.float32)), reference) < TOLERANCE


def test_load_pretrained_names_the_path_and_formats_it_does_not_recognise(tmp_path):
    path = tmp_path / "notes.pth"
    path.write_bytes(b"not a recogniser")
    with pytest.raises(ValueError, match=r"notes\.pth: not a recogniser file .*accepted: arcface_torch state dict"):
        nets.load_pretrained(path)


def test_seed_deployment_reports_its_numbers_and_stays_l2_normalised():
    """deploy.preprocessing keeps the seed's contract (BGR, 127.5, 1/128, unit-length output), now with the numbers
    in deployment_info."""
    network = build_from_weights(imported(iresnet_state_dict(seed=5)))
    deployed = seed_with_preprocessing(network, "BGR")
    info = deployment_info(deployed)
    assert (info["channel_order"], info["mean"], info["scale"]) == ("BGR", 127.5, 1 / 128)
    assert info["input"] == "uint8 RGB" and info["l2_normalized"]
    embeddings = keras.ops.convert_to_numpy(deployed(np.full((1, 32, 32, 3), 200, np.uint8)))
    assert np.linalg.norm(embeddings, axis=1) == pytest.approx(1.0, abs=1e-5)
