"""Riva's profanity filter: a profane word keeps its first letter, the rest become asterisks.

Words match whole and case-insensitively ("Shit," -> "S***,", "bullshitting" -> "b***********",
but "shitake" or "Scunthorpe" stay). The built-in list is English and short: common profanities
with their usual inflections. Words that are as often harmless (a "cock" crows, Moby "Dick")
are left out rather than masked where they are not meant.
"""

from __future__ import annotations

import re

# Stems and the endings they take ('' for the stem alone).
_FAMILIES: dict[str, tuple[str, ...]] = {
    "fuck": ("", "s", "ed", "er", "ers", "ing", "in", "face", "head", "heads", "wit", "wits", "off", "up", "ups"),
    "motherfuck": ("er", "ers", "ing", "in"),
    "clusterfuck": ("", "s"),
    "shit": ("", "s", "ty", "tier", "tiest", "ting", "ted", "head", "heads", "hole", "holes", "load"),
    "bullshit": ("", "s", "ting", "ted", "ter", "ters"),
    "horseshit": ("",),
    "dipshit": ("", "s"),
    "apeshit": ("",),
    "batshit": ("",),
    "bitch": ("", "es", "ed", "ing", "y"),
    "sonofabitch": ("",),
    "bastard": ("", "s"),
    "asshole": ("", "s"),
    "arsehole": ("", "s"),
    "ass": ("", "es"),
    "arse": ("", "s"),
    "dumbass": ("", "es"),
    "jackass": ("", "es"),
    "smartass": ("", "es"),
    "badass": ("", "es"),
    "cunt": ("", "s"),
    "twat": ("", "s"),
    "wanker": ("", "s"),
    "wank": ("", "s", "ed", "ing"),
    "bollocks": ("",),
    "bugger": ("", "s", "ed", "ing"),
    "piss": ("", "es", "ed", "er", "ing"),
    "crap": ("", "s", "py", "pier", "piest"),
    "damn": ("", "s", "ed", "ing", "it"),
    "dammit": ("",),
    "goddamn": ("", "ed", "it"),
    "goddammit": ("",),
    "dickhead": ("", "s"),
    "cocksucker": ("", "s"),
    "douche": ("", "s", "bag", "bags"),
    "slut": ("", "s", "ty"),
    "whore": ("", "s"),
    "tits": ("",),
    "titties": ("",),
    "pussy": ("",),
}

PROFANITIES = frozenset(stem + ending for stem, endings in _FAMILIES.items() for ending in endings)
"""The built-in list, lower case, every inflection spelt out."""

# Letters only: an apostrophe, hyphen or digit ends a word ("fuckin'" and "shit's" match).
_WORD = re.compile(r"[^\W\d_]+")


def mask_word(word: str) -> str:
    """A word as the filter shows it: its first letter, then one asterisk per letter."""
    return word[:1] + "*" * (len(word) - 1)


def mask(text: str) -> str:
    """`text` with every profane word masked (see mask_word); everything else as it was."""
    return _WORD.sub(lambda m: mask_word(m[0]) if m[0].lower() in PROFANITIES else m[0], text)
