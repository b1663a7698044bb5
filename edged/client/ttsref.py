"""`edged bench tts --reference`: the voice's original Piper graph, one ONNX Runtime call per
sentence (the piper runtime's way), with edged's phoneme ids, scales and thread settings.

edged splits that graph at import (edged.importers.piper) and runs it in chunks; the reference
shows what the chunking and the rewrites gain or cost on the same sentences, under the same load.
"""

from __future__ import annotations

import importlib.metadata
import logging
from pathlib import Path

import numpy as np

from edged.audio.resample import float_to_pcm16
from edged.backends import BackendOptions
from edged.errors import ConfigError
from edged.pipelines.tts import TtsModel
from edged.pipelines.tts.normalise import normalise
from edged.pipelines.tts.phonemes import phonemize_text
from edged.rmir.manifest import Manifest

_LOGGER = logging.getLogger(__name__)


def original_graph(manifest: Manifest) -> Path:
    """The Piper graph a deployed voice was imported from, found in its installed voice package
    (named by the manifest's provenance); ConfigError if it is not installed here."""
    dist = str(manifest.provenance.get("package", ""))
    aliases = [str(a) for a in manifest.parameters.get("voice_aliases") or []]
    wanted = {f"{a}.onnx" for a in aliases}
    try:
        files = importlib.metadata.files(dist) if dist else None
    except importlib.metadata.PackageNotFoundError:
        files = None
    for file in files or []:
        if file.name in wanted:
            path = Path(str(file.locate()))
            if path.is_file():
                return path
    raise ConfigError(
        f"The original graph of voice {manifest.name} ({', '.join(sorted(wanted)) or 'unnamed'}) is not "
        f"installed here{f' (package {dist})' if dist else ''}; install the voice package or pass "
        "--reference-graph VOICE.onnx.")


class WholeGraphVoice:
    """Speaks a sentence with one run of the whole Piper graph."""

    def __init__(self, model: TtsModel, graph: Path, options: BackendOptions) -> None:
        from edged.backends.onnxruntime import OnnxRuntimeBackend

        self.model = model
        # Optimised at load as the piper runtime does (ORT_ENABLE_ALL), with edged's threads.
        self._session = OnnxRuntimeBackend().load_graph(graph, options)
        self._has_sid = any(i.name == "sid" for i in self._session.inputs)

    def ids(self, sentence: str) -> list[int]:
        """The phoneme ids of a whole sentence, as edged's pipeline makes them."""
        config = self.model.config
        return config.phoneme_ids.ids(phonemize_text(normalise(sentence), config.espeak_voice))

    def speak(self, sentence: str) -> bytes:
        """The sentence's 16-bit PCM at the voice's rate (text processing included, as in a request)."""
        config = self.model.config
        ids = self.ids(sentence)
        feeds: dict[str, np.ndarray] = {
            "input": np.asarray([ids], dtype=np.int64),
            "input_lengths": np.asarray([len(ids)], dtype=np.int64),
            "scales": np.asarray([config.noise_scale, config.length_scale, config.noise_w], dtype=np.float32),
        }
        if self._has_sid:
            feeds["sid"] = np.asarray([0], dtype=np.int64)
        audio = next(iter(self._session.run(feeds).values()))
        return float_to_pcm16(np.asarray(audio, dtype=np.float32).reshape(-1))
