"""nets.pretrained.mxnet_file: insightface's MXNet model zoo pairs (model-symbol.json + model-0000.params).

References: mxnet 1.9.1 itself in a side venv (tests/mxnet_model_writer.py writes zoo-style LResNet-IR and
MobileFaceNet checkpoints with random weights and runs their forward), and a float64 numpy transcription of
arcface_torch's iresnet / mobilefacenet forward written here, which shares no code with the importer.
"""

from __future__ import annotations

import json
import struct
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view

from nets.pretrained import mxnet_file
from nets.pretrained.mxnet_file import MXNetFileError

MODEL_WRITER = Path(__file__).resolve().parent / "mxnet_model_writer.py"
EMBEDDING = 64
# (architecture, units per stage): an IR-ResNet-18 and the zoo MobileFaceNet's blocks.
MODELS = {"iresnet": [2, 2, 2, 2], "mobilefacenet": [1, 4, 6, 2]}
TOLERANCE = 1e-4  # relative, on the embedding


def run_writer(python: Path, mode: str, spec: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "spec.json").write_text(json.dumps(spec))
    done = subprocess.run([str(python), str(MODEL_WRITER), mode, str(out / "spec.json"), str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"mxnet model writer failed:\n{done.stdout}\n{done.stderr}"


@pytest.fixture(scope="module")
def pixels() -> np.ndarray:
    """Two RGB images, uint8 values, NCHW as insightface feeds mxnet."""
    return np.random.default_rng(7).integers(0, 256, (2, 3, 112, 112)).astype(np.float32)


# The hand-written files in each NDArray layout that mxnet itself loads back (test_reads_the_older_layouts_...).
OLDER_LAYOUTS = ("v1", "legacy", "v2")


def older_layout_arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    return {"arg:conv0_weight": rng.normal(size=(4, 3, 3, 3)).astype(np.float32),
            "aux:bn0_moving_var": rng.uniform(size=(4,)).astype(np.float32),
            "arg:pre_fc1_weight": rng.normal(size=(5, 12)).astype(np.float32)}


@pytest.fixture(scope="module")
def mxnet_run(mxnet_python, tmp_path_factory, pixels) -> Path:
    """One mxnet run (one import): the zoo models in <arch>/ (model-symbol.json, model-0000.params, v3.params,
    params.npz, embedding.npy), and <layout>.params written here by hand with mxnet's load of each as
    <layout>.params.npz."""
    root = tmp_path_factory.mktemp("mxnet_zoo")
    np.save(root / "pixels.npy", pixels)
    models = [{"arch": arch, "units": units, "embedding": EMBEDDING, "seed": seed}
              for seed, (arch, units) in enumerate(MODELS.items())]
    for version in OLDER_LAYOUTS:
        (root / f"{version}.params").write_bytes(params_bytes(older_layout_arrays(), version))
    run_writer(mxnet_python, "model,load", {"models": models, "pixels": str(root / "pixels.npy"),
                                            "params": [str(root / f"{version}.params") for version in OLDER_LAYOUTS]},
               root)
    return root


@pytest.fixture(scope="module")
def zoo(mxnet_run) -> dict[str, Path]:
    """architecture -> the folder holding mxnet's model-symbol.json, model-0000.params, v3.params, params.npz,
    embedding.npy."""
    return {arch: mxnet_run / arch for arch in MODELS}


def relative_error(ours: np.ndarray, reference: np.ndarray) -> float:
    return float(np.abs(ours - reference).max() / np.abs(reference).max())


# --- a hand-written .params (older layouts; mxnet itself checks them below) --------------------------------------

def ndarray_bytes(array: np.ndarray, version: str) -> bytes:
    """One float32 NDArray as NDArray::Save wrote it: "v2" (mxnet >= 0.11), "v1" (int64 shape), "legacy"."""
    shape = array.shape
    if version == "legacy":
        head = struct.pack(f"<I{len(shape)}I", len(shape), *shape)
    else:
        magic = struct.pack("<I", {"v1": 0xF993FAC8, "v2": 0xF993FAC9}[version])
        storage = struct.pack("<i", 0) if version == "v2" else b""
        head = magic + storage + struct.pack(f"<i{len(shape)}q", len(shape), *shape)
    return head + struct.pack("<iii", 1, 0, 0) + np.ascontiguousarray(array, "<f4").tobytes()


def params_bytes(arrays: dict[str, np.ndarray], version: str = "v2") -> bytes:
    body = struct.pack("<QQQ", 0x112, 0, len(arrays)) + b"".join(ndarray_bytes(a, version) for a in arrays.values())
    return body + struct.pack("<Q", len(arrays)) + b"".join(struct.pack("<Q", len(name.encode())) + name.encode()
                                                            for name in arrays)


def zoo_copy(zoo: dict[str, Path], tmp_path: Path, arch: str, arrays: dict[str, np.ndarray]) -> Path:
    """A pair with mxnet's graph of `arch` and `arrays` as its params."""
    (tmp_path / "model-symbol.json").write_bytes((zoo[arch] / "model-symbol.json").read_bytes())
    (tmp_path / "model-0000.params").write_bytes(params_bytes(arrays))
    return tmp_path / "model-0000.params"


# --- a float64 numpy transcription of arcface_torch's forward (no code shared with the importer) -----------------

def conv2d(x: np.ndarray, weight: np.ndarray, stride: int, pad: int) -> np.ndarray:
    """torch.nn.functional.conv2d, NCHW x OIHW, groups from the weight's in-channels."""
    groups = x.shape[1] // weight.shape[1]
    x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    windows = sliding_window_view(x, weight.shape[2:], axis=(2, 3))[:, :, ::stride, ::stride]  # N C H W kh kw
    n, _, h, w, kh, kw = windows.shape
    windows = windows.reshape(n, groups, x.shape[1] // groups, h, w, kh, kw)
    kernels = weight.reshape(groups, weight.shape[0] // groups, weight.shape[1], kh, kw)
    return np.einsum("ngchwij,gocij->ngohw", windows, kernels, optimize=True).reshape(n, -1, h, w)


class TorchForward:
    """arcface_torch's modules over a state dict, in float64."""

    def __init__(self, arrays: dict[str, np.ndarray]) -> None:
        self.arrays = {name: np.asarray(value, np.float64) for name, value in arrays.items()}

    def bn(self, x: np.ndarray, prefix: str) -> np.ndarray:
        shape = (1, -1) + (1,) * (x.ndim - 2)
        mean, var = (self.arrays[f"{prefix}.{name}"].reshape(shape) for name in ("running_mean", "running_var"))
        gamma, beta = (self.arrays[f"{prefix}.{name}"].reshape(shape) for name in ("weight", "bias"))
        return (x - mean) / np.sqrt(var + 1e-5) * gamma + beta

    def prelu(self, x: np.ndarray, prefix: str) -> np.ndarray:
        return np.where(x > 0, x, x * self.arrays[f"{prefix}.weight"].reshape(1, -1, 1, 1))

    def conv(self, x: np.ndarray, prefix: str, stride: int = 1) -> np.ndarray:
        weight = self.arrays[f"{prefix}.weight"]
        return conv2d(x, weight, stride, weight.shape[-1] // 2 if weight.shape[-1] == 3 else 0)

    def linear(self, x: np.ndarray, prefix: str) -> np.ndarray:
        return x.reshape(len(x), -1) @ self.arrays[f"{prefix}.weight"].T + self.arrays.get(f"{prefix}.bias", 0.0)

    def iresnet(self, x: np.ndarray) -> np.ndarray:
        x = self.prelu(self.bn(self.conv(x, "conv1"), "bn1"), "prelu")
        for stage in range(1, 5):
            unit = 0
            while f"layer{stage}.{unit}.conv1.weight" in self.arrays:
                p, stride = f"layer{stage}.{unit}", 2 if unit == 0 else 1
                out = self.prelu(self.bn(self.conv(self.bn(x, f"{p}.bn1"), f"{p}.conv1"), f"{p}.bn2"), f"{p}.prelu")
                out = self.bn(self.conv(out, f"{p}.conv2", stride), f"{p}.bn3")
                shortcut = (self.bn(self.conv(x, f"{p}.downsample.0", stride), f"{p}.downsample.1")
                            if f"{p}.downsample.0.weight" in self.arrays else x)
                x, unit = out + shortcut, unit + 1
        return self.bn(self.linear(self.bn(x, "bn2"), "fc"), "features")

    def block(self, x: np.ndarray, prefix: str, stride: int = 1, activation: bool = True) -> np.ndarray:
        """ConvBlock / LinearBlock."""
        x = self.bn(self.conv(x, f"{prefix}.layers.0", stride), f"{prefix}.layers.1")
        return self.prelu(x, f"{prefix}.layers.2") if activation else x

    def depthwise(self, x: np.ndarray, prefix: str, stride: int) -> np.ndarray:
        x = self.block(self.block(x, f"{prefix}.layers.0"), f"{prefix}.layers.1", stride)
        return self.block(x, f"{prefix}.layers.2", activation=False)

    def mobilefacenet(self, x: np.ndarray) -> np.ndarray:
        x = self.block(self.block(x, "layers.0", stride=2), "layers.1")
        for module in range(2, 8):
            if module % 2 == 0:
                x = self.depthwise(x, f"layers.{module}", stride=2)
                continue
            block = 0
            while f"layers.{module}.layers.{block}.layers.0.layers.0.weight" in self.arrays:
                x, block = x + self.depthwise(x, f"layers.{module}.layers.{block}", 1), block + 1
        x = self.block(self.block(x, "conv_sep"), "features.layers.0", activation=False)
        return self.bn(self.linear(x, "features.layers.2"), "features.layers.3")


def normalised(pixels: np.ndarray, weights) -> np.ndarray:
    assert weights.preprocessing.channel_order == "RGB"
    return (pixels.astype(np.float64) - weights.preprocessing.mean) * weights.preprocessing.scale


# --- the file format ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("arch", list(MODELS))
def test_reads_every_array_mxnet_saved(zoo, arch):
    """save_checkpoint's v2 file and mxnet's numpy-shape (v3) save of the same arrays: every name, dtype, value."""
    reference = np.load(zoo[arch] / "params.npz")
    for name in ("model-0000.params", "v3.params"):
        started = time.perf_counter()
        arrays = mxnet_file.read_params(zoo[arch] / name)
        seconds = time.perf_counter() - started
        assert sorted(arrays) == sorted(reference.files), name
        for key, value in arrays.items():
            assert value.dtype == reference[key].dtype and np.array_equal(value, reference[key]), (name, key)
        assert seconds < 5, f"{name}: read in {seconds:.2f} s"


def test_reads_the_older_layouts_mxnet_reads(mxnet_run):
    """Files in each NDArray layout, written here by hand: mxnet itself loads the same arrays from them as we do."""
    arrays = older_layout_arrays()
    for version in OLDER_LAYOUTS:
        by_mxnet = np.load(mxnet_run / f"{version}.params.npz")
        ours = mxnet_file.read_params(mxnet_run / f"{version}.params")
        assert sorted(by_mxnet.files) == sorted(ours) == sorted(arrays), version
        for name, value in arrays.items():
            assert np.array_equal(ours[name], value) and np.array_equal(by_mxnet[name], value), (version, name)


def test_recognises_the_pair_by_any_of_its_names(zoo):
    folder = zoo["iresnet"]
    for name in (folder, folder / "model-0000.params", folder / "model-symbol.json", Path(f"{folder / 'model'},0")):
        assert mxnet_file.recognise(name), name
    assert mxnet_file.pair_paths(Path(f"{folder / 'model'},0")) == (folder / "model-symbol.json",
                                                                     folder / "model-0000.params")


def test_does_not_recognise_other_files(zoo, tmp_path):
    foreign = {"random.params": np.random.default_rng(0).bytes(64), "model.onnx": b"\x08\x07\x12\x07pytorch",
               "zip.pth": b"PK\x03\x04" + bytes(60), "empty.params": b"",
               "graph-symbol.json": json.dumps({"nodes": "no"}).encode()}
    for name, body in foreign.items():
        (tmp_path / name).write_bytes(body)
        assert not mxnet_file.recognise(tmp_path / name), name
    assert not mxnet_file.recognise(tmp_path)  # a folder without a pair
    assert not mxnet_file.recognise(tmp_path / "missing,0")


@pytest.mark.parametrize("cut", [8, 20, 30, 1000, -40, -3])
def test_a_truncated_file_is_one_error_naming_the_offset(zoo, tmp_path, cut):
    """Cut in the header, an array's head, its data, the names list."""
    data = (zoo["mobilefacenet"] / "model-0000.params").read_bytes()
    path = tmp_path / "cut.params"
    path.write_bytes(data[:cut])
    with pytest.raises(MXNetFileError, match=r"truncated .* at offset \d+"):
        mxnet_file.read_params(path)


def test_a_foreign_file_is_one_clear_error(tmp_path):
    path = tmp_path / "model-0000.params"
    path.write_bytes(b"PK\x03\x04" + bytes(100))
    with pytest.raises(MXNetFileError, match=r"at offset 0 the header is 0x4034b50"):
        mxnet_file.read_params(path)
    path.write_bytes(struct.pack("<QQQI", 0x112, 0, 1, 0xDEADBEEF) + bytes(40))
    with pytest.raises(MXNetFileError, match=r"at offset 24 the NDArray magic is 0xdeadbeef"):
        mxnet_file.read_params(path)


# --- the mapping -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("arch", list(MODELS))
def test_mapped_arrays_run_as_arcface_torch_give_mxnets_embedding(zoo, pixels, arch):
    """read() through arcface_torch's forward (numpy float64) = mxnet's fc1 output on the same pixels."""
    started = time.perf_counter()
    weights = mxnet_file.read(zoo[arch])
    seconds = time.perf_counter() - started
    forward = TorchForward(weights.arrays)
    ours = getattr(forward, arch)(normalised(pixels, weights))
    reference = np.load(zoo[arch] / "embedding.npy")
    assert ours.shape == reference.shape == (len(pixels), EMBEDDING)
    assert relative_error(ours, reference) < TOLERANCE
    assert seconds < 5, f"read in {seconds:.2f} s"


def test_graph_facts_become_arcface_torch_values(zoo):
    """Preprocessing from _minusscalar0 / _mulscalar0; fix_gamma forces weight 1 (mxnet stored 3); each BN's eps
    (2e-5 written by fresnet, mxnet's default 1e-3 in fmobilefacenet's blocks) is carried in running_var."""
    stored = {arch: np.load(zoo[arch] / "params.npz") for arch in MODELS}
    resnet, mbf = mxnet_file.read(zoo["iresnet"]), mxnet_file.read(zoo["mobilefacenet"])
    for weights in (resnet, mbf):
        assert (weights.layout, weights.preprocessing.channel_order) == ("arcface_torch", "RGB")
        assert (weights.preprocessing.mean, weights.preprocessing.scale) == (127.5, 0.0078125)
        assert all(value.dtype == np.float32 for value in weights.arrays.values())
    assert np.all(stored["iresnet"]["arg:fc1_gamma"] == 3.0) and np.all(resnet.arrays["features.weight"] == 1.0)
    np.testing.assert_allclose(resnet.arrays["layer1.0.bn1.running_var"],
                               stored["iresnet"]["aux:stage1_unit1_bn1_moving_var"] + (2e-5 - 1e-5), rtol=1e-6)
    np.testing.assert_allclose(mbf.arrays["layers.0.layers.1.running_var"],
                               stored["mobilefacenet"]["aux:conv_1_batchnorm_moving_var"] + (1e-3 - 1e-5), rtol=1e-6)
    assert "features.layers.2.bias" not in mbf.arrays  # arcface_torch's GDC Linear has none: folded into the BN
    np.testing.assert_allclose(mbf.arrays["features.layers.3.running_mean"],
                               stored["mobilefacenet"]["aux:fc1_moving_mean"]
                               - stored["mobilefacenet"]["arg:pre_fc1_bias"], rtol=1e-6, atol=1e-7)
    assert np.array_equal(resnet.arrays["fc.bias"], stored["iresnet"]["arg:pre_fc1_bias"])
    assert not any(name.startswith("fc7") for name in resnet.arrays)  # the training classifier is left out


def test_an_array_the_mapping_does_not_know_is_an_error(zoo, tmp_path):
    arrays = dict(np.load(zoo["iresnet"] / "params.npz"))
    arrays["arg:stage1_unit1_se_conv1_weight"] = np.zeros((4, 64, 1, 1), np.float32)
    with pytest.raises(MXNetFileError, match=r"1 arrays this reader does not map .*stage1_unit1_se_conv1_weight"):
        mxnet_file.read(zoo_copy(zoo, tmp_path, "iresnet", arrays))


def test_a_missing_array_is_an_error_naming_it(zoo, tmp_path):
    arrays = dict(np.load(zoo["mobilefacenet"] / "params.npz"))
    del arrays["aux:conv_6sep_batchnorm_moving_var"]
    with pytest.raises(MXNetFileError, match="no array 'conv_6sep_batchnorm_moving_var'"):
        mxnet_file.read(zoo_copy(zoo, tmp_path, "mobilefacenet", arrays))


def test_an_unknown_network_lists_what_was_found(zoo, tmp_path):
    arrays = {"arg:conv_weight": np.zeros((2, 3, 3, 3), np.float32)}
    with pytest.raises(MXNetFileError, match=r"neither .* its first arrays: \['conv_weight'\]"):
        mxnet_file.read(zoo_copy(zoo, tmp_path, "iresnet", arrays))


def test_a_stride_placed_otherwise_than_arcface_torch_is_an_error(zoo, tmp_path):
    """The stride on a unit's first conv (another IR variant) would be another function under the same names."""
    graph = json.loads((zoo["iresnet"] / "model-symbol.json").read_text())
    strides = {"stage1_unit1_conv1": "(2, 2)", "stage1_unit1_conv2": "(1, 1)"}
    for node in graph["nodes"]:
        node.get("attrs", {}).update({"stride": strides[node["name"]]} if node["name"] in strides else {})
    (tmp_path / "model-symbol.json").write_text(json.dumps(graph))
    (tmp_path / "model-0000.params").symlink_to(zoo["iresnet"] / "model-0000.params")
    with pytest.raises(MXNetFileError, match=r"stage1_unit1_conv1 has stride \(2, 2\); arcface_torch's layer1.0.conv1"):
        mxnet_file.read(tmp_path)


def test_params_without_their_symbol_json_is_an_error_naming_it(zoo, tmp_path):
    path = tmp_path / "model-0000.params"
    path.write_bytes((zoo["iresnet"] / "model-0000.params").read_bytes())
    assert mxnet_file.recognise(path)  # an MXNet file: this reader's to explain
    with pytest.raises(MXNetFileError, match="needs model-symbol.json beside it"):
        mxnet_file.read(path)


# --- through the Keras network (nets.pretrained.build) -----------------------------------------------------------

@pytest.mark.parametrize("arch", list(MODELS))
def test_keras_network_gives_mxnets_embedding(zoo, pixels, arch):
    build = pytest.importorskip("nets.pretrained.build", reason="nets.pretrained.build (P1's builder) is missing")
    weights = mxnet_file.read(zoo[arch])
    model = build.build_from_weights(weights)
    ours = np.asarray(model(normalised(pixels, weights).transpose(0, 2, 3, 1).astype(np.float32), training=False))
    assert relative_error(ours, np.load(zoo[arch] / "embedding.npy")) < TOLERANCE
