"""Opt-in compression of instructions and system prompts.

The same system prompt is sent, and billed, on every request, so filler in it ("please
note that", "in order to") costs tokens many times over. This compressor removes only
phrases from a fixed lexicon (`FILLERS`, `LEAD_FILLERS`, `POLITE_WORDS`) and redundant
whitespace, and drops a prose sentence repeated verbatim later in the text. It is
conservative on purpose: a prompt is an instruction, and a changed number, a lost "not"
or an altered name changes what the model does. So:

* nothing in the lexicon contains a number or a negation (checked when a `Compressor`
  is made, also for `extra_fillers`), and no other word is ever rewritten: numbers,
  negations ("do not", "never", "under no circumstances") and names pass through as
  they are; the only change to a kept word is capitalising a plain lowercase word that
  starts a sentence once the filler before it is gone;
* a filler matches only in lowercase, or capitalised at the start of a sentence, so
  "Kindly" in the middle of a sentence (a name) or "PLEASE NOTE" is left alone;
* code fences, `inline code`, quoted strings, URLs, e-mail addresses, ``{placeholders}``
  and ``{{template}}`` variables are set aside before anything else and put back
  byte for byte;
* sentence adverbs that could also describe manner ("kindly", "please", "basically")
  are removed only where they lead a sentence or clause, before a lowercase verb.

Whitespace: runs of spaces and tabs inside a line become one space (indentation is
kept), trailing spaces go, and two or more blank lines become one.

The lexicon is :mod:`~fleetgate.prompts.lexicon`, the spans set aside are
:mod:`~fleetgate.prompts.protected`, the whitespace and repeated-sentence passes are
:mod:`~fleetgate.prompts.tidy`, and request bodies are compressed by
:mod:`~fleetgate.prompts.body`.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from fleetgate._core import count_tokens
from fleetgate.prompts.lexicon import FILLERS, LEAD_FILLERS, NEGATIONS, POLITE_WORDS, check_phrase
from fleetgate.prompts.protected import PROTECTED_KINDS, SENTINEL, SENTINEL_CLOSE, SENTINEL_OPEN, protected_pattern
from fleetgate.prompts.tidy import drop_repeated_sentences, tidy_whitespace

__all__ = ["FILLERS", "LEAD_FILLERS", "NEGATIONS", "POLITE_WORDS", "Compressed", "Compressor"]

_LIST_LINE: Final = re.compile(r"[ \t]*(?:(?:[-*+•>]|#{1,6}|\d{1,3}[.)]|[A-Za-z][.)])[ \t]+)?")
_SENTENCE_END_BEFORE: Final = re.compile(r"[.!?:][)\]\"”’']?[ \t]+$")
# "Dr. Kindly" is a name, not the start of a sentence.
_TITLE_BEFORE: Final = re.compile(
    r"\b(?:Mr|Mrs|Ms|Mx|Dr|Prof|Sr|Jr|St|Mt|Rev|Hon|Gen|Capt|Sgt|Lt|Col|Sen|Rep|Gov|Pres|[A-Z])\.[ \t]+$")
_CLAUSE_MARK_BEFORE: Final = re.compile(r"[,;:][ \t]+$")
_TRAILING_COMMA: Final = re.compile(r"[ \t]*,")
_SPACES: Final = re.compile(r"[ \t]*")
_POLITE_NEXT: Final = re.compile(r"[ \t]*,|[ \t]+[a-z]")
_TERMINAL_NEXT: Final = re.compile(r"[ \t]*[.!](?:\s|$)")
_LOWER_WORD: Final = re.compile(r"[a-z]+(?:-[a-z]+)*(?![\w.@/:'’-])")


def _words(phrase: str) -> list[str]:
    return phrase.split()


_Trie = dict[str, "_Trie"]


def _trie_regex(node: _Trie) -> str:
    """An alternation of the phrases in a word trie, sharing their first words ("in
    (?:order (?:to|for)|the event that|...)"): one pass over a prompt instead of trying
    every phrase at every word."""
    alternatives = []
    for word in sorted((w for w in node if w), key=len, reverse=True):
        child = node[word]
        rest = _trie_regex(child)
        if not rest:
            alternatives.append(re.escape(word))
        elif "" in child:
            alternatives.append(rf"{re.escape(word)}(?:[ \t]+(?:{rest}))?")
        else:
            alternatives.append(rf"{re.escape(word)}[ \t]+(?:{rest})")
    return "|".join(alternatives)


@dataclass(frozen=True, slots=True)
class _Entry:
    phrase: str         # canonical spelling ("please note that", "I would like you to")
    replacement: str
    lead_only: bool
    polite: bool


@dataclass(frozen=True, slots=True)
class Compressed:
    """A compressed prompt and its token counts before and after."""

    text: str
    tokens_before: int
    tokens_after: int

    @property
    def saved(self) -> int:
        """Tokens saved (0 when the text came back unchanged)."""
        return self.tokens_before - self.tokens_after


class Compressor:
    """Removes filler phrasing and repeated whitespace from instructions and system prompts.

    Results are memoised (a bounded LRU of `cache_size` texts of up to 200,000 characters)
    because the same system prompt is sent on every request. Thread-safe.
    """

    _MAX_CACHED_CHARS: Final = 200_000

    def __init__(self, model: str = "gpt-4.1-mini", *, extra_fillers: Mapping[str, str] | None = None,
                 cache_size: int = 1024) -> None:
        if cache_size < 0:
            raise ValueError("cache_size must be 0 or more")
        self.model = model
        self._cache_size = cache_size
        self._cache: OrderedDict[str, Compressed] = OrderedDict()
        self._lock = threading.Lock()
        entries: dict[str, _Entry] = {}
        for table, lead in ((FILLERS, False), (LEAD_FILLERS, True), (dict(extra_fillers or {}), False)):
            for phrase, replacement in table.items():
                phrase, replacement = " ".join(_words(phrase)), " ".join(_words(replacement))
                check_phrase(phrase, replacement)
                entries[phrase.lower()] = _Entry(phrase, replacement, lead, False)
        for word in POLITE_WORDS:
            entries[word] = _Entry(word, "", True, True)
        self._entries = entries
        trie: _Trie = {}
        for key in entries:
            node = trie
            for word in _words(key):
                node = node.setdefault(word, {})
            node[""] = {}
        initials = "".join(sorted({key[0] for key in entries}))
        self._pattern = re.compile(rf"(?<![\w'’-])(?=[{re.escape(initials)}])(?:{_trie_regex(trie)})(?![\w'’-])",
                                   re.IGNORECASE)

    def compress(self, text: str) -> Compressed:
        """`text` without filler; unchanged (saved 0) when there is nothing to remove or
        when the result would not have fewer tokens."""
        with self._lock:
            hit = self._cache.get(text)
            if hit is not None:
                self._cache.move_to_end(text)
                return hit
        result = self._compress(text)
        if self._cache_size and len(text) <= self._MAX_CACHED_CHARS:
            with self._lock:
                self._cache[text] = result
                self._cache.move_to_end(text)
                while len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
        return result

    def _compress(self, text: str) -> Compressed:
        before = count_tokens(self.model, text)
        if SENTINEL_OPEN in text or SENTINEL_CLOSE in text:
            return Compressed(text, before, before)
        spans: list[str] = []
        ids: dict[str, int] = {}

        def set_aside(m: re.Match[str]) -> str:
            # The same protected text gets the same sentinel, so repeated sentences that
            # contain it still compare equal.
            index = ids.setdefault(m.group(), len(spans))
            if index == len(spans):
                spans.append(m.group())
            return f"{SENTINEL_OPEN}{index}{SENTINEL_CLOSE}"

        protector = protected_pattern(tuple(trigger in text for trigger, _ in PROTECTED_KINDS))
        work = protector.sub(set_aside, text) if protector else text
        work = self._drop_fillers(work)
        work = tidy_whitespace(work)
        work = drop_repeated_sentences(work)
        result = SENTINEL.sub(lambda m: spans[int(m.group(1))], work)
        if result == text:
            return Compressed(text, before, before)
        after = count_tokens(self.model, result)
        if after > before:
            return Compressed(text, before, before)
        return Compressed(result, before, after)

    def _drop_fillers(self, work: str) -> str:
        out: list[str] = []
        pos = 0
        capitalise = False      # a removed filler began a sentence: capitalise what follows

        def emit(piece: str) -> None:
            nonlocal capitalise
            if capitalise and piece:
                m = _LOWER_WORD.match(piece)
                if m:
                    piece = piece[0].upper() + piece[1:]
                capitalise = False
            if piece:
                out.append(piece)

        for m in self._pattern.finditer(work):
            start, end = m.span()
            if start < pos:
                continue
            matched = " ".join(m.group().split())
            entry = self._entries.get(matched.lower())
            if entry is None:
                continue
            at_start = _at_sentence_start(work, start)
            capitalised = matched != entry.phrase
            if capitalised and not (at_start and matched == entry.phrase[:1].upper() + entry.phrase[1:]):
                continue
            if entry.lead_only and not (at_start or _CLAUSE_MARK_BEFORE.search(work, max(0, start - 8), start)):
                continue
            if entry.polite and not _polite_here(entry.phrase, work, end):
                continue
            emit(work[pos:start])
            if entry.replacement:
                replacement = entry.replacement
                if capitalised or capitalise:
                    replacement = replacement[0].upper() + replacement[1:]
                capitalise = False
                emit(replacement)
                pos = end
                continue
            # Removed outright: take a comma that belonged to the filler and the space after it.
            trailing = _TRAILING_COMMA.match(work, end)
            if trailing:
                end = trailing.end()
            spaces = _SPACES.match(work, end)
            end = spaces.end() if spaces else end
            nxt = work[end:end + 1]
            _rstrip_out(out, " \t")
            if out and out[-1].endswith(",") and (trailing or nxt in ("", "\n", ".", "!", "?", ";", ":")):
                out[-1] = out[-1][:-1]
                _rstrip_out(out, " \t")
            if nxt and nxt not in ".,;:!?)\n" and out and out[-1][-1:] not in ("\n", "(", "\u00a0"):
                out.append(" ")
            if capitalised or at_start:
                capitalise = nxt not in (".", "!", "?")
            pos = end
        emit(work[pos:])
        return "".join(out)


def _polite_here(word: str, work: str, end: int) -> bool:
    """A politeness word is filler before a lowercase word or a comma; "please" also
    at the end of a sentence ("..., please.")."""
    return bool(_POLITE_NEXT.match(work, end) or (word == "please" and _TERMINAL_NEXT.match(work, end)))


def _rstrip_out(out: list[str], chars: str) -> None:
    while out:
        stripped = out[-1].rstrip(chars)
        if stripped:
            out[-1] = stripped
            return
        out.pop()


def _at_sentence_start(work: str, start: int) -> bool:
    """Whether `start` begins a sentence: text start, a line start (after a list marker or
    heading mark), or after ". ", "! ", "? ", ": "."""
    line_start = work.rfind("\n", 0, start) + 1
    if start - line_start <= 16 and _LIST_LINE.fullmatch(work, line_start, start):
        return True
    window = max(line_start, start - 12)
    return bool(_SENTENCE_END_BEFORE.search(work, window, start)) and not _TITLE_BEFORE.search(work, window, start)
