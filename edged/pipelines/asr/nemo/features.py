"""NeMo's AudioToMelSpectrogramPreprocessor (FilterbankFeatures) in numpy, float32, inference only.

The steps and their order follow NeMo's FilterbankFeatures.forward with dither off (edged never
dithers: results must not change between runs): pre-emphasis over each row's own samples, a
centred STFT padded with zeros (torch.stft center=True, pad_mode="constant"; `exact_pad`: pad
(n_fft - hop) / 2 zeros and no centring), the magnitude to `mag_power`, a librosa-style mel
filterbank (Slaney mel scale, `mel_norm` "slaney" area normalisation or none), the log with its
zero guard, normalisation over each row's valid frames (NeMo's normalize_batch, with its 1e-5
guard on the standard deviation), frames past the valid length set to `pad_value`, and the
time axis padded to a multiple of `pad_to`. The valid length is NeMo's get_seq_len:
(samples + 2 * (n_fft // 2) - n_fft) // hop, one frame less than the STFT gives.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from edged.errors import ModelLoadError

# NeMo's normalize_batch adds this to the standard deviation (features.py CONSTANT).
_STD_GUARD = 1e-5
_NORMALISATIONS = ("per_feature", "all_features")
# Settings whose None means something (none, or NeMo's computed default).
_MAY_BE_NONE = ("n_fft", "highfreq", "preemph", "mel_norm")


@dataclass(frozen=True)
class FeatureSettings:
    """The preprocessor settings of a NeMo model (its model_config.yaml names and defaults)."""

    sample_rate: int = 16000
    window_size: float = 0.025
    """Seconds per STFT window (win_length = int(window_size * sample_rate), as NeMo rounds)."""
    window_stride: float = 0.01
    """Seconds between frames (the hop)."""
    n_fft: int | None = 512
    """None: the next power of two of the window length."""
    features: int = 80
    window: str = "hann"
    normalize: str = "per_feature"
    """per_feature, all_features, or anything else (NA) for none."""
    preemph: float | None = 0.97
    log: bool = True
    log_zero_guard_type: str = "add"
    log_zero_guard_value: float = 2.0 ** -24
    mag_power: float = 2.0
    lowfreq: float = 0.0
    highfreq: float | None = None
    pad_to: int = 0
    pad_value: float = 0.0
    frame_splicing: int = 1
    exact_pad: bool = False
    mel_norm: str | None = "slaney"

    @classmethod
    def from_manifest(cls, params: Mapping[str, Any]) -> FeatureSettings:
        """Settings from the manifest's `preprocessor` mapping; ModelLoadError for what edged cannot compute."""
        known: dict[str, Any] = {}
        for name in cls.__dataclass_fields__:
            if name in params and (params[name] is not None or name in _MAY_BE_NONE):
                known[name] = params[name]
        guard = known.get("log_zero_guard_value")
        if isinstance(guard, str):  # NeMo also takes "tiny" or "eps" of float32
            info = np.finfo(np.float32)
            known["log_zero_guard_value"] = float(info.tiny if guard == "tiny" else info.eps)
        if isinstance(known.get("normalize"), Mapping):
            raise ModelLoadError("NeMo preprocessor normalize with fixed_mean/fixed_std is not supported; "
                                 "use per_feature, all_features or NA.")
        try:
            settings = cls(**known)
            settings.fft_size  # noqa: B018 - checks the window size and the FFT size
        except (TypeError, ValueError) as exc:
            raise ModelLoadError(
                f"The NeMo preprocessor settings do not make sense ({exc}); rebuild the RMIR."
            ) from None
        if settings.frame_splicing != 1:
            raise ModelLoadError(f"NeMo preprocessor frame_splicing {settings.frame_splicing} is not supported "
                                 "(edged computes frame_splicing 1 only); retrain or re-export without it.")
        if settings.window not in _WINDOWS:
            raise ModelLoadError(f"NeMo preprocessor window {settings.window!r} is not supported; "
                                 f"edged knows {', '.join(sorted(_WINDOWS))}.")
        if settings.log_zero_guard_type not in ("add", "clamp"):
            raise ModelLoadError(f"NeMo preprocessor log_zero_guard_type {settings.log_zero_guard_type!r} "
                                 "is not 'add' or 'clamp'; rebuild the RMIR.")
        return settings

    @property
    def win_length(self) -> int:
        """Samples per window (NeMo truncates, as int() does)."""
        return int(self.window_size * self.sample_rate)

    @property
    def hop_length(self) -> int:
        """Samples between frames."""
        return int(self.window_stride * self.sample_rate)

    @property
    def fft_size(self) -> int:
        """The STFT size."""
        return int(self.n_fft) if self.n_fft else 2 ** math.ceil(math.log2(self.win_length))


def _symmetric(kind: str, n: int) -> np.ndarray:
    """torch's windows with periodic=False (numpy's are symmetric too), float64."""
    if kind == "hann":
        return np.hanning(n)
    if kind == "hamming":
        return np.hamming(n)
    if kind == "blackman":
        return np.blackman(n)
    if kind == "bartlett":
        return np.bartlett(n)
    return np.ones(n)


_WINDOWS = ("hann", "hamming", "blackman", "bartlett", "none")


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney's mel scale (librosa's default, htk=False): linear to 1 kHz, logarithmic above."""
    hz = np.asarray(hz, dtype=np.float64)
    linear = hz / (200.0 / 3)
    log = 15.0 + np.log(np.maximum(hz, 1e-10) / 1000.0) / (math.log(6.4) / 27.0)
    return np.where(hz >= 1000.0, log, linear)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    """The inverse of _hz_to_mel."""
    mel = np.asarray(mel, dtype=np.float64)
    return np.where(mel >= 15.0, 1000.0 * np.exp((math.log(6.4) / 27.0) * (mel - 15.0)), mel * (200.0 / 3))


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float,
                   norm: str | None = "slaney") -> np.ndarray:
    """Triangular mel filters [n_mels, n_fft // 2 + 1] as librosa.filters.mel builds them."""
    bins = np.linspace(0.0, sample_rate / 2.0, n_fft // 2 + 1)
    edges = _mel_to_hz(np.linspace(_hz_to_mel(np.array(fmin)), _hz_to_mel(np.array(fmax)), n_mels + 2))
    widths = np.diff(edges)
    rising = (bins[None, :] - edges[:-2, None]) / widths[:-1, None]
    falling = (edges[2:, None] - bins[None, :]) / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(rising, falling))
    if norm == "slaney":  # each filter's area is the same
        weights *= (2.0 / (edges[2:] - edges[:-2]))[:, None]
    return weights.astype(np.float32)


class MelFeatures:
    """Log-mel features of 16 kHz utterances, batched, as the model's NeMo preprocessor computes them."""

    def __init__(self, settings: FeatureSettings) -> None:
        self.settings = settings
        s = settings
        self.hop = s.hop_length
        self.n_fft = s.fft_size
        win = s.win_length
        if win > self.n_fft or self.hop <= 0 or win <= 0:
            raise ModelLoadError(f"NeMo preprocessor window {win} and hop {self.hop} do not fit n_fft {self.n_fft}; "
                                 "rebuild the RMIR.")
        window = np.zeros(self.n_fft)
        left = (self.n_fft - win) // 2  # torch.stft centres a shorter window in n_fft
        window[left:left + win] = _symmetric(s.window, win)
        self._window = window.astype(np.float32)
        self._filters = mel_filterbank(s.sample_rate, self.n_fft, s.features, s.lowfreq,
                                       s.highfreq or s.sample_rate / 2.0, s.mel_norm)
        self._pad = (self.n_fft - self.hop) // 2 if s.exact_pad else self.n_fft // 2

    def lengths(self, samples: np.ndarray) -> np.ndarray:
        """Valid feature frames of utterances of `samples` samples (NeMo's get_seq_len)."""
        samples = np.asarray(samples, dtype=np.int64)
        return np.maximum(0, (samples + 2 * self._pad - self.n_fft) // self.hop)

    def __call__(self, audios: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Features [batch, features, frames] float32 and their valid lengths [batch] int64."""
        s = self.settings
        samples = np.array([len(a) for a in audios], dtype=np.int64)
        longest = max(int(samples.max()), 1)
        padded = np.zeros((len(audios), longest + 2 * self._pad), dtype=np.float32)
        for i, audio in enumerate(audios):
            x = np.asarray(audio, dtype=np.float32)
            if s.exact_pad:  # NeMo pads before the pre-emphasis, whose mask then keeps `len(audio)` samples
                x = np.concatenate([np.zeros(self._pad, dtype=np.float32), x])
            if s.preemph is not None and len(x):
                x = np.concatenate([x[:1], x[1:] - np.float32(s.preemph) * x[:-1]])
            x = x[:len(audio)]
            start = 0 if s.exact_pad else self._pad
            padded[i, start:start + len(x)] = x
        count = (padded.shape[1] - self.n_fft) // self.hop + 1
        frames = np.lib.stride_tricks.as_strided(
            padded, (len(audios), count, self.n_fft),
            (padded.strides[0], padded.strides[1] * self.hop, padded.strides[1]), writeable=False)
        spectrum = np.fft.rfft(frames * self._window, axis=-1)  # [B, T, bins], complex64
        magnitude = np.sqrt(spectrum.real ** 2 + spectrum.imag ** 2)
        if s.mag_power != 1.0:
            magnitude = magnitude ** np.float32(s.mag_power)
        mel = np.matmul(self._filters, magnitude.transpose(0, 2, 1))  # [B, F, T]
        if s.log:
            guard = np.float32(s.log_zero_guard_value)
            mel = np.log(mel + guard) if s.log_zero_guard_type == "add" else np.log(np.maximum(mel, guard))
        lengths = self.lengths(samples)
        valid = np.arange(count)[None, :] < lengths[:, None]  # [B, T]
        if s.normalize in _NORMALISATIONS:
            mel = _normalise(mel, lengths, s.normalize)
        mel = np.where(valid[:, None, :], mel, np.float32(s.pad_value)).astype(np.float32)
        if s.pad_to > 0 and count % s.pad_to:
            extra = s.pad_to - count % s.pad_to
            mel = np.pad(mel, ((0, 0), (0, 0), (0, extra)), constant_values=s.pad_value)
        return np.ascontiguousarray(mel), lengths


def _normalise(mel: np.ndarray, lengths: np.ndarray, kind: str) -> np.ndarray:
    """NeMo's normalize_batch: each row's mean and unbiased standard deviation over its valid
    frames (per feature, or over all features), plus 1e-5 on the deviation. Row by row over
    its own frames, so that a row's features do not depend on what it is batched with."""
    out = np.empty_like(mel)
    axis = 1 if kind == "per_feature" else None
    for row, n in enumerate(lengths.tolist()):
        part = mel[row, :, :n]
        mean = part.mean(axis=axis, keepdims=True) if n else np.zeros((1, 1), dtype=np.float32)
        # One frame: NeMo's deviation is NaN, which it sets to 0 before the guard.
        std = part.std(axis=axis, ddof=1, keepdims=True) if n > 1 else np.zeros_like(mean)
        out[row] = (mel[row] - mean) / (std + np.float32(_STD_GUARD))
    return out
