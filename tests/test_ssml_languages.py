"""SSML <say-as> for a voice of another language than English: generated Piper voices
(tests/piper_models.py) of German and Spanish, built, deployed and loaded, speak say-as in forms
espeak-ng reads in the voice's language (letters and digits one by one, numbers as written),
never in English words; an English voice keeps edged's English readings."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from edged.backends import BackendOptions
from edged.errors import TtsRequestError
from edged.importers.piper import import_piper_voice
from edged.loader import load_model
from edged.pipelines.pools import Pools
from edged.pipelines.tts.limits import SynthesisLimits
from edged.pipelines.tts.phonemes import phonemize_text
from edged.pipelines.tts.synthesizer import SynthesisRequest, TtsModel
from edged.repository.deploy import deploy
from edged.repository.records import DeployTarget, list_models
from edged.rmir import RmirRef
from edged.rmir.build import build_rmir
from tests.piper_models import make_piper_voice

SSML = ('<speak>Kennzeichen <say-as interpret-as="characters">AB1</say-as>, Zimmer '
        '<say-as interpret-as="digits">42</say-as>, Telefon <say-as interpret-as="telephone">030 1234</say-as>, '
        '<say-as interpret-as="cardinal">23</say-as> Äpfel, der <say-as interpret-as="ordinal">3</say-as> '
        'Platz am <say-as interpret-as="date" format="dmy">7.12.2026</say-as>.</speak>')
ENGLISH_READINGS = ("eigh", "one", "four", "two", "zero", "three", "twenty", "third", "December", "seventh")


@pytest.fixture(scope="module")
def voices(tmp_path_factory: pytest.TempPathFactory, cpu_target: DeployTarget) -> Iterator[dict[str, TtsModel]]:
    """German, Spanish and English generated voices, loaded as the daemon loads them."""
    tmp = tmp_path_factory.mktemp("ssml-languages")
    names = {"de": "de_DE-test-x_low", "es": "es_ES-test-x_low", "en-us": "en_US-test-x_low"}
    built = {}
    for espeak, name in names.items():
        voice = make_piper_voice(tmp / "src", name, "x_low", espeak, width=0.0625)
        work = tmp / f"work-{name}"
        work.mkdir()
        source = import_piper_voice(voice.onnx, work)
        build_rmir(source, RmirRef(tmp / f"{name}.rmir"))
        deploy(RmirRef(tmp / f"{name}.rmir"), tmp / "repo", cpu_target, BackendOptions())
        built[espeak] = source.name
    deployed = {m.name: m for m in list_models(tmp / "repo", cpu_target)}
    with Pools() as pools:
        yield {espeak: TtsModel(load_model(deployed[name], BackendOptions()), pools, SynthesisLimits(max_text_chars=600))
               for espeak, name in built.items()}


def _spoken_text(tts: TtsModel, ssml: str) -> str:
    """The text of each utterance spoken (what espeak-ng was given), joined; the audio must not be empty."""
    chunks = list(tts.synthesize(SynthesisRequest(ssml)))
    assert sum(len(c.pcm) for c in chunks) > 0
    return " ".join(c.text for c in chunks if c.text)


def test_german_say_as_reaches_espeak_without_english_words(voices: dict[str, TtsModel]) -> None:
    text = _spoken_text(voices["de"], SSML)
    assert text == ("Kennzeichen A B 1 , Zimmer 4 2 , Telefon 0 3 0, 1 2 3 4 , 23 Äpfel, der 3 Platz am 7.12.2026 .")
    assert not any(word in text for word in ENGLISH_READINGS), text
    phonemes = phonemize_text(text, "de")
    assert "bˈeː ˈaɪns" in phonemes  # "B 1": be eins
    assert "fˈiːɾ tsvˈaɪ" in phonemes  # "4 2": vier zwei
    assert "dɾˈaɪ ʊnttsvˈantsɪç" in phonemes  # 23: dreiundzwanzig


def test_spanish_voice_spells_in_spanish(voices: dict[str, TtsModel]) -> None:
    text = _spoken_text(voices["es"], '<speak>Código <say-as interpret-as="spell-out">ab1</say-as>.</speak>')
    assert text == "Código a b 1 ."
    assert "βˈe ˈuno" in phonemize_text(text, "es")  # "b 1": be uno


def test_english_voice_keeps_english_readings(voices: dict[str, TtsModel]) -> None:
    text = _spoken_text(voices["en-us"], '<speak>Room <say-as interpret-as="characters">AB1</say-as>, the '
                                         '<say-as interpret-as="ordinal">3</say-as> floor.</speak>')
    assert "eigh B one" in text and "third" in text, text


def test_bad_say_as_is_refused_for_every_language(voices: dict[str, TtsModel]) -> None:
    """The checks do not depend on the language: a date that does not match its format, or an
    ordinal that is no number, is refused for the German voice as for the English one."""
    for language in ("de", "en-us"):
        with pytest.raises(TtsRequestError, match=r"say-as date '31\.2' does not match format 'dmy'"):
            _spoken_text(voices[language], '<speak><say-as interpret-as="date" format="dmy">31.2</say-as></speak>')
        with pytest.raises(TtsRequestError, match="say-as ordinal needs a number, not 'drei'"):
            _spoken_text(voices[language], '<speak><say-as interpret-as="ordinal">drei</say-as></speak>')
