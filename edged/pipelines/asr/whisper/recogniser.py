"""Whisper decoding: Moonshine's greedy decoder with drafts and KV cache, behind Whisper's prompt.

Each utterance becomes 30 s of log-mel features (edged.pipelines.asr.whisper.features), is
encoded, and its cross K/V computed once. An utterance whose language is not given is first
identified: one decoder call reads `<|startoftranscript|>` alone, and the most probable of the
language tokens (the decoder's `language_logits`) names it. Decoding then starts from the
prompt `<|startoftranscript|> <|xx|> <|transcribe|>` (or `<|translate|>`: English text of
speech in any language) `<|notimestamps|>` (an English-only model's: `<|startoftranscript|>
<|notimestamps|>`), and goes on as the Moonshine recogniser's greedy
decoding does (edged.pipelines.asr.recogniser), drafts included.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import numpy as np

from edged.errors import ModelLoadError
from edged.loader import LoadedModel
from edged.pipelines.asr.audio import MODEL_RATE
from edged.pipelines.asr.boost import PhraseBias
from edged.pipelines.asr.recogniser import Hypothesis, Recogniser
from edged.pipelines.asr.whisper.features import CHUNK_SAMPLES, LogMel
from edged.pipelines.asr.whisper.tokenizer import WhisperTokenizer

WHISPER_FAMILY = "whisper"
"""The manifest's model_family of Whisper models."""
_WINDOW_MARGIN = 2 * MODEL_RATE


class Task(str, Enum):
    """What Whisper writes: the speech's own words, or their English translation."""

    TRANSCRIBE = "transcribe"
    TRANSLATE = "translate"


@dataclass(frozen=True)
class Language:
    """What one utterance asks of a multilingual model."""

    code: str = ""
    """The language to write (ISO 639-1, e.g. `de`); empty: identify it from the speech."""
    task: Task = Task.TRANSCRIBE


class WhisperRecogniser(Recogniser):
    """Greedy Whisper decoding with language identification (see the module docstring)."""

    def __init__(self, model: LoadedModel) -> None:
        super().__init__(model)
        params = model.manifest.parameters
        self.features = LogMel(int(params.get("mel_bins", 80)))
        self.samples_per_frame = int(params.get("encoder_samples_per_frame", 320))
        tokenizer = self.whisper_tokenizer
        self.multilingual = bool(params.get("multilingual", True))
        """False: an English-only (`.en`) model, prompted without language or task tokens."""
        self.languages = ([str(code) for code in params.get("languages", list(tokenizer.languages))]
                          if self.multilingual else [])
        missing = [code for code in self.languages if code not in tokenizer.languages]
        if missing:
            raise ModelLoadError(f"Model {model.name}'s tokenizer lacks the languages {missing}; rebuild its RMIR.")
        self.tasks = {task: tokenizer.token(f"<|{task.value}|>") for task in Task}
        self.no_timestamps = tokenizer.token("<|notimestamps|>")
        self.window_samples = CHUNK_SAMPLES - _WINDOW_MARGIN
        """Offline: most samples of a window of utterances decoded in one pass (see
        edged.pipelines.asr.packing): the 30 s Whisper hears, less a margin for the window's
        edges (the audio kept before each utterance's onset and after its end)."""

    def _load_tokenizer(self, path: Path, model: LoadedModel) -> WhisperTokenizer:
        self.whisper_tokenizer = WhisperTokenizer.load(path, int(model.manifest.parameters.get("vocab_size", 0)))
        return self.whisper_tokenizer

    def phrase_bias(self, boosts: tuple[tuple[str, float], ...]) -> PhraseBias | None:
        """None: Whisper decodes without phrase boosting (its byte-level pieces are not Moonshine's)."""
        return None

    def frames(self, samples: int) -> int:
        """Encoder frames that hold the utterance (two per 10 ms hop: 320 samples each)."""
        return min(CHUNK_SAMPLES, samples) // self.samples_per_frame

    def encode(self, audios: list[np.ndarray]) -> np.ndarray:
        """Encoder states [batch, 1500, width] of 16 kHz utterances of at most 30 s."""
        return self.encoder.run({"input_features": self.features.batch(audios)})["last_hidden_state"]

    def identify(self, encoder_kv: dict[str, np.ndarray]) -> list[tuple[str, float]]:
        """Each utterance's most probable language and its probability among the model's languages."""
        batch = len(next(iter(encoder_kv.values())))
        empty = np.zeros((batch, self._heads, 0, self._head_dim), dtype=np.float32)
        feed = {"input_ids": np.full((batch, 1), self.bos, dtype=np.int64), **encoder_kv,
                **{f"past_key_values.{layer}.decoder.{part}": empty
                   for layer in range(self.layers) for part in ("key", "value")}}
        logits = self.decoder.run(feed, ["language_logits"])["language_logits"][:, -1]
        probs = np.exp(logits - logits.max(axis=-1, keepdims=True))
        probs /= probs.sum(axis=-1, keepdims=True)
        best = probs.argmax(axis=-1)
        return [(self.languages[int(i)], float(probs[b, i])) for b, i in enumerate(best)]

    def decode(self, audios: list[np.ndarray], drafts: list[list[int]] | None = None,
               attention: bool = True, biases: Sequence[PhraseBias | None] | None = None,
               languages: Sequence[Language] | None = None) -> list[Hypothesis]:
        """Greedy-decode each utterance in its language (identified where not given)."""
        if not audios:
            return []
        asked = list(languages or [Language()] * len(audios))
        hidden = self.encode(audios)
        encoder_kv = self.cross_kv_of(hidden)
        if not self.multilingual:  # English only: results carry the model's own language tag
            prompts = [[self.bos, self.no_timestamps] for _ in audios]
            return self._greedy(hidden, [len(a) for a in audios], drafts, False, None,
                                prompts=prompts, encoder_kv=encoder_kv)[0]
        codes = [a.code for a in asked]
        unknown = [i for i, code in enumerate(codes) if not code]
        if unknown:
            found = self.identify({k: v[unknown] for k, v in encoder_kv.items()})
            for i, (code, _) in zip(unknown, found):
                codes[i] = code
        prompts = [[self.bos, self.whisper_tokenizer.languages[code], self.tasks[a.task], self.no_timestamps]
                   for code, a in zip(codes, asked)]
        hyps, _ = self._greedy(hidden, [len(a) for a in audios], drafts, False, None,
                               prompts=prompts, encoder_kv=encoder_kv)
        for hyp, code in zip(hyps, codes):
            hyp.language = code
        return hyps

    def beam(self, audio: np.ndarray, width: int, bias: PhraseBias | None = None,
             attention: bool = True, language: Language | None = None) -> Hypothesis:
        """The greedy hypothesis: Whisper offers no alternatives yet."""
        return self.decode([audio], languages=[language or Language()])[0]

    def token_cap(self, samples: int) -> int:
        """Most tokens an utterance may decode to (Whisper's own cap, and a guard by duration)."""
        seconds = min(samples, CHUNK_SAMPLES) / MODEL_RATE
        return max(8, min(self.max_tokens, int(np.ceil(seconds * self.tokens_per_second))))
