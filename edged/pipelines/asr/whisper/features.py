"""Whisper's log-mel front end in numpy: 80 (or 128) mel bands of 16 kHz audio, 100 frames a second.

The published recipe: a short-time Fourier transform of 400-sample periodic Hann windows every
160 samples, the signal reflected 200 samples at each end, the last frame dropped; power spectra
through a Slaney-style mel filterbank (librosa's default: no HTK formula, each band normalised to
unit area); log10 floored at 1e-10, then at 8 (80 dB) below the loudest value; finally
(x + 4) / 4. As faster-whisper does, the utterance gets 10 ms of silence after it and the
frames after those are zeros up to 30 s (OpenAI's reference instead pads the audio with 30 s of
silence, whose frames sit at the floor): on the evalcorpus clips where edged and faster-whisper
differed, its padding gave 19 word errors against 14 with faster-whisper's.
"""

from __future__ import annotations

import numpy as np

SAMPLE_RATE = 16000
N_FFT = 400
HOP = 160
CHUNK_SAMPLES = 30 * SAMPLE_RATE
"""Whisper's encoder hears 30 s: every input is padded to this."""
CHUNK_FRAMES = CHUNK_SAMPLES // HOP

_F_SP = 200.0 / 3
_MIN_LOG_HZ = 1000.0
_MIN_LOG_MEL = _MIN_LOG_HZ / _F_SP
_LOG_STEP = np.log(6.4) / 27.0


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney's mel scale: linear below 1 kHz, logarithmic above."""
    hz = np.asarray(hz, dtype=np.float64)
    linear = hz / _F_SP
    return np.where(hz >= _MIN_LOG_HZ, _MIN_LOG_MEL + np.log(np.maximum(hz, 1e-10) / _MIN_LOG_HZ) / _LOG_STEP, linear)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    return np.where(mel >= _MIN_LOG_MEL, _MIN_LOG_HZ * np.exp(_LOG_STEP * (mel - _MIN_LOG_MEL)), _F_SP * mel)


def mel_filters(n_mels: int = 80, sample_rate: int = SAMPLE_RATE, n_fft: int = N_FFT) -> np.ndarray:
    """Triangular Slaney-normalised mel filters [n_mels, n_fft // 2 + 1] from 0 Hz to Nyquist."""
    bins = np.linspace(0, sample_rate / 2, n_fft // 2 + 1)
    edges = _mel_to_hz(np.linspace(_hz_to_mel(np.array(0.0)), _hz_to_mel(np.array(sample_rate / 2)), n_mels + 2))
    widths = np.diff(edges)
    ramps = edges[:, None] - bins[None, :]
    rising = -ramps[:-2] / widths[:-1, None]
    falling = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights *= (2.0 / (edges[2:] - edges[:-2]))[:, None]
    return weights.astype(np.float32)


class LogMel:
    """Whisper's log-mel features of utterances, padded to 30 s (see the module docstring)."""

    def __init__(self, n_mels: int = 80) -> None:
        self.filters = mel_filters(n_mels)
        self.window = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(N_FFT) / N_FFT)).astype(np.float32)

    def __call__(self, audio: np.ndarray) -> np.ndarray:
        """[n_mels, 3000] of 16 kHz float audio of at most 30 s (longer is cut)."""
        clip = np.asarray(audio, np.float32)[:CHUNK_SAMPLES]
        signal = np.pad(np.concatenate([clip, np.zeros(HOP, np.float32)]), N_FFT // 2, mode="reflect")
        count = min(CHUNK_FRAMES, (len(clip) + HOP) // HOP)
        frames = np.lib.stride_tricks.sliding_window_view(signal, N_FFT)[::HOP][:count]
        spectrum = np.fft.rfft(frames * self.window, axis=-1)
        power = (spectrum.real ** 2 + spectrum.imag ** 2).astype(np.float32)
        log = np.log10(np.maximum(self.filters @ power.T, 1e-10))
        log = np.maximum(log, log.max() - 8.0)
        out = np.zeros((len(self.filters), CHUNK_FRAMES), np.float32)
        out[:, :count] = (log + 4.0) / 4.0
        return out

    def batch(self, audios: list[np.ndarray]) -> np.ndarray:
        """[batch, n_mels, 3000] of several utterances."""
        return np.stack([self(a) for a in audios])
