"""Any Piper voice: generated Piper-shaped VITS graphs (tests/piper_models.py, no downloads) built
with `edged build speech_synthesis --piper`, deployed with `edged deploy`, and spoken through a
real server's Riva, OpenAI and Wyoming doors and `edged speak`, chosen by voice and language."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import signal
import subprocess
import sys
import wave
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest

from edged.importers.piper import VoiceNaming, check_split, prepare_voice, split_voice
from edged.pipelines.tts.phonemes import PhonemeIds
from edged.pipelines.tts.segment import Utterance, utterances
from edged.pipelines.tts.ssml import Span
from tests.piper_models import make_piper_voice
from tests.test_server import free_port, start_server, wait_serving


def _edged(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edged", *args], capture_output=True, text=True,
                          timeout=300, check=False, cwd=cwd)


# --- the importer on every shape ---------------------------------------------------------------

@pytest.mark.parametrize("quality,speakers,rate", [
    ("x_low", [], 16000),
    ("medium", ["ana", "luis", "sofia"], 22050),
    ("high", [], 22050),
])
def test_rewrites_hold_for_every_shape(tmp_path: Path, quality: str, speakers: list[str], rate: int) -> None:
    """Encoder, flow and decoder (2-D convolutions) chained give the whole graph's audio for each
    quality, rate and speaker count; hop and exact contexts are measured."""
    import onnx

    voice = make_piper_voice(tmp_path, f"es_ES-t-{quality}", quality, "es", speakers, rate,
                             width=0.0625 if quality == "high" else 0.125)
    networks, params = prepare_voice(voice.onnx, tmp_path / "work")
    assert sorted(networks) == ["decoder", "encoder", "flow"]
    assert params["hop_length"] == 256
    assert 0 < params["decoder_context_frames"] <= 64 and 0 < params["flow_context_frames"] <= 64
    encoder = onnx.load(str(networks["encoder"]))
    assert [o.name for o in encoder.graph.output] == ["z_p", "g"] if speakers else ["z_p"]
    assert ("sid" in [i.name for i in encoder.graph.input]) == bool(speakers)
    convs = [n for n in onnx.load(str(networks["decoder"])).graph.node if n.op_type in ("Conv", "ConvTranspose")]
    assert convs and all(len(a.ints) == 2 for n in convs for a in n.attribute if a.name == "kernel_shape")
    whole = onnx.load(str(voice.onnx))
    parts = split_voice(onnx.load(str(voice.onnx)))
    assert parts is not None
    assert check_split(whole, parts) < 1e-4


@pytest.mark.parametrize("kind", ["names", "global"])
def test_voice_the_rewrites_do_not_fit_is_one_graph_with_a_warning(tmp_path: Path, kind: str,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    """A generator not named as Piper's, or one that sees the whole utterance (no context makes a
    chunk exact), is packed as one `voice` network, and the build says why."""
    voice = make_piper_voice(tmp_path, "de_DE-odd-x_low", generator_prefix="/generator/" if kind == "names" else "/dec/",
                             global_decoder=kind == "global")
    with caplog.at_level(logging.WARNING, logger="edged.importers.piper"):
        networks, params = prepare_voice(voice.onnx, tmp_path / "work")
    assert list(networks) == ["voice"] and params == {}
    why = "not shaped as Piper's VITS export" if kind == "names" else "more than 64 frames"
    assert "served as one graph" in caplog.text and why in caplog.text


def test_naming_from_the_config() -> None:
    """Language tag and Riva-style names: one speaker is the subvoice, several make a family."""
    one = {"dataset": "thorsten", "espeak": {"voice": "de"},
           "language": {"code": "de_DE", "name_english": "German"}}
    assert VoiceNaming.of(one, "de_DE-thorsten-medium") == VoiceNaming("de-DE", "German-DE.Thorsten")
    many = {"espeak": {"voice": "en-gb-x-rp"}, "speaker_id_map": {"p225": 0, "p226": 1},
            "language": {"code": "en_GB", "name_english": "English"}}
    assert VoiceNaming.of(many, "en_GB-vctk-medium") == VoiceNaming("en-GB", "English-GB-Vctk")
    bare = {"espeak": {"voice": "cmn"}}  # older configs: no language block
    assert VoiceNaming.of(bare, "zh_CN-huayan-x_low") == VoiceNaming("zh-CN", "zh-CN.Huayan")


def test_normalisation_is_english_only() -> None:
    """English text is normalised ("Dr.", numbers as words); other languages keep their written
    forms for espeak-ng, which reads numbers in the voice's language."""
    from edged.pipelines.tts.phonemes import phonemize_text

    def text(english: bool) -> str:
        return " ".join(u.text for u in utterances([Span("Dr. Weber hat 23 Äpfel.")], english)
                        if isinstance(u, Utterance))

    assert text(False) == "Dr. Weber hat 23 Äpfel."
    assert "twenty-three" in text(True) and "Doctor" in text(True)
    german, spanish = phonemize_text("23", "de"), phonemize_text("23", "es")
    assert "tsvˈantsɪç" in german and "tɾˈes" in spanish  # zwanzig, veintitrés


def test_phoneme_map_replaces_phonemes_before_ids() -> None:
    """A voice's phoneme_map turns one phoneme into those it was trained with."""
    ids = PhonemeIds({"_": [0], "^": [1], "$": [2], "a": [5], "b": [6], "c": [7]}, {"a": ["b", "c"]})
    assert ids.ids("ac") == [1, 0, 6, 0, 7, 0, 7, 0, 2]


# --- built, deployed and spoken through a real server -----------------------------------------------

@dataclass(frozen=True)
class Daemon:
    riva: str
    http_port: int
    wyoming_port: int
    config: Path


@pytest.fixture(scope="module")
def piper_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two generated voices built and deployed by the CLI: German, one speaker, 22.05 kHz; Spanish,
    two speakers, 16 kHz."""
    tmp = tmp_path_factory.mktemp("piper")
    voices = [make_piper_voice(tmp / "src", "de_DE-test-medium", "medium", "de", width=0.0625),
              make_piper_voice(tmp / "src", "es_ES-duo-x_low", "x_low", "es", ["ana", "luis"], seed=1)]
    for voice in voices:
        rmir = tmp / voice.onnx.name.replace(".onnx", ".rmir")
        built = _edged("build", "speech_synthesis", str(rmir), "--piper", str(voice.onnx), "--license", "MIT")
        assert built.returncode == 0, built.stderr
        assert "WARNING" not in built.stderr, built.stderr
        deployed = _edged("deploy", str(rmir), str(tmp / "repo" / "models"), "--backend", "cpu")
        assert deployed.returncode == 0, deployed.stderr
    return tmp / "repo"


@pytest.fixture(scope="module")
def daemon(piper_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """`edged start` with the two voices (TTS only) on Riva, HTTP and Wyoming ports."""
    tmp = tmp_path_factory.mktemp("piper-server")
    port, http, wyoming = free_port(), free_port(), free_port()
    cfg = tmp / "config.sh"
    cfg.write_text(f'model_loc="{piper_repo}"\nriva_speech_api_port={port}\nlisten_address="127.0.0.1"\n'
                   f"metrics_port=0\nhttp_port={http}\nwyoming_port={wyoming}\nservice_enabled_asr=false\n",
                   encoding="utf-8")
    proc = start_server(cfg, tmp / "server.log")
    try:
        wait_serving(proc, port, timeout=180)
        yield Daemon(f"127.0.0.1:{port}", http, wyoming, cfg)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    log = (tmp / "server.log").read_text()
    assert "Traceback" not in log, log[-3000:]


def test_riva_lists_and_picks_voices_by_language(daemon: Daemon) -> None:
    """GetRivaSynthesisConfig lists each voice with its language and speakers; language_code alone
    picks a voice; a voice asked in another language, or an unknown language, is NOT_FOUND naming
    what is deployed."""
    import riva.client
    from riva.client.proto import riva_tts_pb2

    tts = riva.client.SpeechSynthesisService(riva.client.Auth(uri=daemon.riva))
    configs = tts.stub.GetRivaSynthesisConfig(riva_tts_pb2.RivaSynthesisConfigRequest()).model_config
    listed = {c.model_name: dict(c.parameters) for c in configs}
    assert {n: (p["language_code"], p["voice_name"], p["subvoices"], p["sample_rate"]) for n, p in listed.items()} == {
        "piper-de_DE-test-medium": ("de-DE", "German-DE", "Test:0", "22050"),
        "piper-es_ES-duo-x_low": ("es-ES", "Spanish-ES-Duo", "ana:0,luis:1", "16000")}
    for language, voice in (("es-ES", "Spanish-ES-Duo.luis"), ("de-DE", ""), ("es", "")):
        audio = tts.synthesize("Hola, ¿qué tal? Son 23 euros.", voice_name=voice or None,
                               language_code=language, sample_rate_hz=16000).audio
        samples = np.frombuffer(audio, np.int16)
        assert len(samples) > 1600 and np.abs(samples).max() > 100
    for kwargs, message in (
            ({"language_code": "fr-FR"}, "No voice speaks language 'fr-FR'; voices: German-DE.Test (de-DE), "
                                         "Spanish-ES-Duo.ana (es-ES), Spanish-ES-Duo.luis (es-ES)."),
            ({"voice_name": "Spanish-ES-Duo.ana", "language_code": "de-DE"},
             "Voice 'Spanish-ES-Duo.ana' speaks es-ES, not 'de-DE'")):
        with pytest.raises(grpc.RpcError) as err:
            tts.synthesize("Hola.", sample_rate_hz=16000, **kwargs)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND and message in err.value.details()


@dataclass(frozen=True)
class WyomingAnswer:
    """What a Wyoming server answered a describe and a synthesize."""

    info: dict  # type: ignore[type-arg]
    rate: int = 0
    samples: int = 0
    error: str = ""


async def _wyoming(port: int, text: str, voice: dict[str, str]) -> WyomingAnswer:
    from wyoming.audio import AudioChunk, AudioStart, AudioStop
    from wyoming.client import AsyncTcpClient
    from wyoming.error import Error
    from wyoming.info import Describe
    from wyoming.tts import Synthesize, SynthesizeVoice

    async with AsyncTcpClient("127.0.0.1", port) as client:
        await client.write_event(Describe().event())
        info = await asyncio.wait_for(client.read_event(), 60)
        assert info is not None
        await client.write_event(Synthesize(text=text, voice=SynthesizeVoice(**voice)).event())
        first = await asyncio.wait_for(client.read_event(), 60)
        assert first is not None
        if Error.is_type(first.type):
            return WyomingAnswer(info.data, error=Error.from_event(first).text)
        rate, samples = AudioStart.from_event(first).rate, 0
        while True:
            event = await asyncio.wait_for(client.read_event(), 60)
            assert event is not None
            if AudioStop.is_type(event.type):
                return WyomingAnswer(info.data, rate, samples)
            samples += len(AudioChunk.from_event(event).audio) // 2


def test_wyoming_describes_languages_and_honours_voice_language_and_name(daemon: Daemon) -> None:
    """`describe` lists each voice's languages and speakers; synthesize.voice.language or .name
    (with .speaker) picks the voice, whose rate the audio comes at; an unknown one is an error."""
    answer = asyncio.run(_wyoming(daemon.wyoming_port, "Hola.", {"language": "es_ES"}))
    voices = {v["name"]: v for v in answer.info["tts"][0]["voices"]}
    assert {n: v["languages"] for n, v in voices.items()} == {
        "piper-de_DE-test-medium": ["de-DE"], "piper-es_ES-duo-x_low": ["es-ES"]}
    assert [s["name"] for s in voices["piper-es_ES-duo-x_low"]["speakers"]] == ["ana", "luis"]
    assert (answer.rate, answer.error) == (16000, "") and answer.samples > 1600
    german = asyncio.run(_wyoming(daemon.wyoming_port, "Guten Tag.", {"name": "piper-de_DE-test-medium"}))
    assert german.rate == 22050 and german.samples > 2205
    luis = asyncio.run(_wyoming(daemon.wyoming_port, "Hola.", {"name": "piper-es_ES-duo-x_low", "speaker": "luis"}))
    assert luis.rate == 16000 and luis.samples > 1600
    french = asyncio.run(_wyoming(daemon.wyoming_port, "Bonjour.", {"language": "fr"}))
    assert french.error.startswith("No voice speaks language 'fr'; voices: German-DE.Test (de-DE)")
    nobody = asyncio.run(_wyoming(daemon.wyoming_port, "Hola.", {"name": "nobody"}))
    assert nobody.error.startswith("Voice 'nobody' is not available; voices: ")


def test_openai_voice_and_speak_cli_pick_the_voice(daemon: Daemon, tmp_path: Path) -> None:
    """OpenAI's `voice` takes a voice name (the WAV comes at that voice's rate); `edged speak
    --voice` speaks with it through the server and in-process; an unknown voice is refused naming
    the deployed ones."""
    import openai

    client = openai.OpenAI(base_url=f"http://127.0.0.1:{daemon.http_port}/v1", api_key="unused", max_retries=0)
    for voice, rate in (("German-DE.Test", 22050), ("Spanish-ES-Duo.ana", 16000)):
        wav = client.audio.speech.create(model="tts-1", voice=voice, input="Hola, buenos días.",
                                         response_format="wav").content
        with wave.open(io.BytesIO(wav)) as w:
            assert w.getframerate() == rate and w.getnframes() > rate // 10
    with pytest.raises(openai.BadRequestError, match="voices: German-DE.Test"):
        client.audio.speech.create(model="tts-1", voice="Nobody", input="Hola.", response_format="wav")
    out = tmp_path / "remote.wav"
    remote = _edged("speak", "Guten Morgen.", "-o", str(out), "--server", daemon.riva, "--voice", "German-DE.Test",
                    "--sample-rate", "22050")
    assert remote.returncode == 0, remote.stderr
    local = tmp_path / "local.wav"
    spoken = _edged("speak", "Hola, Luis.", "-o", str(local), "-c", str(daemon.config), "--voice", "Spanish-ES-Duo.luis")
    assert spoken.returncode == 0, spoken.stderr
    with wave.open(str(local)) as w:
        assert w.getframerate() == 16000 and w.getnframes() > 1600
    missing = _edged("speak", "Hola.", "-o", str(local), "-c", str(daemon.config), "--voice", "Nobody")
    assert missing.returncode != 0 and "voices: " in missing.stderr and "Traceback" not in missing.stderr


def test_console_speaks_with_the_picked_voice(daemon: Daemon) -> None:
    """The console's voice picker lists both voices by language; the Spanish one (not the
    session's default language) speaks, at its own rate, with no error."""
    from tests.test_asr_server import beckett_path
    from tests.test_http_console import CHROMIUM, chromium_args

    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=chromium_args(beckett_path()))
        try:
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{daemon.http_port}/")
            page.wait_for_function("document.querySelector('#voice').options.length >= 3", timeout=20000)
            listed = page.eval_on_selector_all("#voice option", "os => os.map(o => [o.value, o.dataset.language])")
            assert listed == [["German-DE.Test", "de-DE"], ["Spanish-ES-Duo.ana", "es-ES"],
                              ["Spanish-ES-Duo.luis", "es-ES"]], listed
            page.select_option("#voice", "Spanish-ES-Duo.luis")
            page.fill("#text", "Hola, buenos días.")
            page.click("#speak")
            page.wait_for_function("window.edged.speechDone >= 1 || window.edged.errors.length > 0", timeout=30000)
            assert page.evaluate("window.edged.errors") == []
            assert page.evaluate("window.edged.samplesReceived") > 1600
        finally:
            browser.close()


def test_build_refuses_a_voice_without_its_config_or_espeak_voice(tmp_path: Path) -> None:
    """A missing .onnx.json, or an espeak voice espeak-ng does not know, is a one-line error."""
    voice = make_piper_voice(tmp_path, "xx_XX-nope-x_low", espeak="xx-nope")
    bad = _edged("build", "speech_synthesis", str(tmp_path / "a.rmir"), "--piper", str(voice.onnx))
    assert bad.returncode != 0 and "espeak-ng has no voice 'xx-nope'" in bad.stderr
    voice.config_path.unlink()
    missing = _edged("build", "speech_synthesis", str(tmp_path / "a.rmir"), "--piper", str(voice.onnx))
    assert missing.returncode != 0 and "xx_XX-nope-x_low.onnx.json does not exist" in missing.stderr
    wrong = _edged("build", "speech_recognition", str(tmp_path / "a.rmir"), "--piper", str(voice.onnx))
    assert "A Piper voice is a speech_synthesis model" in wrong.stderr
    assert "Traceback" not in bad.stderr + missing.stderr + wrong.stderr


def test_voice_config_language_and_phoneme_type(tmp_path: Path) -> None:
    """Only an espeak voice of English is normalised; a `text` voice needs no espeak block."""
    from edged.pipelines.tts.voice import VoiceConfig

    voice = make_piper_voice(tmp_path, "de_DE-cfg-x_low")
    config = voice.config
    for espeak, english in (("en-us", True), ("en-gb-x-rp", True), ("de", False), ("es-419", False)):
        voice.config_path.write_text(json.dumps({**config, "espeak": {"voice": espeak}}), encoding="utf-8")
        assert VoiceConfig.load(voice.config_path).english is english
    text_voice = {k: v for k, v in config.items() if k != "espeak"} | {"phoneme_type": "text"}
    voice.config_path.write_text(json.dumps(text_voice), encoding="utf-8")
    loaded = VoiceConfig.load(voice.config_path)
    assert (loaded.phoneme_type, loaded.espeak_voice, loaded.english) == ("text", "", False)
