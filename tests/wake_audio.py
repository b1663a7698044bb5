"""Test audio for wake words: phrases spoken by espeak-ng voices, noise mixed at a given SNR.

espeak-ng's library and data come from the `espeakng-loader` wheel edged already uses for
phonemes; here it speaks (AUDIO_OUTPUT_SYNCHRONOUS with a callback that keeps the samples).
"""

from __future__ import annotations

import ctypes
import threading

import numpy as np

from edged.audio.resample import resample

RATE = 16000
_SYNCHRONOUS = 2
_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)
_lock = threading.Lock()
_state: dict[str, object] = {}

ESPEAK_VOICES = ("en-us+m3", "en-us+f2", "en+m1", "en+f3", "en-us+m5", "en+f4", "en-us+m1", "en+m3")
"""espeak-ng voices (language + variant) that speak the positives."""


def _espeak() -> tuple[ctypes.CDLL, int, list[np.ndarray]]:
    if "lib" not in _state:
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
        _state.update(lib=lib, rate=rate, chunks=chunks, callback=callback)
    return _state["lib"], int(_state["rate"]), _state["chunks"]  # type: ignore[return-value]


def espeak(text: str, voice: str, words_per_minute: int = 150) -> np.ndarray:
    """`text` spoken by espeak-ng's `voice`, as float32 at 16 kHz."""
    with _lock:
        lib, rate, chunks = _espeak()
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
