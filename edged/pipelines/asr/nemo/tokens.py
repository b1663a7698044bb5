"""A NeMo model's vocabulary (the RMIR's tokens.txt): token ids to text."""

from __future__ import annotations

import re
from pathlib import Path

from edged.errors import ModelLoadError
from edged.pipelines.asr.tokenizer import Tokenizer

# SentencePiece's byte-fallback pieces stand for one byte each.
_BYTE_PIECE = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")
# Pieces that stand for no text (SentencePiece's control symbols).
_CONTROL = frozenset({"<unk>", "<s>", "</s>", "<pad>"})


class PieceTokenizer(Tokenizer):
    """SentencePiece pieces of a NeMo model ("▁" starts a word); the blank is not a piece."""

    def __init__(self, pieces: list[bytes], special: set[int]) -> None:
        super().__init__(pieces, special)
        self._bytes = {i: bytes([int(m.group(1), 16)]) for i, p in enumerate(pieces)
                       if (m := _BYTE_PIECE.match(p.decode("utf-8", "replace")))}

    @classmethod
    def from_tokens_txt(cls, path: Path) -> PieceTokenizer:
        """Read tokens.txt: one "<piece> <id>" line per token, ids 0, 1, 2, ... in order."""
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise ModelLoadError(f"Cannot read the NeMo vocabulary {path} ({exc}); redeploy the model.") from None
        pieces: list[bytes] = []
        special: set[int] = set()
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            piece, _, index = line.rstrip("\r\n").rpartition(" ")
            if not index.isdigit() or int(index) != len(pieces):
                raise ModelLoadError(f"{path} line {number} is not '<piece> {len(pieces)}'; rebuild the RMIR.")
            if piece in _CONTROL:
                special.add(len(pieces))
            pieces.append(piece.encode("utf-8"))
        if not pieces:
            raise ModelLoadError(f"{path} lists no tokens; rebuild the RMIR.")
        return cls(pieces, special)

    def piece_bytes(self, token: int) -> bytes:
        """The bytes one token stands for (empty for control pieces, the blank and unknown ids)."""
        if token in self.special or not 0 <= token < len(self.pieces):
            return b""
        return self._bytes.get(token) or self.pieces[token]
