"""eval_ckpt_file.py end to end: checkpoints of a tiny run, a .keras export, reports and plots, real faces."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest

import eval_ckpt_file
import generate_pairs
import train_nets
from data import synthetic
from nets import get_resnet
from strict_json import load_strict_json


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> dict:
    """A 3-step RGB run on synthetic identities, validated on a pairs file over other identities at steps 2 and 3,
    summaries at step 2 (not a console-line step)."""
    root = tmp_path_factory.mktemp("evalrun")
    synthetic.generate(root / "train", 4, 6, seed=0, image_size=32)
    synthetic.generate(root / "heldout", 6, 6, seed=1, image_size=32)
    generate_pairs.main(generate_pairs.Args(data_dir=str(root / "heldout"), pairs_filepath=str(root / "pairs.txt"),
                                            num_folds=4, pairs_per_fold=4, seed=0))
    args = train_nets.Args(net_depth=18, image_size=[32, 32], batch_size=8, max_steps=3, ckpt_interval=2,
                           channel_order="RGB", train_dataset_dir=str(root / "train"), validate_interval=2,
                           eval_dataset=str(root / "heldout"), eval_pair=str(root / "pairs.txt"), summary_interval=2,
                           show_info_interval=3,
                           ckpt_path=str(root / "ckpt"), summary_path=str(root / "summary"),
                           log_file_path=str(root / "logs"))
    summary = train_nets.train(args)
    return {"root": root, "summary": summary}


def test_checkpoints_are_evaluated_with_reports_and_plots(tiny_run, tmp_path, caplog):
    root = tiny_run["root"]
    args = eval_ckpt_file.Args(ckpt_file=str(root / "ckpt" / "InsightFace_iter-"), ckpt_index_list=["2", "3"],
                               eval_dataset=str(root / "heldout"), eval_pair=str(root / "pairs.txt"),
                               batch_size=8, output_dir=str(tmp_path))
    with caplog.at_level(logging.INFO):
        reports = eval_ckpt_file.evaluate_checkpoints(args)
    assert [Path(r["checkpoint"]).name for r in reports] == ["InsightFace_iter-2", "InsightFace_iter-3"]
    saved = load_strict_json(tmp_path / "report.json")
    assert len(saved) == 2
    for report in saved:
        assert report["num_pairs"] == 32 and report["num_folds"] == 4
        assert 0.0 <= report["accuracy_mean"] <= 1.0 and len(report["accuracy_per_fold"]) == 4
        # The channel order of the training run, read from its args.json.
        assert report["channel_order"] == "RGB"
        for path in report["files"].values():
            assert Path(path).is_file()
    assert (tmp_path / "roc.png").stat().st_size > 1000
    assert "[pairs][InsightFace_iter-3]Accuracy-Flip:" in caplog.text
    assert "XNorm" in caplog.text and f"report: {tmp_path / 'report.json'}" in caplog.text


def test_report_json_is_strict_json_with_null_for_nan_and_infinity(tmp_path):
    """Python's json writes NaN/Infinity, which strict readers refuse: the report writer stores them as null, numpy
    values as plain numbers, and the strict reader refuses what plain json.dumps writes."""
    from eval.report import write_json_report

    report = {"eer": float("nan"), "val": np.float32(np.inf), "far": [-math.inf, np.float64(0.25)],
              "folds": np.array([0.5, np.nan]), "name": "pairs"}
    path = write_json_report(tmp_path / "report.json", [report])
    assert load_strict_json(path) == [{"eer": None, "val": None, "far": [None, 0.25], "folds": [0.5, None],
                                       "name": "pairs"}]
    (tmp_path / "plain.json").write_text(json.dumps({"eer": float("nan")}))
    with pytest.raises(ValueError, match="plain.json: NaN is not JSON"):
        load_strict_json(tmp_path / "plain.json")


def summary_scalars(folder: Path) -> dict[str, dict[int, float]]:
    """tag -> {step: value} of every scalar in the TensorBoard event files of `folder`."""
    import tensorflow as tf

    scalars: dict[str, dict[int, float]] = {}
    for path in sorted(folder.glob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                if value.metadata.plugin_data.plugin_name == "scalars":
                    scalars.setdefault(value.tag, {})[event.step] = float(tf.make_ndarray(value.tensor))
    return scalars


def test_tensorboard_holds_validation_numbers_and_samples_per_second(tiny_run, tmp_path):
    root = tiny_run["root"]
    scalars = summary_scalars(root / "summary")
    # Step 2 is a summary step but not a console-line step (show_info_interval=3): samples/s is logged anyway.
    assert set(scalars["samples_per_sec"]) == {2} and scalars["samples_per_sec"][2] > 0
    # The validations at steps 2 and 3 give the numbers eval_ckpt_file.py measures on the checkpoints of those steps.
    reports = eval_ckpt_file.evaluate_checkpoints(eval_ckpt_file.Args(
        ckpt_file=str(root / "ckpt" / "InsightFace_iter-"), ckpt_index_list=["2", "3"],
        eval_dataset=str(root / "heldout"), eval_pair=str(root / "pairs.txt"), batch_size=8, output_dir=str(tmp_path)))
    for step, report in zip((2, 3), reports):
        for key, tag in train_nets.VALIDATION_SCALARS.items():
            if report[key] is None:  # no EER: nothing is logged
                assert step not in scalars.get(f"validation/pairs/{tag}", {})
            else:
                assert scalars[f"validation/pairs/{tag}"][step] == pytest.approx(report[key], abs=1e-4), tag


def test_keras_export_gives_the_checkpoint_s_numbers(tiny_run, tmp_path):
    root = tiny_run["root"]
    from models import load_embedding_model

    model = load_embedding_model(root / "ckpt" / "InsightFace_iter-3").model
    model.save(tmp_path / "embedding.keras")
    common = dict(eval_dataset=str(root / "heldout"), eval_pair=str(root / "pairs.txt"), batch_size=8,
                  ckpt_index_list=[], channel_order="RGB")
    from_ckpt = eval_ckpt_file.evaluate_checkpoints(eval_ckpt_file.Args(
        ckpt_file=str(root / "ckpt" / "InsightFace_iter-3"), output_dir=str(tmp_path / "a"), **common))[0]
    from_keras = eval_ckpt_file.evaluate_checkpoints(eval_ckpt_file.Args(
        ckpt_file=str(tmp_path / "embedding.keras"), output_dir=str(tmp_path / "b"), **common))[0]
    np.testing.assert_allclose(from_keras["distances"], from_ckpt["distances"], rtol=1e-5, atol=1e-6)


def test_a_deployment_export_is_evaluated_through_its_network_not_normalised_twice(tiny_run, tmp_path):
    """An export that carries its preprocessing (uint8 in, resizing 48 -> 32) gives the checkpoint's numbers."""
    from deploy.preprocessing import with_preprocessing
    from models import load_embedding_model

    root = tiny_run["root"]
    network = load_embedding_model(root / "ckpt" / "InsightFace_iter-3").model
    with_preprocessing(network, "RGB", input_size=(48, 48)).save(tmp_path / "deployed.keras")
    common = dict(eval_dataset=str(root / "heldout"), eval_pair=str(root / "pairs.txt"), batch_size=8,
                  ckpt_index_list=[])
    from_ckpt = eval_ckpt_file.evaluate_checkpoints(eval_ckpt_file.Args(
        ckpt_file=str(root / "ckpt" / "InsightFace_iter-3"), output_dir=str(tmp_path / "a"), **common))[0]
    deployed = eval_ckpt_file.evaluate_checkpoints(eval_ckpt_file.Args(
        ckpt_file=str(tmp_path / "deployed.keras"), output_dir=str(tmp_path / "b"), **common))[0]
    assert deployed["image_size"] == [32, 32]  # the network's input, not the export's resize
    np.testing.assert_allclose(deployed["distances"], from_ckpt["distances"], rtol=1e-5, atol=1e-6)


def test_nothing_to_evaluate_and_missing_checkpoint_are_named(tiny_run, tmp_path):
    root = tiny_run["root"]
    with pytest.raises(ValueError, match="nothing to evaluate"):
        eval_ckpt_file.evaluate_checkpoints(eval_ckpt_file.Args(
            ckpt_file=str(root / "ckpt" / "InsightFace_iter-"), ckpt_index_list=["3"], output_dir=str(tmp_path)))
    with pytest.raises(FileNotFoundError, match="InsightFace_iter-77"):
        eval_ckpt_file.evaluate_checkpoints(eval_ckpt_file.Args(
            ckpt_file=str(root / "ckpt" / "InsightFace_iter-"), ckpt_index_list=["77"],
            eval_dataset=str(root / "heldout"), eval_pair=str(root / "pairs.txt"), output_dir=str(tmp_path)))


def test_real_faces_orl_untrained_network(orl_faces, tmp_path):
    """ORL (40 people, grey 92x112 .pgm): pairs from generate_pairs, a random IR-ResNet as a .keras model (no args.json:
    the seed's BGR). Every distance equals an independent computation (cv2 read and resize, the seed's (x - 127.5) /
    128, the model on the image and its left-right mirror, sum, L2-normalise, squared L2), so a wrong flip, resize or
    normalisation fails here; the accuracy floor is a coarse check that the protocol scores real faces above chance.
    ORL is grey, so the channel order is proved on colour images (test_checkpoints_of_different_input_sizes_...).
    Measured at 32x32 on these 200 pairs, initialisation seeds 0/1/2: accuracy 0.865/0.900/0.880, AUC 0.942/0.938/0.955,
    distances equal to the reference to the last bit; without the flip the distances move by 43% (median), with an
    up-down flip by 19%, with x/255 by 82%. (Before: 64x64, 600 pairs, 45-90 s.)"""
    generate_pairs.main(generate_pairs.Args(data_dir=str(orl_faces), pairs_filepath=str(tmp_path / "pairs.txt"),
                                            num_folds=10, pairs_per_fold=10, seed=0))
    model = get_resnet(18, image_size=32, seed=0)
    model.save(tmp_path / "random.keras")
    report = eval_ckpt_file.evaluate_checkpoints(eval_ckpt_file.Args(
        ckpt_file=str(tmp_path / "random.keras"), ckpt_index_list=[], eval_dataset=str(orl_faces),
        eval_pair=str(tmp_path / "pairs.txt"), batch_size=64, output_dir=str(tmp_path / "eval")))[0]
    assert report["num_pairs"] == 200 and report["channel_order"] == "BGR" and report["flip"] == "sum"
    expected = reference_distances(model, orl_faces, tmp_path / "pairs.txt", 32, channel_order="BGR")
    np.testing.assert_allclose(report["distances"], expected, rtol=1e-4, atol=1e-5)
    assert report["accuracy_mean"] > 0.75
    assert report["auc"] > 0.8


def reference_distances(model, data_dir, pairs_path, size, channel_order="RGB"):
    """Squared L2 distances of the flip-summed, L2-normalised embeddings, images resized with cv2 (bilinear)."""
    import cv2

    from eval.pairs import read_pairs, resolve_pair_paths

    resolved = resolve_pair_paths(read_pairs(pairs_path).pairs, data_dir)
    rgb = np.stack([cv2.resize(cv2.imread(str(p))[:, :, ::-1], (size, size), interpolation=cv2.INTER_LINEAR)
                    for p in resolved.paths]).astype(np.float64)
    x = rgb if channel_order == "RGB" else rgb[..., ::-1]
    x = ((x - 127.5) / 128.0).astype(np.float32)
    summed = np.asarray(model(x, training=False), np.float64) + np.asarray(model(x[:, :, ::-1], training=False),
                                                                            np.float64)
    unit = summed / np.linalg.norm(summed, axis=1, keepdims=True)
    return np.sum((unit[0::2] - unit[1::2]) ** 2, axis=1)


def test_checkpoints_of_different_input_sizes_each_get_their_size(tiny_run, tmp_path, monkeypatch):
    import eval.sets

    root = tiny_run["root"]
    models = {size: get_resnet(18, image_size=size, embedding_size=16, seed=size) for size in (32, 16)}
    for size, model in models.items():
        model.save(tmp_path / f"net{size}.keras")
    loaded_sizes = []
    original = eval.sets.load_pairs_set
    monkeypatch.setattr(eval.sets, "load_pairs_set",
                        lambda *a, **k: loaded_sizes.append(tuple(k["image_size"])) or original(*a, **k))
    reports = eval_ckpt_file.evaluate_checkpoints(eval_ckpt_file.Args(
        ckpt_file=f"{tmp_path}/net", ckpt_index_list=["32.keras", "16.keras", "32.keras"],
        eval_dataset=str(root / "heldout"), eval_pair=str(root / "pairs.txt"), batch_size=16, channel_order="RGB",
        output_dir=str(tmp_path / "eval")))
    assert [r["image_size"] for r in reports] == [[32, 32], [16, 16], [32, 32]]
    assert loaded_sizes == [(32, 32), (16, 16)]  # each size read once
    for report in reports[:2]:
        size = report["image_size"][0]
        expected = reference_distances(models[size], root / "heldout", root / "pairs.txt", size)
        np.testing.assert_allclose(report["distances"], expected, rtol=1e-4, atol=1e-5)


EXPORTED = ("saved_model", "embedding.onnx", "embedding.tflite")


@pytest.mark.slow  # ~60 s: export.py's four formats, eight evaluations
def test_export_py_files_are_evaluated_by_their_runtimes_as_the_keras_export(tiny_run, tmp_path):
    """export.py's SavedModel, ONNX and TFLite of a trained run, each run by its own runtime on the pixels, give the
    .keras export's distances (that one is evaluated through its network): equal up to float without the flip. With
    the flip "sum" an export adds its L2-normalised embeddings where the .keras evaluation adds the raw ones, so the
    distances move a little (measured on this run: 4.0e-3 of the largest distance for all three formats, 7e-7
    without the flip; the accuracy 0.6875 against 0.78125, 3 of 32 pairs near the threshold of a 3-step run) and the
    accuracy stays within one pair per fold. XNorm of an export is 1: its outputs are unit vectors."""
    import export

    root = tiny_run["root"]
    out = tmp_path / "export"
    export.main(export.Args(input_model=str(root / "ckpt" / "InsightFace_iter-3"), output_dir=str(out),
                            formats=["saved_model", "keras", "onnx", "tflite"], num_check_images=2))
    common = dict(eval_dataset=str(root / "heldout"), eval_pair=str(root / "pairs.txt"), batch_size=8,
                  ckpt_index_list=[])
    for flip in ("none", "sum"):
        reports = {name: eval_ckpt_file.evaluate_checkpoints(eval_ckpt_file.Args(
            ckpt_file=str(out / name), flip=flip, output_dir=str(tmp_path / flip / name), **common))[0]
            for name in ("embedding.keras", *EXPORTED)}
        keras_report = reports.pop("embedding.keras")
        keras_distances = np.asarray(keras_report["distances"])
        for name, report in reports.items():
            assert (report["channel_order"], report["normalisation"]) == ("RGB", {"mean": 127.5, "scale": 1 / 128})
            difference = np.max(np.abs(np.asarray(report["distances"]) - keras_distances)) / np.max(keras_distances)
            assert report["xnorm"] == pytest.approx(1.0, abs=1e-5)
            if flip == "none":
                np.testing.assert_allclose(report["distances"], keras_distances, rtol=1e-5, atol=1e-6)
            else:
                assert 1e-5 < difference < 1e-2, name  # moved (unit vectors summed), by little
                assert abs(report["accuracy_mean"] - keras_report["accuracy_mean"]) <= 1 / 8, name  # 8 pairs a fold


def test_the_index_list_is_appended_to_a_prefix_and_ignored_for_a_model_file(tmp_path):
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "InsightFace_iter-10000.index").write_bytes(b"")
    (tmp_path / "model.onnx").write_bytes(b"")
    prefix = str(tmp_path / "ckpt" / "InsightFace_iter-")
    assert eval_ckpt_file.checkpoint_paths(eval_ckpt_file.Args(ckpt_file=prefix)) == [f"{prefix}10000"]
    for model in (tmp_path / "model.onnx", tmp_path / "ckpt"):  # the default ckpt_index_list ["10000"] names nothing
        assert eval_ckpt_file.checkpoint_paths(eval_ckpt_file.Args(ckpt_file=str(model))) == [str(model)]
    both = eval_ckpt_file.Args(ckpt_file=str(tmp_path / "ckpt"), ckpt_index_list=["/InsightFace_iter-10000"])
    assert eval_ckpt_file.checkpoint_paths(both) == [str(tmp_path / "ckpt") + "/InsightFace_iter-10000"]
