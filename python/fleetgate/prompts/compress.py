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
"""

from __future__ import annotations

import functools
import re
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from fleetgate._core import count_tokens

__all__ = ["FILLERS", "LEAD_FILLERS", "NEGATIONS", "POLITE_WORDS", "Compressed", "Compressor", "compress_body"]

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

_SENTINEL_OPEN: Final = "\ue000"
_SENTINEL_CLOSE: Final = "\ue001"
_SENTINEL = re.compile("\ue000(\\d+)\ue001")

# Spans set aside untouched, each with a string a text must hold for it to apply (so a
# prompt only pays for the kinds it has): fences first (they may hold backticks and
# quotes), then inline code, template variables, URLs, e-mail addresses, quoted strings.
_PROTECTED_KINDS: Final = (
    ("```", r"```.*?(?:```|\Z)"),
    ("~~~", r"(?m:^[ \t]*~~~.*?(?:^[ \t]*~~~|\Z))"),
    ("`", r"``[^\n]*?``|`[^`\n]+`"),
    ("{", r"\{\{[^\n]*?\}\}|\{%[^\n]*?%\}|\{[^{}\n]*\}"),
    ("://", r"\b(?:https?|ftp)://[^\s<>\"'`]*[^\s<>\"'`.,;:!?)\]]"),
    ("www.", r"\bwww\.[^\s<>\"'`]*[^\s<>\"'`.,;:!?)\]]"),
    ("@", r"(?<![\w.+-])[\w.+-]+@[\w-]+(?:\.[\w-]+)+"),
    ('"', r'"[^"\n]*"'),
    ("“", r"“[^”\n]*”"),
    ("«", r"«[^»\n]*»"),
    ("'", r"(?<![\w'’])'[^'\n]{1,200}?'(?!\w)"),
)


@functools.lru_cache(maxsize=256)
def _protector(kinds: tuple[bool, ...]) -> re.Pattern[str] | None:
    """The pattern of the protected spans a text can hold (`kinds` as in _PROTECTED_KINDS)."""
    sources = [source for (_, source), present in zip(_PROTECTED_KINDS, kinds, strict=True) if present]
    return re.compile("|".join(sources), re.DOTALL) if sources else None


_NEGATION_TEXT: Final = re.compile(r"n't\b|n’t\b|\bunder no circumstances\b", re.IGNORECASE)
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
_INNER_SPACES: Final = re.compile(r"(?<=\S)[ \t]{2,}")
_BLANK_RUNS: Final = re.compile(r"\n{3,}")
_SENTENCE_SPLIT: Final = re.compile(r"((?<=[.!?])[ \t]+)")
_ABBREVIATION: Final = re.compile(r"(?:\b[A-Z][a-z]{0,3}|\b[A-Za-z]|\b\w+\.\w+|\b(?:vs|approx|incl|no|fig))\.$")
_NON_PROSE: Final = re.compile(r"[ \t]*(?:[-*+•>|#]|\d{1,3}[.)][ \t])")


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


def _check_phrase(phrase: str, replacement: str) -> None:
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
                _check_phrase(phrase, replacement)
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
        if _SENTINEL_OPEN in text or _SENTINEL_CLOSE in text:
            return Compressed(text, before, before)
        spans: list[str] = []
        ids: dict[str, int] = {}

        def set_aside(m: re.Match[str]) -> str:
            # The same protected text gets the same sentinel, so repeated sentences that
            # contain it still compare equal.
            index = ids.setdefault(m.group(), len(spans))
            if index == len(spans):
                spans.append(m.group())
            return f"{_SENTINEL_OPEN}{index}{_SENTINEL_CLOSE}"

        protector = _protector(tuple(trigger in text for trigger, _ in _PROTECTED_KINDS))
        work = protector.sub(set_aside, text) if protector else text
        work = self._drop_fillers(work)
        work = _tidy_whitespace(work)
        work = _drop_repeated_sentences(work)
        result = _SENTINEL.sub(lambda m: spans[int(m.group(1))], work)
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


def _tidy_whitespace(work: str) -> str:
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
    if len(s.split()) < 5 or s[-1:] not in (".", "!", "?") or not (s[0].isupper() or s[0] == _SENTINEL_OPEN):
        return None
    return s


def _drop_repeated_sentences(work: str) -> str:
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


_CHAT: Final = "/chat/completions"
_RESPONSES: Final = "/responses"
_TEXT_PARTS: Final = ("text", "input_text")
_SYSTEM_ROLES: Final = ("system", "developer")


def _compress_content(compressor: Compressor, content: Any) -> tuple[Any, int] | None:
    """A message's content compressed (a new string or a new list of parts), or None."""
    if isinstance(content, str):
        done = compressor.compress(content)
        return (done.text, done.saved) if done.text != content else None
    if not isinstance(content, list):
        return None
    new_parts: list[Any] = []
    saved = 0
    changed = False
    for part in content:
        if isinstance(part, dict) and part.get("type") in _TEXT_PARTS and isinstance(part.get("text"), str):
            done = compressor.compress(part["text"])
            if done.text != part["text"]:
                part = {**part, "text": done.text}
                saved += done.saved
                changed = True
        new_parts.append(part)
    return (new_parts, saved) if changed else None


def _compress_messages(compressor: Compressor, messages: Any) -> tuple[list[Any], int] | None:
    if not isinstance(messages, list):
        return None
    new: list[Any] = []
    saved = 0
    changed = False
    for message in messages:
        if isinstance(message, dict) and message.get("role") in _SYSTEM_ROLES:
            done = _compress_content(compressor, message.get("content"))
            if done is not None:
                message = {**message, "content": done[0]}
                saved += done[1]
                changed = True
        new.append(message)
    return (new, saved) if changed else None


def compress_body(compressor: Compressor, endpoint: str, body: Mapping[str, Any]) -> tuple[dict[str, Any], int] | None:
    """A new request body with its system and developer messages (chat completions, and
    the `input` items of responses) and its `instructions` (responses) compressed, and the
    tokens saved; None when nothing changed. `body` is not modified: only the changed
    messages and parts are copied. User, assistant and tool messages are never touched."""
    path = endpoint.split("?", 1)[0].rstrip("/")
    new: dict[str, Any] = dict(body)
    saved = 0
    changed = False
    if path.endswith(_CHAT):
        done = _compress_messages(compressor, body.get("messages"))
        if done is not None:
            new["messages"], saved, changed = done[0], done[1], True
    elif path.endswith(_RESPONSES):
        instructions = body.get("instructions")
        if isinstance(instructions, str):
            result = compressor.compress(instructions)
            if result.text != instructions:
                new["instructions"] = result.text
                saved += result.saved
                changed = True
        done = _compress_messages(compressor, body.get("input"))
        if done is not None:
            new["input"] = done[0]
            saved += done[1]
            changed = True
    return (new, saved) if changed else None
