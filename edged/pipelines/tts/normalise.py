"""English text normalisation: written forms (numbers, money, dates, URLs...) to words a voice reads.

Number words are spelled here (as `inflect` spells them, without its "and": American style;
importing inflect takes seconds of CPU); the patterns below only decide which reading a written
form gets (a year, a time, a phone number, an amount of money).
"""

from __future__ import annotations

import re
from collections.abc import Callable

_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August",
           "September", "October", "November", "December")
_DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

_ABBREVIATIONS = {
    "Mr.": "Mister", "Mrs.": "Missus", "Ms.": "Miz", "Dr.": "Doctor", "Prof.": "Professor",
    "Jr.": "Junior", "Sr.": "Senior", "Mt.": "Mount", "Ave.": "Avenue", "Rd.": "Road",
    "Blvd.": "Boulevard", "etc.": "et cetera", "e.g.": "for example", "i.e.": "that is",
    "vs.": "versus", "approx.": "approximately", "No.": "number", "Inc.": "Incorporated",
    "Ltd.": "Limited", "Co.": "Company", "Jan.": "January", "Feb.": "February",
    "Aug.": "August", "Sept.": "September", "Oct.": "October", "Nov.": "November",
    "Dec.": "December",
}
_UNITS = {
    "km/h": ("kilometer per hour", "kilometers per hour"), "mph": ("mile per hour", "miles per hour"),
    "km": ("kilometer", "kilometers"), "cm": ("centimeter", "centimeters"),
    "mm": ("millimeter", "millimeters"), "m": ("meter", "meters"), "kg": ("kilogram", "kilograms"),
    "g": ("gram", "grams"), "mg": ("milligram", "milligrams"), "lb": ("pound", "pounds"),
    "lbs": ("pound", "pounds"), "ft": ("foot", "feet"), "in": ("inch", "inches"),
    "mi": ("mile", "miles"), "ml": ("milliliter", "milliliters"), "l": ("liter", "liters"),
    "ms": ("millisecond", "milliseconds"), "s": ("second", "seconds"), "min": ("minute", "minutes"),
    "h": ("hour", "hours"), "Hz": ("hertz", "hertz"), "kHz": ("kilohertz", "kilohertz"),
    "MHz": ("megahertz", "megahertz"), "GHz": ("gigahertz", "gigahertz"), "V": ("volt", "volts"),
    "W": ("watt", "watts"), "kW": ("kilowatt", "kilowatts"), "mAh": ("milliamp hour", "milliamp hours"),
    "A": ("amp", "amps"), "KB": ("kilobyte", "kilobytes"), "MB": ("megabyte", "megabytes"),
    "GB": ("gigabyte", "gigabytes"), "TB": ("terabyte", "terabytes"),
    "°C": ("degree Celsius", "degrees Celsius"), "°F": ("degree Fahrenheit", "degrees Fahrenheit"),
}
_CURRENCIES = {"$": ("dollar", "dollars", "cent", "cents"), "€": ("euro", "euros", "cent", "cents"),
               "£": ("pound", "pounds", "penny", "pence"), "¥": ("yen", "yen", "sen", "sen")}
_SYMBOLS = {"&": " and ", "+": " plus ", "=": " equals ", "@": " at ", "#": " number ", "%": " percent "}


_ONES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
         "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen",
         "nineteen")
_TENS = ("", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")
_SCALES = ("", " thousand", " million", " billion", " trillion", " quadrillion", " quintillion",
           " sextillion", " septillion", " octillion", " nonillion", " decillion")
_ORDINALS = {"one": "first", "two": "second", "three": "third", "five": "fifth", "eight": "eighth",
             "nine": "ninth", "twelve": "twelfth"}


def _hundreds(n: int) -> str:
    """1 to 999 in words: 'two hundred four', 'forty-two'."""
    hundreds, rest = divmod(n, 100)
    words = [f"{_ONES[hundreds]} hundred"] if hundreds else []
    if rest:
        words.append(_ONES[rest] if rest < 20 else
                     _TENS[rest // 10] + (f"-{_ONES[rest % 10]}" if rest % 10 else ""))
    return " ".join(words)


def _integer(n: int) -> str:
    """A whole number in words, by groups of three digits (digit by digit beyond decillions)."""
    if n == 0:
        return "zero"
    if n >= 1000 ** len(_SCALES):
        return digits(str(n))
    groups = []
    for scale in _SCALES:
        n, group = divmod(n, 1000)
        if group:
            groups.append(_hundreds(group) + scale)
        if not n:
            break
    return " ".join(reversed(groups))


def cardinal(number: str | int) -> str:
    """'1200' -> 'one thousand two hundred'; decimals read 'point' and digit by digit."""
    text = str(number).replace(",", "")
    whole, _, fraction = text.lstrip("-+").partition(".")
    # Past decillions digit by digit, without making an int of thousands of digits (Python refuses).
    significant = whole.lstrip("0")
    spoken = digits(significant) if len(significant) > 3 * len(_SCALES) else _integer(int(significant or "0"))
    words = spoken + (f" point {digits(fraction)}" if fraction else "")
    return f"minus {words}" if text.startswith("-") else words


def ordinal(number: str | int) -> str:
    """'14' -> 'fourteenth', '21' -> 'twenty-first'."""
    head, space, last = cardinal(str(number).replace(",", "").lstrip("+")).rpartition(" ")
    before, hyphen, word = last.rpartition("-")
    word = _ORDINALS.get(word) or (f"{word[:-1]}ieth" if word.endswith("y") else f"{word}th")
    return head + space + before + hyphen + word


def year(number: int) -> str:
    """'1969' -> 'nineteen sixty-nine', '2005' -> 'two thousand five', '1900' -> 'nineteen hundred'."""
    if 2000 <= number <= 2009 or number < 1000 or number >= 10000:
        return cardinal(number)
    high, low = divmod(number, 100)
    if low == 0:
        return f"{cardinal(high)} hundred"
    return f"{cardinal(high)} {'oh ' + _DIGITS[low] if low < 10 else cardinal(low)}"


def digits(text: str) -> str:
    """Each digit by name: '0142' -> 'zero one four two'."""
    return " ".join(_DIGITS[int(d)] for d in text if d.isdecimal())  # not "²", which int() refuses


def spell(text: str) -> str:
    """Letters and digits one by one ('ABC1' -> 'eigh B C one'), for say-as characters."""
    out = []
    for ch in text:
        if ch.isdecimal():
            out.append(_DIGITS[int(ch)])
        elif ch.isalpha():
            # espeak reads a lone "A" as the article; "eigh" gets the letter's name.
            out.append("eigh" if ch in "aA" else ch.upper())
    return " ".join(out)


def telephone(text: str) -> str:
    """Digit groups read digit by digit, with a pause between groups."""
    return ", ".join(digits(group) for group in re.findall(r"\d+", text))


def _money(m: re.Match[str]) -> str:
    one, many, sub_one, sub_many = _CURRENCIES[m["cur"]]
    whole = m["whole"].replace(",", "").lstrip("0")  # as text: it may have thousands of digits
    scale = m["scale"]
    if scale:
        return f"{cardinal(m['whole'] + (m['frac'] or ''))} {scale} {many}"
    parts = [f"{cardinal(whole or '0')} {one if whole == '1' else many}"] if whole or not m["frac"] else []
    if m["frac"]:
        cents = int((m["frac"][1:] + "0")[:2])
        if cents:
            parts.append(f"{cardinal(cents)} {sub_one if cents == 1 else sub_many}")
    return " and ".join(parts) or f"zero {many}"


def _time(m: re.Match[str]) -> str:
    hour, minute = int(m["h"]), int(m["m"])
    words = cardinal(hour)
    if minute == 0:
        words += "" if m["ampm"] else " o'clock"
    elif minute < 10:
        words += f" oh {_DIGITS[minute]}"
    else:
        words += f" {cardinal(minute)}"
    if m["ampm"]:
        words += " " + " ".join(m["ampm"].replace(".", "").upper())
    return words


def _date_iso(m: re.Match[str]) -> str:
    month = int(m["mo"])
    if not 1 <= month <= 12:
        return m[0]
    return f"{_MONTHS[month - 1]} {ordinal(m['d'])}, {year(int(m['y']))}"


def _unit(m: re.Match[str]) -> str:
    one, many = _UNITS[m["unit"]]
    value = m["num"]
    return f"{cardinal(value)} {one if value in ('1', '1.0') else many}"


def _url(m: re.Match[str]) -> str:
    text = re.sub(r"^https?://", "", m[0]).rstrip("/")
    text = text.replace("www.", "w w w dot ")
    return re.sub(r"[./:\-_]", lambda s: {".": " dot ", "/": " slash ", ":": " colon ",
                                          "-": " dash ", "_": " underscore "}[s[0]], text)


def _email(m: re.Match[str]) -> str:
    user, domain = m[0].split("@", 1)
    return f"{_url_text(user)} at {_url_text(domain)}"


def _url_text(text: str) -> str:
    return re.sub(r"[._\-]", lambda s: {".": " dot ", "_": " underscore ", "-": " dash "}[s[0]], text)


_NUM = r"\d{1,3}(?:,\d{3})+|\d+"
_RULES: list[tuple[re.Pattern[str], Callable[[re.Match[str]], str]]] = [
    (re.compile(r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+\b"), _email),
    (re.compile(r"\bhttps?://[^\s]+[^\s.,;:!?)]|\bwww\.[^\s]+[^\s.,;:!?)]"), _url),
    (re.compile(r"(?P<cur>[$€£¥])(?P<whole>" + _NUM + r")(?P<frac>\.\d+)?"
                r"(?:\s?(?P<scale>million|billion|thousand|trillion))?\b"), _money),
    (re.compile(r"\b(?P<num>\d+(?:\.\d+)?)\s?%"), lambda m: f"{cardinal(m['num'])} percent"),
    (re.compile(r"\b(?P<y>\d{4})-(?P<mo>\d{2})-(?P<d>\d{2})\b"), _date_iso),
    (re.compile(r"\b(?P<h>[01]?\d|2[0-3]):(?P<m>[0-5]\d)(?:\s?(?P<ampm>[ap]\.?m\.?)(?=\W|$))?", re.IGNORECASE), _time),
    (re.compile(r"\b(?P<h>1[0-2]|[1-9])\s?(?P<ampm>[ap]\.m\.|[ap]m\b)", re.IGNORECASE),
     lambda m: f"{cardinal(m['h'])} {' '.join(m['ampm'].replace('.', '').upper())}"),
    (re.compile(r"\(?\b\d{3}\)?[ -]\d{3}-\d{4}\b|\b\d{3}-\d{4}\b"), lambda m: telephone(m[0])),
    (re.compile(r"\b(?P<num>\d+)(?:st|nd|rd|th)\b"), lambda m: ordinal(m["num"])),
    (re.compile(r"\b(?:in|since|of|by|from|until|year)\s(?P<y>1[1-9]\d\d|20\d\d)\b", re.IGNORECASE),
     lambda m: m[0][: m.start("y") - m.start()] + year(int(m["y"]))),
    (re.compile(r"^(?P<y>1[1-9]\d\d|20\d\d)(?=,)"), lambda m: year(int(m["y"]))),
    (re.compile(r"(?<![\w.])(?P<num>\d+(?:\.\d+)?)\s?(?P<unit>" + "|".join(
        re.escape(u) for u in sorted(_UNITS, key=len, reverse=True)) + r")(?![\w°])"), _unit),
    (re.compile(r"(?<![\w.])-?(?:" + _NUM + r")(?:\.\d+)?(?![\w])"), lambda m: cardinal(m[0])),
]


def _abbreviations(text: str) -> str:
    # "St." is Saint before a name ("St. James") and Street after one ("Main St.").
    text = re.sub(r"\bSt\.(?=\s+[A-Z])", "Saint", text)
    text = re.sub(r"\bSt\.", "Street", text)
    for short, long in _ABBREVIATIONS.items():
        text = re.sub(r"(?<![\w.])" + re.escape(short) + r"(?=\s|$|[,;:!?])", long, text)
    return text


def normalise(text: str) -> str:
    """Rewrite written forms as the words an English reader would say."""
    text = _abbreviations(text)
    for pattern, reading in _RULES:
        text = pattern.sub(reading, text)
    for symbol, words in _SYMBOLS.items():
        text = text.replace(symbol, words)
    return re.sub(r"[ \t]+", " ", text).strip()
