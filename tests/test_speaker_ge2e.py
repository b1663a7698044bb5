"""Resemblyzer's GE2E speaker encoder without PyTorch: its checkpoint read by edged's own reader,
its LSTM written as ONNX, checked against a numpy forward pass of the same weights in PyTorch's
gate order, and its whole recipe (librosa mel, 1.3 partials a second) against edged's embeddings."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from edged.errors import ModelImportError
from edged.importers.package import locate_pack
from edged.importers.resemblyzer import CLUSTER_THRESHOLD, FRONTEND, KNOWN_THRESHOLD
from edged.importers.torch_checkpoint import LEGACY_MAGIC, read_checkpoint
from edged.pipelines.speaker.encoder import SpeakerEncoder, unit
from edged.pipelines.speaker.features import FrontEndSettings, SpeakerFeatures, raised_to
from tests.test_nemo_features import speech
from tests.test_speaker_encoder import espeak_voice


def test_checkpoint_that_names_code_is_refused(tmp_path: Path) -> None:
    """A 'checkpoint' whose pickle calls os.system is refused before anything runs."""
    bad = tmp_path / "bad.pt"
    marker = tmp_path / "ran"
    bad.write_bytes(pickle.dumps(LEGACY_MAGIC) + f"cos\nsystem\n(S'touch {marker}'\ntR.".encode())
    with pytest.raises(ModelImportError, match=r"bad.pt is not a readable PyTorch checkpoint .*os.system"):
        read_checkpoint(bad)
    assert not marker.exists()
    (tmp_path / "junk.pt").write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(ModelImportError, match="junk.pt is not a readable PyTorch checkpoint"):
        read_checkpoint(tmp_path / "junk.pt")


def test_ge2e_frontend_matches_librosa() -> None:
    """edged's GE2E front end is Resemblyzer's: librosa's centred hann mel power of audio raised to
    -30 dBFS."""
    librosa = pytest.importorskip("librosa")
    s = FrontEndSettings.from_parameters(FRONTEND)
    audio = 0.01 * speech(2.0)  # quiet: the front end raises it
    ours = SpeakerFeatures(s).log_mel(audio)
    raised = raised_to(audio, -30.0).astype(np.float64)
    ref = librosa.feature.melspectrogram(y=raised, sr=16000, n_fft=400, hop_length=160, n_mels=40).T
    assert ours.shape == ref.shape == (201, 40)
    assert np.max(np.abs(ours - ref)) < 1e-4 * np.max(ref)  # measured 2e-7 of the peak


def test_volume_is_raised_never_lowered() -> None:
    """Quiet audio comes up to -30 dBFS; loud audio and silence are left as they are."""
    quiet = 0.001 * speech(1.0)
    level = 20 * np.log10(np.sqrt(np.mean(np.square(raised_to(quiet, -30.0), dtype=np.float64))))
    assert abs(level + 30.0) < 0.01
    loud = speech(1.0)
    assert raised_to(loud, -30.0) is loud
    silence = np.zeros(1600, np.float32)
    assert not raised_to(silence, -30.0).any()


def numpy_ge2e(state: dict[str, np.ndarray], windows: np.ndarray) -> np.ndarray:
    """The GE2E network in numpy, in PyTorch's own gate order (input, forget, cell, output): unit
    embeddings [n, 256] of windows [n, frames, 40]."""
    def sigmoid(v: np.ndarray) -> np.ndarray:
        return 0.5 + 0.5 * np.tanh(0.5 * v)  # no overflow for large -v

    x = windows.astype(np.float32)
    for layer in range(3):
        w_hh = state[f"lstm.weight_hh_l{layer}"].T.copy()
        inputs = x @ state[f"lstm.weight_ih_l{layer}"].T + state[f"lstm.bias_ih_l{layer}"] \
            + state[f"lstm.bias_hh_l{layer}"]  # [n, frames, 4 * 256], every step at once
        h = np.zeros((len(x), 256), np.float32)
        c = np.zeros((len(x), 256), np.float32)
        outputs = []
        for t in range(x.shape[1]):
            i, f, g, o = np.split(inputs[:, t] + h @ w_hh, 4, axis=1)
            c = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
            h = sigmoid(o) * np.tanh(c)
            outputs.append(h)
        x = np.stack(outputs, axis=1)
    return unit(np.maximum(h @ state["linear.weight"].T + state["linear.bias"], 0.0))


@pytest.fixture(scope="module")
def ge2e_state(ge2e_rmir: Path, resemblyzer_wheel: Path | None,
               tmp_path_factory: pytest.TempPathFactory) -> dict[str, np.ndarray]:
    """The checkpoint's weights, read from the installed Resemblyzer pack or its wheel."""
    pack = locate_pack("Resemblyzer", "resemblyzer", ["pretrained.pt"], tmp_path_factory.mktemp("rz"),
                       resemblyzer_wheel)
    state: dict[str, np.ndarray] = read_checkpoint(pack.files["pretrained.pt"])["model_state"]
    return state


def test_onnx_matches_numpy_forward_pass(ge2e_encoder: SpeakerEncoder, ge2e_state: dict[str, np.ndarray]) -> None:
    """The deployed ONNX LSTM (gates reordered for ONNX) gives the numpy pass's embeddings."""
    windows = SpeakerFeatures(ge2e_encoder.features.settings).windows(speech(3.0))
    assert windows.shape == (2, 160, 40)
    ours = ge2e_encoder.run_windows(windows)
    ref = numpy_ge2e(ge2e_state, windows)
    assert np.max(np.abs(ours - ref)) < 1e-4  # measured 1e-6


def resemblyzer_embedding(state: dict[str, np.ndarray], audio: np.ndarray) -> np.ndarray:
    """Resemblyzer's embed_utterance (without its webrtcvad trim): partials of 160 frames at 1.3 a
    second, the last kept where 3/4 of it is audio, the clip padded to cover it."""
    librosa = pytest.importorskip("librosa")
    wav = raised_to(audio, -30.0)
    starts = range(0, max(1, len(wav) // 160 + 1 - 160 + 77 + 1), 77)
    slices = [(s, s + 160) for s in starts]
    if (len(wav) - slices[-1][0] * 160) / (160 * 160) < 0.75 and len(slices) > 1:
        slices.pop()
    wav = np.pad(wav, (0, max(0, slices[-1][1] * 160 - len(wav))))
    mel = librosa.feature.melspectrogram(y=wav, sr=16000, n_fft=400, hop_length=160, n_mels=40).T
    return unit(numpy_ge2e(state, np.stack([mel[a:b] for a, b in slices])).mean(axis=0))


def test_embeddings_match_resemblyzers_recipe(ge2e_encoder: SpeakerEncoder,
                                              ge2e_state: dict[str, np.ndarray]) -> None:
    """An utterance's embedding agrees with Resemblyzer's recipe run in numpy (edged drops a tail
    shorter than a partial instead of padding it, hence not exactly)."""
    audio = espeak_voice("The quick brown fox jumps over the lazy dog.", "en-us")
    cosine = float(ge2e_encoder.embed(audio) @ resemblyzer_embedding(ge2e_state, audio))
    assert cosine > 0.98, cosine


def test_ge2e_tells_voices_apart(ge2e_encoder: SpeakerEncoder) -> None:
    """Two sentences of one espeak voice are closer than the same sentence in two voices."""
    first, second = "The quick brown fox jumps over the lazy dog.", "Please call Stella and ask her to bring these."
    a1, a2 = ge2e_encoder.embed_many([espeak_voice(first, "en-us"), espeak_voice(second, "en-us")])
    b1 = ge2e_encoder.embed(espeak_voice(first, "en+f3"))
    assert a1.shape == (256,)
    assert np.isclose(np.linalg.norm(a1), 1.0, atol=1e-5)
    assert float(a1 @ a2) > float(a1 @ b1) + 0.05, (float(a1 @ a2), float(a1 @ b1))
    # its own operating points, from its manifest, not the voicefilter encoder's defaults
    assert (ge2e_encoder.cluster_threshold, ge2e_encoder.known_threshold) == (CLUSTER_THRESHOLD, KNOWN_THRESHOLD)
