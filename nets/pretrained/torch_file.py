"""Reading arcface_torch's backbone.pth (a `torch.save` of a state dict) with numpy alone, and running no code from it.

Both of torch.save's formats are read:
- zip (torch >= 1.6): `<archive>/data.pkl` (the pickle), `<archive>/data/<key>` (each storage's raw bytes),
  `<archive>/byteorder`, `<archive>/version`, ...; `<archive>` is the file's stem when torch wrote it.
- legacy (`_use_new_zipfile_serialization=False`): four pickles in a row (the magic number 0x1950a86a20f9469cfc6c,
  the protocol version 1001, the system info, the object) and a pickled list of storage keys, then each storage in
  that order as an int64 element count and its raw bytes.

The pickle is read by an Unpickler that admits only the globals a state dict needs (OrderedDict, torch's tensor
rebuilders and storage types), each mapped to a numpy stand-in here: any other global is refused before anything
is called, so a crafted file cannot run code. torch itself is never imported, even where it is installed, so the
reader behaves the same everywhere.
"""

from __future__ import annotations

import collections
import io
import logging
import pickle
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable

import numpy as np

from nets.pretrained.weights import ImportedWeights, Preprocessing

log = logging.getLogger(__name__)

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL_VERSION = 1001
# The legacy format's first pickle: protocol 2, LONG1 of 10 bytes, the magic number.
_LEGACY_HEAD = b"\x80\x02\x8a\x0a" + LEGACY_MAGIC.to_bytes(10, "little")
_ZIP_LOCAL_HEADER = b"PK\x03\x04"
# torch.save writes `<archive>/data.pkl` as the zip's first entry.
_DATA_PKL = re.compile(r"^[^/]+/data\.pkl$")

# insightface's arcface_torch trains on RGB (x / 255 - 0.5) / 0.5 (its torch2onnx.py, inference.py).
ARCFACE_TORCH_PREPROCESSING = Preprocessing(channel_order="RGB", mean=127.5, scale=1 / 127.5)
# Where a full checkpoint keeps the backbone's state dict: arcface_torch's checkpoint_gpu_<rank>.pt uses the first.
STATE_DICT_KEYS = ("state_dict_backbone", "state_dict", "model", "backbone")
# BatchNorm's step counter: not a weight.
_DROPPED_SUFFIX = ".num_batches_tracked"

_BFLOAT16 = "bfloat16"  # numpy has none: read as uint16, widened to float32
_STORAGE_DTYPES = {
    "FloatStorage": "<f4", "DoubleStorage": "<f8", "HalfStorage": "<f2", "BFloat16Storage": _BFLOAT16,
    "LongStorage": "<i8", "IntStorage": "<i4", "ShortStorage": "<i2", "CharStorage": "i1", "ByteStorage": "u1",
    "BoolStorage": "?", "UntypedStorage": "u1",
}


@dataclass(frozen=True)
class _StorageType:
    """What the pickle's `torch.<Name>Storage` global stands for here: a name and its numpy dtype."""

    name: str
    dtype: str

    def itemsize(self) -> int:
        return 2 if self.dtype == _BFLOAT16 else np.dtype(self.dtype).itemsize

    def decode(self, raw: bytes | memoryview) -> np.ndarray:
        """The storage's elements; bfloat16 and float16 widened to float32 (exactly), element for element."""
        if self.dtype == _BFLOAT16:
            return (np.frombuffer(raw, "<u2").astype(np.uint32) << 16).view(np.float32)
        array = np.frombuffer(raw, self.dtype)
        return array.astype(np.float32) if array.dtype == np.float16 else array


@dataclass
class _Storage:
    """One storage of the file; `elements` is filled when its bytes are read (legacy files store them after the
    pickle)."""

    key: str
    kind: _StorageType
    numel: int
    elements: np.ndarray | None = None


@dataclass
class _TensorView:
    """`_rebuild_tensor_v2`'s arguments, made an array by `_materialise` once every storage has been read."""

    storage: _Storage
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor(storage: Any, offset: Any, size: Any, stride: Any, *_ignored: Any) -> _TensorView:
    """torch._utils._rebuild_tensor(_v2)(storage, storage_offset, size, stride, requires_grad, backward_hooks, ...)"""
    if isinstance(storage, tuple):  # a legacy storage view: (root storage, element offset into it)
        storage, view_offset = storage
        offset = view_offset + offset
    if not isinstance(storage, _Storage):
        raise ValueError(f"not a plain state dict: a tensor rebuilt from {type(storage).__name__}, not a storage")
    return _TensorView(storage, _count(offset), tuple(map(_count, size)), tuple(map(_count, stride)))


def _rebuild_parameter(data: Any, *_ignored: Any) -> Any:
    """torch._utils._rebuild_parameter(data, requires_grad, backward_hooks[, state]): the tensor itself."""
    return data


def _count(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"not a plain state dict: a tensor offset / size / stride of {value!r}")
    return value


_ADMITTED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    **{("torch", name): _StorageType(name, dtype) for name, dtype in _STORAGE_DTYPES.items()},
    ("torch.storage", "UntypedStorage"): _StorageType("UntypedStorage", "u1"),
}


class _StateDictUnpickler(pickle.Unpickler):
    """An Unpickler for state dicts only: find_class admits `_ADMITTED`, persistent ids name storages."""

    def __init__(self, stream: BinaryIO, storage: Callable[[tuple], Any]):
        super().__init__(stream, encoding="utf-8")
        self._storage = storage

    def find_class(self, module: str, name: str) -> Any:
        admitted = _ADMITTED.get((module, name))
        if admitted is None:
            raise ValueError(f"not a plain state dict: the global {module}.{name} is refused, no code from the file "
                             f"is run")
        return admitted

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and pid and _text(pid[0]) == "storage"):
            raise ValueError(f"not a plain state dict: the persistent id {pid!r:.80} is refused")
        return self._storage(pid[1:])


def _unpickle(unpickler: _StateDictUnpickler) -> Any:
    """The next pickle; a crafted one calling an admitted stand-in with odd arguments is one clear ValueError."""
    try:
        return unpickler.load()
    except (TypeError, AttributeError) as err:
        raise ValueError(f"not a plain state dict: {err}") from err


def _text(value: Any) -> Any:
    return value.decode("ascii") if isinstance(value, bytes) else value


def _storage_registry(storages: dict[str, _Storage]) -> Callable[[tuple], Any]:
    """persistent_load's storages: ('storage', type, key, location, numel[, legacy view]) -> one _Storage per key
    (tensors sharing a storage share it), or (_Storage, offset) for a legacy view into one."""

    def storage(fields: tuple) -> Any:
        if len(fields) not in (4, 5) or not isinstance(fields[0], _StorageType):
            raise ValueError(f"not a plain state dict: the storage {fields!r:.80} is refused")
        kind, key, numel = fields[0], str(_text(fields[1])), _count(fields[3])
        found = storages.setdefault(key, _Storage(key, kind, numel))
        if (found.kind, found.numel) != (kind, numel):
            raise ValueError(f"storage {key} is named as {found.kind.name}[{found.numel}] and {kind.name}[{numel}]")
        view = fields[4] if len(fields) == 5 else None
        if view is None:
            return found
        _view_key, view_offset, _view_size = view
        return found, _count(view_offset)

    return storage


def _materialise(value: Any) -> Any:
    """`value` with every _TensorView replaced by its numpy array (a copy: as_strided over the storage)."""
    if isinstance(value, _TensorView):
        return _array(value)
    if isinstance(value, dict):
        return type(value)((key, _materialise(item)) for key, item in value.items())
    if isinstance(value, (list, tuple)):
        return type(value)(_materialise(item) for item in value)
    return value


def _array(view: _TensorView) -> np.ndarray:
    elements = view.storage.elements
    if elements is None:
        raise ValueError(f"storage {view.storage.key} is referenced but its data is missing")
    if len(view.size) != len(view.stride):
        raise ValueError(f"a tensor of size {view.size} has strides {view.stride}")
    if 0 in view.size:
        return np.zeros(view.size, elements.dtype)
    last = view.offset + sum((extent - 1) * step for extent, step in zip(view.size, view.stride))
    if last >= elements.size:  # as_strided reads whatever memory it is pointed at: check the bounds first
        raise ValueError(f"a tensor of size {view.size}, stride {view.stride}, offset {view.offset} reaches past "
                         f"its storage {view.storage.key} of {elements.size} elements")
    strides = tuple(step * elements.itemsize for step in view.stride)
    return np.lib.stride_tricks.as_strided(elements[view.offset:], view.size, strides, writeable=False).copy()


# --- the two file formats -------------------------------------------------------------------------------------------


def _read_zip(path: Path) -> Any:
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile as err:
        raise ValueError(f"{path}: a PyTorch zip checkpoint that is truncated or damaged ({err})") from err
    with archive:
        names = archive.namelist()
        pickles = [name for name in names if _DATA_PKL.match(name)]
        if len(pickles) != 1:
            raise ValueError(f"{path}: not a PyTorch checkpoint: expected one <archive>/data.pkl, found {pickles}")
        prefix = pickles[0][: -len("data.pkl")]
        byteorder = archive.read(prefix + "byteorder").decode().strip() if prefix + "byteorder" in names else "little"
        if byteorder != "little":
            raise ValueError(f"{path}: saved with byte order {byteorder!r}; only little-endian files are read")
        storages: dict[str, _Storage] = {}
        try:
            result = _unpickle(_StateDictUnpickler(io.BytesIO(archive.read(pickles[0])), _storage_registry(storages)))
            for storage in storages.values():
                storage.elements = _checked_elements(storage, archive.read(f"{prefix}data/{storage.key}"))
        except (zipfile.BadZipFile, KeyError, EOFError, pickle.UnpicklingError, OSError) as err:
            raise ValueError(f"{path}: a PyTorch zip checkpoint that is truncated or damaged ({err})") from err
    return _materialise(result)


def _checked_elements(storage: _Storage, raw: bytes) -> np.ndarray:
    expected = storage.numel * storage.kind.itemsize()
    if len(raw) != expected:
        raise ValueError(f"storage {storage.key} ({storage.kind.name}[{storage.numel}]) holds {len(raw)} bytes, "
                         f"not {expected}")
    return storage.kind.decode(raw)


def _read_legacy(path: Path) -> Any:
    storages: dict[str, _Storage] = {}
    try:
        with open(path, "rb") as stream:
            unpickler = _StateDictUnpickler(stream, _storage_registry(storages))
            magic, protocol, system = _unpickle(unpickler), _unpickle(unpickler), _unpickle(unpickler)
            if magic != LEGACY_MAGIC or protocol != LEGACY_PROTOCOL_VERSION:
                raise ValueError(f"{path}: legacy PyTorch header {magic!r}, protocol {protocol!r} not understood")
            if not (isinstance(system, dict) and system.get("little_endian", True)):
                raise ValueError(f"{path}: saved on a big-endian machine; only little-endian files are read")
            result = _unpickle(unpickler)
            for key in _unpickle(unpickler):
                _read_legacy_storage(stream, storages[str(_text(key))])
    except (EOFError, pickle.UnpicklingError, KeyError, OSError) as err:
        raise ValueError(f"{path}: a legacy PyTorch checkpoint that is truncated or damaged ({err!r})") from err
    return _materialise(result)


def _read_legacy_storage(stream: BinaryIO, storage: _Storage) -> None:
    """An int64 element count, then the elements (as torch's legacy `_write_file` puts them)."""
    count = int.from_bytes(_read_exactly(stream, 8, storage.key), "little", signed=True)
    if count != storage.numel:
        raise ValueError(f"storage {storage.key}: the file holds {count} elements where the pickle names "
                         f"{storage.numel}")
    storage.elements = storage.kind.decode(_read_exactly(stream, count * storage.kind.itemsize(), storage.key))


def _read_exactly(stream: BinaryIO, size: int, key: str) -> bytes:
    raw = stream.read(size)
    if len(raw) != size:
        raise EOFError(f"storage {key}: {len(raw)} of its {size} bytes")
    return raw


# --- the reader's interface -----------------------------------------------------------------------------------------


def _head(path: Path, size: int = 512) -> bytes:
    try:
        with open(path, "rb") as stream:
            return stream.read(size)
    except OSError:
        return b""


def _is_zip_checkpoint(path: Path, head: bytes) -> bool:
    """A zip holding <archive>/data.pkl. torch.save writes it first, so its local header tells even when the file is
    truncated (no central directory); a zip repacked in another order is found by its directory."""
    if not head.startswith(_ZIP_LOCAL_HEADER) or len(head) < 30:
        return False
    name_length = int.from_bytes(head[26:28], "little")
    if _DATA_PKL.match(head[30:30 + name_length].decode("utf-8", "replace")):
        return True
    try:
        with zipfile.ZipFile(path) as archive:
            return any(_DATA_PKL.match(name) for name in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def recognise(path: Path) -> bool:
    """Whether `path` holds a torch.save file (zip or legacy format), judged by its content, not its suffix."""
    path = Path(path)
    head = _head(path)
    return head.startswith(_LEGACY_HEAD) or _is_zip_checkpoint(path, head)


def _state_dict(loaded: Any, path: Path) -> dict:
    """The state dict itself, or the one a full checkpoint keeps under one of STATE_DICT_KEYS."""
    if isinstance(loaded, dict) and loaded and all(isinstance(value, np.ndarray) for value in loaded.values()):
        return loaded
    if isinstance(loaded, dict):
        for key in STATE_DICT_KEYS:
            if isinstance(loaded.get(key), dict):
                log.info("%s: the state dict under %r", path, key)
                return _state_dict(loaded[key], path)
        raise ValueError(f"{path}: neither a state dict (names -> tensors) nor a checkpoint keeping one under "
                         f"{STATE_DICT_KEYS}; its keys: {sorted(map(str, loaded))[:20]}")
    raise ValueError(f"{path}: holds a {type(loaded).__name__}, not a state dict")


def _float32_arrays(state: dict, path: Path) -> dict[str, np.ndarray]:
    arrays = {}
    for name, value in state.items():
        if name.endswith(_DROPPED_SUFFIX):
            continue
        if not np.issubdtype(value.dtype, np.floating):
            raise ValueError(f"{path}: {name} is a {value.dtype} tensor, not a weight")
        arrays[name] = value.astype(np.float32, copy=False)
    return arrays


def read(path: Path) -> ImportedWeights:
    """The state dict of an arcface_torch backbone.pth (or of a full checkpoint holding one) as float32 arrays named
    by its keys, with arcface_torch's preprocessing.

    Raises:
        ValueError: not a torch.save file, truncated, big-endian, or holding anything but plain tensors (the refused
            global is named; nothing from the file is run).
    """
    path = Path(path)
    head = _head(path)
    if head.startswith(_LEGACY_HEAD):
        loaded = _read_legacy(path)
    elif _is_zip_checkpoint(path, head):
        loaded = _read_zip(path)
    else:
        raise ValueError(f"{path}: not a PyTorch checkpoint (neither torch.save's zip nor its legacy format)")
    arrays = _float32_arrays(_state_dict(loaded, path), path)
    log.info("%s: %d arrays, %d parameters", path, len(arrays), sum(array.size for array in arrays.values()))
    return ImportedWeights(layout="arcface_torch", arrays=arrays, preprocessing=ARCFACE_TORCH_PREPROCESSING,
                           source=str(path))
