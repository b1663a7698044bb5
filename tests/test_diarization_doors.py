"""Speaker labels on the realtime WebSocket (NVIDIA's realtime client), in the browser console
(Chromium) and on Wyoming (the `wyoming` client), on the simulated conversation of test_diarization."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from wyoming.asr import Transcribe, Transcript, TranscriptChunk, TranscriptStop
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.client import AsyncTcpClient
from wyoming.error import Error
from wyoming.event import Event

from edged.backends import BackendOptions
from edged.pipelines.tts import TtsModel
from edged.repository.deploy import deploy
from edged.repository.records import DeployTarget
from edged.rmir import RmirRef
from tests.test_diarization import SENTENCES, SPEAKERS, conversation, wav_of
from tests.test_http_console import CHROMIUM, chromium_args
from tests.test_http_realtime import asr_args, transcribe
from tests.test_riva_fidelity import voice  # noqa: F401 - a fixture
from tests.test_server import free_port, serving


@pytest.fixture(scope="module")
def ports(default_repo: Path, speaker_rmir: Path, cpu_target: DeployTarget) -> Iterator[tuple[int, int]]:
    """`edged start` with the default models and the speaker encoder: (HTTP port, Wyoming port)."""
    deploy(RmirRef(speaker_rmir), default_repo / "models", cpu_target, BackendOptions())
    port, http, wyoming = free_port(), free_port(), free_port()
    cfg = default_repo.parent / "config.sh"
    cfg.write_text(f'model_loc="{default_repo}"\nriva_speech_api_port={port}\nlisten_address="127.0.0.1"\n'
                   f"metrics_port=0\nhttp_port={http}\nwyoming_port={wyoming}\nwyoming_zeroconf=false\n",
                   encoding="utf-8")
    with serving(cfg, port):
        yield http, wyoming


@pytest.fixture(scope="module")
def talk(voice: TtsModel) -> tuple[bytes, list[float]]:  # noqa: F811 - the fixture's value
    return conversation(voice)


def turn_of(text: str) -> int:
    """The sentence of SENTENCES a final's text shares most words with."""
    words = set(text.lower().replace(",", "").replace(".", "").split())
    return max(range(len(SENTENCES)), key=lambda i: len(words & set(SENTENCES[i].lower().rstrip(".").split())))


def assert_one_label_per_voice(labelled: list[tuple[int, str]]) -> None:
    """(turn, speaker label) of each final: one label per voice, a different one for each."""
    by_voice: dict[int, set[str]] = {}
    for turn, label in labelled:
        by_voice.setdefault(SPEAKERS[turn], set()).add(label)
    assert all(len(labels) == 1 for labels in by_voice.values()), by_voice
    assert sorted(next(iter(v)) for v in by_voice.values()) == ["A", "B", "C"], by_voice


def test_realtime_completed_events_carry_the_speaker(ports: tuple[int, int], talk: tuple[bytes, list[float]]) -> None:
    """NVIDIA's realtime client with --speaker-diarization: each completed event has `speaker`
    (A, B, ...) and `speaker_tag`, its words the same speaker_tag; without it, neither."""
    pcm, starts = talk
    args = asr_args(ports[0], speaker_diarization=True, diarization_max_speakers=3)
    events = asyncio.run(transcribe(args, pcm))
    completed = [e for e in events if e["type"] == "conversation.item.input_audio_transcription.completed"
                 and not e["is_last_result"] and e["transcript"].strip()]
    labelled = []
    for e in completed:
        words = e["words_info"]["words"]
        assert {w["speaker_tag"] for w in words} == {e["speaker_tag"]}, e
        middle = (words[0]["start_time"] + words[-1]["end_time"]) / 2000
        labelled.append((max(i for i, s in enumerate(starts) if s <= middle), e["speaker"]))
    assert_one_label_per_voice(labelled)
    plain = asyncio.run(transcribe(asr_args(ports[0]), pcm[:len(pcm) // 3]))
    finals = [e for e in plain if e["type"] == "conversation.item.input_audio_transcription.completed"]
    assert finals and not any("speaker" in e for e in finals)
    assert {w["speaker_tag"] for e in finals for w in e.get("words_info", {}).get("words", [])} <= {0}


async def _read(client: AsyncTcpClient) -> Event:
    event = await asyncio.wait_for(client.read_event(), timeout=120)
    assert event is not None, "the server closed the connection"
    return event


async def wyoming_transcribe(port: int, pcm: bytes) -> tuple[list[Event], Event]:
    """The conversation sent as one `transcribe`: its transcript-chunks and its transcript."""
    async with AsyncTcpClient("127.0.0.1", port) as client:
        await client.write_event(Transcribe(language="en").event())
        await client.write_event(AudioStart(rate=16000, width=2, channels=1).event())
        for i in range(0, len(pcm), 3200):
            await client.write_event(AudioChunk(rate=16000, width=2, channels=1, audio=pcm[i:i + 3200]).event())
        await client.write_event(AudioStop().event())
        chunks: list[Event] = []
        while True:
            event = await _read(client)
            assert not Error.is_type(event.type), event.data
            if TranscriptChunk.is_type(event.type):
                chunks.append(event)
            if Transcript.is_type(event.type):
                assert TranscriptStop.is_type((await _read(client)).type)
                return chunks, event


def test_wyoming_transcripts_carry_the_speaker(ports: tuple[int, int], talk: tuple[bytes, list[float]]) -> None:
    """Each transcript-chunk's data has the speaker of its final, the transcript's the one who said
    most; the wyoming client's Transcript reads the event as ever (the key is extra)."""
    chunks, transcript = asyncio.run(wyoming_transcribe(ports[1], talk[0]))
    assert_one_label_per_voice([(turn_of(c.data["text"]), c.data["speaker"]) for c in chunks])
    said: dict[str, int] = {}
    for c in chunks:
        said[c.data["speaker"]] = said.get(c.data["speaker"], 0) + len(c.data["text"])
    assert transcript.data["speaker"] in said
    read = Transcript.from_event(transcript)
    assert "Thursday" in read.text and read.text == "".join(c.data["text"] for c in chunks)


def test_console_colours_each_speaker(ports: tuple[int, int], talk: tuple[bytes, list[float]], tmp_path: Path) -> None:
    """The browser console (Chromium, its fake microphone playing the conversation's first three
    turns) asks for speaker labels when the status lists a speaker model, and shows each final in
    its speaker's colour with the label as its tooltip."""
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
    sync_api = pytest.importorskip("playwright.sync_api")
    pcm, starts = talk
    wav = tmp_path / "mic.wav"
    wav.write_bytes(wav_of(pcm[:int(starts[3] * 16000) * 2]))
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=chromium_args(wav))
        try:
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{ports[0]}/")
            page.wait_for_function("window.edged.speakerModel", timeout=20000)
            page.click("#dictate")
            page.wait_for_function("new Set(window.edged.speakers.filter(Boolean)).size >= 3", timeout=90000)
            page.click("#dictate")
            page.wait_for_function("document.querySelector('#dictation-state').textContent === 'idle'",
                                   timeout=30000)
            spans = page.evaluate("""[...document.querySelectorAll('#finals span')].map((s) => [s.dataset.speaker || '',
                s.className, getComputedStyle(s).color])""")
            assert page.evaluate("window.edged.errors") == []
        finally:
            browser.close()
    labelled = [s for s in spans if s[0]]
    assert len(labelled) == len(spans) and all(cls.startswith("speaker speaker-") for _, cls, _ in labelled), spans
    colour_of: dict[str, set[str]] = {}
    for label, _, colour in labelled:
        colour_of.setdefault(label, set()).add(colour)
    assert {"A", "B", "C"} <= set(colour_of) and all(len(c) == 1 for c in colour_of.values()), colour_of
    assert len({next(iter(colour_of[s])) for s in "ABC"}) == 3, colour_of
