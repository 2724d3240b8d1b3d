"""data.augment: each operation against a numpy formula or a property, determinism per (seed, epoch, batch), the
flip-only pipeline unchanged when everything is off, and train_nets.train() resuming exactly with augmentation on."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

import train_nets
from data import synthetic
from data.augment import DRAW_ROWS, Augmentation
from data.image_folders import FolderImages
from data.train_data import TrainData, open_train_data
from test_training import _out_args, _saved_values

SIZE = 32
BATCH = 8
# Every operation on, with strengths large enough to show.
EVERYTHING = Augmentation(crop_prob=0.5, colour_prob=0.5, brightness=0.4, contrast=0.4, saturation=0.4,
                          grey_prob=0.3, blur_prob=0.3, cutout_prob=0.5, cutout_fill="noise")
TINY_RUN = ["--net_depth=18", f"--image_size=[{SIZE},{SIZE}]", f"--batch_size={BATCH}", "--show_info_interval=1",
            "--summary_interval=100", "--validate_interval=0", "--lr_values=[0.01]", "--lr_steps=[]",
            "--ckpt_interval=0", "--aug_crop_prob=0.5", "--aug_colour_prob=0.5", "--aug_grey_prob=0.3",
            "--aug_blur_prob=0.3", "--aug_cutout_prob=0.5"]


@pytest.fixture(scope="module")
def faces(tmp_path_factory) -> Path:
    """5 identities x 8 synthetic JPEGs of 32 x 32: 5 batches of 8 per epoch."""
    root = tmp_path_factory.mktemp("faces")
    return synthetic.generate(root, num_identities=5, images_per_identity=8, seed=0, image_size=SIZE)


@pytest.fixture(scope="module")
def data(faces) -> TrainData:
    return open_train_data(str(faces), image_size=(SIZE, SIZE), channel_order="RGB")


def _noise(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _draws(seed: int, count: int) -> dict[str, np.ndarray]:
    """The documented draw order: the flips, then one block of uniforms, row r = DRAW_ROWS[r] per image."""
    rng = np.random.default_rng(seed)
    rng.random(count)  # the flips (drawn by the batch reader, before the block)
    return dict(zip(DRAW_ROWS, rng.random((len(DRAW_ROWS), count))))


def _applied(augmentation: Augmentation, images: np.ndarray, seed: int) -> np.ndarray:
    """`images` augmented with the generator of `seed` after its flip draws, as the batch reader does."""
    out = images.copy()
    rng = np.random.default_rng(seed)
    rng.random(len(images))
    augmentation.apply(out, rng)
    return out


def _epoch(data: TrainData, **kwargs) -> np.ndarray:
    return np.concatenate([images.numpy() for images, _ in data.dataset(BATCH, epoch=1, seed=7, **kwargs)])


# ---------------------------------------------------------------------------------------------- the pipeline
def test_all_probabilities_zero_is_the_flip_only_pipeline_byte_for_byte(faces, data):
    positions = data.epoch_order(seed=7, epoch=1)[BATCH:2 * BATCH]
    images, _, usable = data.load_batch(positions, (7, 1, 1), Augmentation())
    assert usable
    # Independent reference: OpenCV's decode, and the flips of default_rng([seed, epoch, batch]) < 0.5.
    source = FolderImages(faces)
    flips = np.random.default_rng([7, 1, 1]).random(BATCH) < 0.5
    for row, position in enumerate(positions):
        encoded = np.frombuffer(source.read(int(position))[0], dtype=np.uint8)
        expected = cv2.cvtColor(cv2.imdecode(encoded, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        np.testing.assert_array_equal(images[row], expected[:, ::-1] if flips[row] else expected)
    assert 0 < flips.sum() < BATCH  # both cases were checked
    np.testing.assert_array_equal(_epoch(data, augmentation=Augmentation()), _epoch(data))


def test_same_batch_same_draws_other_batch_other_draws(data):
    positions = data.epoch_order(seed=7, epoch=1)[:BATCH]
    first = data.load_batch(positions, (7, 1, 0), EVERYTHING)[0]
    again = data.load_batch(positions, (7, 1, 0), EVERYTHING)[0]
    other_batch = data.load_batch(positions, (7, 1, 1), EVERYTHING)[0]
    plain = data.load_batch(positions, (7, 1, 0))[0]
    np.testing.assert_array_equal(first, again)
    assert (first != other_batch).any() and (first != plain).any()


def test_skip_batches_yields_the_rest_of_the_augmented_epoch(data):
    whole = _epoch(data, augmentation=EVERYTHING)
    resumed = np.concatenate([images.numpy() for images, _ in
                              data.dataset(BATCH, epoch=1, seed=7, skip_batches=3, augmentation=EVERYTHING)])
    assert len(whole) == 5 * BATCH
    np.testing.assert_array_equal(resumed, whole[3 * BATCH:])
    assert (whole != _epoch(data)).any()  # the augmentation did change the epoch


# ---------------------------------------------------------------------------------------------- each operation
def test_greyscale_is_the_bt601_luma_in_every_channel():
    images = _noise((4, 20, 24, 3))
    out = _applied(Augmentation(grey_prob=1.0), images, seed=3)
    luma = images.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()
    # OpenCV's fixed-point arithmetic may round a value .5 away from the exact one the other way.
    assert np.abs(out[..., 0] - np.rint(luma)).max() <= 1
    assert np.mean(out[..., 0] == np.rint(luma)) > 0.99


def _colour_formula(images: np.ndarray, factors: np.ndarray, step: str) -> np.ndarray:
    """float64 reference of one colour step per image, clipped to [0, 255] and rounded."""
    pixels = images.astype(np.float64)
    luma = pixels @ np.array([0.299, 0.587, 0.114])
    factors = factors[:, None, None, None]
    if step == "brightness":
        result = pixels * factors
    elif step == "contrast":
        mean = luma.mean(axis=(1, 2))[:, None, None, None]
        result = (pixels - mean) * factors + mean
    else:
        result = luma[..., None] + (pixels - luma[..., None]) * factors
    return np.rint(np.clip(result, 0, 255))


@pytest.mark.parametrize("step", ["brightness", "contrast", "saturation"])
def test_colour_step_follows_its_formula(step):
    images = _noise((6, 16, 16, 3))
    strengths = {"brightness": 0.0, "contrast": 0.0, "saturation": 0.0, step: 0.5}
    out = _applied(Augmentation(colour_prob=1.0, **strengths), images, seed=11)
    factors = 0.5 + _draws(11, len(images))[step] * 1.0  # uniform in [1 - 0.5, 1 + 0.5]
    expected = _colour_formula(images, factors, step)
    # float32 arithmetic may round a value at .5 the other way than float64.
    assert np.abs(out.astype(int) - expected).max() <= 1
    assert np.mean(out == expected) > 0.99
    assert (out != images).mean() > 0.5


def test_colour_probability_applies_to_the_drawn_images_only():
    images = _noise((16, 8, 8, 3))
    out = _applied(Augmentation(colour_prob=0.5, brightness=0.5, contrast=0.0, saturation=0.0), images, seed=5)
    draws = _draws(5, len(images))
    chosen = draws["colour"] < 0.5
    assert 0 < chosen.sum() < len(images)
    np.testing.assert_array_equal(out[~chosen], images[~chosen])
    brightened = _colour_formula(images[chosen], 0.5 + draws["brightness"][chosen], "brightness")
    assert np.abs(out[chosen].astype(int) - brightened).max() <= 1


@pytest.mark.parametrize("fill", ["grey", "noise"])
def test_cutout_fills_exactly_one_rectangle_of_the_stated_size(fill):
    height, width = 20, 30
    images = np.full((5, height, width, 3), 7, dtype=np.uint8)
    out = _applied(Augmentation(cutout_prob=1.0, cutout_size=0.3, cutout_fill=fill), images, seed=2)
    draws = _draws(2, len(images))
    cut_height, cut_width = round(0.3 * height), round(0.3 * width)  # 6 x 9
    for row in range(len(images)):
        top = int(draws["cutout_y"][row] * (height - cut_height + 1))
        left = int(draws["cutout_x"][row] * (width - cut_width + 1))
        inside = np.zeros((height, width), dtype=bool)
        inside[top:top + cut_height, left:left + cut_width] = True
        assert (out[row][~inside] == 7).all()
        if fill == "grey":
            assert (out[row][inside] == 128).all()
        else:
            assert (out[row][inside] != 7).mean() > 0.9 and out[row][inside].std() > 50


def test_crop_keeps_the_shape_and_changes_pixels_and_the_whole_image_crop_is_identity():
    ramp = np.broadcast_to(np.arange(24, dtype=np.uint8)[None, :, None] * 10, (24, 24, 3))
    images = np.stack([ramp, ramp.transpose(1, 0, 2)] * 3)
    out = _applied(Augmentation(crop_prob=1.0, crop_area=(0.3, 0.6)), images, seed=4)
    assert out.shape == images.shape and out.dtype == np.uint8
    assert all((out[row] != images[row]).any() for row in range(len(images)))
    whole = _applied(Augmentation(crop_prob=1.0, crop_area=(1.0, 1.0), crop_aspect=(1.0, 1.0)), images, seed=4)
    np.testing.assert_array_equal(whole, images)


def test_blur_keeps_a_constant_image_and_lowers_the_variance_of_noise():
    constant = np.full((3, 24, 24, 3), 90, dtype=np.uint8)
    blurred = _applied(Augmentation(blur_prob=1.0, blur_sigma=(1.0, 2.0)), constant, seed=6)
    assert blurred.mean() == 90 and (blurred == 90).all()
    noise = _noise((3, 24, 24, 3))
    smooth = _applied(Augmentation(blur_prob=1.0, blur_sigma=(1.0, 2.0)), noise, seed=6)
    assert (smooth.reshape(3, -1).var(axis=1) < 0.3 * noise.reshape(3, -1).var(axis=1)).all()
    assert abs(smooth.mean() - noise.mean()) < 2


def test_out_of_range_settings_are_refused_naming_the_field():
    with pytest.raises(ValueError, match=r"crop_area=\(0.9, 0.5\) \(Args aug_crop_area\)"):
        Augmentation(crop_area=(0.9, 0.5))
    with pytest.raises(ValueError, match="aug_cutout_fill"):
        Augmentation(cutout_fill="black")
    with pytest.raises(ValueError, match="aug_blur_sigma"):
        train_nets.validate_args(train_nets.Args(aug_blur_sigma=[2.0, 1.0]))
    with pytest.raises(ValueError, match="aug_grey_prob"):
        train_nets.Args.from_cli(["--aug_grey_prob=1.5"])
    assert not train_nets.Args().augmentation().enabled  # the seed's flip-only pipeline by default
    given = train_nets.Args.from_cli(["--aug_crop_prob=0.5", "--aug_crop_area=[0.3,0.9]", "--aug_cutout_fill=noise"])
    assert given.augmentation() == Augmentation(crop_prob=0.5, crop_area=(0.3, 0.9), cutout_fill="noise")


# ---------------------------------------------------------------------------------------------- training
def _run(faces: Path, out: Path, steps: int) -> dict:
    argv = [*TINY_RUN, f"--train_dataset_dir={faces}", f"--max_steps={steps}", *_out_args(out)]
    return train_nets.train(train_nets.Args.from_cli(argv))


@pytest.mark.slow  # three short runs: about 40 s
def test_training_with_augmentation_resumes_exactly(faces, tmp_path, monkeypatch):
    asked = []
    original = TrainData.dataset

    def recording(self, *args, **kwargs):
        asked.append(kwargs.get("augmentation"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(TrainData, "dataset", recording)
    assert _run(faces, tmp_path / "whole", steps=3)["step"] == 3
    assert asked == [Augmentation(crop_prob=0.5, colour_prob=0.5, grey_prob=0.3, blur_prob=0.3, cutout_prob=0.5)]
    assert _run(faces, tmp_path / "split", steps=2)["step"] == 2
    assert _run(faces, tmp_path / "split", steps=3)["step"] == 3  # resumes at batch 2 of epoch 0
    expected = _saved_values(str(tmp_path / "whole" / "ckpt" / "InsightFace_iter-3"))
    actual = _saved_values(str(tmp_path / "split" / "ckpt" / "InsightFace_iter-3"))
    assert expected.keys() == actual.keys() and expected
    for name in expected.keys() - {"save_counter/.ATTRIBUTES/VARIABLE_VALUE"}:  # 1 save against 2
        np.testing.assert_allclose(actual[name], expected[name], rtol=1e-5, atol=1e-6, err_msg=name)
