"""The pieces of a SentencePiece model file, read from its protobuf without the sentencepiece package.

A `.model` file is a serialised `ModelProto`; field 1 is the repeated `SentencePiece` message
{1: piece (string), 2: score (float), 3: type (enum: 1 normal, 2 unknown, 3 control,
4 user-defined, 5 unused, 6 byte)}, in id order. Only the wire format is needed: varints,
length-delimited fields, and fixed 32/64-bit fields to skip.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

from edged.errors import ModelImportError

_VARINT, _FIXED64, _BYTES, _FIXED32 = 0, 1, 2, 5


@dataclass(frozen=True)
class Piece:
    """One SentencePiece vocabulary entry."""

    piece: str
    score: float
    type: int
    """1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte."""


def read_pieces(data: bytes, what: str = "tokenizer.model") -> list[Piece]:
    """Every piece of a SentencePiece ModelProto, in id order; ModelImportError if it is not one."""
    try:
        pieces = [_piece(value) for number, wire, value in _fields(data)
                  if number == 1 and isinstance(value, bytes)]
    except (IndexError, ValueError, UnicodeDecodeError, struct.error) as exc:
        raise ModelImportError(f"{what} is not a SentencePiece model ({exc}).") from None
    if not pieces:
        raise ModelImportError(f"{what} is not a SentencePiece model (it holds no pieces).")
    return pieces


def _piece(data: bytes) -> Piece:
    piece, score, kind = None, 0.0, 1  # proto2 defaults: score 0, type NORMAL
    for number, wire, value in _fields(data):
        if number == 1 and wire == _BYTES and isinstance(value, bytes):
            piece = value.decode("utf-8")
        elif number == 2 and wire == _FIXED32 and isinstance(value, bytes):
            score = struct.unpack("<f", value)[0]
        elif number == 3 and isinstance(value, int):
            kind = value
    if piece is None:
        raise ValueError("a vocabulary entry has no piece")
    return Piece(piece, score, kind)


def _fields(data: bytes) -> Iterator[tuple[int, int, bytes | int]]:
    """(field number, wire type, value) of each field of one message: bytes, or an int for varints."""
    pos, end = 0, len(data)
    while pos < end:
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == _VARINT:
            value, pos = _varint(data, pos)
            yield number, wire, value
        elif wire == _BYTES:
            size, pos = _varint(data, pos)
            if pos + size > end:
                raise ValueError("truncated field")
            yield number, wire, data[pos:pos + size]
            pos += size
        elif wire in (_FIXED32, _FIXED64):
            size = 4 if wire == _FIXED32 else 8
            if pos + size > end:
                raise ValueError("truncated field")
            yield number, wire, data[pos:pos + size]
            pos += size
        else:
            raise ValueError(f"unsupported wire type {wire}")


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result, shift = 0, 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")
