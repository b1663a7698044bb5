"""Decoded jobs to Results: the text as the request asks for it, stability, word times."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from edged.pipelines.asr.alignment import SAMPLES_PER_FRAME, align_words
from edged.pipelines.asr.audio import MODEL_RATE
from edged.pipelines.asr.jobs import DecodeJob, JobKind, StreamConfig
from edged.pipelines.asr.profanity import mask
from edged.pipelines.asr.recogniser import Hypothesis
from edged.pipelines.asr.results import (
    Alternative,
    Result,
    Word,
    split_words,
    strip_punctuation,
)
from edged.pipelines.asr.tokenizer import Tokenizer


@dataclass(frozen=True)
class ResultMaker:
    """Builds the Results of one model's decodes (its tokenizer and alignment heads)."""

    tokenizer: Tokenizer
    alignment_heads: Sequence[tuple[int, int]] = ()
    """(decoder layer, head) pairs whose cross-attention follows the speech (none: words get
    their utterance's span)."""
    language_code: str = ""
    """The model's language, given on every result (a multilingual model's: the one each hypothesis was written in)."""
    samples_per_frame: int = SAMPLES_PER_FRAME
    """Samples of audio per encoder frame (the cross-attention's columns)."""

    def result(self, job: DecodeJob, config: StreamConfig, stable: int,
               hyp: Hypothesis | None = None, start: int | None = None) -> Result | None:
        """The Result of a decoded job (None for an empty final); an interim may give the
        hypothesis of its whole utterance (`hyp`, from stream sample `start`)."""
        hyp = hyp or job.hyp
        assert hyp is not None
        text = _shown(self.tokenizer.decode(hyp.tokens), config)
        start_s = (job.start if start is None else start) / MODEL_RATE
        end_s = (job.start + len(job.audio)) / MODEL_RATE
        if job.kind is not JobKind.FINAL:
            stability = min(1.0, stable / len(hyp.tokens)) if hyp.tokens else 0.0
            return Result(False, text, hyp.confidence, round(stability, 3), job.fired_at / MODEL_RATE, start_s, end_s,
                          language_code=hyp.language or self.language_code)
        if not text:
            return None
        words: tuple[Word, ...] = ()
        if config.word_times:
            words = self.words(job, hyp, config)
        return Result(True, text, hyp.confidence, 1.0, job.fired_at / MODEL_RATE, start_s, end_s, words,
                      self.alternatives(text, hyp, config), hyp.language or self.language_code)

    def alternatives(self, text: str, hyp: Hypothesis, config: StreamConfig) -> tuple[Alternative, ...]:
        """Up to max_alternatives - 1 of the hypothesis' alternatives, shown as `text` is (a
        reading that shows the same as one before it is left out)."""
        seen = {text}
        found: list[Alternative] = []
        for alt in hyp.alternatives:
            if len(found) >= config.max_alternatives - 1:
                break
            shown = _shown(self.tokenizer.decode(alt.tokens), config)
            if shown and shown not in seen:
                seen.add(shown)
                found.append(Alternative(shown, alt.confidence))
        return tuple(found)

    def words(self, job: DecodeJob, hyp: Hypothesis, config: StreamConfig) -> tuple[Word, ...]:
        """Words with confidences and times: from the tokens' own times where the decoder gives
        them (NeMo), else from cross-attention DTW (see alignment.py).

        A model whose decoder does not expose cross-attention gives each word the span of
        its utterance.
        """
        start_ms = 1000.0 * job.start / MODEL_RATE
        end_ms = start_ms + 1000.0 * len(job.audio) / MODEL_RATE
        if hyp.token_times is not None and len(hyp.token_times) == len(hyp.tokens):
            timed = token_timed_words(self.tokenizer, hyp, start_ms)
        elif hyp.cross_attention is not None and self.alignment_heads:
            timed = [(w.text, w.start_ms, w.end_ms, w.confidence or 0.0) for w in align_words(
                hyp.tokens, [self.tokenizer.piece_bytes(t) for t in hyp.tokens], hyp.cross_attention,
                len(job.audio), list(self.alignment_heads), offset_ms=start_ms, audio=job.audio,
                token_logprobs=hyp.logprobs, samples_per_frame=self.samples_per_frame, frames=hyp.frames)]
        else:
            timed = [(text, int(start_ms), int(end_ms), conf)
                     for text, _, _, conf in split_words(self.tokenizer, hyp)]
        words = []
        onset_ms = 1000.0 * job.speech_start / MODEL_RATE
        for text, t0, t1, conf in timed:
            begin = min(max(t0, onset_ms), t1)  # the utterance's audio starts before its speech
            shown = _shown(text, config)
            if shown:
                words.append(Word(shown, int(begin), int(t1), float(conf)))
        return tuple(words)


def token_timed_words(tokenizer: Tokenizer, hyp: Hypothesis, offset_ms: float) -> list[tuple[str, int, int, float]]:
    """(word, start ms, end ms, confidence) of each word from its tokens' times (`token_times`):
    from its first token's start to its last token's end."""
    assert hyp.token_times is not None
    words = []
    for text, first, end, conf in split_words(tokenizer, hyp):
        t0 = offset_ms + 1000.0 * hyp.token_times[first][0]
        t1 = offset_ms + 1000.0 * hyp.token_times[end - 1][1]
        words.append((text, int(round(t0)), int(round(max(t0, t1))), conf))
    return words


def _shown(text: str, config: StreamConfig) -> str:
    """Text as the request asks for it: without punctuation, profanities masked (or not)."""
    if not config.punctuation:
        text = strip_punctuation(text)
    return mask(text) if config.profanity_filter else text
