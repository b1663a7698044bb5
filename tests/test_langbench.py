"""`edged bench languages`' text normalisation and manifest (the run itself: tests/test_whisper_base.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from edged.client.langbench import read_manifest, words
from edged.errors import EdgedError


def test_words_keep_every_script_and_inner_apostrophes() -> None:
    assert words("L\u2019accident a eu lieu, en terrain « montagneux »!") == \
        ["l'accident", "a", "eu", "lieu", "en", "terrain", "montagneux"]
    assert words("Schülerinnen und Schüler; 30 Jahre") == ["schülerinnen", "und", "schüler", "30", "jahre"]
    assert words("'Hola' — ¿qué tal?_bien") == ["hola", "qué", "tal", "bien"]
    assert words("Привет, мир") == ["привет", "мир"]


def test_manifest_needs_audio_and_language(tmp_path: Path) -> None:
    manifest = tmp_path / "clips.jsonl"
    manifest.write_text('{"audio": "a.ogg", "text": "hallo", "language": "de"}\n\n{"audio": "b.wav", "text": "x"}\n',
                        encoding="utf-8")
    with pytest.raises(EdgedError, match=r"clips.jsonl:3: each line needs `audio`, `text` and `language`"):
        read_manifest(manifest)
    manifest.write_text('{"audio": "a.ogg", "text": "hallo", "language": "de-DE"}\n', encoding="utf-8")
    (clip,) = read_manifest(manifest)
    assert (clip.audio, clip.text, clip.language) == (tmp_path / "a.ogg", "hallo", "de-DE")
