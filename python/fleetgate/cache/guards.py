"""Guards against near-miss answers: two prompts close enough for the embedder may still
ask different things. A candidate is refused when the prompts differ in

- **negation**: a "not", "never", "without", "n't" … on one side only, or a word against
  its negated form ("safe" / "unsafe", "legal" / "illegal");
- **numbers**: digits or number words ("3", "three", "2.5", "v2");
- **dates**: months, weekdays, "today" / "tomorrow", "last week" / "next week", years;
- **scope**: a word against its opposite ("first" / "last", "enable" / "disable",
  "import" / "export") or a different quantifier ("all" / "only");
- **entities**: a name on one side that the other lacks (capitalised mid-sentence,
  an acronym, or a word that the other prompt replaced with an unrelated one).

The last needs word meanings: `changed_terms` gives the words that replaced each other,
and the caller (which holds the embedder) decides whether they are related.
"""

from __future__ import annotations

import difflib
import re
from collections import Counter
from dataclasses import dataclass

__all__ = ["NEAR_MISS_GUARDS", "Prompt", "changed_terms", "near_miss"]

_WORD = re.compile(r"[A-Za-z0-9]+(?:[.'’][A-Za-z0-9]+)*")

_NEGATIONS = frozenset({"not", "no", "never", "none", "nobody", "nothing", "neither", "nor", "without", "cannot",
                        "nowhere", "lacking", "lacks", "excluding", "except", "non"})
_NEGATED_PREFIXES = ("un", "in", "im", "il", "ir", "dis", "non", "de", "ab", "a")

_NUMBER_WORDS: dict[str, float] = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen twenty".split())}
_NUMBER_WORDS |= {"thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90,
                  "hundred": 100, "thousand": 1000, "million": 10**6, "billion": 10**9, "trillion": 10**12,
                  "dozen": 12, "half": 0.5, "quarter": 0.25, "twice": 2, "once": 1, "double": 2, "triple": 3,
                  "single": 1, "couple": 2, "k": 1000, "m": 10**6, "bn": 10**9}

#: ("may", "mar", "sat", "sun", "wed" and "fall" are left out: too often not dates.)
_MONTHS = ("january february march april june july august september october november december "
           "jan feb apr jun jul aug sep sept oct nov dec").split()
_DATE_WORDS = frozenset(_MONTHS) | frozenset(
    "monday tuesday wednesday thursday friday saturday sunday mon tue tues thu thur thurs fri "
    "today tomorrow yesterday tonight morning afternoon evening night weekend weekday "
    "spring summer autumn winter christmas easter noon midnight "
    "am pm q1 q2 q3 q4 h1 h2 last next previous coming upcoming ago later earlier".split())

_OPPOSITES = [
    ("first", "last"), ("first", "second"), ("enable", "disable"), ("enabled", "disabled"), ("on", "off"),
    ("increase", "decrease"), ("increase", "reduce"), ("raise", "lower"), ("import", "export"),
    ("upload", "download"), ("minimum", "maximum"), ("min", "max"), ("before", "after"), ("encrypt", "decrypt"),
    ("encode", "decode"), ("buy", "sell"), ("buying", "selling"), ("beginner", "advanced"), ("beginners", "experts"),
    ("add", "remove"), ("add", "delete"), ("insert", "delete"), ("create", "delete"), ("install", "uninstall"),
    ("open", "close"), ("start", "stop"), ("start", "end"), ("begin", "end"), ("beginning", "end"),
    ("in", "out"), ("up", "down"), ("more", "less"), ("more", "fewer"), ("most", "least"), ("higher", "lower"),
    ("high", "low"), ("long", "short"), ("longest", "shortest"), ("old", "new"), ("oldest", "newest"),
    ("older", "newer"), ("push", "pull"), ("send", "receive"), ("win", "lose"), ("input", "output"),
    ("allow", "block"), ("allow", "deny"), ("accept", "reject"), ("include", "exclude"), ("ascending", "descending"),
    ("left", "right"), ("above", "below"), ("inside", "outside"), ("internal", "external"), ("cheapest", "expensive"),
    ("cheap", "expensive"), ("fastest", "slowest"), ("fast", "slow"), ("faster", "slower"), ("best", "worst"),
    ("better", "worse"), ("pros", "cons"), ("advantages", "disadvantages"), ("benefits", "risks"), ("hot", "cold"),
    ("summary", "full"), ("summarize", "expand"), ("short", "detailed"), ("brief", "detailed"), ("lock", "unlock"),
    ("subscribe", "unsubscribe"), ("join", "leave"), ("connect", "disconnect"), ("login", "logout"),
    ("log in", "log out"), ("sign in", "sign out"), ("upper", "lower"), ("uppercase", "lowercase"), ("top", "bottom"),
    ("north", "south"), ("east", "west"), ("male", "female"), ("men", "women"), ("adult", "child"),
    ("adults", "children"), ("adults", "kids"), ("positive", "negative"), ("gain", "loss"), ("profit", "loss"),
    ("income", "expense"), ("credit", "debit"), ("deposit", "withdraw"), ("lend", "borrow"), ("give", "take"),
    ("read", "write"), ("get", "set"), ("show", "hide"), ("visible", "hidden"),
    ("public", "private"), ("client", "server"), ("frontend", "backend"), ("sync", "async"), ("synchronous",
    "asynchronous"), ("static", "dynamic"), ("compile", "decompile"), ("zip", "unzip"), ("merge", "split"),
    ("join", "split"), ("singular", "plural"), ("past", "future"), ("raw", "cooked"), ("freeze", "thaw"),
    ("heat", "cool"), ("arrival", "departure"), ("arrive", "depart"), ("inbound", "outbound"), ("to", "from"),
    ("over", "under"), ("forward", "backward"), ("next", "previous"), ("all", "only"), ("all", "some"),
    ("every", "some"), ("always", "sometimes"), ("always", "never"), ("must", "may"), ("required", "optional"),
    ("legal", "illegal"), ("grams", "ounces"), ("celsius", "fahrenheit"), ("miles", "kilometers"), ("km", "miles"),
    ("metric", "imperial"), ("send", "request"), ("turn on", "turn off"), ("switch on", "switch off"),
    ("highest", "lowest"), ("largest", "smallest"), ("biggest", "smallest"), ("tallest", "shortest"),
    ("hottest", "coldest"), ("daily", "weekly"), ("daily", "monthly"), ("weekly", "monthly"), ("monthly", "yearly"),
    ("monthly", "annual"), ("hourly", "daily"), ("lbs", "kg"), ("pounds", "kilograms"), ("inches", "centimeters"), ("feet", "meters"),
]
_OPPOSITE = {(a, b) for a, b in _OPPOSITES} | {(b, a) for a, b in _OPPOSITES}
#: Quantifiers that change what is asked about ("every" counts as "all").
_QUANTIFIERS = {"all": "all", "every": "all", "only": "only", "both": "both", "none": "none", "most": "most",
                "few": "few"}
#: Words that give a direction: with them, the order of the other words matters
#: ("PDF to Word" is not "Word to PDF").
_DIRECTIONS = frozenset("to into from than vs versus over under before after".split())

#: Words that carry no content of their own: a paraphrase may add, drop or swap them freely.
_FILLER = frozenset((
    "a an the is are was were be been being am do does did doing done have has had having i me my mine we us our "
    "you your yours it its it's this that these those there here what which who whom whose how why when where "
    "can could would should will shall might may must please kindly tell explain show give let know want need "
    "like just really actually basically simply quite very so too also even still again ever "
    "and or but if then than of to for in on at by with from into about as up out over "
    "some any thing things way ways something anything someone anyone get got make made go "
    "help hi hello hey thanks thank you'd i'd i'm i've you're what's how's who's that's it'd "
    "best good proper correct right easiest simplest quick quickly possible exactly".split()))


@dataclass(frozen=True)
class Prompt:
    """A prompt's words, read once for every comparison it takes part in."""

    text: str
    words: tuple[str, ...]
    names: frozenset[str]

    @classmethod
    def of(cls, text: str) -> Prompt:
        found = [(m.group(), m.start()) for m in _WORD.finditer(text)]
        words = tuple(_word(w) for w, _ in found)
        return cls(text, words, frozenset(_names(text, found)))


#: Every reason :func:`near_miss` (and the semantic layer's term check) may give.
NEAR_MISS_GUARDS = ("negation", "number", "date", "scope", "entity")


def near_miss(a: Prompt, b: Prompt) -> str | None:
    """Why `b` must not be served `a`'s answer ("negation", "number", "date", "scope",
    "entity"), or None when no guard objects."""
    if _negations(a.words) != _negations(b.words) or _negated_pair(a.words, b.words):
        return "negation"
    if _numbers(a.words) != _numbers(b.words):
        return "number"
    if _dates(a.words) != _dates(b.words):
        return "date"
    if (_opposed(a.words, b.words) or _quantifiers(a.words) != _quantifiers(b.words)
            or _reversed(a.words, b.words)):
        return "scope"
    if not a.names <= set(b.words) or not b.names <= set(a.words):
        return "entity"
    return None


def changed_terms(a: Prompt, b: Prompt) -> list[tuple[str, str]]:
    """The content words that replaced one another between two prompts that are otherwise
    the same: one span of at most three words each side (aligned word by word; fillers,
    and words present on both sides, left out). Empty for prompts reworded more widely,
    whose similarity already speaks for them."""
    left = [w for w in a.words if w not in _FILLER]
    right = [w for w in b.words if w not in _FILLER]
    pairs = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(a=left, b=right, autojunk=False).get_opcodes():
        if op != "replace":
            continue
        old = [w for w in left[i1:i2] if w not in right]
        new = [w for w in right[j1:j2] if w not in left]
        if old and new:
            pairs.append((" ".join(old), " ".join(new)))
    if len(pairs) != 1 or any(len(side.split()) > 3 for side in pairs[0]):
        return []
    return pairs


def _names(text: str, found: list[tuple[str, int]]) -> set[str]:
    """Words written as names: capitalised away from a sentence's start, or acronyms."""
    names = set()
    for word, start in found:
        # The last character before the word that is not a space (a line break counts):
        # scanned back over the spaces only, not copied, so a long prompt stays linear.
        at = start - 1
        while at >= 0 and text[at] in " \t\r\f\v":
            at -= 1
        starts_sentence = at < 0 or text[at] in ".?!:;\"'(\n"
        acronym = len(word) > 1 and word.isupper()
        if (acronym or (word[0].isupper() and not starts_sentence)) and word.lower() not in _FILLER:
            names.add(_word(word))
    return names


def _word(word: str) -> str:
    """A word as compared: lower case, straight apostrophe, no possessive ("France's" → "france")."""
    word = word.lower().replace("’", "'")
    return word[:-2] if word.endswith("'s") else word


def _negations(words: tuple[str, ...]) -> int:
    return sum(1 for w in words if w in _NEGATIONS or w.endswith("n't"))


def _negated_pair(a: tuple[str, ...], b: tuple[str, ...]) -> bool:
    """A word on one side and its negated form on the other ("safe" / "unsafe")."""
    left, right = set(a), set(b)
    for ours, theirs in ((left - right, right), (right - left, left)):
        for word in ours:
            for prefix in _NEGATED_PREFIXES:
                if word.startswith(prefix) and len(word) - len(prefix) >= 3 and word[len(prefix):] in theirs:
                    return True
    return False


def _numbers(words: tuple[str, ...]) -> Counter[float | str]:
    found: Counter[float | str] = Counter()
    for w in words:
        if w in _NUMBER_WORDS:
            found[_NUMBER_WORDS[w]] += 1
        elif any(c.isdigit() for c in w):
            digits = w.rstrip("stndrdth") if w[:1].isdigit() else w  # "3rd" → "3"
            try:
                found[float(digits)] += 1
            except ValueError:
                found[w] += 1  # "v2", "gpt4", "3.11.2": compared as written
    return found


def _dates(words: tuple[str, ...]) -> frozenset[str]:
    return frozenset(w for w in words if w in _DATE_WORDS)


def _opposed(a: tuple[str, ...], b: tuple[str, ...]) -> bool:
    left, right = set(a) | _bigrams(a), set(b) | _bigrams(b)
    only_left, only_right = left - right, right - left
    return any((x, y) in _OPPOSITE for x in only_left for y in only_right)


def _bigrams(words: tuple[str, ...]) -> set[str]:
    return {f"{x} {y}" for x, y in zip(words, words[1:])}


def _quantifiers(words: tuple[str, ...]) -> frozenset[str]:
    return frozenset(_QUANTIFIERS[w] for w in words if w in _QUANTIFIERS)


def _reversed(a: tuple[str, ...], b: tuple[str, ...]) -> bool:
    """Words in one order on one side and the other order on the other, where a direction
    word makes order matter: "pounds to kilograms" / "kilograms to pounds", and (articles
    and letters too) right around the direction word: "from A to Z" / "from Z to A"."""
    if not (_DIRECTIONS & set(a) and _DIRECTIONS & set(b)):
        return False
    shared = [w for w in dict.fromkeys(a) if w in b and w not in _FILLER and w not in _DIRECTIONS]
    where = {w: b.index(w) for w in shared}
    if any(where[x] > where[y] for i, x in enumerate(shared) for y in shared[i + 1:]):
        return True
    ours = {(x, d, y) for x, d, y in zip(a, a[1:], a[2:]) if d in _DIRECTIONS and x != y}
    return any((y, d, x) in ours for x, d, y in zip(b, b[1:], b[2:]) if d in _DIRECTIONS)
