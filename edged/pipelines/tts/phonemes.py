"""Text to IPA phonemes through libespeak-ng (as the voice was trained), and phonemes to ids.

The library and its data come from the `espeakng-loader` wheel and are called through ctypes:
no subprocess per sentence. espeak-ng keeps global state, so every call holds one lock.
"""

from __future__ import annotations

import ctypes
import logging
import re
import threading
import unicodedata
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from edged.errors import TtsError

_LOGGER = logging.getLogger(__name__)

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_CHARS_UTF8 = 1
_PHONEMES_IPA = 0x02
_SYNTH_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)

BOS, EOS, PAD = "^", "$", "_"


class Espeak:
    """The espeak-ng library, initialised once per process, one voice at a time."""

    _lock = threading.Lock()
    _lib: ctypes.CDLL | None = None
    _voice: str | None = None
    _rate = 22050

    @classmethod
    def _library(cls) -> ctypes.CDLL:
        if cls._lib is None:
            try:
                import espeakng_loader
            except ImportError:
                raise TtsError("espeak-ng is not installed; run `pip install espeakng-loader`.") from None
            lib = ctypes.CDLL(espeakng_loader.get_library_path())
            lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
            lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
            lib.espeak_TextToPhonemes.restype = ctypes.c_char_p
            lib.espeak_TextToPhonemes.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_int, ctypes.c_int]
            data = espeakng_loader.get_data_path().encode()
            rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data, 0)
            if rate <= 0:
                raise TtsError("espeak-ng could not be initialised from the espeakng-loader package.")
            lib.espeak_SetSynthCallback.argtypes = [ctypes.c_void_p]
            lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                                         ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
            cls._rate = rate
            cls._lib = lib
        return cls._lib

    @classmethod
    def phonemize(cls, text: str, voice: str) -> str:
        """IPA for one clause of plain text; espeak's own sub-clauses are joined by a space."""
        with cls._lock:
            lib = cls._library()
            if cls._voice != voice:
                if lib.espeak_SetVoiceByName(voice.encode()) != 0:
                    raise TtsError(f"espeak-ng has no voice {voice!r}.")
                cls._voice = voice
            buf = ctypes.create_string_buffer(text.encode("utf-8"))
            ptr = ctypes.c_void_p(ctypes.addressof(buf))
            parts: list[str] = []
            while ptr.value:
                out = lib.espeak_TextToPhonemes(ctypes.byref(ptr), _CHARS_UTF8, _PHONEMES_IPA)
                if out:
                    parts.append(out.decode("utf-8", "replace").strip())
        return " ".join(p for p in parts if p)

    @classmethod
    def speak(cls, text: str, voice: str) -> tuple[np.ndarray, int]:
        """espeak-ng's own formant voice reading `text`: int16 samples and their rate. Its voices
        (`en-us`, `en+f3`, `en-gb-x-rp+m2`, ...) serve as extra speakers in `edged bench speakers`."""
        chunks: list[np.ndarray] = []

        def collect(wav: Any, count: int, _events: Any) -> int:
            if wav and count > 0:
                chunks.append(np.ctypeslib.as_array(wav, shape=(count,)).copy())
            return 0

        callback = _SYNTH_CALLBACK(collect)
        with cls._lock:
            lib = cls._library()
            if lib.espeak_SetVoiceByName(voice.encode()) != 0:
                raise TtsError(f"espeak-ng has no voice {voice!r}.")
            cls._voice = voice
            lib.espeak_SetSynthCallback(callback)
            data = text.encode("utf-8")
            status = lib.espeak_Synth(data, len(data) + 1, 0, 0, 0, _CHARS_UTF8, None, None)
            lib.espeak_SetSynthCallback(None)
            rate = int(cls._rate)
        if status != 0:
            raise TtsError(f"espeak-ng could not synthesise (status {status}).")
        pcm = np.concatenate(chunks) if chunks else np.zeros(0, np.int16)
        return pcm.astype(np.int16), rate


class PhonemeIds:
    """Piper's mapping: BOS, then each phoneme's ids each followed by PAD, then EOS; a voice's
    `phoneme_map` first replaces phonemes by others (the phonemes it was trained with)."""

    def __init__(self, id_map: Mapping[str, Sequence[int]],
                 phoneme_map: Mapping[str, Sequence[str]] | None = None) -> None:
        self._map = {k: list(v) for k, v in id_map.items()}
        self._replace = {k: [str(p) for p in v] for k, v in (phoneme_map or {}).items()}
        for symbol in (BOS, EOS, PAD):
            if symbol not in self._map:
                raise TtsError(f"The voice's phoneme_id_map lacks {symbol!r}.")

    def known(self, phoneme: str) -> bool:
        """True if the voice has an id for this phoneme symbol."""
        return phoneme in self._map

    def ids(self, phonemes: str) -> list[int]:
        """Ids for an IPA string; symbols the voice never saw are dropped (and logged)."""
        pad = self._map[PAD]
        out = list(self._map[BOS]) + pad
        # NFD splits precomposed letters into base + combining marks, as in the voice's map.
        for phoneme in unicodedata.normalize("NFD", phonemes):
            for symbol in self._replace.get(phoneme, (phoneme,)):
                ids = self._map.get(symbol)
                if ids is None:
                    _LOGGER.debug("Dropping phoneme %r unknown to the voice", symbol)
                    continue
                out += ids + pad
        return out + self._map[EOS]


_CLAUSE = re.compile(r"([^.,;:!?]*)([.,;:!?]+|$)")


def phonemize_text(text: str, voice: str) -> str:
    """IPA for words with their punctuation kept, as Piper voices were trained."""
    out: list[str] = []
    for m in _CLAUSE.finditer(text):
        words, punct = m[1].strip(), m[2]
        if words:
            out.append(Espeak.phonemize(words, voice))
        if punct and out:
            # The voice knows one mark per clause: keep the first ("?!" reads as "?").
            out[-1] += punct[0]
    return " ".join(out)


MAX_RUN_PHONEMES = 150
"""Most phoneme symbols one run of the voice takes (about 27 words): its encoder's attention
grows with the square of its input and its decoder's runs with the utterance, so a longer
utterance is spoken in runs. A 900-word sentence without a full stop peaked at 8 GB whole, at
0.43 GB in runs of 150 symbols (0.56 GB in runs of 200, 0.35 GB in runs of 100)."""


def phoneme_runs(ipa: str, most: int = MAX_RUN_PHONEMES) -> list[tuple[str, bool]]:
    """An utterance's IPA in runs of at most `most` symbols, each with whether the next run
    continues its clause (cut at a space or, for a word longer than a run, anywhere: the two are
    joined without the pause the voice makes at an utterance's ends). A run ends after clause
    punctuation where one falls in the last two thirds of its window."""
    runs: list[tuple[str, bool]] = []
    rest = ipa.strip()
    while len(rest) > most:
        window = rest[:most + 1]
        clause = max(window.rfind(mark + " ") for mark in ",;:.!?")
        space = window.rfind(" ")
        if clause >= most // 3:
            cut, tight = clause + 1, False
        elif space >= most // 3:
            cut, tight = space, True
        else:
            cut, tight = most, True
        runs.append((rest[:cut].strip(), tight))
        rest = rest[cut:].strip()
    runs.append((rest, False))
    return runs
