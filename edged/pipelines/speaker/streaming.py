"""Speaker labels on a recognition stream's finals, without holding them back.

The stream hands over each final's audio the moment its decode is queued (`heard`, on the
batcher's thread); the embedding runs at once on the speaker pool, beside the decode. When the
final's result comes, `label` takes the embedding (ready by then, unless the decode was quicker),
assigns the speaker (edged.pipelines.speaker.online) and puts it on the result and its words.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import Executor, Future
from dataclasses import replace

import numpy as np

from edged.pipelines.asr.audio import MODEL_RATE
from edged.pipelines.asr.results import Result
from edged.pipelines.speaker.encoder import SpeakerEncoder
from edged.pipelines.speaker.online import OnlineSpeakers


class StreamSpeakers:
    """The speakers of one recognised channel of a stream."""

    def __init__(self, encoder: SpeakerEncoder, pool: Executor, speakers: OnlineSpeakers) -> None:
        self._encoder = encoder
        self._pool = pool
        self.speakers = speakers
        self._embeddings: dict[int, Future[np.ndarray]] = {}
        """By the stream sample each final's audio starts at."""
        self._lock = threading.Lock()

    def heard(self, start: int, audio: np.ndarray) -> None:
        """A final's audio (16 kHz), from stream sample `start`: its embedding starts now."""
        future = self._pool.submit(self._encoder.embed, audio)
        with self._lock:
            self._embeddings[start] = future

    async def label(self, result: Result) -> Result:
        """`result` (a final) with its speaker on it and on its words."""
        start = round(result.start_s * MODEL_RATE)
        with self._lock:
            future = self._embeddings.pop(start, None)
            for older in [s for s in self._embeddings if s < start]:  # finals that came to nothing
                self._embeddings.pop(older).cancel()
        if future is None:  # its audio was never handed over: no label
            return result
        embedding = await asyncio.wrap_future(future)
        label = self.speakers.assign(embedding, result.end_s - result.start_s)
        words = tuple(replace(w, speaker=label.number) for w in result.words)
        return replace(result, speaker=label.number, speaker_name=label.name, words=words)

    def close(self) -> None:
        """The stream ended: embeddings not started are not needed."""
        with self._lock:
            for future in self._embeddings.values():
                future.cancel()
            self._embeddings.clear()
