"""nets.pretrained.torch_file: arcface_torch's backbone.pth read without torch, and safely.

The reference files are written by torch itself (tests/torch_writer.py in the PyTorch side venv, tests/torch_side.py):
random weights under arcface_torch's real state_dict keys, each tensor also saved as .npy, and torch's
forward (float32, eval mode). Crafted files (forbidden globals, out-of-bounds strides, big-endian, truncation) are built here byte by byte.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from nets.pretrained import torch_file
from nets.pretrained.weights import Preprocessing

log = logging.getLogger(__name__)
WRITER = Path(__file__).resolve().parent / "torch_writer.py"


def run_writer(jobs: list[dict], out: Path, timeout: int = 600) -> None:
    from torch_side import torch_python
    from side_venv import SideVenvUnavailable

    try:
        python = torch_python()
    except SideVenvUnavailable as err:
        pytest.skip(f"PyTorch reference not run: {err}")
    out.mkdir(parents=True, exist_ok=True)
    spec = out / "spec.json"
    spec.write_text(json.dumps(jobs))
    done = subprocess.run([str(python), str(WRITER), str(spec), str(out)], capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, f"torch writer failed:\n{done.stdout}\n{done.stderr}"


@pytest.fixture(scope="module")
def torch_files(torch_references) -> Path:
    """tests/torch_side.py's BACKBONE_JOBS, each in its folder (the session's one torch run, conftest.py)."""
    return torch_references / "backbones"


@pytest.fixture(scope="module")
def pretrained(torch_files):
    """name -> nets.load_pretrained of that backbone.pth, built once for the module (the tests only read it)."""
    import nets

    if not hasattr(nets, "load_pretrained"):
        pytest.skip("nets.load_pretrained (nets/pretrained/build.py, P1's part) is not there yet")
    built = {}

    def load(name: str):
        if name not in built:
            built[name] = nets.load_pretrained(torch_files / name / "backbone.pth")
        return built[name]

    return load


def saved_arrays(folder: Path) -> dict[str, np.ndarray]:
    keys = json.loads((folder / "result.json").read_text())["keys"]
    return {key: np.load(folder / "arrays" / f"{key}.npy") for key in keys}


def assert_same_weights(read: dict[str, np.ndarray], saved: dict[str, np.ndarray]) -> None:
    expected = {key: value for key, value in saved.items() if not key.endswith(".num_batches_tracked")}
    assert list(read) == list(expected)  # every key, in the state dict's order, nothing extra
    for key, value in expected.items():
        assert read[key].dtype == np.float32, key
        assert read[key].shape == value.shape, key
        np.testing.assert_array_equal(read[key], value.astype(np.float32), err_msg=key)


# --- recognise ------------------------------------------------------------------------------------------------------


def test_recognise_judges_by_content_not_suffix(torch_files, tmp_path):
    renamed = tmp_path / "weights.bin"
    renamed.write_bytes((torch_files / "iresnet18" / "backbone.pth").read_bytes())
    assert torch_file.recognise(renamed)
    assert torch_file.recognise(torch_files / "iresnet18_legacy" / "backbone.pth")
    keras_like = tmp_path / "model.pth"  # a zip, but not torch.save's
    with zipfile.ZipFile(keras_like, "w") as archive:
        archive.writestr("config.json", "{}")
        archive.writestr("model.weights.h5", b"\0" * 10)
    onnx_like = tmp_path / "other.pth"
    onnx_like.write_bytes(b"\x08\x07\x12\x07pytorch" + bytes(100))
    plain_pickle = tmp_path / "plain.pth"
    plain_pickle.write_bytes(pickle.dumps({"a": 1}, protocol=2))
    for path in (keras_like, onnx_like, plain_pickle, tmp_path / "missing.pth"):
        assert not torch_file.recognise(path), path
    with pytest.raises(ValueError, match="not a PyTorch checkpoint"):
        torch_file.read(onnx_like)


def test_a_zip_repacked_in_another_order_is_read_the_same(torch_files, tmp_path):
    original = torch_files / "iresnet18" / "backbone.pth"
    repacked = tmp_path / "repacked.pth"
    with zipfile.ZipFile(original) as source, zipfile.ZipFile(repacked, "w", zipfile.ZIP_DEFLATED) as target:
        for name in reversed(source.namelist()):  # data.pkl last, compressed
            target.writestr(name, source.read(name))
    assert torch_file.recognise(repacked)
    assert_same_weights(torch_file.read(repacked).arrays, saved_arrays(torch_files / "iresnet18"))


# --- exact values, from torch's own files ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["iresnet18", "mbf", "iresnet18_legacy"])
def test_read_gets_every_key_with_its_exact_value(torch_files, name):
    weights = torch_file.read(torch_files / name / "backbone.pth")
    assert weights.layout == "arcface_torch"
    assert weights.preprocessing == Preprocessing("RGB", 127.5, 1 / 127.5)
    assert weights.source == str(torch_files / name / "backbone.pth")
    assert_same_weights(weights.arrays, saved_arrays(torch_files / name))


def test_float16_tensors_become_float32(torch_files):
    saved = saved_arrays(torch_files / "iresnet18_half")
    assert saved["conv1.weight"].dtype == np.float16  # the writer really saved half tensors
    assert_same_weights(torch_file.read(torch_files / "iresnet18_half" / "backbone.pth").arrays, saved)


def test_a_full_checkpoint_gives_its_backbone_state_dict(torch_files):
    """arcface_torch's checkpoint_gpu_0.pt: the backbone under state_dict_backbone, next to the margin head, the
    optimizer (momentum buffers, param groups) and the lr scheduler."""
    weights = torch_file.read(torch_files / "iresnet18_checkpoint" / "backbone.pth")
    assert_same_weights(weights.arrays, saved_arrays(torch_files / "iresnet18_checkpoint"))


@pytest.mark.parametrize("name", ["views", "views_legacy"])
def test_views_of_shared_storages_read_right(torch_files, name):
    """Transposed, sliced, offset, strided, expanded and empty tensors saved as views of two storages."""
    read = torch_file.read(torch_files / name / "views.pth").arrays
    saved = saved_arrays(torch_files / name)
    assert {value.dtype for value in saved.values()} == {np.dtype(np.float32), np.dtype(np.float64)}
    assert_same_weights(read, saved)


class _RefuseTorch:
    """A meta path finder that records and fails every import of torch, as if torch were installed but forbidden."""

    def __init__(self):
        self.attempts: list[str] = []

    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            self.attempts.append(name)
            raise ImportError(f"{name} imported by the reader")
        return None


def test_torch_is_never_imported(torch_files, monkeypatch):
    """The reader behaves the same where torch is installed: it never imports it (nor anything under it)."""
    finder = _RefuseTorch()
    monkeypatch.setattr(sys, "meta_path", [finder, *sys.meta_path])
    for name in [key for key in sys.modules if key == "torch" or key.startswith("torch.")]:
        monkeypatch.delitem(sys.modules, name)
    for name in ("iresnet18", "iresnet18_legacy"):
        torch_file.read(torch_files / name / "backbone.pth")
    assert finder.attempts == []


# --- crafted files: nothing from them runs --------------------------------------------------------------------------


def _global(module: str, name: str) -> bytes:
    return f"c{module}\n{name}\n".encode()


def _value(value) -> bytes:
    """A plain value's pickle opcodes, without the PROTO header and STOP."""
    return pickle.dumps(value, protocol=2)[2:-1]


def _tensor_state_dict_pickle(key: str, numel: int, offset: int, size: tuple, stride: tuple) -> bytes:
    """data.pkl of {key: a float32 tensor of storage "0"} written as torch writes it, with any offset / size / stride."""
    storage_id = b"(" + _value("storage") + _global("torch", "FloatStorage") + _value("0") + _value("cpu") + \
        _value(numel) + b"tQ"
    tensor = _global("torch._utils", "_rebuild_tensor_v2") + b"(" + storage_id + _value(offset) + _value(size) + \
        _value(stride) + _value(False) + _global("collections", "OrderedDict") + b")RtR"
    return b"\x80\x02" + _global("collections", "OrderedDict") + b")R(" + _value(key) + tensor + b"u."


def _torch_zip(path: Path, data_pkl: bytes, storages: dict[str, bytes], byteorder: str = "little") -> Path:
    """A zip in torch.save's layout: archive/data.pkl first, byteorder, data/<key>, version."""
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", data_pkl)
        archive.writestr("archive/byteorder", byteorder)
        for key, raw in storages.items():
            archive.writestr(f"archive/data/{key}", raw)
        archive.writestr("archive/version", "3\n")
    return path


def _legacy_file(path: Path, body: bytes) -> Path:
    header = [torch_file.LEGACY_MAGIC, torch_file.LEGACY_PROTOCOL_VERSION,
              {"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 8}}]
    path.write_bytes(b"".join(pickle.dumps(value, protocol=2) for value in header) + body)
    return path


class _RunsACommand:
    """Pickles as os.system(command): what a malicious backbone.pth would hold."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def test_crafted_zip_pickle_reproduces_a_real_tensor(tmp_path):
    """The crafted-file helper writes what the reader reads as torch's own: so the refusals below test the reader."""
    raw = np.arange(12, dtype="<f4")
    path = _torch_zip(tmp_path / "ok.pth", _tensor_state_dict_pickle("w", 12, 2, (2, 3), (1, 4)), {"0": raw.tobytes()})
    assert torch_file.recognise(path)
    np.testing.assert_array_equal(torch_file.read(path).arrays["w"], [[2, 6, 10], [3, 7, 11]])


@pytest.mark.parametrize("container", ["zip", "legacy"])
def test_a_forbidden_global_is_refused_without_running_it(tmp_path, container):
    marker = tmp_path / "pwned"
    body = pickle.dumps({"conv1.weight": _RunsACommand(f"touch {marker}")}, protocol=2)
    path = (_torch_zip(tmp_path / "evil.pth", body, {}) if container == "zip"
            else _legacy_file(tmp_path / "evil.pth", body))
    assert torch_file.recognise(path)
    with pytest.raises(ValueError, match=r"global (posix|os)\.system is refused, no code from the file is run"):
        torch_file.read(path)
    assert not marker.exists()


def test_a_whole_pickled_module_is_refused(tmp_path):
    """torch.save(model) pickles the model's classes: not a state dict, refused by name."""
    body = b"\x80\x02" + _global("backbones.iresnet", "IResNet") + b")\x81."
    with pytest.raises(ValueError, match="backbones.iresnet.IResNet is refused"):
        torch_file.read(_torch_zip(tmp_path / "model.pth", body, {}))


@pytest.mark.parametrize("offset, size, stride", [(10, (3,), (1,)), (0, (2, 7), (6, 1)), (0, (13,), (1,))])
def test_a_tensor_reaching_past_its_storage_is_refused(tmp_path, offset, size, stride):
    raw = np.zeros(12, "<f4").tobytes()
    path = _torch_zip(tmp_path / "bad.pth", _tensor_state_dict_pickle("w", 12, offset, size, stride), {"0": raw})
    with pytest.raises(ValueError, match="reaches past its storage"):
        torch_file.read(path)


def test_a_storage_shorter_than_named_is_refused(tmp_path):
    path = _torch_zip(tmp_path / "short.pth", _tensor_state_dict_pickle("w", 12, 0, (12,), (1,)), {"0": bytes(40)})
    with pytest.raises(ValueError, match=r"holds 40 bytes, not 48"):
        torch_file.read(path)


def test_a_big_endian_file_is_refused(tmp_path):
    path = _torch_zip(tmp_path / "big.pth", _tensor_state_dict_pickle("w", 2, 0, (2,), (1,)), {"0": bytes(8)},
                      byteorder="big")
    with pytest.raises(ValueError, match="byte order 'big'"):
        torch_file.read(path)


@pytest.mark.parametrize("name", ["iresnet18", "iresnet18_legacy"])
def test_a_truncated_file_is_one_clear_error(torch_files, tmp_path, name):
    whole = (torch_files / name / "backbone.pth").read_bytes()
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(whole[: len(whole) // 2])
    assert torch_file.recognise(truncated)  # by its first bytes, so load_pretrained gets this reader's message
    with pytest.raises(ValueError, match="truncated or damaged"):
        torch_file.read(truncated)


def test_not_a_state_dict_lists_what_it_holds(tmp_path):
    path = _torch_zip(tmp_path / "other.pth", pickle.dumps({"epoch": 3, "notes": "x"}, protocol=2), {})
    with pytest.raises(ValueError, match=r"its keys: \['epoch', 'notes'\]"):
        torch_file.read(path)


# --- the imported network equals torch's forward --------------------------------------------------------------------


@pytest.mark.parametrize("name", ["iresnet18", "mbf"])
def test_load_pretrained_equals_torch_forward(torch_files, pretrained, name):
    """nets.load_pretrained(backbone.pth) on uint8 RGB faces == torch's forward of (x - 127.5) / 127.5, eval mode."""
    images = np.load(torch_files / name / "images.npy")
    expected = np.load(torch_files / name / "embeddings.npy")
    assert np.std(expected, axis=0).mean() > 0.1 * np.abs(expected).mean()  # the faces give different embeddings
    embeddings = np.asarray(pretrained(name)(images))
    np.testing.assert_allclose(embeddings, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


# --- ResNet100 size -------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_reads_a_resnet100_sized_state_dict(tmp_path):
    """arcface_torch's iresnet100 with 512 features: 65.2M parameters, ~260 MB."""
    run_writer([{"name": "r100", "kind": "backbone", "arch": "iresnet100", "arrays": False}], tmp_path)
    start = time.perf_counter()
    weights = torch_file.read(tmp_path / "r100" / "backbone.pth")
    seconds = time.perf_counter() - start
    shapes = json.loads((tmp_path / "r100" / "result.json").read_text())["shapes"]
    expected = {key: tuple(shape) for key, shape in shapes.items() if not key.endswith(".num_batches_tracked")}
    assert {key: array.shape for key, array in weights.arrays.items()} == expected
    parameters = sum(array.size for array in weights.arrays.values())
    assert parameters > 65_000_000
    log.warning("iresnet100 backbone.pth (%d parameters) read in %.2f s", parameters, seconds)


# --- evaluation feeds an imported network with the file's own preprocessing ----------------------------------------


def test_eval_ckpt_file_evaluates_a_backbone_pth_with_its_own_preprocessing(torch_files, tmp_path):
    """`python eval_ckpt_file.py --ckpt_file=backbone.pth`: the report's distances are those of torch's embeddings
    of (x - 127.5) / 127.5 (not the seed's / 128), L2-normalised; the report records those numbers."""
    import cv2

    images = np.load(torch_files / "iresnet18" / "images.npy")
    expected = np.load(torch_files / "iresnet18" / "embeddings.npy").astype(np.float64)
    unit = expected / np.linalg.norm(expected, axis=1, keepdims=True)
    layout = {"a/a_0001.png": 0, "a/a_0002.png": 1, "b/b_0001.png": 1, "b/b_0002.png": 0}
    for name, index in layout.items():
        (tmp_path / "faces" / name).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(tmp_path / "faces" / name), cv2.cvtColor(images[index], cv2.COLOR_RGB2BGR))
    # two folds, each with one matched and one mismatched pair of img0 / img1
    (tmp_path / "pairs.txt").write_text("2\t1\na\t1\t2\na\t1\tb\t1\nb\t1\t2\nb\t2\ta\t2\n")
    # As the issue writes it: no ckpt_index_list (its default names nothing beside a model file).
    command = [sys.executable, "eval_ckpt_file.py", f"--ckpt_file={torch_files / 'iresnet18' / 'backbone.pth'}",
               f"--eval_dataset={tmp_path / 'faces'}", f"--eval_pair={tmp_path / 'pairs.txt'}",
               "--flip=none", f"--output_dir={tmp_path / 'eval'}"]
    done = subprocess.run(command, cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True,
                          timeout=600, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "eval" / "report.json").read_text())[0]
    assert report["channel_order"] == "RGB"
    assert report["normalisation"] == pytest.approx({"mean": 127.5, "scale": 1 / 127.5})
    between = float(np.sum((unit[0] - unit[1]) ** 2))  # every pair above is img0 against img1
    np.testing.assert_allclose(report["distances"], [between] * 4, rtol=1e-4)


def test_export_deploys_a_backbone_pth_l2_normalised_with_its_own_preprocessing(torch_files, tmp_path):
    """`python export.py --input_model=backbone.pth --formats=onnx`: the ONNX file (uint8 RGB in) gives torch's
    embeddings of (x - 127.5) / 127.5, L2-normalised like every export."""
    import onnxruntime

    images = np.load(torch_files / "iresnet18" / "images.npy")
    expected = np.load(torch_files / "iresnet18" / "embeddings.npy").astype(np.float64)
    command = [sys.executable, "export.py", f"--input_model={torch_files / 'iresnet18' / 'backbone.pth'}",
               "--formats=onnx", f"--output_dir={tmp_path / 'export'}", "--num_check_images=2"]
    done = subprocess.run(command, cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True,
                          timeout=600, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert done.returncode == 0, done.stderr[-3000:]
    session = onnxruntime.InferenceSession(str(next((tmp_path / "export").glob("*.onnx"))))
    output = session.run(None, {session.get_inputs()[0].name: images.astype(np.uint8)})[0]
    np.testing.assert_allclose(output, expected / np.linalg.norm(expected, axis=1, keepdims=True), atol=1e-5)


# --- fine-tuning: train_nets.py --restore_path=backbone.pth ----------------------------------------------------------


def _fine_tuning_args(root: Path, pth: Path, **fields):
    import train_nets
    from data import synthetic

    if not (root / "faces").is_dir():
        synthetic.generate(root / "faces", num_identities=3, images_per_identity=4, seed=0, image_size=112)
    return train_nets.Args(image_size=112, batch_size=4, max_steps=1, validate_interval=0,
                           train_dataset_dir=str(root / "faces"), restore_path=str(pth), ckpt_path=str(root / "ckpt"),
                           summary_path=str(root / "summary"), log_file_path=str(root / "logs"), **fields)


# What arcface_torch's iresnet18 with 64 features (the torch_files one) is in Args.
IRESNET18_ARGS = dict(net_depth=18, embedding_size=64, norm_epsilon=1e-5, projection_shortcut=True,
                      channel_order="RGB")


def _weighted_layers(model) -> list:
    return [layer for layer in model.layers if layer.weights]


# What arcface_torch's mbf with 64 features (the torch_files one) is in Args.
MBF_ARGS = dict(backbone="mobilefacenet_arcface_torch", embedding_size=64, norm_epsilon=1e-5, channel_order="RGB")


@pytest.mark.parametrize("name, fields", [("iresnet18", IRESNET18_ARGS), ("mbf", MBF_ARGS)])
def test_fine_tuning_from_a_backbone_pth_copies_every_weight_and_gives_its_embedding(torch_files, pretrained, tmp_path,
                                                                                     name, fields):
    """The network these Args build (with dropout) takes every weight of the file, BN statistics included, and
    computes what load_pretrained's network does on the training pipeline's normalised RGB input."""
    from losses import make_head
    from nets.preprocessing import deployment_info
    from nets.spec import NetworkSpec
    from training.checkpoints import check_released_model, restore_for_fine_tuning

    pth = torch_files / name / "backbone.pth"
    args = _fine_tuning_args(tmp_path, pth, dropout_rate=0.2, **fields)
    assert check_released_model(args) is not None  # the Args describe the file
    model = NetworkSpec.from_mapping(args.to_dict()).build()
    head = make_head(args.loss, 3, **args.head_margins(), seed=args.seed)
    head.build((None, args.embedding_size))
    restore_for_fine_tuning(model, head, pth, with_head=False)
    source = deployment_info(pretrained(name))["network"]
    pairs = list(zip(_weighted_layers(source), _weighted_layers(model), strict=True))
    assert len(pairs) > 50
    for from_layer, to_layer in pairs:
        for expected, restored in zip(from_layer.get_weights(), to_layer.get_weights(), strict=True):
            np.testing.assert_array_equal(restored, expected, err_msg=to_layer.name)
    normalised = (np.load(torch_files / name / "images.npy").astype(np.float32) - 127.5) / 128  # the pipeline's
    np.testing.assert_allclose(np.asarray(model(normalised, training=False)), np.asarray(source(normalised)),
                               rtol=1e-5, atol=1e-5)


def test_a_run_from_a_backbone_pth_starts_from_its_weights_and_its_checkpoint_evaluates(torch_files, pretrained,
                                                                                         tmp_path):
    """train_nets.train with restore_path=backbone.pth: after one step at lr 1e-20 every trainable weight of its
    checkpoint is still the file's (the restore is train()'s own), args.json rebuilds the architecture, and the
    checkpoint evaluates through eval_ckpt_file on RGB input."""
    import tensorflow as tf

    import eval_ckpt_file
    import generate_pairs
    import train_nets
    from nets.preprocessing import deployment_info
    from nets.spec import NetworkSpec

    pth = torch_files / "iresnet18" / "backbone.pth"
    args = _fine_tuning_args(tmp_path, pth, dropout_rate=0.4, lr_values=[1e-20], lr_steps=[], **IRESNET18_ARGS)
    summary = train_nets.train(args)
    assert summary["step"] == 1 and np.isfinite(summary["total_loss"])
    run_args = train_nets.Args.load(tmp_path / "ckpt" / "args.json")
    assert run_args == args
    trained = NetworkSpec.from_mapping(run_args.to_dict()).build()
    tf.train.Checkpoint(model=trained).read(summary["checkpoint"]).expect_partial().assert_existing_objects_matched()
    source = deployment_info(pretrained("iresnet18"))["network"]
    expected = [w.numpy() for layer in _weighted_layers(source) for w in layer.trainable_weights]
    actual = [w.numpy() for layer in _weighted_layers(trained) for w in layer.trainable_weights]
    assert len(expected) == len(actual) > 50
    for expected_value, actual_value in zip(expected, actual):
        np.testing.assert_allclose(actual_value, expected_value, rtol=1e-6, atol=1e-15)

    generate_pairs.main(generate_pairs.Args(data_dir=str(tmp_path / "faces"), pairs_filepath=str(tmp_path / "pairs"),
                                            num_folds=2, pairs_per_fold=2, seed=0))
    reports = eval_ckpt_file.evaluate_checkpoints(eval_ckpt_file.Args(
        ckpt_file=summary["checkpoint"], ckpt_index_list=[], eval_dataset=str(tmp_path / "faces"),
        eval_pair=str(tmp_path / "pairs"), batch_size=4, flip="none", output_dir=str(tmp_path / "eval")))
    assert len(reports) == 1 and reports[0]["channel_order"] == "RGB"
    assert np.all(np.isfinite(reports[0]["distances"]))


def test_fine_tuning_from_a_backbone_pth_with_other_args_is_refused_with_the_overrides(torch_files, tmp_path):
    """The seed's defaults (depth 50, 512 features, epsilon 2e-5, identity shortcuts, BGR) against the file's
    iresnet18 or mbf: one line with the overrides that match it, before anything is written; restore_head=true
    refused."""
    import train_nets

    pth = torch_files / "iresnet18" / "backbone.pth"
    with pytest.raises(ValueError) as refused:
        train_nets.train(_fine_tuning_args(tmp_path, pth))
    message = str(refused.value)
    assert "\n" not in message and message.startswith(f"Args: restore_path={pth}: ")
    assert ("run with --net_depth=18 --embedding_size=64 --image_size=[112,112] --norm_epsilon=1e-05 "
            "--projection_shortcut=true --channel_order=RGB (dropout_rate may differ)") in message
    for differing in ("net_depth=50", "embedding_size=512", "norm_epsilon=None", "projection_shortcut=false",
                      "channel_order=BGR"):
        assert differing in message
    assert not (tmp_path / "ckpt").exists()
    # The overrides it lists are accepted from the command line and are the file's.
    overrides = message.split("run with ")[1].split(" (")[0].split()
    assert train_nets.Args.from_cli(overrides).to_dict().items() >= {**IRESNET18_ARGS, "image_size": [112, 112]}.items()

    with pytest.raises(ValueError, match=r"run with --backbone=mobilefacenet_arcface_torch --embedding_size=64 "
                                         r"--image_size=\[112,112\] --norm_epsilon=1e-05 --channel_order=RGB \("):
        train_nets.train(_fine_tuning_args(tmp_path, torch_files / "mbf" / "backbone.pth"))
    with pytest.raises(ValueError, match=r"restore_head=true: .* no class weights; set --restore_head=false"):
        train_nets.train(_fine_tuning_args(tmp_path, pth, restore_head=True, **IRESNET18_ARGS))
    assert not (tmp_path / "ckpt").exists()
