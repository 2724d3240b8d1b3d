"""Reading insightface's MXNet model zoo (model-symbol.json + model-0000.params) without mxnet.

The pair is what `mx.model.save_checkpoint(prefix, epoch, ...)` writes: `prefix-symbol.json` (the graph) and
`prefix-%04d.params` (the weights). insightface names a model `prefix,epoch` (e.g. `model-r100-ii/model,0`); any of
the folder, `prefix,epoch`, the .params file or the -symbol.json names the pair here.

The .params file is an NDArray list (src/ndarray/ndarray.cc, NDArray::Save): uint64 0x112, uint64 reserved, uint64
count, the arrays, then uint64 count and the names ("arg:conv0_weight", "aux:bn0_moving_mean", each uint64 length +
bytes). Each array: uint32 magic (0xF993fac9 v2 and 0xF993faca v3: then int32 storage type; 0xF993fac8 v1; anything
else is the legacy layout, where that word is already ndim), the shape (v1-v3: int32 ndim + int64 dims; legacy:
uint32 dims), the context (int32 device type, int32 id), int32 dtype flag, the raw little-endian data.

The graph gives what the weights do not: the preprocessing (`_minusscalar0` 127.5 then `_mulscalar0` 0.0078125 after
`data`; RGB pixels, as insightface's face_model feeds them), each BatchNorm's eps (insightface wrote 2e-5; MXNet's
default, used by MobileFaceNet's conv blocks, is 1e-3) and fix_gamma (True by default: gamma is then 1 whatever is
stored, as in the embedding BN `fc1`).

The names are mapped to arcface_torch's state-dict names (nets.pretrained.weights, layout "arcface_torch"). The
networks are the same function:
* LResNet<depth>E-IR (fresnet.py, residual_unit_v3, version_input 1, output "E") is arcface_torch's iresnet: 3x3
  stem conv0/bn0/relu0; unit bn1 -> conv1 3x3/1 -> bn2 -> PReLU relu1 -> conv2 3x3/stride -> bn3 (the stride on
  conv2, as IBasicBlock), shortcut conv1sc 1x1/stride + BN _sc in the first unit of a stage; bn1 -> dropout ->
  pre_fc1 (FullyConnected on the NCHW flatten, as torch.flatten) -> fc1 (BN, fix_gamma).
* MobileFaceNet (fmobilefacenet.py, output "GDC") is arcface_torch's mbf at the width its shapes say (the zoo's is
  64 channels wide, arcface_torch's default 128); its pre_fc1 has a bias where arcface_torch's Linear has none, so the
  bias is folded into the following BN's running mean (BN(Wx + b) with mean m = BN(Wx) with mean m - b: exact).
arcface_torch's BNs use eps 1e-5; an MXNet BN's own eps is carried exactly by running_var + eps - 1e-5 (the BN divides
by sqrt(running_var + eps) either way). A PReLU keeps its gamma as the torch weight.
"""

from __future__ import annotations

import json
import logging
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from nets.pretrained.weights import ImportedWeights, Preprocessing, running_var_for_epsilon

log = logging.getLogger(__name__)

LIST_MAGIC = 0x112
NDARRAY_V1_MAGIC = 0xF993FAC8
NDARRAY_V2_MAGIC = 0xF993FAC9
NDARRAY_V3_MAGIC = 0xF993FACA  # v2 with numpy shape semantics (ndim 0 = a scalar, -1 = no array)
DENSE_STORAGE = 0
# mshadow's type flags (bfloat16, 12, has no numpy type).
DTYPES = {0: "<f4", 1: "<f8", 2: "<f2", 3: "u1", 4: "<i4", 5: "i1", 6: "<i8", 7: "?", 8: "<i2", 9: "<u2",
          10: "<u4", 11: "<u8"}
# mx.sym.BatchNorm's defaults when the graph does not name the attribute.
MXNET_BN_EPS = 1e-3
MXNET_BN_FIX_GAMMA = True
SYMBOL_SUFFIX = "-symbol.json"
PARAMS_NAME = re.compile(r"^(?P<prefix>.+)-(?P<epoch>\d{4})\.params$")
# Training-only arrays of a full (not sliced) checkpoint: the margin classifier after the embedding.
TRAINING_ONLY = re.compile(r"^fc7(_\d+)?_(weight|bias)$")


class MXNetFileError(ValueError):
    """A file that is not (or no longer) an MXNet model pair this reader can map; the message says where and why."""


# --- the .params NDArray list ------------------------------------------------------------------------------------

class _Cursor:
    """Reads `data` front to back; running short is one error naming the offset and what was being read."""

    def __init__(self, data: bytes, path: Path) -> None:
        self.data, self.path, self.offset = data, path, 0

    def take(self, size: int, what: str) -> bytes:
        if size < 0 or self.offset + size > len(self.data):
            raise MXNetFileError(f"{self.path}: truncated or not an MXNet .params file: at offset {self.offset} "
                                 f"{what} needs {size} bytes, {len(self.data) - self.offset} left")
        chunk = self.data[self.offset:self.offset + size]
        self.offset += size
        return chunk

    def unpack(self, fmt: str, what: str) -> tuple:
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt), what))

    def fail(self, offset: int, why: str) -> MXNetFileError:
        return MXNetFileError(f"{self.path}: not an MXNet .params file this reader knows: at offset {offset} {why}")


def _read_shape(cursor: _Cursor, magic: int) -> tuple[int, ...] | None:
    """The array's shape; None for an empty slot (no data follows)."""
    if magic not in (NDARRAY_V1_MAGIC, NDARRAY_V2_MAGIC, NDARRAY_V3_MAGIC):
        ndim = magic  # legacy: the first word was the rank, the dims are uint32
        if ndim > 32:
            raise cursor.fail(cursor.offset - 4, f"the NDArray magic is {magic:#x} (expected {NDARRAY_V2_MAGIC:#x}, "
                                                 f"{NDARRAY_V1_MAGIC:#x}, {NDARRAY_V3_MAGIC:#x} or a legacy rank)")
        dims = cursor.unpack(f"{ndim}I", "the legacy shape")
        return dims or None
    start = cursor.offset
    (ndim,) = cursor.unpack("i", "the rank")
    if ndim == -1 and magic == NDARRAY_V3_MAGIC:
        return None
    if not 0 <= ndim <= 32:
        raise cursor.fail(start, f"the rank is {ndim}")
    dims = cursor.unpack(f"{ndim}q", "the shape")
    if any(dim < 0 for dim in dims):
        raise cursor.fail(start, f"the shape is {dims}")
    if ndim == 0 and magic != NDARRAY_V3_MAGIC:
        return None
    return dims


def _read_array(cursor: _Cursor) -> np.ndarray | None:
    start = cursor.offset
    (magic,) = cursor.unpack("I", "the NDArray magic")
    if magic in (NDARRAY_V2_MAGIC, NDARRAY_V3_MAGIC):
        (storage,) = cursor.unpack("i", "the storage type")
        if storage != DENSE_STORAGE:
            raise cursor.fail(start, f"the array has sparse storage type {storage} (only dense is read)")
    shape = _read_shape(cursor, magic)
    if shape is None:
        return None
    cursor.unpack("ii", "the context")  # where it lived when saved; irrelevant here
    flag_at = cursor.offset
    (flag,) = cursor.unpack("i", "the dtype flag")
    if flag not in DTYPES:
        raise cursor.fail(flag_at, f"the dtype flag is {flag} (known: {sorted(DTYPES)})")
    dtype = np.dtype(DTYPES[flag])
    count = int(np.prod(shape, dtype=np.int64))
    raw = cursor.take(count * dtype.itemsize, f"the data of a {DTYPES[flag]} array of shape {shape}")
    return np.frombuffer(raw, dtype).reshape(shape)


def read_params(path: Path) -> dict[str, np.ndarray]:
    """Every named array of an MXNet .params file (names as stored, e.g. "arg:conv0_weight"), dtypes as stored.

    Raises:
        MXNetFileError: not an NDArray list, truncated, unnamed, or holding what this reader does not read (sparse
            arrays, bfloat16); the message names the offset.
    """
    cursor = _Cursor(Path(path).read_bytes(), Path(path))
    magic, _reserved = cursor.unpack("QQ", "the file header")
    if magic != LIST_MAGIC:
        raise cursor.fail(0, f"the header is {magic:#x} (an MXNet NDArray list starts with {LIST_MAGIC:#x})")
    (count,) = cursor.unpack("Q", "the array count")
    arrays = [_read_array(cursor) for _ in range(count)]
    names_at = cursor.offset
    (name_count,) = cursor.unpack("Q", "the name count")
    if name_count != count:
        raise cursor.fail(names_at, f"{name_count} names for {count} arrays")
    names = [cursor.take(cursor.unpack("Q", "a name's length")[0], "a name").decode("utf-8", "replace")
             for _ in range(name_count)]
    if cursor.offset != len(cursor.data):
        raise cursor.fail(cursor.offset, f"{len(cursor.data) - cursor.offset} bytes follow the names list")
    return {name: array for name, array in zip(names, arrays) if array is not None}


# --- the pair ----------------------------------------------------------------------------------------------------

def _params_of_prefix(prefix: Path) -> Path:
    """The one `prefix-NNNN.params` beside `prefix-symbol.json`."""
    found = sorted(prefix.parent.glob(f"{prefix.name}-[0-9][0-9][0-9][0-9].params"))
    if len(found) != 1:
        raise MXNetFileError(f"{prefix}{SYMBOL_SUFFIX}: expected one {prefix.name}-NNNN.params beside it, found "
                             f"{[item.name for item in found]}; name the epoch (`{prefix},0` or the .params file)")
    return found[0]


def pair_paths(path: Path) -> tuple[Path, Path]:
    """(symbol json, params) named by a folder, `prefix,epoch`, a .params file or a -symbol.json.

    Raises:
        MXNetFileError: the pair is not there (the message says what was looked for).
    """
    path = Path(path)
    text = str(path)
    if path.is_dir():
        symbols = sorted(path.glob(f"*{SYMBOL_SUFFIX}"))
        if len(symbols) != 1:
            raise MXNetFileError(f"{path}: expected one *{SYMBOL_SUFFIX} in the folder, found "
                                 f"{[item.name for item in symbols]}")
        prefix = symbols[0].with_name(symbols[0].name[:-len(SYMBOL_SUFFIX)])
        return symbols[0], _params_of_prefix(prefix)
    if "," in path.name and not path.exists():  # insightface's `prefix,epoch`
        prefix, _, epoch = text.rpartition(",")
        if not epoch.isdigit():
            raise MXNetFileError(f"{path}: `prefix,epoch` needs a whole-number epoch, got {epoch!r}")
        return Path(prefix + SYMBOL_SUFFIX), Path(f"{prefix}-{int(epoch):04d}.params")
    if text.endswith(SYMBOL_SUFFIX):
        return path, _params_of_prefix(Path(text[:-len(SYMBOL_SUFFIX)]))
    match = PARAMS_NAME.match(path.name)
    prefix = path.with_name(match["prefix"]) if match else path.with_suffix("")
    return Path(f"{prefix}{SYMBOL_SUFFIX}"), path


def _has_list_magic(path: Path) -> bool:
    try:
        with open(path, "rb") as stream:
            head = stream.read(16)
    except OSError:
        return False
    return len(head) == 16 and struct.unpack("<QQ", head) == (LIST_MAGIC, 0)


def _is_symbol_json(path: Path) -> bool:
    try:
        graph = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(graph, dict) and isinstance(graph.get("nodes"), list) and "heads" in graph


def recognise(path: Path) -> bool:
    """True for an MXNet .params file (by its header), or a folder / `prefix,epoch` / -symbol.json naming a pair
    whose .params has that header and whose json is an MXNet graph."""
    path = Path(path)
    if path.is_file() and _has_list_magic(path):
        return True
    try:
        symbol, params = pair_paths(path)
    except MXNetFileError:
        return False
    return _has_list_magic(params) and _is_symbol_json(symbol)


# --- the graph ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Node:
    op: str
    name: str
    attrs: dict[str, str]
    inputs: tuple[int, ...]


class _Graph:
    """An MXNet symbol json: the nodes by name, and each node's consumers."""

    def __init__(self, path: Path) -> None:
        try:
            graph = json.loads(Path(path).read_text())
        except (OSError, UnicodeDecodeError, ValueError) as err:
            raise MXNetFileError(f"{path}: not a readable MXNet symbol json ({err})") from err
        if not _is_symbol_json(path):
            raise MXNetFileError(f"{path}: not an MXNet symbol json (no 'nodes' / 'heads')")
        # Newer files say "attrs", mxnet <= 0.9 wrote "param" / "attr".
        self.nodes = [_Node(node["op"], node["name"],
                            {**node.get("param", {}), **node.get("attr", {}), **node.get("attrs", {})},
                            tuple(entry[0] for entry in node.get("inputs", [])))
                      for node in graph["nodes"]]
        self.by_name = {node.name: node for node in self.nodes}
        self.path = Path(path)

    def consumers(self, index: int) -> list[int]:
        return [number for number, node in enumerate(self.nodes) if index in node.inputs]

    def node(self, name: str, op: str) -> _Node:
        node = self.by_name.get(name)
        if node is None or node.op != op:
            raise MXNetFileError(f"{self.path}: expected a {op} node {name!r}, found "
                                 f"{node.op if node else 'none'}")
        return node


def _flag(text: str) -> bool:
    return text.strip().lower() in ("true", "1")


def _preprocessing(graph: _Graph) -> Preprocessing:
    """The scalar ops between `data` and the first layer, composed into one affine a*x + b = (x - mean) * scale.

    insightface's graphs compute (x - 127.5) * 0.0078125 on RGB pixels; a graph without such ops takes the pixels
    as they are (mean 0, scale 1).
    """
    affine = {"_minus_scalar": lambda a, b, s: (a, b - s), "_plus_scalar": lambda a, b, s: (a, b + s),
              "_mul_scalar": lambda a, b, s: (a * s, b * s), "_div_scalar": lambda a, b, s: (a / s, b / s)}
    passthrough = ("identity", "_copy")
    index = next((number for number, node in enumerate(graph.nodes) if node.op == "null" and node.name == "data"),
                 None)
    if index is None:
        raise MXNetFileError(f"{graph.path}: no input variable 'data'")
    a, b = 1.0, 0.0
    while True:
        consumers = graph.consumers(index)
        node = graph.nodes[consumers[0]] if len(consumers) == 1 else None
        if node is None or (node.op not in affine and node.op not in passthrough):
            break
        if node.op in affine:
            a, b = affine[node.op](a, b, float(node.attrs["scalar"]))
        index = consumers[0]
    if a <= 0:
        raise MXNetFileError(f"{graph.path}: the input ops scale pixels by {a} (a positive scale is expected)")
    return Preprocessing(channel_order="RGB", mean=-b / a, scale=a)


# --- the name mapping --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Layer:
    """One MXNet layer (its name) and the arcface_torch module it becomes (its state-dict prefix)."""

    kind: str  # "conv" | "bn" | "prelu" | "fc"
    mxnet: str
    torch: str
    stride: int = 1  # a conv's stride in arcface_torch: the graph's must be the same


def _conv_bn(mxnet: str, torch: str, with_prelu: bool = True, stride: int = 1) -> list[_Layer]:
    """fmobilefacenet's Conv (conv2d + batchnorm + relu) / Linear (no relu) as arcface_torch's ConvBlock /
    LinearBlock (layers.0 conv, .1 BN, .2 PReLU)."""
    layers = [_Layer("conv", f"{mxnet}_conv2d", f"{torch}.layers.0", stride),
              _Layer("bn", f"{mxnet}_batchnorm", f"{torch}.layers.1")]
    return layers + ([_Layer("prelu", f"{mxnet}_relu", f"{torch}.layers.2")] if with_prelu else [])


def _depthwise(mxnet: str, torch: str, stride: int) -> list[_Layer]:
    """fmobilefacenet's DResidual (conv_sep, conv_dw, conv_proj) as arcface_torch's DepthWise."""
    return (_conv_bn(f"{mxnet}_conv_sep", f"{torch}.layers.0")
            + _conv_bn(f"{mxnet}_conv_dw", f"{torch}.layers.1", stride=stride)
            + _conv_bn(f"{mxnet}_conv_proj", f"{torch}.layers.2", with_prelu=False))


def _count_blocks(names: set[str], stage: str) -> int:
    pattern = re.compile(rf"^{stage}_block(\d+)_conv_sep_conv2d_weight$")
    return len([name for name in names if pattern.match(name)])


def _mobilefacenet_layers(names: set[str]) -> Iterator[_Layer]:
    """fmobilefacenet.get_symbol with output "GDC", in arcface_torch's MobileFaceNet module order."""
    yield from _conv_bn("conv_1", "layers.0", stride=2)
    if "conv_2_dw_conv2d_weight" in names:
        yield from _conv_bn("conv_2_dw", "layers.1")
    else:
        for block in range(_count_blocks(names, "res_2")):
            yield from _depthwise(f"res_2_block{block}", f"layers.1.layers.{block}", stride=1)
    stages = ("dconv_23", "res_3", "dconv_34", "res_4", "dconv_45", "res_5")  # arcface_torch's layers.2 .. layers.7
    for position, stage in enumerate(stages, start=2):
        if stage.startswith("dconv"):
            yield from _depthwise(stage, f"layers.{position}", stride=2)
        else:
            for block in range(_count_blocks(names, stage)):
                yield from _depthwise(f"{stage}_block{block}", f"layers.{position}.layers.{block}", stride=1)
    yield from _conv_bn("conv_6sep", "conv_sep")
    yield from _conv_bn("conv_6dw7_7", "features.layers.0", with_prelu=False)
    yield _Layer("fc", "pre_fc1", "features.layers.2")
    yield _Layer("bn", "fc1", "features.layers.3")


def _iresnet_layers(names: set[str]) -> Iterator[_Layer]:
    """fresnet.get_symbol (residual_unit_v3, version_input 1, output "E") in arcface_torch's IResNet order."""
    yield from (_Layer("conv", "conv0", "conv1"), _Layer("bn", "bn0", "bn1"), _Layer("prelu", "relu0", "prelu"))
    unit_name = re.compile(r"^stage(\d+)_unit(\d+)_bn1_gamma$")
    units = sorted((int(found[1]), int(found[2])) for name in names if (found := unit_name.match(name)))
    for stage, unit in units:
        mxnet, torch = f"stage{stage}_unit{unit}", f"layer{stage}.{unit - 1}"
        stride = 2 if unit == 1 else 1  # on conv2, as arcface_torch's IBasicBlock
        yield from (_Layer("bn", f"{mxnet}_bn1", f"{torch}.bn1"), _Layer("conv", f"{mxnet}_conv1", f"{torch}.conv1"),
                    _Layer("bn", f"{mxnet}_bn2", f"{torch}.bn2"), _Layer("prelu", f"{mxnet}_relu1", f"{torch}.prelu"),
                    _Layer("conv", f"{mxnet}_conv2", f"{torch}.conv2", stride),
                    _Layer("bn", f"{mxnet}_bn3", f"{torch}.bn3"))
        if f"{mxnet}_conv1sc_weight" in names:
            yield from (_Layer("conv", f"{mxnet}_conv1sc", f"{torch}.downsample.0", stride),
                        _Layer("bn", f"{mxnet}_sc", f"{torch}.downsample.1"))
    yield from (_Layer("bn", "bn1", "bn2"), _Layer("fc", "pre_fc1", "fc"), _Layer("bn", "fc1", "features"))


ARCHITECTURES = {"conv0_weight": ("LResNet-IR (fresnet.py)", _iresnet_layers),
                 "conv_1_conv2d_weight": ("MobileFaceNet (fmobilefacenet.py)", _mobilefacenet_layers)}


class _Mapper:
    """Takes MXNet arrays out of `params` into arcface_torch names; whatever is left over is an error at the end."""

    def __init__(self, params: dict[str, np.ndarray], graph: _Graph, source: Path) -> None:
        self.params, self.graph, self.source = dict(params), graph, source
        self.arrays: dict[str, np.ndarray] = {}

    def pop(self, name: str) -> np.ndarray:
        if name not in self.params:
            raise MXNetFileError(f"{self.source}: no array {name!r} (an insightface model-zoo layout needs it)")
        return np.asarray(self.params.pop(name), np.float64)

    def put(self, name: str, value: np.ndarray) -> None:
        self.arrays[name] = np.ascontiguousarray(value, np.float32)

    def layer(self, layer: _Layer) -> None:
        getattr(self, layer.kind)(layer)

    def conv(self, layer: _Layer) -> None:
        node = self.graph.node(layer.mxnet, "Convolution")
        stride = tuple(int(step) for step in re.findall(r"\d+", node.attrs.get("stride", "(1, 1)")))
        if set(stride) != {layer.stride}:
            raise MXNetFileError(f"{self.graph.path}: {layer.mxnet} has stride {stride}; arcface_torch's "
                                 f"{layer.torch} has {layer.stride} (another unit or stem than insightface's?)")
        self.put(f"{layer.torch}.weight", self.pop(f"{layer.mxnet}_weight"))  # MXNet convs are OIHW already

    def prelu(self, layer: _Layer) -> None:
        node = self.graph.node(layer.mxnet, "LeakyReLU")
        if node.attrs.get("act_type", "leaky") != "prelu":
            raise MXNetFileError(f"{self.graph.path}: {layer.mxnet} is a {node.attrs.get('act_type')} LeakyReLU, "
                                 "not the PReLU of the insightface networks")
        self.put(f"{layer.torch}.weight", self.pop(f"{layer.mxnet}_gamma").reshape(-1))

    def fc(self, layer: _Layer) -> None:
        node = self.graph.node(layer.mxnet, "FullyConnected")
        self.put(f"{layer.torch}.weight", self.pop(f"{layer.mxnet}_weight"))
        if not _flag(node.attrs.get("no_bias", "False")):
            self.put(f"{layer.torch}.bias", self.pop(f"{layer.mxnet}_bias"))

    def bn(self, layer: _Layer) -> None:
        node = self.graph.node(layer.mxnet, "BatchNorm")
        gamma, beta = self.pop(f"{layer.mxnet}_gamma"), self.pop(f"{layer.mxnet}_beta")
        mean, var = self.pop(f"{layer.mxnet}_moving_mean"), self.pop(f"{layer.mxnet}_moving_var")
        if _flag(node.attrs.get("fix_gamma", str(MXNET_BN_FIX_GAMMA))):
            gamma = np.ones_like(gamma)  # MXNet ignores the stored gamma of a fix_gamma BN
        eps = float(node.attrs.get("eps", str(MXNET_BN_EPS)))
        self.put(f"{layer.torch}.weight", gamma)
        self.put(f"{layer.torch}.bias", beta)
        self.put(f"{layer.torch}.running_mean", mean)
        self.put(f"{layer.torch}.running_var", running_var_for_epsilon(var, eps))

    def fold_bias_into_bn(self, linear: str, bn: str) -> None:
        """arcface_torch's mbf Linear has no bias: BN(Wx + b) is BN(Wx) with its running mean lowered by b."""
        bias = self.arrays.pop(f"{linear}.bias", None)
        if bias is not None:
            self.put(f"{bn}.running_mean", self.arrays[f"{bn}.running_mean"].astype(np.float64) - bias)

    def check_all_used(self) -> None:
        dropped = sorted(name for name in self.params if TRAINING_ONLY.match(name))
        if dropped:
            log.info("%s: leaving out the training classifier %s", self.source, ", ".join(dropped))
        left = sorted(set(self.params) - set(dropped))
        if left:
            raise MXNetFileError(f"{self.source}: {len(left)} arrays this reader does not map to arcface_torch "
                                 f"(another unit or head than insightface's IR / MobileFaceNet?): {left[:12]}")


def _strip_kinds(params: dict[str, np.ndarray], source: Path) -> dict[str, np.ndarray]:
    """Names without save_checkpoint's "arg:" / "aux:" (a Gluon export file has neither)."""
    stripped: dict[str, np.ndarray] = {}
    for name, array in params.items():
        bare = name.split(":", 1)[1] if name.startswith(("arg:", "aux:")) else name
        if bare in stripped:
            raise MXNetFileError(f"{source}: the array {bare!r} is stored twice")
        stripped[bare] = array
    return stripped


def read(path: Path) -> ImportedWeights:
    """The MXNet model-zoo pair named by `path` as arcface_torch-named float32 arrays with the graph's preprocessing.

    Raises:
        MXNetFileError: a missing half of the pair, a damaged file, or a network other than insightface's
            LResNet-IR / MobileFaceNet (the message lists what was found).
    """
    symbol, params_path = pair_paths(Path(path))
    for part in (symbol, params_path):
        if not part.is_file():
            raise MXNetFileError(f"{path}: the MXNet model needs {part.name} beside it; {part} is missing")
    params = _strip_kinds(read_params(params_path), params_path)
    graph = _Graph(symbol)
    found = next((entry for key, entry in ARCHITECTURES.items() if key in params), None)
    if found is None:
        raise MXNetFileError(f"{params_path}: neither insightface's LResNet-IR (conv0_weight) nor MobileFaceNet "
                             f"(conv_1_conv2d_weight); its first arrays: {sorted(params)[:12]}")
    architecture, layers = found
    mapper = _Mapper(params, graph, params_path)
    for layer in layers(set(params)):
        mapper.layer(layer)
    mapper.fold_bias_into_bn("features.layers.2", "features.layers.3")
    mapper.check_all_used()
    preprocessing = _preprocessing(graph)
    log.info("%s: %s, %d arrays, input (x - %g) * %g %s", params_path, architecture, len(mapper.arrays),
             preprocessing.mean, preprocessing.scale, preprocessing.channel_order)
    return ImportedWeights(layout="arcface_torch", arrays=mapper.arrays, preprocessing=preprocessing,
                           source=str(params_path))


__all__ = ["MXNetFileError", "pair_paths", "read", "read_params", "recognise"]
