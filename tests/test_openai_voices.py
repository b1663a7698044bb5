"""OpenAI's voice names on deployed voices: the default table, `openai_voice_map` and its parsing."""

from __future__ import annotations

import pytest

from edged.config import OPENAI_VOICE_NAMES, load_settings
from edged.doors.web.openai_voices import DeployedVoice, openai_voice, voices_body
from edged.errors import ConfigError

VOICES = [DeployedVoice("English-US.Joe", "piper-joe", "en-US", 22050),
          DeployedVoice("English-US.Amy", "piper-libritts", "en-US", 22050),
          DeployedVoice("English-US.Bob", "piper-libritts", "en-US", 22050)]


def test_default_table_deals_openai_names_round_the_voices() -> None:
    table = {name: openai_voice(name, VOICES, {}) for name in OPENAI_VOICE_NAMES}
    assert table["alloy"] == "English-US.Joe" and table["ash"] == "English-US.Amy"
    assert table["ballad"] == "English-US.Bob" and table["coral"] == "English-US.Joe"
    assert set(table.values()) == {v.id for v in VOICES}
    assert openai_voice("ALLOY", VOICES, {}) == "English-US.Joe"  # names in any case


def test_a_model_narrows_the_table_and_the_map_wins() -> None:
    assert [openai_voice(n, VOICES, {}, "piper-libritts") for n in ("alloy", "ash", "ballad")] == [
        "English-US.Amy", "English-US.Bob", "English-US.Amy"]
    assert openai_voice("alloy", VOICES, {}, "tts-1") == "English-US.Joe"  # OpenAI's model names: all voices
    assert openai_voice("alloy", VOICES, {"alloy": "English-US.Bob"}, "piper-joe") == "English-US.Bob"
    assert openai_voice("alloy", [], {}) == ""


def test_voice_listing_shape() -> None:
    body = voices_body(VOICES, {"nova": "English-US.Bob"})
    assert body["voices"][1] == {"id": "English-US.Amy", "name": "English-US.Amy", "language": "en-US",
                                 "model": "piper-libritts", "sample_rate": 22050}
    assert body["openai_voices"]["nova"] == "English-US.Bob" and body["openai_voices"]["alloy"] == "English-US.Joe"
    assert list(body["openai_voices"]) == list(OPENAI_VOICE_NAMES)


def test_openai_voice_map_setting() -> None:
    settings, _ = load_settings(None, overrides={"openai_voice_map": " Alloy=English-US.Joe , echo = English-US.Amy"})
    assert settings.openai_voice_map == (("alloy", "English-US.Joe"), ("echo", "English-US.Amy"))
    assert load_settings(None)[0].openai_voice_map == ()
    for bad in ("robot=English-US.Joe", "alloy", "alloy="):
        with pytest.raises(ConfigError, match="openai_voice_map"):
            load_settings(None, overrides={"openai_voice_map": bad})
