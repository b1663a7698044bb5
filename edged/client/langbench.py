"""Recognition per language (`edged bench languages`): word error rate and language identification
of the deployed models over clips in several languages, offline on the Riva door.

Each clip is recognised twice: asked as "multi" (a multilingual model identifies the language:
identification is right when every result names the clip's language) and asked in the clip's
own language. Text is compared after a normalisation that holds for any language written with
spaces: lower case, punctuation removed, letters of every script kept."""

from __future__ import annotations

import io
import json
import re
import time
import unicodedata
import wave
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from edged.client.textnorm import edit_distance
from edged.errors import EdgedError
from edged.rmir.manifest import MULTILINGUAL, primary_language


def words(text: str) -> list[str]:
    """A transcript's words in any language: NFC, lower case, punctuation and symbols dropped,
    apostrophes inside words kept ("l'accident"), digits kept as written."""
    text = unicodedata.normalize("NFC", text.lower().replace("\u2019", "'"))
    return re.sub(r"[^\w']+|'(?!\w)|(?<!\w)'|_", " ", text).split()


@dataclass(frozen=True)
class Clip:
    audio: Path
    text: str
    language: str


@dataclass(frozen=True)
class LanguageFigures:
    """One language's clips: how often the language was identified, and the WER either way."""

    language: str
    clips: int
    seconds: float
    identified: int
    """Clips whose every result, asked as "multi", named this language."""
    wer_identified: float
    """Percent, asked as "multi"."""
    wer_forced: float
    """Percent, asked in the clip's language."""
    words: int
    rtf: float
    """Server wall time per second of audio (both passes' mean)."""
    misses: tuple[str, ...]
    """Each clip identified otherwise: `clip: languages found`."""


def read_manifest(manifest: Path) -> list[Clip]:
    """JSON lines: `audio` (path relative to the manifest), `text`, `language` (e.g. `de`)."""
    clips = []
    for number, line in enumerate(manifest.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        entry = json.loads(line)
        if not isinstance(entry, dict) or not entry.get("audio") or not entry.get("language"):
            raise EdgedError(f"{manifest}:{number}: each line needs `audio`, `text` and `language`.")
        clips.append(Clip(manifest.parent / str(entry["audio"]), str(entry.get("text", "")), str(entry["language"])))
    return clips


def wav_bytes(path: Path) -> tuple[bytes, float]:
    """Any audio soundfile reads (WAV, FLAC, Ogg Vorbis/Opus), as 16-bit mono WAV bytes, and its seconds."""
    import numpy as np
    import soundfile

    try:
        audio, rate = soundfile.read(str(path), dtype="int16", always_2d=True)
    except (OSError, RuntimeError) as exc:
        raise EdgedError(f"{path}: {exc}") from None
    mono = audio.mean(axis=1).astype(np.int16) if audio.shape[1] > 1 else audio[:, 0]
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(mono.tobytes())
    return out.getvalue(), len(mono) / rate


Recognise = Callable[[bytes, str], list[tuple[str, str]]]
"""(WAV bytes, language asked) -> (transcript, language code) of each result."""


def riva_recogniser(address: str) -> Recognise:
    import grpc
    import riva.client

    asr = riva.client.ASRService(riva.client.Auth(uri=address))

    def recognise(audio: bytes, language: str) -> list[tuple[str, str]]:
        config = riva.client.RecognitionConfig(language_code=language, max_alternatives=1,
                                               enable_automatic_punctuation=True)
        try:
            response = asr.offline_recognize(audio, config)
        except grpc.RpcError as exc:
            raise EdgedError(f"Asked for {language!r}: {exc.details()}") from None
        return [(r.alternatives[0].transcript, ",".join(r.alternatives[0].language_code))
                for r in response.results if r.alternatives]
    return recognise


def run_language_bench(recognise: Recognise, clips: list[Clip]) -> list[LanguageFigures]:
    """Every clip asked as "multi" and in its language; figures per language, in manifest order."""
    by_language: dict[str, list[Clip]] = {}
    for clip in clips:
        by_language.setdefault(primary_language(clip.language), []).append(clip)
    rows = []
    for language, group in by_language.items():
        errors = {MULTILINGUAL: 0, language: 0}
        total = identified = 0
        seconds = wall = 0.0
        misses = []
        for clip in group:
            audio, duration = wav_bytes(clip.audio)
            seconds += duration
            reference = words(clip.text)
            total += len(reference)
            for asked in (MULTILINGUAL, clip.language):
                start = time.perf_counter()
                results = recognise(audio, asked)
                wall += time.perf_counter() - start
                errors[MULTILINGUAL if asked == MULTILINGUAL else language] += \
                    edit_distance(reference, words(" ".join(text for text, _ in results)))
                if asked == MULTILINGUAL:
                    found = {primary_language(code) for _, code in results if code}
                    identified += found == {language}
                    if found != {language}:
                        misses.append(f"{clip.audio.name}: {', '.join(sorted(found)) or 'nothing'}")
        rows.append(LanguageFigures(language, len(group), round(seconds, 1), identified,
                                    _percent(errors[MULTILINGUAL], total), _percent(errors[language], total),
                                    total, round(wall / 2 / seconds, 3) if seconds else 0.0, tuple(misses)))
    return rows


def _percent(errors: int, words_: int) -> float:
    return round(100 * errors / words_, 1) if words_ else 0.0


def language_text(rows: list[LanguageFigures]) -> str:
    lines = [f"{'language':<9}{'clips':>6}{'audio s':>9}{'identified':>12}{'WER multi':>11}{'WER forced':>12}"
             f"{'words':>7}{'RTF':>7}"]
    for r in rows:
        lines.append(f"{r.language:<9}{r.clips:>6}{r.seconds:>9.0f}{f'{r.identified}/{r.clips}':>12}"
                     f"{r.wer_identified:>10.1f}%{r.wer_forced:>11.1f}%{r.words:>7}{r.rtf:>7.3f}")
        lines += [f"  identified otherwise: {miss}" for miss in r.misses]
    clips = sum(r.clips for r in rows)
    if clips:
        lines.append(f"language identification: {sum(r.identified for r in rows)}/{clips} "
                     f"({100 * sum(r.identified for r in rows) / clips:.0f} %)")
    return "\n".join(lines)


def language_json(rows: list[LanguageFigures]) -> str:
    out: list[dict[str, Any]] = [asdict(r) for r in rows]
    return json.dumps(out, indent=2)
