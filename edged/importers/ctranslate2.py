"""CTranslate2's `model.bin`: the named weights of a converted model, read without CTranslate2.

The file (binary version 6, as CTranslate2 3.x and 4.x write it) is little-endian:
a uint32 binary version; the spec name (e.g. `WhisperSpec`); a uint32 spec revision; a uint32
count of variables, each a name, a uint8 rank, that many uint32 dimensions, a uint8 dtype, a
uint32 byte count and the data; then a uint32 count of aliases, each two names (the alias, then
the variable it stands for: Whisper's output projection is its token embedding). A name is a
uint16 length (counting a terminating NUL) and the bytes with the NUL.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edged.errors import ModelImportError

_SUPPORTED_VERSIONS = (5, 6)
# CTranslate2's DataType enumeration, in its order.
_DTYPES: dict[int, np.dtype[Any]] = {0: np.dtype("<f4"), 1: np.dtype("i1"), 2: np.dtype("<i2"),
                                     3: np.dtype("<i4"), 4: np.dtype("<f2")}


@dataclass(frozen=True)
class Ct2Model:
    """The variables of a model.bin by name (aliases resolved), and which spec wrote them."""

    spec: str
    revision: int
    variables: dict[str, np.ndarray]

    def weight(self, name: str) -> np.ndarray:
        """A variable as float32 (an int8 one divided by its per-row `_scale`); ModelImportError
        naming the file's spec if it is missing."""
        if name not in self.variables:
            raise ModelImportError(f"The CTranslate2 {self.spec} model has no variable {name!r}.")
        value = self.variables[name].astype(np.float32)
        scale = self.variables.get(f"{name}_scale")
        if self.variables[name].dtype == np.int8 and scale is not None:
            value /= scale.astype(np.float32).reshape(-1, *([1] * (value.ndim - 1)))
        return value

    def scalar(self, name: str) -> int:
        """An integer setting stored as a variable (e.g. `encoder/num_heads`)."""
        if name not in self.variables:
            raise ModelImportError(f"The CTranslate2 {self.spec} model has no setting {name!r}.")
        return int(self.variables[name].reshape(-1)[0])


class _Reader:
    """Sequential little-endian reads over the file's bytes, with a clear error at the end."""

    def __init__(self, data: bytes, path: Path) -> None:
        self.data = data
        self.pos = 0
        self.path = path

    def unpack(self, fmt: str) -> int:
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.data):
            raise ModelImportError(f"{self.path} ends early (at byte {self.pos}); is the model.bin complete?")
        (value,) = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += size
        return int(value)

    def name(self) -> str:
        length = self.unpack("<H")
        raw = self.take(length)
        return raw.rstrip(b"\0").decode("utf-8", "replace")

    def take(self, count: int) -> bytes:
        if self.pos + count > len(self.data):
            raise ModelImportError(f"{self.path} ends early (at byte {self.pos}); is the model.bin complete?")
        raw = self.data[self.pos:self.pos + count]
        self.pos += count
        return raw


def read_ct2_model(path: Path) -> Ct2Model:
    """Every variable of a CTranslate2 model.bin (numpy arrays in their stored dtype)."""
    reader = _Reader(path.read_bytes(), path)
    version = reader.unpack("<I")
    if version not in _SUPPORTED_VERSIONS:
        raise ModelImportError(f"{path} is CTranslate2 binary version {version}; edged reads versions "
                               f"{', '.join(map(str, _SUPPORTED_VERSIONS))}.")
    spec = reader.name()
    revision = reader.unpack("<I")
    variables: dict[str, np.ndarray] = {}
    for _ in range(reader.unpack("<I")):
        name = reader.name()
        shape = [reader.unpack("<I") for _ in range(reader.unpack("<B"))]
        code = reader.unpack("<B")
        if code not in _DTYPES:
            raise ModelImportError(f"{path}: variable {name} has data type {code}, which edged does not read "
                                   "(convert the model with --quantization float32, float16 or int8).")
        dtype = _DTYPES[code]
        raw = reader.take(reader.unpack("<I"))
        count = int(np.prod(shape)) if shape else 1
        if len(raw) != count * dtype.itemsize:
            raise ModelImportError(f"{path}: variable {name} holds {len(raw)} bytes for shape {shape}.")
        variables[name] = np.frombuffer(raw, dtype).reshape(shape)
    for _ in range(reader.unpack("<I")):
        alias, target = reader.name(), reader.name()
        if target in variables:
            variables[alias] = variables[target]
    if reader.pos != len(reader.data):
        raise ModelImportError(f"{path} has {len(reader.data) - reader.pos} bytes after its aliases.")
    return Ct2Model(spec, revision, variables)
