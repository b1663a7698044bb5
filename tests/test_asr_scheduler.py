"""The ASR scheduler (AsrBatcher and AsrStream) driven by a fake model on a test clock.

The fake model (tests/fake_asr.py) reads words from audio levels, so each test knows exactly
what every decode says; the batcher runs on the loop on a clock the test sets, so what is
decoded when is the same on every run, with no wall-clock waits. What is checked is the
scheduling: interims pushed as they are decoded, finals at the endpoint and at the end of the
stream, speculative decodes taken over as finals (or not), lagging streams, and failures.
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import replace

import numpy as np
import pytest

from edged.errors import RequestError
from edged.pipelines.asr.audio import MODEL_RATE
from edged.pipelines.asr.jobs import JobKind, StreamConfig
from edged.pipelines.asr.results import Result
from tests.asr_driving import Clock, inline_batcher, paced, settle
from tests.fake_asr import FakeModel, pcm, speech, words_in

CONFIG = StreamConfig(encoding="LINEAR_PCM", sample_rate=MODEL_RATE)
BYTES_PER_S = 2 * MODEL_RATE
CHUNK_S = 0.16
CHUNK = int(CHUNK_S * BYTES_PER_S)


def _finals(results: list[Result]) -> list[str]:
    return [r.transcript for r in results if r.is_final]


def _run(model: FakeModel, config: StreamConfig, audio: np.ndarray) -> list[Result]:
    """Every result of `audio` streamed in real time through a batcher of its own."""

    async def run() -> list[Result]:
        clock = Clock()
        return await paced(inline_batcher(clock), clock, model.start_stream(config), pcm(audio), BYTES_PER_S, CHUNK_S)

    return asyncio.run(run())


def test_interims_are_pushed_as_they_are_decoded() -> None:
    """With interims on, each interim reaches the stream's listener right after the chunk it
    covers (before the next is fed), says exactly the words of the audio so far, and comes
    about every interim interval; the final follows at the endpoint, pushed too."""
    model = FakeModel()
    audio = speech(0.5, "one", "two", "three", "four", "five", 1.0)
    data = pcm(audio)

    async def run() -> list[tuple[float, list[Result], list[Result]]]:
        clock = Clock()
        batcher = inline_batcher(clock)
        stream = model.start_stream(replace(CONFIG, interim_results=True))
        pushed: list[Result] = []
        stream.listener = pushed.extend
        chunks = []
        for i in range(0, len(data), CHUNK):
            clock.t = min(i + CHUNK, len(data)) / BYTES_PER_S
            answered = await batcher.feed(stream, data[i:i + CHUNK])
            await settle()  # the interim lane runs; the next chunk is not fed yet
            chunks.append((clock.t, answered, list(pushed)))
            pushed.clear()
        await batcher.finish(stream)
        return chunks

    chunks = asyncio.run(run())
    assert not any(answered for _, answered, _ in chunks)  # a listener gets every result
    interims = [(fed, r) for fed, _, pushed in chunks for r in pushed if not r.is_final]
    assert len(interims) >= 3, interims
    for fed, r in interims:
        assert fed - CHUNK_S < r.audio_processed <= fed  # of the chunk just fed
        assert r.transcript == " ".join(words_in(audio[:round(r.audio_processed * MODEL_RATE)])), r
    # An interim comes when waiting for the next chunk would make the gap longer than the
    # interval (480 ms); the last is the speculative final's, at the likely end.
    times = [r.audio_processed for _, r in interims[:-1]]
    assert all(0.48 - CHUNK_S - 1e-6 <= b - a <= 0.48 for a, b in itertools.pairwise(times)), times
    assert interims[-1][1].transcript == "one two three four five"
    finals = [(fed, r) for fed, _, pushed in chunks for r in pushed if r.is_final]
    assert [r.transcript for _, r in finals] == ["one two three four five"]
    fed, final = finals[0]
    assert final.audio_processed <= fed < len(audio) / MODEL_RATE  # at the endpoint, not the stream's end


@pytest.mark.parametrize("speculative", [True, False])
def test_endpoint_finals_take_over_the_speculative_decode(speculative: bool) -> None:
    """Each utterance's final comes at its endpoint. Speculating, the decode started at the
    likely end is the final (no decode of its own); without speculation each final is a new
    decode. The finals read the same either way."""
    model = FakeModel()
    audio = speech(0.3, "one", "two", "three", 1.0, "four", "five", 1.0)
    results = _run(model, replace(CONFIG, speculative=speculative), audio)
    assert _finals(results) == ["one two three", "four five"]
    assert all(r.audio_processed < len(audio) / MODEL_RATE - 0.3 for r in results if r.is_final)
    if speculative:
        assert model.decoded(JobKind.SPECULATIVE) == ["one two three", "four five"]
        assert model.decoded(JobKind.FINAL) == []
    else:
        assert model.decoded(JobKind.SPECULATIVE) == []
        assert model.decoded(JobKind.FINAL) == ["one two three", "four five"]


def test_speculative_decode_shows_as_an_interim_before_its_final() -> None:
    """With interims on, the speculative decode reaches the client as an interim with the
    whole utterance's text before the endpoint makes it the final."""
    model = FakeModel()
    results = _run(model, replace(CONFIG, interim_results=True), speech(0.3, "one", "two", 1.0))
    last_interim = [r for r in results if not r.is_final][-1]
    assert last_interim.transcript == "one two"
    assert _finals(results) == ["one two"]
    assert results[-1].is_final and model.decoded(JobKind.FINAL) == []


def test_end_of_stream_final_mid_speech_is_a_new_decode() -> None:
    """Audio that ends mid-speech: the final comes with the end of the stream, a new decode of
    all the utterance's audio."""
    model = FakeModel()
    audio = speech(0.3, "one", "two", "three")
    results = _run(model, CONFIG, audio)
    assert _finals(results) == ["one two three"]
    assert results[-1].audio_processed == pytest.approx(len(audio) / MODEL_RATE)
    assert model.decoded(JobKind.FINAL) == ["one two three"]


def test_end_of_stream_final_takes_over_a_speculation_that_covers_it() -> None:
    """Audio that ends after a short silence (a likely end, not yet the endpoint): the decode
    started at the likely end is the final."""
    model = FakeModel()
    results = _run(model, CONFIG, speech(0.3, "one", "two", "three", 0.3))
    assert _finals(results) == ["one two three"]
    assert model.decoded(JobKind.SPECULATIVE) == ["one two three"]
    assert model.decoded(JobKind.FINAL) == []


def test_ending_the_utterance_mid_speech_decodes_its_final_now() -> None:
    """Ending the open utterance mid-speech (force_eou) answers that chunk with a new decode of
    the words so far; the speech after it is an utterance of its own."""
    model = FakeModel()
    first, rest = speech(0.3, "one", "two"), speech("three", "four", 1.0)

    async def run() -> tuple[list[Result], list[Result]]:
        clock = Clock()
        batcher = inline_batcher(clock)
        stream = model.start_stream(CONFIG)
        clock.t = len(first) / MODEL_RATE
        forced = await batcher.feed(stream, pcm(first), end_utterance=True)
        return forced, await paced(batcher, clock, stream, pcm(rest), BYTES_PER_S, CHUNK_S, start_s=clock.t)

    forced, after = asyncio.run(run())
    assert _finals(forced) == ["one two"]
    assert _finals(after) == ["three four"]
    assert model.decoded(JobKind.FINAL)[0] == "one two"


def test_a_stream_behind_real_time_gets_no_interims_until_it_catches_up() -> None:
    """Chunks handled later than real time (a lag of 0.3 s or more) get no interims; once the
    stream is punctual again they come back."""
    model = FakeModel()
    audio = speech(0.2, *["one", "two", "three", "four", "five"] * 3, 1.0, gap_s=0.03)
    data = pcm(audio)

    async def run() -> list[tuple[float, bool]]:
        clock = Clock()
        batcher = inline_batcher(clock)
        stream = model.start_stream(replace(CONFIG, interim_results=True, endpoint=replace(
            model.endpoint, max_utterance_ms=30000, pause_split_ms=0)))
        pushed: list[Result] = []
        stream.listener = pushed.extend
        interims = []
        for i in range(0, len(data), CHUNK):
            late = 0.5 if 1.5 <= i / BYTES_PER_S < 3.5 else 0.0
            clock.t = (i + CHUNK) / BYTES_PER_S + late
            await batcher.feed(stream, data[i:i + CHUNK])
            await settle()
            interims += [(r.audio_processed, late > 0) for r in pushed if not r.is_final]
            pushed.clear()
        await batcher.finish(stream)
        return interims

    interims = asyncio.run(run())
    assert not [at for at, late in interims if late], interims
    assert [at for at, _ in interims if at < 1.5] and [at for at, _ in interims if at >= 3.5], interims


def test_a_chunk_over_the_limit_fails_its_stream_alone() -> None:
    """A chunk that takes a stream past its audio limit fails that stream's feed with a
    RequestError; another stream fed in the same cycle gets its results."""
    model = FakeModel()
    audio = pcm(speech(0.3, "one", "two", 1.0))

    async def run() -> tuple[list[Result] | BaseException, list[Result] | BaseException]:
        clock = Clock(len(audio) / BYTES_PER_S)
        batcher = inline_batcher(clock)
        limited = model.start_stream(replace(CONFIG, max_audio_s=1.0))
        free = model.start_stream(CONFIG)
        over, fine = await asyncio.gather(batcher.feed(limited, audio), batcher.feed(free, audio),
                                          return_exceptions=True)
        return over, fine

    over, fine = asyncio.run(run())
    assert isinstance(over, RequestError) and "limit of 1 s" in str(over)
    assert not isinstance(fine, BaseException) and _finals(fine) == ["one two"]


def test_a_failing_decode_fails_its_cycle_and_the_batcher_goes_on() -> None:
    """An error in the model's decode fails the chunks of that cycle with it; the next
    utterance of the same stream is recognised as before."""
    model = FakeModel()
    first, second = pcm(speech(0.3, "one", "two", 1.0)), pcm(speech("three", 1.0))

    async def run() -> tuple[BaseException | None, list[Result]]:
        clock = Clock()
        batcher = inline_batcher(clock)
        stream = model.start_stream(replace(CONFIG, speculative=False))
        model.failure = RuntimeError("decoder broke")
        clock.t = len(first) / BYTES_PER_S
        try:
            await batcher.feed(stream, first)
            failed = None
        except RuntimeError as exc:
            failed = exc
        return failed, await paced(batcher, clock, stream, second, BYTES_PER_S, CHUNK_S, start_s=clock.t)

    failed, after = asyncio.run(run())
    assert isinstance(failed, RuntimeError) and str(failed) == "decoder broke"
    assert _finals(after) == ["three"]


def test_a_client_gone_mid_chunk_and_closed_leaves_the_others_served() -> None:
    """A client that goes away while its chunk waits (its feed cancelled) and whose session
    closes gets no more decodes, interims included; another stream goes on as alone."""
    model = FakeModel()
    gone_audio = pcm(speech(0.3, "one", "two", "three", "four", "five"))
    other_audio = speech(0.3, "six", "seven", 1.0)

    async def run() -> list[Result]:
        clock = Clock(0.5)
        batcher = inline_batcher(clock)
        gone = model.start_stream(replace(CONFIG, interim_results=True))
        waiting = asyncio.get_running_loop().create_task(batcher.feed(gone, gone_audio[:CHUNK * 3]))
        await asyncio.sleep(0)  # its chunk is queued
        waiting.cancel()
        await settle()
        assert waiting.cancelled()
        batcher.close(gone)
        other = model.start_stream(replace(CONFIG, interim_results=True))
        results = await paced(batcher, clock, other, pcm(other_audio), BYTES_PER_S, CHUNK_S, start_s=0.5)
        assert model.decoded(JobKind.INTERIM, gone) == []
        return results

    results = asyncio.run(run())
    assert _finals(results) == ["six seven"]
    assert [r for r in results if not r.is_final]
