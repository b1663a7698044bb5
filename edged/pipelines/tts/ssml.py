"""The SSML subset Riva users write, parsed into spans of text with a style, breaks and boundaries.

Supported: <speak>, <p>, <s>, <break time strength>, <prosody rate pitch volume>,
<say-as interpret-as>, <sub alias>, <phoneme alphabet="ipa" ph>, <emphasis level>.
<emphasis> is approximated: strong/moderate read 15 % slower and 4 dB louder, reduced 10 %
faster and 4 dB softer. Any problem is a TtsRequestError naming it and its line and column.

Bounded whatever the document: nested <prosody> and <emphasis> multiply, and the product is held
within the range one element may ask for (rate 25 % to 400 %, pitch -12 to +12 semitones, volume
up to +20 dB), as a Riva user nesting x-slow in x-slow expects the slowest rate rather than a
refusal; elements nest at most MAX_DEPTH deep; a request's breaks add up to at most the caller's
`max_breaks_s`; a DOCTYPE (and so any entity that could expand) is refused.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from xml.parsers import expat

from edged.errors import TtsRequestError
from edged.pipelines.tts import normalise

MAX_BREAK_S = 10.0
"""Longest one <break> may be."""
MAX_DEPTH = 32
"""Most elements open at once, <speak> included."""
RATE_RANGE = (0.25, 4.0)
"""Speaking-rate factors one element may ask for, and that nested ones are held within."""
PITCH_RANGE = (0.5, 2.0)
"""Pitch factors likewise (-12 to +12 semitones)."""
MAX_GAIN = 10.0
"""Largest linear gain likewise (+20 dB)."""


@dataclass(frozen=True)
class Style:
    """How a span is spoken: speed and pitch factors (1 = as trained) and a linear gain."""

    rate: float = 1.0
    pitch: float = 1.0
    gain: float = 1.0

    def bounded(self) -> Style:
        """This style held within what one element may ask for (nested elements multiply)."""
        return Style(rate=_within(self.rate, RATE_RANGE), pitch=_within(self.pitch, PITCH_RANGE),
                     gain=min(self.gain, MAX_GAIN))


def _within(value: float, bounds: tuple[float, float]) -> float:
    return min(max(value, bounds[0]), bounds[1])


def effective_rate(style_rate: float, request_rate: float) -> float:
    """The speaking rate of a span: its style's times the request's, held within RATE_RANGE."""
    return _within(style_rate * request_rate, RATE_RANGE)


@dataclass(frozen=True)
class Span:
    """A piece of text: `kind` is "text" (to normalise), "words" (already words) or "ipa"."""

    text: str
    style: Style = Style()
    kind: str = "text"


@dataclass(frozen=True)
class Break:
    """Silence of a given length."""

    seconds: float


@dataclass(frozen=True)
class Boundary:
    """A sentence or paragraph edge (<s>, <p>): what follows starts a new sentence."""


Item = Span | Break | Boundary

_RATES = {"x-slow": 0.5, "slow": 0.75, "medium": 1.0, "default": 1.0, "fast": 1.25, "x-fast": 1.75}
_PITCH_ST = {"x-low": -4.0, "low": -2.0, "medium": 0.0, "default": 0.0, "high": 2.0, "x-high": 4.0}
_VOLUME_DB = {"silent": None, "x-soft": -12.0, "soft": -6.0, "medium": 0.0, "default": 0.0,
              "loud": 6.0, "x-loud": 12.0}
_BREAK_S = {"none": 0.0, "x-weak": 0.1, "weak": 0.2, "medium": 0.4, "strong": 0.7, "x-strong": 1.2}
_EMPHASIS = {"strong": (0.85, 4.0), "moderate": (0.85, 4.0), "none": (1.0, 0.0), "reduced": (1.1, -4.0)}
_SAY_AS = ("characters", "spell-out", "verbatim", "cardinal", "number", "ordinal", "digits",
           "date", "telephone")
_ATTRIBUTES = {
    "speak": {"version", "xmlns", "xml:lang", "xmlns:xsi", "xsi:schemaLocation"},
    "p": {"xml:lang"}, "s": {"xml:lang"}, "break": {"time", "strength"},
    "prosody": {"rate", "pitch", "volume"}, "say-as": {"interpret-as", "format", "detail"},
    "sub": {"alias"}, "phoneme": {"alphabet", "ph"}, "emphasis": {"level"},
}


def is_ssml(text: str) -> bool:
    """Riva's rule: a request is SSML when its text starts with <speak>."""
    return text.lstrip().startswith("<speak")


def _rate(value: str) -> float:
    if value in _RATES:
        return _RATES[value]
    m = re.fullmatch(r"([+-]?\d+(?:\.\d+)?)%", value)
    if m:
        # "150%" is 1.5 times as fast; "+20%" / "-20%" are relative to the current rate.
        number = float(m[1])
        factor = 1 + number / 100 if value[0] in "+-" else number / 100
        if RATE_RANGE[0] <= factor <= RATE_RANGE[1]:
            return factor
    raise ValueError("rate must be x-slow, slow, medium, fast, x-fast or a percentage from 25% to 400%")


def _pitch(value: str) -> float:
    if value in _PITCH_ST:
        semitones = _PITCH_ST[value]
    else:
        m = re.fullmatch(r"([+-]?\d+(?:\.\d+)?)(st|%|Hz)?", value)
        if not m or m[2] == "Hz":
            raise ValueError("pitch must be x-low, low, medium, high, x-high, +Nst, +N% or a number "
                             "of semitones from -12 to 12")
        if m[2] == "%":
            factor = 1 + float(m[1]) / 100
            if not 0.5 <= factor <= 2.0:
                raise ValueError("a pitch percentage must be from -50% to +100%")
            return factor
        semitones = float(m[1])
    if not -12 <= semitones <= 12:
        raise ValueError("pitch must be from -12 to 12 semitones")
    return float(2 ** (semitones / 12))


def _gain(value: str) -> float:
    if value in _VOLUME_DB:
        db = _VOLUME_DB[value]
        return 0.0 if db is None else float(10 ** (db / 20))
    m = re.fullmatch(r"([+-]?\d+(?:\.\d+)?)dB", value)
    if not m or not -40 <= float(m[1]) <= 20:
        raise ValueError("volume must be silent, x-soft, soft, medium, loud, x-loud or +NdB "
                         "from -40dB to +20dB")
    return float(10 ** (float(m[1]) / 20))


def _break_seconds(attrs: dict[str, str]) -> float:
    if "time" in attrs:
        m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s)", attrs["time"].strip())
        if not m:
            raise ValueError(f"break time {attrs['time']!r} must be like 500ms or 1.5s")
        seconds = float(m[1]) / (1000 if m[2] == "ms" else 1)
        if seconds > MAX_BREAK_S:
            raise ValueError(f"a break may last at most {MAX_BREAK_S:g} s")
        return seconds
    strength = attrs.get("strength", "medium")
    if strength not in _BREAK_S:
        raise ValueError(f"break strength must be one of {', '.join(_BREAK_S)}")
    return _BREAK_S[strength]


def _say_as(kind: str, text: str, fmt: str, english: bool) -> str:
    """The words a <say-as> reads its text as: for an English voice, English words. For a voice of
    another language, forms espeak-ng reads in that language, with no English word: characters
    (spell-out, verbatim) and digits one by one, separated ("A B C 1": espeak names each letter
    and digit), telephone numbers likewise with a pause (a comma) between the written groups,
    cardinals (number) as written. Ordinals and dates have no form that every language writes
    alike and espeak-ng reads as one (it reads German "3." as "drei", not "dritte"), so they are
    checked as for English, then left as written."""
    stripped = text.strip()
    if kind in ("characters", "spell-out", "verbatim"):
        return normalise.spell(stripped) if english else " ".join(ch for ch in stripped if ch.isalnum())
    if kind == "digits":
        return normalise.digits(stripped) if english else " ".join(ch for ch in stripped if ch.isdecimal())
    if kind == "telephone":
        if english:
            return normalise.telephone(stripped)
        return ", ".join(" ".join(group) for group in re.findall(r"\d+", stripped))
    if kind in ("cardinal", "number", "ordinal"):
        number = stripped.replace(",", "")
        if not re.fullmatch(r"-?\d+(\.\d+)?" if kind != "ordinal" else r"\d+", number):
            raise ValueError(f"say-as {kind} needs a number, not {stripped!r}")
        if not english:
            return stripped
        return normalise.ordinal(number) if kind == "ordinal" else normalise.cardinal(number)
    fields = _date(stripped, fmt or "mdy")
    return _date_words(fields) if english else stripped


def _date(text: str, fmt: str) -> dict[str, int]:
    """A say-as date's day, month and year by the letters of `fmt` (d, m, y); ValueError if the
    text does not match it."""
    parts = [p for p in re.split(r"[/.\-\s]+", text) if p]
    order = fmt.lower()
    if len(parts) != len(order) or not all(p.isdigit() for p in parts) or set(order) - set("dmy"):
        raise ValueError(f"say-as date {text!r} does not match format {fmt!r} (letters d, m, y)")
    fields = dict(zip(order, (int(p) for p in parts)))
    if "m" in fields and not 1 <= fields["m"] <= 12:
        raise ValueError(f"say-as date {text!r} has no month {fields['m']}")
    return fields


def _date_words(fields: dict[str, int]) -> str:
    """A checked date in English words: month, day as an ordinal, year."""
    words = []
    if "m" in fields:
        words.append(normalise._MONTHS[fields["m"] - 1])
    if "d" in fields:
        words.append(normalise.ordinal(fields["d"]))
    if "y" in fields:
        words.append(normalise.year(fields["y"]))
    return " ".join(words)


class _Parser:
    """Expat handlers building the item list; a stack of open elements carries the style."""

    def __init__(self, max_breaks_s: float, breaks_setting: str, english: bool) -> None:
        self.english = english
        """Whether say-as reads in English words (else in forms espeak-ng reads in any language)."""
        self.max_breaks_s = max_breaks_s
        self.breaks_setting = breaks_setting
        self.breaks_s = 0.0
        """Seconds of the breaks so far."""
        self.items: list[Item] = []
        self.stack: list[tuple[str, Style]] = []
        self.capture: tuple[str, dict[str, str], list[str]] | None = None
        self.parser = expat.ParserCreate()
        self.parser.StartElementHandler = self.start
        self.parser.EndElementHandler = self.end
        self.parser.CharacterDataHandler = self.data
        self.parser.StartDoctypeDeclHandler = self.doctype

    def doctype(self, *_: object) -> None:
        self.fail("a DOCTYPE is not allowed")

    def fail(self, message: str) -> None:
        raise TtsRequestError(
            f"Invalid SSML at line {self.parser.CurrentLineNumber}, column "
            f"{self.parser.CurrentColumnNumber + 1}: {message}.")

    @property
    def style(self) -> Style:
        return self.stack[-1][1] if self.stack else Style()

    def start(self, tag: str, attrs: dict[str, str]) -> None:
        if not self.stack and tag != "speak":
            self.fail(f"the root element must be <speak>, not <{tag}>")
        if len(self.stack) >= MAX_DEPTH:
            self.fail(f"elements may nest at most {MAX_DEPTH} deep")
        if tag not in _ATTRIBUTES:
            self.fail(f"<{tag}> is not supported (supported: {', '.join(sorted(_ATTRIBUTES))})")
        if self.capture is not None:
            self.fail(f"<{tag}> cannot be inside <{self.capture[0]}>")
        unknown = sorted(set(attrs) - _ATTRIBUTES[tag])
        if unknown:
            self.fail(f"<{tag}> has no attribute {unknown[0]!r}")
        style = self.style
        try:
            if tag in ("p", "s"):
                self.items.append(Boundary())
            elif tag == "break":
                self.add_break(_break_seconds(attrs))
            elif tag == "prosody":
                style = replace(
                    style,
                    rate=style.rate * _rate(attrs["rate"].strip()) if "rate" in attrs else style.rate,
                    pitch=style.pitch * _pitch(attrs["pitch"].strip()) if "pitch" in attrs else style.pitch,
                    gain=style.gain * _gain(attrs["volume"].strip()) if "volume" in attrs else style.gain,
                ).bounded()
            elif tag == "emphasis":
                level = attrs.get("level", "moderate")
                if level not in _EMPHASIS:
                    raise ValueError(f"emphasis level must be one of {', '.join(_EMPHASIS)}")
                rate, db = _EMPHASIS[level]
                style = replace(style, rate=style.rate * rate, gain=style.gain * 10 ** (db / 20)).bounded()
            elif tag == "say-as":
                kind = attrs.get("interpret-as", "")
                if kind not in _SAY_AS:
                    raise ValueError(f"say-as interpret-as must be one of {', '.join(_SAY_AS)}")
                self.capture = (tag, attrs, [])
            elif tag == "sub":
                if "alias" not in attrs:
                    raise ValueError("<sub> needs an alias attribute")
                self.capture = (tag, attrs, [])
            elif tag == "phoneme":
                if attrs.get("alphabet", "ipa") != "ipa":
                    raise ValueError("only alphabet=\"ipa\" is supported in <phoneme>")
                if not attrs.get("ph", "").strip():
                    raise ValueError("<phoneme> needs a ph attribute")
                self.capture = (tag, attrs, [])
        except ValueError as exc:
            self.fail(str(exc))
        self.stack.append((tag, style))

    def add_break(self, seconds: float) -> None:
        self.breaks_s += seconds
        if self.breaks_s > self.max_breaks_s:
            raise ValueError(f"the breaks add up to more than {self.max_breaks_s:g} s, the most one "
                             f"request may ask for ({self.breaks_setting})")
        self.items.append(Break(seconds))

    def end(self, tag: str) -> None:
        style = self.style
        self.stack.pop()
        if self.capture is not None and self.capture[0] == tag:
            _, attrs, texts = self.capture
            self.capture = None
            text = "".join(texts)
            try:
                if tag == "say-as":
                    self.items.append(Span(_say_as(attrs["interpret-as"], text, attrs.get("format", ""),
                                                   self.english), style, "words"))
                elif tag == "sub":
                    self.items.append(Span(attrs["alias"], style))
                else:
                    self.items.append(Span(attrs["ph"].strip(), style, "ipa"))
            except ValueError as exc:
                self.fail(str(exc))
        elif tag in ("p", "s"):
            self.items.append(Boundary())

    def data(self, text: str) -> None:
        if self.capture is not None:
            self.capture[2].append(text)
        elif not self.stack:
            if text.strip():
                self.fail("text outside <speak>")
        elif self.items and isinstance(self.items[-1], Span) and self.items[-1].kind == "text" \
                and self.items[-1].style == self.style:
            # Expat may hand one text node over in pieces; keep them together.
            last = self.items[-1]
            self.items[-1] = Span(last.text + text, last.style)
        else:
            self.items.append(Span(text, self.style))


def parse_ssml(text: str, max_breaks_s: float = math.inf, breaks_setting: str = "",
               english: bool = True) -> list[Item]:
    """Parse an SSML document into spans, breaks and boundaries; TtsRequestError if invalid or if
    its breaks add up to more than `max_breaks_s` (`breaks_setting` says where that is set).
    `english`: for an English voice (say-as in English words; see _say_as)."""
    parser = _Parser(max_breaks_s, breaks_setting, english)
    try:
        parser.parser.Parse(text, True)
    except expat.ExpatError as exc:
        raise TtsRequestError(
            f"Invalid SSML at line {exc.lineno}, column {exc.offset + 1}: "
            f"{expat.ErrorString(exc.code)}.") from None
    return parser.items
