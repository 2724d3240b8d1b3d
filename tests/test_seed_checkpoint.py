"""nets.seed_checkpoint against checkpoints written here in the seed's TF1 format, and a numpy forward pass.

The writer creates variables with tf.compat.v1.get_variable under the seed's TensorLayer 1.7 names and shapes
(seed-behaviour.md 2.1-2.3) in graph mode and saves them with tf.compat.v1.train.Saver. The reference forward pass is
written from the same description (BGR (x - 127.5) / 128 input, BN with moving statistics and eps 2e-5, GN of 32
groups and eps 1e-5, symmetric padding before stride-2 convs, the 1x1 stride-2 max-pool shortcut, PReLU
relu(x) + a (x - |x|) / 2, flatten in NHWC order, dense, E_BN2) in float64, independently of our Keras code.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import tensorflow as tf
from numpy.lib.stride_tricks import sliding_window_view

from data.preprocess import normalize
from models.checkpoints import resolve_checkpoint
from nets import seed_checkpoint

UNITS = {18: (2, 2, 2, 2), 50: (3, 4, 14, 3), 100: (3, 13, 30, 3)}
BASE_DEPTHS = (64, 128, 256, 512)
BN_VARIABLES = ("beta", "gamma", "moving_mean", "moving_variance")


# ---------------------------------------------------------------- the seed's variables, from seed-behaviour.md 2.1-2.3
def seed_variable_shapes(scope: str, units: tuple[int, ...], *, width: int = 1, norm: str = "bn", se: bool = False,
                         image_size: int = 112, num_classes: int | None = None) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}

    def add_norm(name: str, channels: int) -> None:
        if norm == "gn":
            shapes.update({f"{name}/scale": (1, channels, 1, 1), f"{name}/offset": (1, channels, 1, 1)})
        else:
            shapes.update({f"{name}/{variable}": (channels,) for variable in BN_VARIABLES})

    shapes[f"{scope}/conv1/W_conv2d"] = (3, 3, 3, 64)
    add_norm(f"{scope}/{'group_norm_0' if norm == 'gn' else 'bn0'}", 64)
    shapes[f"{scope}/prelu0/alphas"] = (64,)
    channels_in = 64
    for block, (count, base) in enumerate(zip(units, BASE_DEPTHS), start=1):
        depth = base * width
        for unit in range(1, count + 1):
            unit_scope = f"{scope}/block{block}/unit_{unit}/bottleneck_v1"
            if depth != channels_in:
                shapes[f"{unit_scope}/shortcut_conv/W_conv2d"] = (1, 1, channels_in, depth)
                add_norm(f"{unit_scope}/shortcut_bn/BatchNorm", depth)
            add_norm(f"{unit_scope}/conv1_bn1", channels_in)
            shapes[f"{unit_scope}/conv1/W_conv2d"] = (3, 3, channels_in, base)
            add_norm(f"{unit_scope}/conv1_bn2", base)
            shapes[f"{unit_scope}/prelu_layer/alphas"] = (base,)
            shapes[f"{unit_scope}/conv2/W_conv2d"] = (3, 3, base, depth)
            add_norm(f"{unit_scope}/conv2_bn/{'GroupNorm' if norm == 'gn' else 'BatchNorm'}", depth)
            if se:
                shapes.update({f"{unit_scope}/excitation_1/W": (depth, depth // 16),
                               f"{unit_scope}/excitation_1/b": (depth // 16,),
                               f"{unit_scope}/excitation_2/W": (depth // 16, depth),
                               f"{unit_scope}/excitation_2/b": (depth,)})
            channels_in = depth
    add_norm(f"{scope}/{'E_GN_0' if norm == 'gn' else 'E_BN1'}", channels_in)
    side = image_size
    for _ in range(4):  # four stride-2 stages, ceil(n / 2) each
        side = (side + 1) // 2
    shapes[f"{scope}/E_DenseLayer/W"] = (side * side * channels_in, 512)
    shapes[f"{scope}/E_DenseLayer/b"] = (512,)
    if norm != "gn":
        add_norm(f"{scope}/E_BN2", 512)
    if num_classes:
        shapes["arcface_loss/embedding_weights"] = (512, num_classes)
    return shapes


def random_values(shapes: dict[str, tuple[int, ...]], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Random values of a plausible scale: He-scaled kernels, BN statistics that keep activations near 1."""
    values = {}
    for name, shape in shapes.items():
        leaf = name.rsplit("/", 1)[-1]
        if leaf in ("W_conv2d", "W", "embedding_weights"):
            fan_in = int(np.prod(shape[:-1]))
            value = rng.normal(0.0, np.sqrt(1.0 / fan_in), shape)
        elif leaf in ("gamma", "scale"):
            value = rng.uniform(0.5, 1.5, shape)
        elif leaf == "moving_variance":
            value = rng.uniform(0.5, 2.0, shape)
        elif leaf == "alphas":
            value = rng.uniform(0.0, 0.5, shape)
        else:  # beta, offset, moving_mean, b
            value = rng.normal(0.0, 0.1, shape)
        values[name] = value.astype(np.float32)
    return values


def write_tf1_checkpoint(prefix: str, values: dict[str, np.ndarray]) -> None:
    """Saves `values` the seed's way: graph-mode variables from tf.compat.v1.get_variable, tf.compat.v1 Saver."""
    graph = tf.Graph()
    with graph.as_default():
        variables = {}
        for name, value in values.items():
            scope, leaf = name.rsplit("/", 1)
            with tf.compat.v1.variable_scope(scope):
                variables[name] = tf.compat.v1.get_variable(leaf, initializer=tf.constant(value))
        global_step = tf.compat.v1.train.get_or_create_global_step()
        saver = tf.compat.v1.train.Saver(list(variables.values()) + [global_step])
        with tf.compat.v1.Session(graph=graph) as session:
            session.run(tf.compat.v1.global_variables_initializer())
            saver.save(session, prefix, write_meta_graph=False)


# ------------------------------------------------------------------------- the seed's forward pass, in float64 numpy
def conv2d(x: np.ndarray, kernel: np.ndarray, stride: int, padding: int) -> np.ndarray:
    kh, kw = kernel.shape[:2]
    x = np.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    windows = sliding_window_view(x, (kh, kw), axis=(1, 2))[:, ::stride, ::stride]  # N, H, W, C, kh, kw
    return np.einsum("nhwcij,ijcd->nhwd", windows, kernel, optimize=True)


def norm(x: np.ndarray, v: dict[str, np.ndarray], name: str, kind: str) -> np.ndarray:
    if kind == "gn":
        n, h, w, c = x.shape
        groups = min(32, c)
        grouped = x.reshape(n, h, w, groups, c // groups)
        mean = grouped.mean(axis=(1, 2, 4), keepdims=True)
        var = grouped.var(axis=(1, 2, 4), keepdims=True)
        x = ((grouped - mean) / np.sqrt(var + 1e-5)).reshape(n, h, w, c)
        return x * v[f"{name}/scale"].reshape(c) + v[f"{name}/offset"].reshape(c)
    return ((x - v[f"{name}/moving_mean"]) / np.sqrt(v[f"{name}/moving_variance"] + 2e-5) * v[f"{name}/gamma"]
            + v[f"{name}/beta"])


def prelu(x: np.ndarray, alphas: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0.0) + alphas * (x - np.abs(x)) * 0.5


def seed_forward(rgb_uint8: np.ndarray, v: dict[str, np.ndarray], scope: str, units: tuple[int, ...], width: int,
                 kind: str, se: bool) -> np.ndarray:
    v = {name: value.astype(np.float64) for name, value in v.items()}
    x = (rgb_uint8[..., ::-1].astype(np.float64) - 127.5) * 0.0078125  # BGR, the seed's normalisation
    x = conv2d(x, v[f"{scope}/conv1/W_conv2d"], 1, 1)
    x = norm(x, v, f"{scope}/{'group_norm_0' if kind == 'gn' else 'bn0'}", kind)
    x = prelu(x, v[f"{scope}/prelu0/alphas"])
    for block, (count, base) in enumerate(zip(units, BASE_DEPTHS), start=1):
        for unit in range(1, count + 1):
            s = f"{scope}/block{block}/unit_{unit}/bottleneck_v1"
            stride = 2 if unit == 1 else 1
            if x.shape[-1] == base * width:
                shortcut = x[:, ::stride, ::stride]  # identity, or the 1x1 stride-2 max-pool
            else:
                shortcut = conv2d(x[:, ::stride, ::stride], v[f"{s}/shortcut_conv/W_conv2d"], 1, 0)
                shortcut = norm(shortcut, v, f"{s}/shortcut_bn/BatchNorm", kind)
            r = norm(x, v, f"{s}/conv1_bn1", kind)
            r = conv2d(r, v[f"{s}/conv1/W_conv2d"], 1, 1)
            r = prelu(norm(r, v, f"{s}/conv1_bn2", kind), v[f"{s}/prelu_layer/alphas"])
            r = conv2d(r, v[f"{s}/conv2/W_conv2d"], stride, 1)  # symmetric padding, also at stride 2
            r = norm(r, v, f"{s}/conv2_bn/{'GroupNorm' if kind == 'gn' else 'BatchNorm'}", kind)
            if se:
                gate = np.maximum(r.mean(axis=(1, 2)) @ v[f"{s}/excitation_1/W"] + v[f"{s}/excitation_1/b"], 0.0)
                gate = 1.0 / (1.0 + np.exp(-(gate @ v[f"{s}/excitation_2/W"] + v[f"{s}/excitation_2/b"])))
                x = np.maximum(shortcut + r * gate[:, None, None, :], 0.0)
            else:
                x = shortcut + r
    x = norm(x, v, f"{scope}/{'E_GN_0' if kind == 'gn' else 'E_BN1'}", kind)
    x = x.reshape(len(x), -1) @ v[f"{scope}/E_DenseLayer/W"] + v[f"{scope}/E_DenseLayer/b"]  # NHWC flatten
    return x if kind == "gn" else norm(x, v, f"{scope}/E_BN2", kind)


# ------------------------------------------------------------------------------------------------------------ tests
def max_relative_difference(actual: np.ndarray, reference: np.ndarray) -> float:
    return float(np.max(np.abs(actual - reference)) / np.max(np.abs(reference)))


CASES = [
    # (scope, depth, width, norm, se, image size, classes): model D's structure at 32x32, a cheap GN + SE-IR net for
    # those code paths; slow: the 4x-wide GN net of model A (at depth 18) and model D at full size (349 MB).
    pytest.param("resnet_v1_50", 50, 1, "bn", False, 32, 10, id="model_D_structure"),
    pytest.param("resnet_v1_18", 18, 1, "gn", True, 32, 10, id="gn_se_ir"),
    pytest.param("resnet_v1_18", 18, 4, "gn", False, 32, 10, id="model_A_structure", marks=pytest.mark.slow),
    pytest.param("resnet_v1_50", 50, 1, "bn", False, 112, 85164, id="model_D_full_size", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("scope, depth, width, kind, se, image_size, num_classes", CASES)
def test_load_matches_numpy_forward_pass(scope, depth, width, kind, se, image_size, num_classes, tmp_path, caplog):
    rng = np.random.default_rng(7)
    shapes = seed_variable_shapes(scope, UNITS[depth], width=width, norm=kind, se=se, image_size=image_size,
                                  num_classes=num_classes)
    values = random_values(shapes, rng)
    prefix = str(tmp_path / "InsightFace_iter_best_1000.ckpt")
    write_tf1_checkpoint(prefix, values)

    with caplog.at_level(logging.INFO, logger="nets.seed_checkpoint"):
        model, class_weights = seed_checkpoint.load(prefix)
    assert f"depth {depth} (scope {scope})" in caplog.text and f"width {width}" in caplog.text

    images = rng.integers(0, 256, (2, image_size, image_size, 3), dtype=np.uint8)
    embeddings = model(normalize(images, "BGR"), training=False).numpy()
    reference = seed_forward(images, values, scope, UNITS[depth], width, kind, se)
    assert embeddings.shape == (2, 512)
    assert max_relative_difference(embeddings, reference) < 1e-4
    np.testing.assert_array_equal(class_weights, values["arcface_loss/embedding_weights"])


def test_model_d_full_size_names_and_count():
    """The released model D: 87,228,608 values, recognised and matched by name and shape (no 349 MB write)."""
    shapes = seed_variable_shapes("resnet_v1_50", UNITS[50], num_classes=85164)
    assert sum(int(np.prod(shape)) for shape in shapes.values()) == 87_228_608  # seed-behaviour.md 0.3
    architecture = seed_checkpoint.recognise(shapes)
    assert (architecture.depth, architecture.width, architecture.norm, architecture.unit_type) == (50, 1, "bn", "ir")
    assert architecture.image_size == (112, 112) and architecture.num_classes == 85164
    assert "model D" in architecture.seed_file
    model = architecture.build()
    assert len(seed_checkpoint.match_variables(model, shapes)) == len(shapes) - 1  # all but the class weights
    assert model.count_params() == 43_624_640


@pytest.mark.parametrize("scope, depth, norm, seed_model", [("resnet_v1_101", 100, "bn", "models B-C"),
                                                            ("resnet_v1_50", 50, "gn", "model A")])
def test_recognises_the_wide_seed_nets(scope, depth, norm, seed_model):
    shapes = seed_variable_shapes(scope, UNITS[depth], width=4, norm=norm, num_classes=85164)
    architecture = seed_checkpoint.recognise(shapes)
    assert (architecture.scope, architecture.depth, architecture.width, architecture.norm) == (scope, depth, 4, norm)
    assert seed_model in architecture.seed_file


def test_mismatch_lists_missing_and_unexpected(tmp_path):
    shapes = seed_variable_shapes("resnet_v1_18", UNITS[18], image_size=32)
    values = random_values(shapes, np.random.default_rng(0))
    values.pop("resnet_v1_18/block2/unit_2/bottleneck_v1/prelu_layer/alphas")
    values["resnet_v1_18/block2/unit_2/bottleneck_v1/prelu_layer/alpha"] = np.zeros(128, np.float32)  # TL >= 1.9
    prefix = str(tmp_path / "model.ckpt")
    write_tf1_checkpoint(prefix, values)
    with pytest.raises(ValueError) as error:
        seed_checkpoint.load(prefix)
    message = str(error.value)
    assert "missing from the checkpoint (1):\n  resnet_v1_18/block2/unit_2/bottleneck_v1/prelu_layer/alphas" in message
    assert "unexpected in the checkpoint (1):\n  resnet_v1_18/block2/unit_2/bottleneck_v1/prelu_layer/alpha" in message


def test_missing_checkpoint_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="no TF checkpoint at .*absent.ckpt"):
        resolve_checkpoint(tmp_path / "absent.ckpt")


def test_restore_class_weights_into_a_matching_head():
    from losses.margin_head import MarginHead

    weights = np.random.default_rng(1).normal(size=(512, 7)).astype(np.float32)
    head = MarginHead(7)
    head.build((None, 512))
    assert seed_checkpoint.restore_class_weights(head, weights)
    np.testing.assert_array_equal(head.embedding_weights.numpy(), weights)
    other = MarginHead(9)
    other.build((None, 512))
    before = other.embedding_weights.numpy()
    assert not seed_checkpoint.restore_class_weights(other, weights)
    np.testing.assert_array_equal(other.embedding_weights.numpy(), before)


# TensorLayer 1.7's variable names (seed-behaviour.md 2.1), by Keras layer type and variable name.
TL_NAMES = {"Conv2D": {"kernel": "W_conv2d"}, "Dense": {"kernel": "W", "bias": "b"}, "PReLU": {"alpha": "alphas"},
            "BatchNormalization": {n: n for n in BN_VARIABLES},
            "FrozenGammaBatchNormalization": {n: n for n in BN_VARIABLES}}


@pytest.mark.slow
def test_training_fine_tunes_from_the_wide_100_layer_checkpoint(tmp_path):
    """Models B-C: the 4x-wide 100-layer net under the seed's scope resnet_v1_101 (215 M weights at 32x32), restored
    into the network train_nets builds for net_depth=100, net_width=4 (named resnet_v1_100)."""
    import train_nets
    from nets.spec import NetworkSpec
    from losses import make_head
    from training.checkpoints import restore_for_fine_tuning

    shapes = seed_variable_shapes("resnet_v1_101", UNITS[100], width=4, image_size=32, num_classes=5)
    values = random_values(shapes, np.random.default_rng(3))
    prefix = str(tmp_path / "InsightFace_iter_best_1000.ckpt")
    write_tf1_checkpoint(prefix, values)

    args = train_nets.Args(net_depth=100, net_width=4, image_size=[32, 32])
    model = NetworkSpec.from_mapping(args.to_dict()).build()
    head = make_head(args.loss, 5, **args.head_margins(), seed=args.seed)
    head.build((None, 512))
    restore_for_fine_tuning(model, head, prefix, with_head=True)
    restored = {}
    for layer in model.layers:
        for variable in layer.weights:
            leaf = TL_NAMES[type(layer).__name__][variable.name]
            restored[f"resnet_v1_101/{layer.name.replace('.', '/')}/{leaf}"] = variable.numpy()
    assert restored.keys() == values.keys() - {"arcface_loss/embedding_weights"}
    for name, value in restored.items():  # PReLU alphas are (1, 1, C) in Keras, (C,) in the seed
        np.testing.assert_array_equal(value.reshape(values[name].shape), values[name], err_msg=name)
    np.testing.assert_array_equal(head.embedding_weights.numpy(), values["arcface_loss/embedding_weights"])
