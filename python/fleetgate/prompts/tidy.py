"""The passes after filler removal: whitespace tidied, and a prose sentence repeated
verbatim dropped."""

from __future__ import annotations

import re
from typing import Final

from fleetgate.prompts.protected import SENTINEL_OPEN

__all__ = ["drop_repeated_sentences", "tidy_whitespace"]

_INNER_SPACES: Final = re.compile(r"(?<=\S)[ \t]{2,}")
_BLANK_RUNS: Final = re.compile(r"\n{3,}")
_SENTENCE_SPLIT: Final = re.compile(r"((?<=[.!?])[ \t]+)")
_ABBREVIATION: Final = re.compile(r"(?:\b[A-Z][a-z]{0,3}|\b[A-Za-z]|\b\w+\.\w+|\b(?:vs|approx|incl|no|fig))\.$")
_NON_PROSE: Final = re.compile(r"[ \t]*(?:[-*+•>|#]|\d{1,3}[.)][ \t])")


def tidy_whitespace(work: str) -> str:
    lines = []
    for line in work.split("\n"):
        stripped = line.lstrip(" \t")
        indent = line[: len(line) - len(stripped)]
        lines.append(indent + _INNER_SPACES.sub(" ", stripped.rstrip(" \t")) if stripped else "")
    return _BLANK_RUNS.sub("\n\n", "\n".join(lines))


def _sentences(line: str) -> list[str]:
    """`line` split into sentences and the spaces between them (alternating, sentences at
    even indexes); "Dr. Ana" or "e.g. this" is not a sentence break."""
    parts = _SENTENCE_SPLIT.split(line)
    merged = [parts[0]]
    for i in range(1, len(parts), 2):
        if _ABBREVIATION.search(merged[-1]):
            merged[-1] += parts[i] + parts[i + 1]
        else:
            merged += [parts[i], parts[i + 1]]
    return merged


def _sentence_key(sentence: str) -> str | None:
    """The sentence as compared for repeats, or None when too short to drop safely."""
    s = sentence.strip()
    if len(s.split()) < 5 or s[-1:] not in (".", "!", "?") or not (s[0].isupper() or s[0] == SENTINEL_OPEN):
        return None
    return s


def drop_repeated_sentences(work: str) -> str:
    """Drops a prose sentence that already appeared, verbatim, earlier in the text. List
    items, headings and table rows are never dropped: the same rule under two headings can
    mean two different scopes."""
    seen: set[str] = set()
    kept_lines: list[str] = []
    changed = False
    for line in work.split("\n"):
        parts = _sentences(line)
        prose = not _NON_PROSE.match(line)
        keep: list[str] = []
        for i in range(0, len(parts), 2):
            key = _sentence_key(parts[i])
            if key is not None and key in seen and prose:
                changed = True          # dropped, with the space before it
                continue
            if key is not None:
                seen.add(key)
            if i and keep:
                keep.append(parts[i - 1])
            keep.append(parts[i])
        new = "".join(keep)
        if new.strip() or not line.strip():
            kept_lines.append(new)
    if not changed:
        return work
    return _BLANK_RUNS.sub("\n\n", "\n".join(kept_lines))
