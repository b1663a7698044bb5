"""Whisper's tokenizer (a Hugging Face `tokenizer.json`, byte-level BPE): ids to text, special tokens.

Decoding needs no merges: each vocabulary entry spells its bytes with GPT-2's printable
stand-ins (bytes that are printable Latin-1 stand for themselves, every other byte for the
character 256 + its rank among them). Ids past the file's vocabulary (Whisper's timestamp
tokens) decode to nothing.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from edged.errors import ModelLoadError
from edged.pipelines.asr.tokenizer import Tokenizer

_LANGUAGE_TOKEN = re.compile(r"<\|([a-z]{2,3})\|>")


def _byte_of_char() -> dict[str, int]:
    """GPT-2's byte <-> printable character table, as character -> byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {chr(b): b for b in printable}
    extra = 0
    for b in range(256):
        if b not in printable:
            table[chr(256 + extra)] = b
            extra += 1
    return table


class WhisperTokenizer(Tokenizer):
    """Token ids to UTF-8 text, and the ids of Whisper's special tokens by name."""

    def __init__(self, pieces: list[bytes], special: dict[str, int], vocab_size: int) -> None:
        self.pieces = pieces + [b""] * (vocab_size - len(pieces))
        self.ids = special
        self.eot = special["<|endoftext|>"]
        self.special = {i for i in special.values()} | set(range(len(pieces), vocab_size))
        self.languages = {m.group(1): i for name, i in special.items() if (m := _LANGUAGE_TOKEN.fullmatch(name))}
        """ISO 639-1 code (or Whisper's own, e.g. `haw`) -> its language token, in token order."""

    @classmethod
    def load(cls, path: Path, vocab_size: int) -> WhisperTokenizer:  # type: ignore[override]
        """Read a tokenizer.json; ModelLoadError if it is not a byte-level BPE with Whisper's tokens."""
        try:
            spec = json.loads(path.read_text(encoding="utf-8"))
            vocab: dict[str, int] = spec["model"]["vocab"]
            added = {t["content"]: int(t["id"]) for t in spec.get("added_tokens", [])}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ModelLoadError(f"{path} is not a readable tokenizer.json ({exc}); redeploy the model.") from None
        if "<|endoftext|>" not in added or "<|startoftranscript|>" not in added:
            raise ModelLoadError(f"{path} lacks Whisper's special tokens; redeploy the model.")
        table = _byte_of_char()
        size = max([*vocab.values(), *added.values()]) + 1
        pieces = [b""] * size
        for text, token in vocab.items():
            pieces[token] = bytes(table.get(ch, 0) for ch in text)
        for token in added.values():
            pieces[token] = b""
        return cls(pieces, added, max(vocab_size, size))

    def token(self, name: str) -> int:
        """The id of a special token, e.g. `<|transcribe|>`."""
        if name not in self.ids:
            raise ModelLoadError(f"Whisper tokenizer lacks {name}; redeploy the model.")
        return self.ids[name]

    def piece_bytes(self, token: int) -> bytes:
        """The bytes one token stands for (empty for special and out-of-vocabulary ids)."""
        if token in self.special or not 0 <= token < len(self.pieces):
            return b""
        return self.pieces[token]

    def decode(self, tokens: list[int]) -> str:
        """Text of a token sequence, without the leading space of its first word."""
        return b"".join(self.piece_bytes(t) for t in tokens).decode("utf-8", "replace").strip()
