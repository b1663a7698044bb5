"""A speaker encoder: audio in, one unit-length embedding out (cosine similarity = dot product)."""

from __future__ import annotations

import itertools

import numpy as np

from edged.errors import ModelLoadError
from edged.loader import LoadedModel
from edged.pipelines.speaker.features import FrontEndSettings, SpeakerFeatures

DEFAULT_THRESHOLD = 0.6
"""Clustering threshold of a model whose manifest gives none. With the voicefilter encoder on 12
simulated conversations (`edged bench speakers`, seed 0), DER by threshold: 0.5: 4.7 %, 0.55: 5.0 %,
0.6: 2.7 %, 0.65: 2.2 %, 0.7: 9.2 %, 0.8: 22 %; 0.6 keeps away from the cliff above 0.65."""

DEFAULT_KNOWN_THRESHOLD = 0.554
"""Cosine similarity at which a voice is taken for an enrolled speaker's, for a model whose manifest
gives no `known_threshold`: the equal error rate's operating point of the voicefilter encoder
(`edged bench speakers`, 30 evalcorpus speakers and 6 espeak-ng voices: EER 8.2 % at 0.554; as
many impostors let in as true speakers turned away)."""

MAX_BATCH = 64
"""Encoder windows per network run (the top of the RMIR's batch range)."""


def unit(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to length 1 (a zero row stays zero)."""
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32)


class SpeakerEncoder:
    """Embeds utterances with a deployed `speaker` model: its network `embedder` (or its only network,
    as `edged build speaker OUT.rmir my.onnx --name NAME` packs a user's own encoder), which takes
    windows of log-mel frames [batch, frames, mels] and gives an embedding [batch, dim]."""

    def __init__(self, model: LoadedModel) -> None:
        sessions = model.sessions
        if "embedder" not in sessions and len(sessions) != 1:
            raise ModelLoadError(f"Model {model.name} has no 'embedder' network; rebuild its RMIR "
                                 "with its speaker encoder named embedder (or as its only network).")
        params = model.manifest.parameters
        self.name = model.name
        self.session = sessions["embedder"] if "embedder" in sessions else next(iter(sessions.values()))
        self.features = SpeakerFeatures(FrontEndSettings.from_parameters(params.get("frontend", {})))
        self.input = str(params.get("input", self.session.inputs[0].name))
        self.output = str(params.get("output", self.session.outputs[0].name))
        self.sample_rate = self.features.settings.sample_rate
        last = self.session.outputs[0].shape[-1] if self.session.outputs[0].shape else None
        self.dim = int(params.get("embedding_dim") or (last if isinstance(last, int) else 256))
        self.cluster_threshold = float(params.get("cluster_threshold", DEFAULT_THRESHOLD))
        """Cosine similarity above which groups of utterances are one speaker."""
        self.known_threshold = float(params.get("known_threshold", DEFAULT_KNOWN_THRESHOLD))
        """Cosine similarity at which a voice is taken for an enrolled speaker's."""

    @property
    def window_samples(self) -> int:
        """Audio one encoder window covers."""
        s = self.features.settings
        return s.n_fft + (s.window_frames - 1) * s.hop_length

    def embed(self, audio: np.ndarray) -> np.ndarray:
        """The speaker's embedding [dim] of one utterance: its windows embedded, each normalised,
        averaged and normalised again."""
        return self.embed_many([audio])[0]

    def embed_many(self, audios: list[np.ndarray]) -> np.ndarray:
        """Embeddings [len(audios), dim] of several utterances, their windows run in shared batches."""
        if not audios:
            return np.zeros((0, self.dim), np.float32)
        windows = [self.features.windows(a) for a in audios]
        per_window = self.run_windows(np.concatenate(windows))
        bounds = np.cumsum([0] + [len(w) for w in windows])
        return np.stack([pooled(per_window[a:b]) for a, b in itertools.pairwise(bounds)])

    def run_windows(self, windows: np.ndarray) -> np.ndarray:
        """Unit embeddings [n, dim] of encoder windows [n, window_frames, n_mels] (SpeakerFeatures.windows)."""
        if not len(windows):
            return np.zeros((0, self.dim), np.float32)
        outs = [self.session.run({self.input: windows[i:i + MAX_BATCH]}, [self.output])[self.output]
                for i in range(0, len(windows), MAX_BATCH)]
        return unit(np.concatenate(outs))


def pooled(window_embeddings: np.ndarray) -> np.ndarray:
    """An utterance's embedding from its windows' unit embeddings: their mean, normalised."""
    return unit(window_embeddings.mean(axis=0))
