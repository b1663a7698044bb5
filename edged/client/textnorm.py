"""English text normalisation for word error rate: case, punctuation, numbers, common spellings."""

from __future__ import annotations

import re

_ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
         "fifteen sixteen seventeen eighteen nineteen").split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_SCALES = ((10**9, "billion"), (10**6, "million"), (1000, "thousand"), (100, "hundred"))
_ABBREVIATIONS = {"mr": "mister", "mrs": "missus", "dr": "doctor", "st": "saint", "vs": "versus",
                  "ok": "okay", "%": "percent", "&": "and"}
_SPELLINGS = {"colour": "color", "favour": "favor", "honour": "honor", "labour": "labor",
              "behaviour": "behavior", "neighbour": "neighbor", "centre": "center", "theatre": "theater",
              "grey": "gray", "realise": "realize", "organise": "organize"}


def number_words(n: int) -> str:
    """An integer in English words ("1455" -> "one thousand four hundred fifty five")."""
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else " " + _ONES[n % 10])
    for scale, name in _SCALES:
        if n >= scale:
            head, rest = divmod(n, scale)
            return f"{number_words(head)} {name}" + ("" if rest == 0 else " " + number_words(rest))
    raise AssertionError(n)


def _year_words(n: int) -> str:
    """Years said as pairs: 1961 -> nineteen sixty one, 2005 -> two thousand five."""
    head, tail = divmod(n, 100)
    if tail == 0:
        return f"{number_words(head)} hundred"
    if head % 10 == 0:
        return number_words(n)
    return f"{number_words(head)} {number_words(tail) if tail >= 10 else 'oh ' + number_words(tail)}"


def _numbers(match: re.Match[str]) -> str:
    text = match.group(0).replace(",", "")
    if "." in text:
        whole, frac = text.split(".", 1)
        return f"{number_words(int(whole or 0))} point " + " ".join(_ONES[int(d)] for d in frac)
    n = int(text)
    if 1100 <= n <= 2099 and len(text) == 4:
        return _year_words(n)
    return number_words(n) if n < 10**12 else " ".join(_ONES[int(d)] for d in text)


def normalize(text: str) -> str:
    """Lower case, words only: numbers spelled out, punctuation and apostrophes removed."""
    text = text.lower().replace("\u2019", "'")
    text = re.sub(r"(\d)(st|nd|rd|th)\b", r"\1", text)
    text = re.sub(r"\$(\d[\d,]*(?:\.\d+)?)", r"\1 dollars", text)
    text = re.sub(r"\d[\d,]*(?:\.\d+)?", lambda m: " " + _numbers(m) + " ", text)
    text = re.sub(r"[%&]", lambda m: f" {_ABBREVIATIONS[m.group(0)]} ", text)
    text = text.replace("'", "")
    words = re.sub(r"[^a-z0-9]+", " ", text).split()
    return " ".join(_SPELLINGS.get(_ABBREVIATIONS.get(w, w), _ABBREVIATIONS.get(w, w)) for w in words)


def edit_distance(ref: list[str], hyp: list[str]) -> int:
    """Word-level Levenshtein distance (substitutions, insertions, deletions)."""
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1]


def word_errors(reference: str, hypothesis: str) -> tuple[int, int]:
    """(errors, reference words) after normalising both texts the same way."""
    ref, hyp = normalize(reference).split(), normalize(hypothesis).split()
    return edit_distance(ref, hyp), len(ref)
