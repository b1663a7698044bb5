"""A small Whisper in CTranslate2's form, generated for tests: random weights in a `model.bin`
written byte by byte as CTranslate2 writes it, with a `config.json` and a `tokenizer.json`."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

SPECIAL = ["<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|de|>", "<|es|>", "<|translate|>",
           "<|transcribe|>", "<|startoflm|>", "<|startofprev|>", "<|nocaptions|>", "<|notimestamps|>"]
"""Whisper's special tokens in its order, with three languages."""
_CODES = {np.dtype("float32"): 0, np.dtype("int8"): 1, np.dtype("int16"): 2, np.dtype("int32"): 3,
          np.dtype("float16"): 4}


def _name(name: str) -> bytes:
    raw = name.encode() + b"\0"
    return struct.pack("<H", len(raw)) + raw


def write_model_bin(path: Path, spec: str, variables: dict[str, np.ndarray], aliases: dict[str, str]) -> None:
    """A CTranslate2 model.bin (binary version 6) of these variables and aliases."""
    out = [struct.pack("<I", 6), _name(spec), struct.pack("<I", 3), struct.pack("<I", len(variables))]
    for name, value in variables.items():
        out += [_name(name), struct.pack("<B", value.ndim), *(struct.pack("<I", d) for d in value.shape),
                struct.pack("<B", _CODES[value.dtype]), struct.pack("<I", value.nbytes), value.tobytes()]
    out.append(struct.pack("<I", len(aliases)))
    for alias, target in aliases.items():
        out += [_name(alias), _name(target)]
    path.write_bytes(b"".join(out))


def _byte_chars() -> list[str]:
    """GPT-2's printable stand-in of each byte (the tokenizer.json spelling), by byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = [], 0
    for b in range(256):
        if b in printable:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


def make_ct2_whisper(folder: Path, width: int = 32, heads: int = 2, layers: int = 2, mels: int = 80,
                     audio_positions: int = 1500, text_positions: int = 64, seed: int = 0,
                     timestamps: int = 4, script: list[int] | None = None,
                     config: dict[str, object] | None = None) -> Path:
    """A CTranslate2 Whisper folder: 256 byte tokens, the words of WORDS, then SPECIAL, then
    `timestamps` timestamp tokens (English-only `.en` models: 51864 tokens in all).

    `script`: tokens the model writes whatever it hears, then the end of text, after a prompt of
    four tokens (each position's encoding is mostly the embedding of the token it is to
    predict); `config`: entries added to config.json."""
    rng = np.random.default_rng(seed)
    chars = _byte_chars()
    vocab = {chars[b]: b for b in range(256)}
    for word in WORDS:
        vocab["".join(chars[b] for b in word.encode())] = len(vocab)
    added = [{"id": len(vocab) + i, "content": s, "special": True} for i, s in enumerate(SPECIAL)]
    size = len(vocab) + len(SPECIAL) + timestamps

    def w(*shape: int, scale: float = 0.2) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float16)

    v: dict[str, np.ndarray] = {
        "encoder/num_heads": np.array(heads, np.int16), "decoder/num_heads": np.array(heads, np.int16),
        "encoder/conv1/weight": w(width, mels, 3), "encoder/conv1/bias": w(width),
        "encoder/conv2/weight": w(width, width, 3), "encoder/conv2/bias": w(width),
        "encoder/position_encodings/encodings": w(audio_positions, width),
        "encoder/layer_norm/gamma": np.ones(width, np.float16), "encoder/layer_norm/beta": w(width),
        "decoder/embeddings/weight": w(size, width, scale=1.0),
        "decoder/position_encodings/encodings": w(text_positions, width),
        "decoder/layer_norm/gamma": np.ones(width, np.float16), "decoder/layer_norm/beta": w(width),
    }
    for part in ("encoder", "decoder"):
        for layer in range(layers):
            s = f"{part}/layer_{layer}"
            blocks = ["self_attention", "ffn"] + (["attention"] if part == "decoder" else [])
            for block in blocks:
                v[f"{s}/{block}/layer_norm/gamma"] = (1 + w(width)).astype(np.float16)
                v[f"{s}/{block}/layer_norm/beta"] = w(width)
            v[f"{s}/self_attention/linear_0/weight"] = w(3 * width, width)
            v[f"{s}/self_attention/linear_0/bias"] = w(3 * width)
            v[f"{s}/self_attention/linear_1/weight"], v[f"{s}/self_attention/linear_1/bias"] = w(width, width), w(width)
            v[f"{s}/ffn/linear_0/weight"], v[f"{s}/ffn/linear_0/bias"] = w(4 * width, width), w(4 * width)
            v[f"{s}/ffn/linear_1/weight"], v[f"{s}/ffn/linear_1/bias"] = w(width, 4 * width), w(width)
            if part == "decoder":
                v[f"{s}/attention/linear_0/weight"], v[f"{s}/attention/linear_0/bias"] = w(width, width), w(width)
                v[f"{s}/attention/linear_1/weight"] = w(2 * width, width)
                v[f"{s}/attention/linear_1/bias"] = w(2 * width)
                v[f"{s}/attention/linear_2/weight"], v[f"{s}/attention/linear_2/bias"] = w(width, width), w(width)
    if script is not None:  # the position fed the prompt's last token predicts the script's first
        eot = len(vocab)
        for position, token in enumerate([*script, eot], start=3):
            v["decoder/position_encodings/encodings"][position] = 8 * v["decoder/embeddings/weight"][token]
    folder.mkdir(parents=True, exist_ok=True)
    write_model_bin(folder / "model.bin", "WhisperSpec", v, {"decoder/projection/weight": "decoder/embeddings/weight"})
    (folder / "tokenizer.json").write_text(json.dumps({"model": {"type": "BPE", "vocab": vocab, "merges": []},
                                                       "added_tokens": added}), encoding="utf-8")
    (folder / "config.json").write_text(json.dumps({"suppress_ids": [ord("#")], "suppress_ids_begin": [220],
                                                    **(config or {})}))
    return folder


WORDS = [" hello", " world", " Grüße", " there"]
"""Whole-word tokens of the generated vocabulary (ids 256 on), one with non-ASCII letters."""


def with_vocabulary_txt(folder: Path, vocab_size: int) -> Path:
    """The folder with CTranslate2's `vocabulary.txt` (every token by id, then timestamps up to
    `vocab_size`, as its converter writes it) in place of its tokenizer.json."""
    spec = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    tokens = {**{i: t for t, i in spec["model"]["vocab"].items()}, **{t["id"]: t["content"] for t in spec["added_tokens"]}}
    vocab = [tokens[i] for i in range(len(tokens))]
    vocab += ["<|%.2f|>" % (i * 0.02) for i in range(vocab_size - len(vocab))]
    (folder / "tokenizer.json").unlink()
    (folder / "vocabulary.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    return folder
