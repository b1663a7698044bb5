"""Moonshine's tokenizer.bin: token ids to text (SentencePiece pieces with byte fallback)."""

from __future__ import annotations

from pathlib import Path

from edged.errors import ModelLoadError

_SPACE = "\u2581".encode()
_FIRST_BYTE_ID = 3
_BYTE_IDS = 256


def _read_length(data: bytes, pos: int) -> tuple[int, int]:
    """A length as an unsigned LEB128 varint (one byte below 128); returns (length, next pos)."""
    value = shift = 0
    while True:
        if pos >= len(data):
            raise ValueError("truncated length")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


class Tokenizer:
    """Turns Moonshine token ids into UTF-8 text; ids 3-258 are raw bytes (byte fallback)."""

    def __init__(self, pieces: list[bytes], special: set[int]) -> None:
        self.pieces = [p.replace(_SPACE, b" ") for p in pieces]
        self.special = special

    @classmethod
    def load(cls, path: Path, special: set[int]) -> Tokenizer:
        """Read tokenizer.bin: each entry a varint length then that many bytes, in id order."""
        data = path.read_bytes()
        pieces: list[bytes] = []
        pos = 0
        try:
            while pos < len(data):
                length, pos = _read_length(data, pos)
                if pos + length > len(data):
                    raise ValueError("entry runs past the end")
                pieces.append(data[pos:pos + length])
                pos += length
        except ValueError as exc:
            raise ModelLoadError(f"{path} is not a Moonshine tokenizer ({exc}); redeploy the model.") from None
        return cls(pieces, special)

    def piece_bytes(self, token: int) -> bytes:
        """The bytes one token stands for (empty for special and out-of-vocabulary ids)."""
        if token in self.special or token >= len(self.pieces):
            return b""
        if _FIRST_BYTE_ID <= token < _FIRST_BYTE_ID + _BYTE_IDS:
            return bytes([token - _FIRST_BYTE_ID])
        return self.pieces[token]

    def decode(self, tokens: list[int]) -> str:
        """Text of a token sequence, without the leading space SentencePiece puts on words."""
        return b"".join(self.piece_bytes(t) for t in tokens).decode("utf-8", "replace").strip()
