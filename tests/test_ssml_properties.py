"""The SSML parser against generated documents (hypothesis): whatever a client sends, it answers
with its items or its own TtsRequestError, and the items keep within the limits (effective rate,
pitch and gain, each break and the breaks' total, nesting depth); the text pipeline after it
(normalisation, sentences, utterances, phoneme runs) never fails on what it returns."""

from __future__ import annotations

import math

import pytest

pytest.importorskip("hypothesis", reason="hypothesis is in the test extra: pip install -e '.[test]'")

from hypothesis import HealthCheck, given, settings  # after the skip
from hypothesis import strategies as st

from edged.errors import TtsRequestError
from edged.pipelines.tts.phonemes import phoneme_runs
from edged.pipelines.tts.segment import utterances
from edged.pipelines.tts.ssml import (
    MAX_BREAK_S,
    MAX_DEPTH,
    MAX_GAIN,
    PITCH_RANGE,
    RATE_RANGE,
    Break,
    Item,
    Span,
    parse_ssml,
)

MAX_BREAKS_S = 30.0

_VALUES = {
    "rate": st.sampled_from(["x-slow", "slow", "fast", "x-fast", "25%", "400%", "+300%", "-75%", "10%",
                             "1e9%", "-", "nan%", "0%"]),
    "pitch": st.sampled_from(["x-low", "x-high", "+12st", "-12st", "+100%", "-50%", "12", "+13st", "50Hz"]),
    "volume": st.sampled_from(["silent", "x-loud", "+20dB", "-40dB", "+21dB", "loud"]),
    "time": st.sampled_from(["10s", "9999ms", "0s", "0.5s", "11s", "1e3s", "-1s", "ms", "3 s"]),
    "strength": st.sampled_from(["none", "x-strong", "medium", "huge"]),
    "level": st.sampled_from(["strong", "reduced", "none", "loud"]),
    "interpret-as": st.sampled_from(["characters", "cardinal", "ordinal", "digits", "date", "telephone",
                                     "verbatim", "unknown"]),
    "format": st.sampled_from(["mdy", "dmy", "y", "xyz", ""]),
    "alias": st.text(max_size=20),
    "ph": st.sampled_from(["təmˈɑːtoʊ", "", "ʃ" * 400, "a b c"]),
    "alphabet": st.sampled_from(["ipa", "x-sampa"]),
}
_TAGS = {"p": [], "s": [], "prosody": ["rate", "pitch", "volume"], "emphasis": ["level"],
         "say-as": ["interpret-as", "format"], "sub": ["alias"], "phoneme": ["alphabet", "ph"],
         "voice": ["name"]}
_WORDS = st.sampled_from(["hello", "world", "12", "3.5", "1/2/2024", "$5", "Dr.", "2,000", "555-1234", ".", ",",
                          "9" * 5000, "²", "&amp;", "&#65;", "&lt;", "a" * 300, " ", "\n", "?!"])


def _attrs(draw: st.DrawFn, names: list[str]) -> str:
    chosen = draw(st.lists(st.sampled_from(names), unique=True)) if names else []
    extra = draw(st.sampled_from(["", ' bogus="1"'])) if draw(st.booleans()) else ""
    parts = []
    for name in chosen:
        value = draw(_VALUES.get(name, st.text(max_size=5)))
        parts.append(f'{name}="{value.replace("&", "&amp;").replace(chr(34), "&quot;").replace("<", "&lt;")}"')
    return (" " + " ".join(parts) if parts else "") + extra


@st.composite
def _content(draw: st.DrawFn, depth: int) -> str:
    pieces = []
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from(["text", "break", "element"] if depth < MAX_DEPTH + 2 else ["text", "break"]))
        if kind == "text":
            pieces.append(draw(_WORDS))
        elif kind == "break":
            pieces.append(f"<break{_attrs(draw, ['time', 'strength'])}/>")
        else:
            tag = draw(st.sampled_from(sorted(_TAGS)))
            inner = draw(_content(depth + 1)) if draw(st.integers(0, 2)) else draw(_WORDS)
            pieces.append(f"<{tag}{_attrs(draw, _TAGS[tag])}>{inner}</{tag}>")
    return "".join(pieces)


@st.composite
def documents(draw: st.DrawFn) -> str:
    """SSML as clients write it, as they get it wrong, and as an attacker would."""
    shape = draw(st.sampled_from(["grammar", "nested", "breaks", "mangled", "any"]))
    if shape == "grammar":
        return f"<speak>{draw(_content(1))}</speak>"
    if shape == "nested":  # rates that multiply, depth past the limit
        depth = draw(st.integers(1, 3 * MAX_DEPTH))
        tag = draw(st.sampled_from(['<prosody rate="25%">', '<prosody rate="x-fast">', '<emphasis>',
                                    '<prosody pitch="+12st" volume="+20dB">', "<s>"]))
        close = "</" + tag[1:].split(" ")[0].rstrip(">") + ">"
        return "<speak>" + tag * depth + draw(_WORDS) + close * depth + "</speak>"
    if shape == "breaks":  # a storm of breaks
        count = draw(st.integers(0, 200))
        return "<speak>" + f'<break time="{draw(_VALUES["time"])}"/>a' * count + "</speak>"
    if shape == "mangled":  # a valid document cut or spliced anywhere
        doc = f"<speak>{draw(_content(1))}</speak>"
        cut = draw(st.integers(0, len(doc)))
        return doc[:cut] + draw(st.text(max_size=10)) + doc[cut + draw(st.integers(0, 5)):]
    return "<speak" + draw(st.text(max_size=200))


def _check_items(items: list[Item]) -> None:
    breaks = [i.seconds for i in items if isinstance(i, Break)]
    assert all(0 <= b <= MAX_BREAK_S for b in breaks)
    assert sum(breaks) <= MAX_BREAKS_S
    for span in (i for i in items if isinstance(i, Span)):
        style = span.style
        assert RATE_RANGE[0] <= style.rate <= RATE_RANGE[1]
        assert PITCH_RANGE[0] <= style.pitch <= PITCH_RANGE[1]
        assert 0 <= style.gain <= MAX_GAIN and math.isfinite(style.gain)
        assert span.kind in ("text", "words", "ipa")


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents())
def test_parser_answers_items_within_limits_or_its_own_error(doc: str) -> None:
    """No document makes the parser raise anything but TtsRequestError; what it returns keeps
    within every limit, and the text pipeline after it never fails on it."""
    try:
        items = parse_ssml(doc, MAX_BREAKS_S, "tts_max_breaks_s")
    except TtsRequestError as exc:
        assert str(exc).startswith("Invalid SSML") and "\n" not in str(exc)
        return
    _check_items(items)
    for unit in utterances(items):
        if isinstance(unit, Break):
            assert unit.seconds <= MAX_BREAK_S


@settings(max_examples=100, deadline=None)
@given(st.integers(MAX_DEPTH, 4 * MAX_DEPTH), st.sampled_from(["<s>", "<p>", '<prosody rate="50%">', "<emphasis>"]))
def test_nesting_past_the_limit_is_refused_with_its_position(depth: int, tag: str) -> None:
    """<speak> and MAX_DEPTH more elements inside it: refused, naming the limit and where."""
    close = "</" + tag[1:].split(" ")[0].rstrip(">") + ">"
    with pytest.raises(TtsRequestError, match=f"column .*nest at most {MAX_DEPTH} deep"):
        parse_ssml("<speak>" + tag * depth + "a" + close * depth + "</speak>")


@given(st.text(alphabet=st.sampled_from("abəˈɪ ,.?"), max_size=2000), st.integers(20, 400))
def test_phoneme_runs_cover_the_phonemes_within_the_bound(ipa: str, most: int) -> None:
    """Runs are at most `most` symbols and together hold every symbol but the spaces cut at."""
    runs = phoneme_runs(ipa, most)
    assert all(len(run) <= most for run, _ in runs)
    assert "".join(run for run, _ in runs).replace(" ", "") == ipa.replace(" ", "")
    assert not runs[-1][1]


def test_nested_slow_rates_hold_at_the_slowest_rate_one_element_allows() -> None:
    """Ten nested 25 % rates read at 25 %, not 25 % to the tenth (the issue's gigabytes)."""
    doc = "<speak>" + '<prosody rate="25%">' * 10 + "slow" + "</prosody>" * 10 + "</speak>"
    (span,) = [i for i in parse_ssml(doc) if isinstance(i, Span)]
    assert span.style.rate == RATE_RANGE[0]


def test_break_storm_is_refused_at_the_break_that_passes_the_total() -> None:
    """525 ten-second breaks (the issue's gigabyte reply): refused where they pass the total."""
    brk = '<break time="10s"/>'
    doc = "<speak>" + brk * 525 + "</speak>"
    seventh = len("<speak>") + 6 * len(brk) + 1  # 70 s > 60 s
    with pytest.raises(TtsRequestError, match=rf"column {seventh}: the breaks add up to more than 60 s.*tts_max_breaks_s"):
        parse_ssml(doc, 60.0, "tts_max_breaks_s in config.sh")


def test_doctype_is_refused() -> None:
    """A DOCTYPE (where entities that expand would be declared) is refused before any entity."""
    doc = '<!DOCTYPE speak [<!ENTITY a "aaaaaaaaaa">]><speak>&a;&a;</speak>'
    with pytest.raises(TtsRequestError, match="DOCTYPE is not allowed"):
        parse_ssml(doc)
