"""Whisper decoding: Moonshine's greedy decoder with drafts and KV cache, behind Whisper's prompt.

Each utterance becomes 30 s of log-mel features (edged.pipelines.asr.whisper.features), is
encoded, and its cross K/V computed once. An utterance whose language is not given is first
identified: one decoder call reads `<|startoftranscript|>` alone, and the most probable of the
language tokens (the decoder's `language_logits`) names it. Decoding then starts from the
prompt `<|startoftranscript|> <|xx|> <|transcribe|>` (or `<|translate|>`: English text of
speech in any language) `<|notimestamps|>` (an English-only model's: `<|startoftranscript|>
<|notimestamps|>`), and goes on as the Moonshine recogniser's greedy
decoding does (edged.pipelines.asr.recogniser), drafts included, collecting the cross-attention
of the alignment heads (the decoder's `alignment_attention`) for word times: the position fed
`<|notimestamps|>` predicts the first token.
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
ALIGNMENT_OUTPUT = "alignment_attention"
"""The decoder output of the alignment heads' cross-attention [batch, heads, tokens, frames]
(a model built before it has none: its words get their utterance's span)."""
_WINDOW_MARGIN = 2 * MODEL_RATE
_TEXT_POSITIONS = 448
"""Whisper's decoder positions, where its manifest does not give them."""


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
        # The alignment heads come as one output: collected as one layer of those heads.
        found = ALIGNMENT_OUTPUT in {o.name for o in self.decoder.outputs}
        self._attention_outputs = [ALIGNMENT_OUTPUT] if found else []
        self.alignment_heads = tuple((0, head) for head in range(len(self.alignment_heads))) if found else ()
        self.start_of_previous = tokenizer.token("<|startofprev|>")
        ids = {n.name: n.shape_ranges.get("input_ids") for n in model.manifest.networks}.get("decoder")
        self.text_positions = ids.max[-1] if ids is not None else _TEXT_POSITIONS
        """Tokens the decoder reads at most: prompt, previous text and decoded tokens together."""
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
               languages: Sequence[Language] | None = None,
               previous: Sequence[list[int]] | None = None) -> list[Hypothesis]:
        """Greedy-decode each utterance in its language (identified where not given); `previous`:
        per utterance, the text before it (tokens), read as Whisper's `<|startofprev|>` prompt."""
        if not audios:
            return []
        asked = list(languages or [Language()] * len(audios))
        hidden = self.encode(audios)
        encoder_kv = self.cross_kv_of(hidden)
        if not self.multilingual:  # English only: results carry the model's own language tag
            prompts = [[self.bos, self.no_timestamps] for _ in audios]
            return self._prompted(hidden, audios, drafts, prompts, previous, encoder_kv, attention)
        codes = [a.code for a in asked]
        unknown = [i for i, code in enumerate(codes) if not code]
        if unknown:
            found = self.identify({k: v[unknown] for k, v in encoder_kv.items()})
            for i, (code, _) in zip(unknown, found):
                codes[i] = code
        prompts = [[self.bos, self.whisper_tokenizer.languages[code], self.tasks[a.task], self.no_timestamps]
                   for code, a in zip(codes, asked)]
        hyps = self._prompted(hidden, audios, drafts, prompts, previous, encoder_kv, attention)
        for hyp, code in zip(hyps, codes):
            hyp.language = code
        return hyps

    def _stack_attention(self, per_token: list[np.ndarray], n_tokens: int, frames: int) -> np.ndarray | None:
        """The attention of the frames that hold the audio, each row scaled to sum to one: the
        softmax over those frames alone, as Whisper aligns (its encoder's other frames hear padding)."""
        stacked = super()._stack_attention(per_token, n_tokens, frames)
        if stacked is None:
            return None
        return stacked / np.maximum(stacked.sum(axis=-1, keepdims=True), 1e-12)

    def _prompted(self, hidden: np.ndarray, audios: list[np.ndarray], drafts: list[list[int]] | None,
                  prompts: list[list[int]], previous: Sequence[list[int]] | None,
                  encoder_kv: dict[str, np.ndarray], attention: bool) -> list[Hypothesis]:
        """Greedy decodes from `prompts`, each after its previous text (if any): rows whose
        prompts are as long are decoded together (with the alignment heads' attention if `attention`)."""
        if previous:
            prompts = [self._after(prompt, before, len(audio))
                       for prompt, before, audio in zip(prompts, previous, audios)]
        hyps: list[Hypothesis | None] = [None] * len(audios)
        for length in sorted({len(p) for p in prompts}):
            rows = [i for i, p in enumerate(prompts) if len(p) == length]
            found, _ = self._greedy(hidden[rows], [len(audios[i]) for i in rows],
                                    [drafts[i] for i in rows] if drafts else None, attention, None,
                                    prompts=[prompts[i] for i in rows],
                                    encoder_kv={k: v[rows] for k, v in encoder_kv.items()})
            for i, hyp in zip(rows, found):
                hyps[i] = hyp
        return [h for h in hyps if h is not None]

    def _after(self, prompt: list[int], before: list[int], samples: int) -> list[int]:
        """`prompt` after the end of the text `before` (as much as fits beside the longest decode of
        `samples`, and at most half the positions, as Whisper's own decoding keeps)."""
        room = min(self.text_positions // 2 - 1, self.text_positions - self.token_cap(samples) - len(prompt) - 2)
        return [self.start_of_previous, *before[-room:], *prompt] if before and room > 0 else prompt

    def beam(self, audio: np.ndarray, width: int, bias: PhraseBias | None = None,
             attention: bool = True, language: Language | None = None) -> Hypothesis:
        """The greedy hypothesis: Whisper offers no alternatives yet."""
        return self.decode([audio], languages=[language or Language()])[0]

    def token_cap(self, samples: int) -> int:
        """Most tokens an utterance may decode to (Whisper's own cap, and a guard by duration)."""
        seconds = min(samples, CHUNK_SAMPLES) / MODEL_RATE
        return max(8, min(self.max_tokens, int(np.ceil(seconds * self.tokens_per_second))))
