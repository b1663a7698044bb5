"""Audio for wake-word tests and `edged bench wake`: phrases spoken by espeak-ng voices, inside
longer speech, with noise mixed at a given SNR.

espeak-ng's library and data come from the `espeakng-loader` wheel edged already uses for
phonemes; here it speaks (AUDIO_OUTPUT_SYNCHRONOUS with a callback that keeps the samples).
"""

from __future__ import annotations

import ctypes
import threading
from dataclasses import dataclass

import numpy as np

from edged.audio.resample import resample

RATE = 16000
_SYNCHRONOUS = 2
_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)
_lock = threading.Lock()


@dataclass
class _Espeak:
    """The library, initialised once in synchronous mode, and the samples its callback keeps."""

    lib: ctypes.CDLL
    rate: int
    chunks: list[np.ndarray]
    callback: object
    """Kept referenced: the library calls it."""


_espeak_once: list[_Espeak] = []

ESPEAK_VOICES = ("en-us+m3", "en-us+f2", "en+m1", "en+f3", "en-us+m5", "en+f4", "en-us+m1", "en+m3")
"""espeak-ng voices (language + variant) that speak the positives."""


def _espeak() -> _Espeak:
    if not _espeak_once:
        import espeakng_loader

        lib = ctypes.CDLL(espeakng_loader.get_library_path())
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                                     ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        rate = lib.espeak_Initialize(_SYNCHRONOUS, 0, espeakng_loader.get_data_path().encode(), 0)
        chunks: list[np.ndarray] = []

        def keep(wav: ctypes._Pointer[ctypes.c_short], n: int, events: ctypes.c_void_p) -> int:
            if n > 0:
                chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
            return 0

        callback = _CALLBACK(keep)
        lib.espeak_SetSynthCallback(callback)
        _espeak_once.append(_Espeak(lib, int(rate), chunks, callback))
    return _espeak_once[0]


def espeak(text: str, voice: str, words_per_minute: int = 150) -> np.ndarray:
    """`text` spoken by espeak-ng's `voice`, as float32 at 16 kHz."""
    with _lock:
        engine = _espeak()
        lib, rate, chunks = engine.lib, engine.rate, engine.chunks
        chunks.clear()
        if lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise ValueError(f"espeak-ng has no voice {voice!r}")
        lib.espeak_SetParameter(1, words_per_minute, 0)  # espeakRATE
        data = text.encode() + b"\0"
        lib.espeak_Synth(data, len(data), 0, 0, 0, 0, None, None)
        audio = np.concatenate(chunks).astype(np.float32) / 32768.0 if chunks else np.zeros(0, np.float32)
    return resample(audio, rate, RATE)


def pink_noise(seconds: float, seed: int) -> np.ndarray:
    """Pink (1/f) noise, unit RMS, at 16 kHz: a fan's or a room's hum more than white hiss."""
    rng = np.random.default_rng(seed)
    n = int(seconds * RATE)
    spectrum = np.fft.rfft(rng.standard_normal(n))
    spectrum /= np.sqrt(np.maximum(np.arange(len(spectrum)), 1))
    noise = np.fft.irfft(spectrum, n)
    return (noise / np.sqrt(np.mean(noise ** 2))).astype(np.float32)


def mix_at_snr(speech: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """`speech` with `noise` (as long) added so that speech power over noise power is `snr_db`,
    measured over the speech's active part (samples above 1 % of its peak)."""
    active = speech[np.abs(speech) > 0.01 * np.max(np.abs(speech))]
    speech_power = float(np.mean(active ** 2))
    noise = noise[: len(speech)]
    gain = np.sqrt(speech_power / (10 ** (snr_db / 10)) / float(np.mean(noise ** 2)))
    mixed = speech + gain * noise
    peak = float(np.max(np.abs(mixed)))
    return (mixed / peak * 0.9 if peak > 0.99 else mixed).astype(np.float32)


def pcm16(audio: np.ndarray) -> bytes:
    """float32 to 16-bit little-endian PCM."""
    return np.clip(np.rint(audio * 32767), -32768, 32767).astype("<i2").tobytes()


def silence(seconds: float) -> np.ndarray:
    """Digital silence at 16 kHz."""
    return np.zeros(int(seconds * RATE), np.float32)


WAKE_PHRASES = {"wake-okay-nabu": "Okay, Nabu.", "wake-alexa": "Alexa.", "wake-hey-mycroft": "Hey Mycroft.",
                "wake-hey-jarvis": "Hey Jarvis."}
"""What each built-in wake word's phrase is written as for a synthesiser."""

CARRIER_SENTENCES = (
    "The library opens at nine on weekdays.",
    "We walked along the river until the rain started.",
    "Please put the groceries in the kitchen.",
    "The meeting moved to the second floor.",
)
"""Ordinary speech around a wake phrase (before it, and the command after it)."""


@dataclass(frozen=True)
class Positive:
    """A wake phrase inside longer speech: its audio and where the phrase's sound ends (s)."""

    audio: np.ndarray
    phrase_end_s: float
    voice: str
    snr_db: float | None


def positive(phrase: np.ndarray, before: np.ndarray, after: np.ndarray, snr_db: float | None,
             seed: int, voice: str = "") -> Positive:
    """`before`, a pause, the phrase, a pause, `after` (the command), with pink noise at `snr_db`
    (None: clean)."""
    parts = [silence(0.4), before, silence(0.6), phrase]
    loud = np.flatnonzero(np.abs(phrase) > 0.02 * np.max(np.abs(phrase)))
    trailing = len(phrase) - (int(loud[-1]) + 1 if len(loud) else len(phrase))
    end = (sum(len(p) for p in parts) - trailing) / RATE  # where the voice stops, not its padding
    speech = np.concatenate([*parts, silence(0.5), after, silence(0.4)])
    if snr_db is not None:
        speech = mix_at_snr(speech, pink_noise(len(speech) / RATE, seed), snr_db)
    return Positive(speech, end, voice, snr_db)
