"""NeMo's log-mel preprocessor in numpy against reference computations (librosa, a direct DFT)."""

from __future__ import annotations

import math
import wave
from pathlib import Path

import numpy as np
import pytest

from edged.errors import ModelLoadError
from edged.pipelines.asr.nemo.features import FeatureSettings, MelFeatures

# Measured: 4e-6 at most between these float32 features and float64 references (unit variance).
_TOLERANCE = 1e-4


def speech(seconds: float = 3.0, seed: int = 0) -> np.ndarray:
    """Real speech where moonshine-cpp's test clip is installed, else a voiced synthetic signal."""
    try:
        import moonshine_cpp

        path = Path(moonshine_cpp.__file__).parent / "test-data" / "beckett.wav"
        with wave.open(str(path), "rb") as w:
            pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
        return (pcm[:int(seconds * 16000)] / 32768.0).astype(np.float32)
    except ImportError:
        rng = np.random.default_rng(seed)
        t = np.arange(int(seconds * 16000)) / 16000
        voiced = sum(np.sin(2 * np.pi * 140 * k * t) / k for k in range(1, 20)) * (1 + np.sin(2 * np.pi * 3 * t))
        return (0.1 * voiced + 0.01 * rng.standard_normal(len(t))).astype(np.float32)


def reference_librosa(audio: np.ndarray, s: FeatureSettings) -> np.ndarray:
    """FilterbankFeatures.forward for one utterance in float64 through librosa (NeMo uses
    librosa's filterbank; its STFT is torch.stft centred with zeros, as librosa's center=True
    with pad_mode='constant')."""
    librosa = pytest.importorskip("librosa")
    x = audio.astype(np.float64)
    pad = (s.fft_size - s.hop_length) // 2
    if s.exact_pad:  # NeMo pads first; the pre-emphasis mask then keeps the first len(audio) samples
        x = np.concatenate([np.zeros(pad), x, np.zeros(pad)])
    x = np.concatenate([x[:1], x[1:] - s.preemph * x[:-1]]) if s.preemph is not None else x
    if s.exact_pad:
        x[len(audio):] = 0.0
    win = s.win_length
    window = {"hann": np.hanning, "hamming": np.hamming}[s.window](win)  # torch periodic=False
    spec = librosa.stft(x, n_fft=s.fft_size, hop_length=s.hop_length, win_length=win, window=window,
                        center=not s.exact_pad, pad_mode="constant")
    power = np.abs(spec) ** s.mag_power
    fb = librosa.filters.mel(sr=s.sample_rate, n_fft=s.fft_size, n_mels=s.features, fmin=s.lowfreq,
                             fmax=s.highfreq or s.sample_rate / 2, norm=s.mel_norm, dtype=np.float64)
    mel = fb @ power
    mel = np.log(mel + s.log_zero_guard_value) if s.log_zero_guard_type == "add" else np.log(
        np.maximum(mel, s.log_zero_guard_value))
    return _normalise_reference(mel, len(audio), s)


def _normalise_reference(mel: np.ndarray, samples: int, s: FeatureSettings) -> np.ndarray:
    """normalize_batch and the masking of frames past get_seq_len, one utterance, float64."""
    pad = (s.fft_size - s.hop_length) // 2 if s.exact_pad else s.fft_size // 2
    valid = (samples + 2 * pad - s.fft_size) // s.hop_length
    part = mel[:, :valid]
    if s.normalize == "per_feature":
        mel = (mel - part.mean(axis=1, keepdims=True)) / (part.std(axis=1, ddof=1, keepdims=True) + 1e-5)
    elif s.normalize == "all_features":
        mel = (mel - part.mean()) / (part.std(ddof=1) + 1e-5)
    mel[:, valid:] = s.pad_value
    return mel


def reference_dft(audio: np.ndarray, s: FeatureSettings) -> np.ndarray:
    """The same without librosa or numpy's FFT: frames by hand, a DFT sum per bin, triangular
    mel filters drawn from the Slaney mel scale filter by filter."""
    n_fft, hop, win = s.fft_size, s.hop_length, s.win_length
    x = audio.astype(np.float64)
    x = np.concatenate([x[:1], x[1:] - s.preemph * x[:-1]])
    x = np.concatenate([np.zeros(n_fft // 2), x, np.zeros(n_fft // 2)])
    window = np.zeros(n_fft)
    n = np.arange(win)
    window[(n_fft - win) // 2:(n_fft - win) // 2 + win] = 0.5 - 0.5 * np.cos(2 * np.pi * n / (win - 1))
    bins = n_fft // 2 + 1
    k = np.arange(bins)[:, None]
    basis = np.exp(-2j * np.pi * k * np.arange(n_fft)[None, :] / n_fft)
    columns = []
    for start in range(0, len(x) - n_fft + 1, hop):
        columns.append(np.abs(basis @ (x[start:start + n_fft] * window)) ** 2)
    power = np.array(columns).T  # [bins, frames]

    def mel(f: float) -> float:
        return f / (200 / 3) if f < 1000 else 15 + math.log(f / 1000) * 27 / math.log(6.4)

    def hz(m: float) -> float:
        return m * (200 / 3) if m < 15 else 1000 * math.exp((m - 15) * math.log(6.4) / 27)

    top = mel(s.highfreq or s.sample_rate / 2)
    points = [hz(top * i / (s.features + 1)) for i in range(s.features + 2)]
    freqs = [b * s.sample_rate / n_fft for b in range(bins)]
    fb = np.zeros((s.features, bins))
    for m in range(s.features):
        lo, mid, hi = points[m], points[m + 1], points[m + 2]
        for b, f in enumerate(freqs):
            if lo < f <= mid:
                fb[m, b] = (f - lo) / (mid - lo)
            elif mid < f < hi:
                fb[m, b] = (hi - f) / (hi - mid)
        fb[m] *= 2 / (hi - lo)
    return _normalise_reference(np.log(fb @ power + s.log_zero_guard_value), len(audio), s)


@pytest.mark.parametrize("normalize", ["per_feature", "all_features", "NA"])
def test_features_equal_librosa_reference(normalize: str) -> None:
    """80 log-mel features of real speech: within float32 rounding of a float64 librosa reference."""
    s = FeatureSettings(normalize=normalize)
    audio = speech(3.0)
    got, lengths = MelFeatures(s)([audio])
    want = reference_librosa(audio, s)
    assert got.dtype == np.float32 and got.shape == (1, 80, len(audio) // 160 + 1)
    assert int(lengths[0]) == len(audio) // 160
    diff = float(np.abs(got[0] - want).max())
    print(f"max abs difference ({normalize}): {diff:.2e}")
    assert diff < _TOLERANCE


def test_features_equal_direct_dft_reference() -> None:
    """The same against a DFT loop and hand-drawn filters (no librosa, no FFT)."""
    s = FeatureSettings(features=64, n_fft=512, window_size=0.02)
    audio = speech(1.0)
    got, _ = MelFeatures(s)([audio])
    diff = float(np.abs(got[0] - reference_dft(audio, s)).max())
    print(f"max abs difference (DFT loop): {diff:.2e}")
    assert diff < _TOLERANCE


def test_other_settings_follow_librosa() -> None:
    """Hamming window, clamp guard, 1.0 magnitude power, a band limit, no mel norm."""
    s = FeatureSettings(window="hamming", log_zero_guard_type="clamp", log_zero_guard_value=1e-5,
                        mag_power=1.0, lowfreq=20.0, highfreq=7600.0, mel_norm=None, features=40)
    audio = speech(1.5)
    got, _ = MelFeatures(s)([audio])
    assert float(np.abs(got[0] - reference_librosa(audio, s)).max()) < _TOLERANCE


def test_exact_pad_follows_nemo() -> None:
    """exact_pad: (n_fft - hop) / 2 zeros each side and no centring, one frame less."""
    s = FeatureSettings(exact_pad=True)
    audio = speech(2.0)
    got, lengths = MelFeatures(s)([audio])
    assert int(lengths[0]) == len(audio) // 160 - 1 and got.shape[2] == len(audio) // 160
    assert float(np.abs(got[0] - reference_librosa(audio, s)).max()) < _TOLERANCE


def test_batch_rows_equal_one_at_a_time_and_pad_to() -> None:
    """Rows of different lengths in one batch: each as alone, padding at pad_value, time a
    multiple of pad_to."""
    s = FeatureSettings(pad_to=16, pad_value=-1.0)
    audio = speech(3.0)
    cuts = [audio[:16000], audio[3000:40000], audio[:48000 - 77]]
    features = MelFeatures(s)
    batch, lengths = features(cuts)
    assert batch.shape[2] % 16 == 0
    for row, cut in enumerate(cuts):
        alone, n = features([cut])
        assert int(n[0]) == int(lengths[row]) == len(cut) // 160
        # Not bit-exact: BLAS and the FFT may sum a batch in another order than one row (numpy 2.4
        # here differed by up to 5e-7 in 92 of 8000 values), so the two agree to float32 rounding:
        # a few ulps (eps * 16) of the largest feature, which normalisation brings to order 1.
        got, want = batch[row, :, :alone.shape[2]][:, :int(n[0])], alone[0, :, :int(n[0])]
        ulps = 16 * float(np.finfo(np.float32).eps) * float(np.max(np.abs(want)))
        np.testing.assert_allclose(got, want, rtol=0, atol=ulps)
        assert np.all(batch[row, :, int(n[0]):] == -1.0)


def test_settings_from_manifest_and_refusals() -> None:
    """The manifest's preprocessor mapping (NeMo's names), and clear refusals."""
    s = FeatureSettings.from_manifest({"sample_rate": 16000, "window_size": 0.02, "window_stride": 0.01,
                                       "n_fft": None, "features": 64, "normalize": "NA", "highfreq": None,
                                       "log_zero_guard_value": "tiny", "dither": 1e-5, "unknown": 1})
    assert (s.win_length, s.hop_length, s.fft_size, s.features) == (320, 160, 512, 64)
    assert s.log_zero_guard_value == float(np.finfo(np.float32).tiny)
    for bad in ({"frame_splicing": 3}, {"window": "kaiser"}, {"normalize": {"fixed_mean": [0.0]}},
                {"log_zero_guard_type": "none"}):
        with pytest.raises(ModelLoadError):
            MelFeatures(FeatureSettings.from_manifest(bad))
