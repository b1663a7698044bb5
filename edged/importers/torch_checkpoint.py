"""Read a PyTorch checkpoint's tensors as numpy arrays, without PyTorch.

`torch.save` writes one of two layouts:
- the zip layout (torch >= 1.6): `ARCHIVE/data.pkl` pickles the object, and each storage's bytes
  are the member `ARCHIVE/data/KEY`;
- the legacy layout: five pickles in a row (magic number, protocol version, system info, the object,
  the list of storage keys), then each storage as an int64 element count and its raw bytes.
In both, a tensor is pickled as a call to `torch._utils._rebuild_tensor_v2(storage, offset, size,
stride, ...)` whose storage is a persistent id ('storage', StorageClass, key, location, count).

The unpickler here resolves only those names (to numpy), plus OrderedDict; any other class in the
file is refused, so a checkpoint cannot run code on the reader's machine.
"""

from __future__ import annotations

import io
import pickle
import struct
import zipfile
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from edged.errors import ModelImportError

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
"""The first pickle of a legacy-layout checkpoint."""

STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}
"""torch storage classes -> the numpy type of their elements (little-endian, as torch writes them)."""


@dataclass(frozen=True)
class StorageRef:
    """A storage the pickle names: its key and element type; its bytes come later (legacy) or from
    the zip member data/KEY."""

    key: str
    dtype: type


@dataclass(frozen=True)
class PendingTensor:
    """A tensor as the pickle describes it, waiting for its storage's bytes."""

    storage: StorageRef
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor(storage: StorageRef, offset: int, size: tuple[int, ...], stride: tuple[int, ...],
                    *_rest: Any) -> PendingTensor:
    return PendingTensor(storage, int(offset), tuple(size), tuple(stride))


class _StorageType:
    """Stands for a torch storage class in the pickle; only its name matters."""

    def __init__(self, name: str) -> None:
        self.name = name


class _CheckpointUnpickler(pickle.Unpickler):
    """Resolves torch's tensor and storage names to the stand-ins above; refuses everything else."""

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch._utils" and name in ("_rebuild_tensor", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(name)
        if module == "collections" and name == "OrderedDict":
            return OrderedDict
        raise pickle.UnpicklingError(f"the checkpoint names {module}.{name}, which a weights file does not need")

    def persistent_load(self, pid: Any) -> StorageRef:
        if not (isinstance(pid, tuple) and len(pid) >= 3 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType)):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r:.80}")
        return StorageRef(str(pid[2]), STORAGE_DTYPES[pid[1].name])


def read_checkpoint(path: Path) -> Any:
    """The object `torch.save` wrote to `path`, its tensors as numpy arrays (float32 stays float32).

    ModelImportError, saying what is wrong, when the file is not a checkpoint or is damaged."""
    try:
        if zipfile.is_zipfile(path):
            return _read_zip(path)
        with open(path, "rb") as f:
            return _read_legacy(f)
    except (pickle.UnpicklingError, EOFError, ValueError, KeyError, struct.error, zipfile.BadZipFile) as exc:
        raise ModelImportError(f"{path.name} is not a readable PyTorch checkpoint ({exc}).") from None


def _read_zip(path: Path) -> Any:
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        pkl = next((n for n in names if n.endswith("/data.pkl")), None)
        if pkl is None:
            raise ValueError("no data.pkl in the zip")
        root = pkl[: -len("data.pkl")]
        obj = _CheckpointUnpickler(io.BytesIO(zf.read(pkl))).load()
        return _materialise(obj, lambda ref: np.frombuffer(zf.read(f"{root}data/{ref.key}"), ref.dtype))


def _read_legacy(f: IO[bytes]) -> Any:
    if _CheckpointUnpickler(f).load() != LEGACY_MAGIC:
        raise ValueError("not a torch.save file")
    for _header in range(2):  # protocol version, system info
        _CheckpointUnpickler(f).load()
    obj = _CheckpointUnpickler(f).load()
    keys = _CheckpointUnpickler(f).load()
    refs = _storage_refs(obj)
    storages: dict[str, np.ndarray] = {}
    for key in keys:
        (count,) = struct.unpack("<q", f.read(8))
        dtype = np.dtype(refs[str(key)].dtype if str(key) in refs else np.uint8)
        data = f.read(count * dtype.itemsize)
        if len(data) != count * dtype.itemsize:
            raise EOFError("the file ends inside a storage")
        storages[str(key)] = np.frombuffer(data, dtype)
    return _materialise(obj, lambda ref: storages[ref.key])


def _storage_refs(obj: Any) -> dict[str, StorageRef]:
    if isinstance(obj, PendingTensor):
        return {obj.storage.key: obj.storage}
    children = obj.values() if isinstance(obj, dict) else obj if isinstance(obj, list | tuple) else ()
    return {k: v for child in children for k, v in _storage_refs(child).items()}


def _materialise(obj: Any, storage: Callable[[StorageRef], np.ndarray]) -> Any:
    """`obj` with each PendingTensor replaced by its numpy array (a copy, laid out by its strides)."""
    if isinstance(obj, PendingTensor):
        data = storage(obj.storage)
        itemsize = data.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(
            data[obj.offset:], obj.size, tuple(s * itemsize for s in obj.stride), writeable=False)
        return np.array(view)
    if isinstance(obj, dict):
        return type(obj)((k, _materialise(v, storage)) for k, v in obj.items())
    if isinstance(obj, list | tuple):
        return type(obj)(_materialise(v, storage) for v in obj)
    return obj
