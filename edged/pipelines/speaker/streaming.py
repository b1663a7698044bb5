"""Speaker labels on a recognition stream's finals, without holding them back.

The stream hands over the open utterance's audio every half second of speech and again when its
final's decode is queued (`heard`, on the batcher's thread). Each time, the encoder windows not
embedded yet run on the speaker pool, beside the decoding; windows embedded before are kept (by
the utterance's first sample), so at the final only the last one or two are left, embedded
while the final decodes. When the final's result comes, `label` takes its embedding, assigns the
speaker (edged.pipelines.speaker.online) and puts it on the result and its words.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import Executor, Future
from dataclasses import replace

import numpy as np

from edged.pipelines.asr.audio import MODEL_RATE
from edged.pipelines.asr.results import Result
from edged.pipelines.speaker.encoder import SpeakerEncoder, pooled
from edged.pipelines.speaker.online import OnlineSpeakers

MAX_WAIT_S = 0.02
"""Longest a final waits for the embedding of its last audio (issue 28: labels add at most 20 ms
to the final latency's p95)."""


class StreamSpeakers:
    """The speakers of one recognised channel of a stream."""

    def __init__(self, encoder: SpeakerEncoder, pool: Executor, speakers: OnlineSpeakers) -> None:
        self._encoder = encoder
        self._pool = pool
        self.speakers = speakers
        self._windows: dict[int, np.ndarray] = {}
        """Unit embeddings of the encoder windows embedded so far, by the utterance's first sample."""
        self._finals: dict[int, Future[np.ndarray]] = {}
        """The embedding of each final not labelled yet, by its audio's first sample."""
        self._lock = threading.Lock()

    def heard(self, start: int, audio: np.ndarray, final: bool) -> None:
        """An utterance's audio (16 kHz) from stream sample `start`: all of it (`final`), or as
        much as was spoken so far. Its windows not embedded yet are embedded now."""
        future = self._pool.submit(self.embed_utterance, start, audio)
        if final:
            with self._lock:
                self._finals[start] = future

    def embed_utterance(self, start: int, audio: np.ndarray) -> np.ndarray:
        """The embedding of `audio`, reusing the windows of the same utterance embedded before:
        only the audio after them is turned into features and run."""
        encoder = self._encoder
        settings = encoder.features.settings
        if len(audio) < encoder.window_samples:  # one window, padded: nothing to keep
            return encoder.embed(audio)
        with self._lock:
            done = self._windows.get(start, np.zeros((0, encoder.dim), np.float32))
        step = settings.window_stride * settings.hop_length
        count = 1 + (len(audio) - encoder.window_samples) // step
        """Complete windows in `audio`."""
        if len(done) < count:
            rest = audio[len(done) * step:]
            done = np.concatenate([done, encoder.run_windows(encoder.features.windows(rest))])
            with self._lock:
                self._windows[start] = done
        return pooled(done[:count])

    async def label(self, result: Result) -> Result:
        """`result` (a final) with its speaker on it and on its words. Its embedding is awaited for
        at most MAX_WAIT_S; after that (a busy machine) the windows embedded so far stand for it,
        if there are any."""
        start = round(result.start_s * MODEL_RATE)
        with self._lock:
            future = self._finals.pop(start, None)
            so_far = self._windows.get(start)
            for older in [s for s in self._finals if s < start]:  # finals that came to nothing
                self._finals.pop(older).cancel()
            for done in [s for s in self._windows if s <= start]:
                del self._windows[done]
        if future is None:  # its audio was never handed over: no label
            return result
        waiting = asyncio.wrap_future(future)
        try:
            embedding = await asyncio.wait_for(asyncio.shield(waiting), MAX_WAIT_S)
        except asyncio.TimeoutError:
            embedding = pooled(so_far) if so_far is not None and len(so_far) else await waiting
        label = self.speakers.assign(embedding, result.end_s - result.start_s)
        words = tuple(replace(w, speaker=label.number) for w in result.words)
        return replace(result, speaker=label.number, speaker_name=label.name, words=words)

    def close(self) -> None:
        """The stream ended: embeddings not started are not needed."""
        with self._lock:
            for future in self._finals.values():
                future.cancel()
            self._finals.clear()
            self._windows.clear()
