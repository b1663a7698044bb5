"""NemoRecogniser: a NeMo RNN-T, TDT or CTC model behind what AsrModel uses of a recogniser.

It offers Recogniser's `decode`, `beam`, `phrase_bias`, `tokenizer` and `frames`, honestly:

- decoding is greedy; `decode` ignores drafts (NeMo's greedy decoding costs one small
  decoder_joint call per frame and token, nothing a draft could save) and `beam` returns the
  greedy hypothesis without alternatives;
- boosted phrases are not supported yet: `phrase_bias` returns None, so requests decode
  as without them;
- every hypothesis carries the times of its tokens (`Hypothesis.token_times`), from the
  encoder frames where they were emitted, for word time offsets.

The encoders take lengths, so utterances of different lengths share a batch: each row's
features are computed over its own samples and the decoders read only its valid frames.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from edged.backends import Session
from edged.errors import ModelLoadError
from edged.loader import LoadedModel
from edged.pipelines.asr.audio import MODEL_RATE
from edged.pipelines.asr.boost import PhraseBias
from edged.pipelines.asr.nemo import NEMO_FAMILIES
from edged.pipelines.asr.nemo.decoders import (
    Decoded,
    States,
    ctc_greedy,
    rnnt_greedy,
    tdt_greedy,
)
from edged.pipelines.asr.nemo.features import FeatureSettings, MelFeatures
from edged.pipelines.asr.nemo.tokens import PieceTokenizer
from edged.pipelines.asr.recogniser import Hypothesis

_LOGGER = logging.getLogger(__name__)

_TOKENS_FILE = "tokens.txt"
_DEFAULT_MAX_SYMBOLS = 10


class NemoRecogniser:
    """Greedy decoding of a NeMo model's exported networks for batches of utterances."""

    def __init__(self, model: LoadedModel) -> None:
        manifest = model.manifest
        params = manifest.parameters
        self.family = manifest.model_family
        if self.family not in NEMO_FAMILIES:
            raise ModelLoadError(f"Model {model.name} is of family {self.family!r}, not a NeMo one.")
        if manifest.sample_rate != MODEL_RATE:
            raise ModelLoadError(f"Model {model.name} takes {manifest.sample_rate} Hz audio; edged's NeMo "
                                 f"pipeline runs at {MODEL_RATE} Hz. Use a 16 kHz model.")
        try:
            self.vocabulary = int(params["vocabulary_size"])
            self.blank = int(params.get("blank_id", self.vocabulary))
            self.subsampling = int(params["subsampling_factor"])
            self.max_symbols = int(params.get("max_symbols_per_step") or _DEFAULT_MAX_SYMBOLS)
            settings = FeatureSettings.from_manifest(dict(params.get("preprocessor") or {}))
            if self.family == "nemo-ctc":
                self.model: Session = model.sessions["model"]
            else:
                self.encoder: Session = model.sessions["encoder"]
                self.decoder_joint: Session = model.sessions["decoder_joint"]
                state = params["decoder_state"]
                self.state_shape = (int(state["layers"]), int(state["hidden"]))
            self.durations = [int(d) for d in params.get("durations") or []]
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelLoadError(f"Model {model.name}'s manifest lacks or mis-states {exc} for NeMo decoding; "
                                 "rebuild its RMIR.") from None
        if self.family == "nemo-tdt" and not self.durations:
            raise ModelLoadError(f"Model {model.name} is a TDT model without durations; rebuild its RMIR.")
        if settings.sample_rate != MODEL_RATE:
            raise ModelLoadError(f"Model {model.name}'s preprocessor runs at {settings.sample_rate} Hz, not "
                                 f"{MODEL_RATE} Hz; use a 16 kHz model.")
        self.features = MelFeatures(settings)
        self.tokenizer = PieceTokenizer.from_tokens_txt(model.path / _TOKENS_FILE)
        if len(self.tokenizer.pieces) != self.vocabulary:
            raise ModelLoadError(f"Model {model.name}'s {_TOKENS_FILE} has {len(self.tokenizer.pieces)} tokens, "
                                 f"its manifest says {self.vocabulary}; rebuild its RMIR.")
        self.frame_seconds = self.subsampling * settings.hop_length / settings.sample_rate
        """Seconds per encoder frame."""
        self._min_samples = self._shortest(model)
        self._warned_boost = False
        _LOGGER.info("%s: NeMo %s, %d tokens, %d features, encoder frames of %.0f ms", model.name, self.family,
                     self.vocabulary, settings.features, 1000 * self.frame_seconds)

    def _shortest(self, model: LoadedModel) -> int:
        """Fewest samples an utterance is padded to: two encoder frames, or the least feature
        frames the deployed encoder's shape range takes (TensorRT profiles)."""
        frames = 2 * self.subsampling
        network = "model" if self.family == "nemo-ctc" else "encoder"
        for spec in model.manifest.networks:
            shape = spec.shape_ranges.get("audio_signal") if spec.name == network else None
            if shape is not None and len(shape.min) == 3:
                frames = max(frames, int(shape.min[2]))
        return frames * self.features.hop

    def phrase_bias(self, boosts: tuple[tuple[str, float], ...]) -> PhraseBias | None:
        """None: boosted phrases are not supported for NeMo models yet (requests decode as without)."""
        if boosts and not self._warned_boost:
            self._warned_boost = True
            _LOGGER.info("Boosted phrases are not supported for NeMo models yet; decoding without them.")
        return None

    def frames(self, samples: int) -> int:
        """Encoder frames of `samples` of audio (the features' valid frames over the subsampling)."""
        features = int(self.features.lengths(np.array([max(samples, self._min_samples)]))[0])
        return -(-features // self.subsampling)

    def decode(self, audios: list[np.ndarray], drafts: list[list[int]] | None = None,
               attention: bool = True, biases: Sequence[PhraseBias | None] | None = None) -> list[Hypothesis]:
        """Greedy-decode each utterance (drafts, attention and biases are not used: see the module)."""
        if not audios:
            return []
        padded = [a if len(a) >= self._min_samples else np.pad(a, (0, self._min_samples - len(a)))
                  for a in audios]
        features, lengths = self.features(padded)
        if self.family == "nemo-ctc":
            logprobs = self.model.run({"audio_signal": features, "length": lengths}, ["logprobs"])["logprobs"]
            frames = np.minimum(-(-lengths // self.subsampling), logprobs.shape[1])
            decoded = ctc_greedy(logprobs, frames, self.blank)
        else:
            out = self.encoder.run({"audio_signal": features, "length": lengths}, ["outputs", "encoded_lengths"])
            encoded = np.ascontiguousarray(out["outputs"], dtype=np.float32)
            frames = np.minimum(np.asarray(out["encoded_lengths"], dtype=np.int64), encoded.shape[2])
            layers, hidden = self.state_shape
            zeros = np.zeros((layers, len(audios), hidden), dtype=np.float32)
            states = (zeros, zeros.copy())
            if self.family == "nemo-tdt":
                decoded = tdt_greedy(self._step, encoded, frames, self.blank, self.durations, self.max_symbols, states)
            else:
                decoded = rnnt_greedy(self._step, encoded, frames, self.blank, self.max_symbols, states)
        return [self._hypothesis(d, int(n), len(a)) for d, n, a in zip(decoded, frames, audios)]

    def beam(self, audio: np.ndarray, width: int, bias: PhraseBias | None = None,
             attention: bool = True) -> Hypothesis:
        """The greedy hypothesis alone (no beam search for NeMo models yet: no alternatives)."""
        return self.decode([audio])[0]

    def _step(self, frames: np.ndarray, last: np.ndarray, states: States) -> tuple[np.ndarray, States]:
        """One decoder_joint call: logits [n, outputs] and the states after the last tokens."""
        n = len(last)
        out = self.decoder_joint.run({
            "encoder_outputs": frames, "targets": last.astype(np.int32).reshape(n, 1),
            "target_length": np.ones(n, dtype=np.int32),
            "input_states_1": np.ascontiguousarray(states[0]), "input_states_2": np.ascontiguousarray(states[1]),
        }, ["outputs", "output_states_1", "output_states_2"])
        return out["outputs"].reshape(n, -1), (out["output_states_1"], out["output_states_2"])

    def _hypothesis(self, decoded: Decoded, frames: int, samples: int) -> Hypothesis:
        """A Hypothesis with its tokens' times in seconds from the audio's start (within the audio)."""
        length = samples / MODEL_RATE
        times = [(min(length, s * self.frame_seconds), min(length, e * self.frame_seconds))
                 for s, e in zip(decoded.starts, decoded.ends)]
        return Hypothesis(decoded.tokens, decoded.logprobs, frames, "eos", token_times=times)
