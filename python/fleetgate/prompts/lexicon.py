"""The compressor's lexicon: the filler phrases it may remove or shorten, the politeness
words it may drop, and the negations no filler may hold (:func:`check_phrase` refuses a
filler with a number or a negation, so removing one never changes an instruction)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Final

__all__ = ["FILLERS", "LEAD_FILLERS", "NEGATIONS", "POLITE_WORDS", "check_phrase"]

# Phrases replaced wherever they occur (in lowercase, or capitalised at a sentence start).
# Each rewrite keeps the meaning: only wordiness goes.
FILLERS: Final[Mapping[str, str]] = {
    "in order to": "to",
    "in order for": "for",
    "so as to": "to",
    "make sure to": "",
    "be sure to": "",
    "make sure that": "ensure that",
    "due to the fact that": "because",
    "owing to the fact that": "because",
    "in view of the fact that": "because",
    "in spite of the fact that": "although",
    "despite the fact that": "although",
    "for the purpose of": "for",
    "in the event that": "if",
    "at this point in time": "now",
    "at the present time": "now",
    "prior to": "before",
    "subsequent to": "after",
    "with regard to": "regarding",
    "with regards to": "regarding",
    "in regard to": "regarding",
    "in regards to": "regarding",
    "at all times": "always",
    "each and every": "every",
    "first and foremost": "first",
    "you are required to": "you must",
    "has the ability to": "can",
    "have the ability to": "can",
    "is able to": "can",
    "are able to": "can",
    "in a timely manner": "promptly",
    "on a daily basis": "daily",
    "on a regular basis": "regularly",
    "a large number of": "many",
    "until such time as": "until",
    "with the exception of": "except",
    "in close proximity to": "near",
    "in the near future": "soon",
}

# Clause openers: removed only where they begin a sentence or follow ", ; :", since
# elsewhere ("You should keep in mind that ...") dropping them breaks the sentence.
LEAD_FILLERS: Final[Mapping[str, str]] = {
    "please note that": "",
    "please be aware that": "",
    "please keep in mind that": "",
    "please remember that": "",
    "it is important to note that": "",
    "it is worth noting that": "",
    "it should be noted that": "",
    "keep in mind that": "",
    "bear in mind that": "",
    "as a matter of fact": "",
    "needless to say": "",
    "I would like you to": "",
    "I want you to": "",
    "I need you to": "",
    "feel free to": "you may",
    "basically": "",
}

# Politeness words, removed only where they lead a sentence or clause and come before a
# lowercase word (a verb: "please reply", "kindly include") or a comma: "a kindly tone",
# "aim to please" and "speak kindly to users" keep them.
POLITE_WORDS: Final[frozenset[str]] = frozenset({"please", "kindly"})

# Words a filler may never contain: removing one would invert an instruction.
NEGATIONS: Final[frozenset[str]] = frozenset({
    "not", "no", "never", "none", "nor", "neither", "nobody", "nothing", "nowhere",
    "cannot", "without", "unless",
})

_NEGATION_TEXT: Final = re.compile(r"n't\b|n’t\b|\bunder no circumstances\b", re.IGNORECASE)


def check_phrase(phrase: str, replacement: str) -> None:
    """A filler must not carry meaning the checks here can see: numbers or negations."""
    for text, what in ((phrase, "filler"), (replacement, "replacement")):
        lowered = text.lower()
        if any(ch.isdigit() for ch in text):
            raise ValueError(f"{what} {text!r} contains a number")
        if _NEGATION_TEXT.search(lowered) or set(re.findall(r"[a-z']+", lowered)) & NEGATIONS:
            raise ValueError(f"{what} {text!r} contains a negation")
        if any(ch in text for ch in "`\"{}@/\n"):
            raise ValueError(f"{what} {text!r} contains a character the compressor protects")
    if not phrase.strip():
        raise ValueError("a filler must not be empty")
