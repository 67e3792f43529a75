"""How well a prompt template uses OpenAI's prompt caching.

OpenAI caches prompt prefixes by itself for prompts of 1,024 tokens or more, in 128-token
steps, and reuses only an identical prefix: the cached part of a prompt ends where it
first differs from an earlier one. Cached tokens are cheaper and faster, so a template
should put what stays the same (tool definitions, instructions, examples) first and what
changes (user input, retrieved documents, dates, ids) last. The answer's usage says how
much was cached: ``usage.prompt_tokens_details.cached_tokens`` (chat completions) or
``usage.input_tokens_details.cached_tokens`` (responses).

`LayoutTracker` keeps a small sample of the prompts of each template (in memory, bounded)
and the usage totals; `analyze` compares the sampled prompts: the longest prefix they all
share, the longest suffix, and the blocks they share in between. A template whose shared
part is large but comes after the part that changes is flagged ``dynamic_first``. Reports
speak in token counts and name templates by their key only: prompt text never leaves the
tracker.
"""

from __future__ import annotations

import json
import os
import random
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from difflib import SequenceMatcher
from typing import Any, Final

from fleetgate._core import count_tokens

__all__ = ["CACHE_INCREMENT", "CACHE_MIN_TOKENS", "LayoutTracker", "TemplateLayout", "analyze", "cacheable_tokens",
           "flatten", "render_report"]

CACHE_MIN_TOKENS: Final = 1024      # OpenAI caches nothing of a shorter prompt
CACHE_INCREMENT: Final = 128        # cached prefixes grow in steps of this many tokens

_LARGE_STABLE_TOKENS: Final = 256   # a shared part this big (or 30% of the prompt) matters
_LARGE_STABLE_SHARE: Final = 0.30
_MIN_MOVABLE_TOKENS: Final = 64     # shared tokens after the first change worth moving
_COMPARE_CHARS: Final = 20_000      # the block search looks at this much of each end
_MIN_BLOCK_CHARS: Final = 32
_MAX_BLOCKS: Final = 32
_MAX_PROMPT_CHARS: Final = 200_000  # longer prompts are sampled by their head
_SECTION: Final = re.compile(r"(?:^|\n)\[(tools|instructions|system|developer|user|assistant|tool|function|item)\]\n")
_SEGMENT: Final = re.compile(r"(?<=[\n.!?])")
# What usually makes an early part of a system message change on every request.
_VOLATILE: Final = re.compile(
    r"\d{4}-\d{2}-\d{2}|\d{1,2}[:/.]\d{2}|\b[0-9a-f]{8}-[0-9a-f]{4}|\b\d{3,}\b|\b[A-Z][a-z]+ \d{1,2}\b"
    r"|\b(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun)[a-z]*\b|\b(?:id|ID|Id)\b|\b[A-Z][a-z]+\b"
)


def cacheable_tokens(prefix_tokens: int) -> int:
    """How much of a stable prefix of `prefix_tokens` tokens OpenAI can serve from its cache:
    0 under 1,024, then 1,024 plus whole steps of 128."""
    if prefix_tokens < CACHE_MIN_TOKENS:
        return 0
    return CACHE_MIN_TOKENS + (prefix_tokens - CACHE_MIN_TOKENS) // CACHE_INCREMENT * CACHE_INCREMENT


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if isinstance(part, dict):
                text = part.get("text")
                texts.append(text if isinstance(text, str) else f"[{part.get('type', 'part')}]")
            elif isinstance(part, str):
                texts.append(part)
        return "\n".join(texts)
    return "" if content is None else json.dumps(content, ensure_ascii=False, default=str)


def _item_text(item: Any) -> str:
    if isinstance(item, str):
        return "[user]\n" + item
    if not isinstance(item, Mapping):
        return "[item]\n" + json.dumps(item, ensure_ascii=False, default=str)
    role = item.get("role")
    if role is None:     # responses items without a role: function calls and their outputs
        rest = {k: v for k, v in item.items() if k != "id"}
        return "[item]\n" + json.dumps(rest, ensure_ascii=False, default=str)
    text = f"[{role}]\n" + _content_text(item.get("content"))
    extras = {k: item[k] for k in ("tool_calls", "function_call", "name", "tool_call_id") if item.get(k) is not None}
    if extras:
        text += "\n" + json.dumps(extras, ensure_ascii=False, default=str)
    return text


def flatten(endpoint: str, body: Mapping[str, Any]) -> str:
    """The prompt in the order OpenAI reads it: tool definitions (JSON), then the
    instructions (responses), then the messages or input items in order, each tagged with
    its role ("[system]", "[user]", ...). `endpoint` is the request path
    ("/chat/completions", "/responses"); the body's own keys decide what is read."""
    sections: list[str] = []
    tools = body.get("tools") or body.get("functions")
    if tools:
        sections.append("[tools]\n" + json.dumps(tools, ensure_ascii=False, separators=(",", ":"), default=str))
    instructions = body.get("instructions")
    if isinstance(instructions, str) and instructions:
        sections.append("[instructions]\n" + instructions)
    path = endpoint.split("?", 1)[0].rstrip("/")
    items: Any = body.get("input") if path.endswith("/responses") else body.get("messages", body.get("input"))
    if items is None and isinstance(body.get("prompt"), str):   # legacy completions
        items = body["prompt"]
    if isinstance(items, str):
        sections.append("[user]\n" + items)
    elif isinstance(items, list):
        sections.extend(_item_text(item) for item in items)
    return "\n".join(sections)


def _requests(n: int) -> str:
    return f"{n:,} request{'' if n == 1 else 's'}"


@dataclass(frozen=True)
class TemplateLayout:
    """What the sampled prompts of one template share, in tokens, and what to change."""

    template: str
    requests: int               # requests observed
    prompt_tokens: int          # average prompt tokens of the sampled prompts
    stable_prefix_tokens: int   # the longest prefix all sampled prompts share
    stable_tokens: int          # all text every sampled prompt shares: prefix, suffix and blocks between
    cached_share: float | None  # cached / prompt tokens from the answers' usage; None without usage
    dynamic_first: bool         # a sizeable shared part comes after the part that changes
    advice: list[str]           # what to change, in sentences (token counts, never prompt text)
    samples: int = 0            # prompts compared; under 2 the figures are unknown

    def render(self) -> str:
        """A few lines on this template: its figures and the advice."""
        cached = "unknown" if self.cached_share is None else f"{self.cached_share:.0%}"
        if self.samples < 2:
            lines = [f"{self.template}: {_requests(self.requests)}, {self.prompt_tokens:,} prompt tokens on average, "
                     f"layout unknown, cached {cached}"]
            lines += [f"  - {line}" for line in self.advice]
            return "\n".join(lines)
        lines = [
            f"{self.template}: {_requests(self.requests)}, {self.prompt_tokens:,} prompt tokens on average, "
            f"stable prefix {self.stable_prefix_tokens:,} tokens, stable in all {self.stable_tokens:,} tokens, "
            f"cacheable {cacheable_tokens(self.stable_prefix_tokens):,} tokens, cached {cached}"
            + (" (changing part first)" if self.dynamic_first else "")
        ]
        lines += [f"  - {line}" for line in self.advice]
        return "\n".join(lines)


def _common_prefix_len(texts: Sequence[str]) -> int:
    return len(os.path.commonprefix(list(texts)))


def _common_suffix_len(texts: Sequence[str], limit: int) -> int:
    """The longest suffix shared by all `texts`, at most `limit` characters (so it does not
    overlap the common prefix)."""
    tails = [t[len(t) - limit:] if limit else "" for t in texts]
    return len(os.path.commonprefix([t[::-1] for t in tails]))


def _capped(text: str) -> str:
    if len(text) <= 2 * _COMPARE_CHARS:
        return text
    return text[:_COMPARE_CHARS] + "\x00" + text[-_COMPARE_CHARS:]


def _shared_blocks(middles: Sequence[str]) -> list[str]:
    """Blocks of text every one of `middles` contains, disjoint in the first one, longest
    first. Found by matching the first two at sentence and line granularity (difflib on
    segments, so 50k-character prompts take milliseconds), keeping the matches every other
    sample contains too, each widened character by character as far as all samples agree."""
    if len(middles) < 2 or not middles[0] or not middles[1]:
        return []
    a_segments = [s for s in _SEGMENT.split(_capped(middles[0])) if s]
    b_segments = [s for s in _SEGMENT.split(_capped(middles[1])) if s]
    matcher = SequenceMatcher(None, a_segments, b_segments, autojunk=False)
    candidates = []
    for block in matcher.get_matching_blocks():
        if block.size:
            text = "".join(a_segments[block.a:block.a + block.size])
            if len(text) >= _MIN_BLOCK_CHARS:
                candidates.append(text)
    candidates.sort(key=len, reverse=True)
    taken: list[tuple[int, int]] = []
    blocks: list[str] = []
    for text in candidates[:_MAX_BLOCKS]:
        positions = [m.find(text) for m in middles]
        if min(positions) < 0:
            continue
        # Widen to the left and right while every sample has the same characters there.
        left = len(os.path.commonprefix([m[:p][::-1] for m, p in zip(middles, positions, strict=True)]))
        right = len(os.path.commonprefix([m[p + len(text):] for m, p in zip(middles, positions, strict=True)]))
        start, end = positions[0] - left, positions[0] + len(text) + right
        if any(start < e and s < end for s, e in taken):
            continue
        taken.append((start, end))
        blocks.append(middles[0][start:end])
    return blocks


def _section_at(text: str, position: int) -> str | None:
    """The role tag of the section of a flattened prompt that `position` falls in."""
    found = None
    for m in _SECTION.finditer(text, 0, position + 1):
        found = m.group(1)
    return found


def analyze(template: str, prompts: Sequence[str], *, model: str = "gpt-4.1-mini", requests: int | None = None,
            prompt_tokens: int = 0, cached_tokens: int = 0) -> TemplateLayout:
    """The layout of one template from sampled flattened prompts (see `flatten`), with the
    summed prompt and cached tokens of the answers' usage when known. Two samples at least
    are needed to tell what stays from what changes."""
    n = len(prompts)
    requests = n if requests is None else requests
    cached_share = cached_tokens / prompt_tokens if prompt_tokens > 0 else None
    average = round(sum(count_tokens(model, p) for p in prompts) / n) if n else 0
    if n < 2:
        return TemplateLayout(template, requests, average, 0, 0, cached_share, False, [
            f"Only {n} request{'' if n == 1 else 's'} sampled: at least 2 are needed to tell the part of the "
            "prompt that stays the same from the part that changes."], samples=n)
    prefix_len = _common_prefix_len(prompts)
    shortest = min(len(p) for p in prompts)
    suffix_len = _common_suffix_len(prompts, shortest - prefix_len)
    first = prompts[0]
    prefix_tokens = count_tokens(model, first[:prefix_len]) if prefix_len else 0
    suffix_tokens = count_tokens(model, first[len(first) - suffix_len:]) if suffix_len else 0
    middles = [p[prefix_len:len(p) - suffix_len] for p in prompts]
    block_tokens = [count_tokens(model, b) for b in _shared_blocks(middles)]
    stable = prefix_tokens + suffix_tokens + sum(block_tokens)
    movable = stable - prefix_tokens
    large = stable >= _LARGE_STABLE_TOKENS or (average > 0 and stable >= _LARGE_STABLE_SHARE * average)
    dynamic_first = large and movable >= _MIN_MOVABLE_TOKENS and prefix_tokens < stable / 2

    advice: list[str] = []
    section = _section_at(first, prefix_len) if prefix_len < len(first) else None
    if dynamic_first:
        never = " is never cached" if prefix_tokens < CACHE_MIN_TOKENS else " after the first change is never cached"
        advice.append(
            f"Move the {movable:,} tokens that every request shares (instructions, examples, tool definitions) "
            f"before the part that changes (user input, documents, dates, ids): OpenAI reuses only an identical "
            f"prefix, so this template's stable part{never}.")
    if section == "tools" and movable >= _MIN_MOVABLE_TOKENS:
        advice.append(
            "The tool definitions differ between requests, and they come first in the prompt: send the same tools "
            "in the same order on every request (mark unusable ones in the instructions instead), or nothing "
            "after them is cached.")
    elif section in ("system", "developer", "instructions") and movable >= _MIN_MOVABLE_TOKENS:
        where = "instructions" if section == "instructions" else f"{section} message"
        # The word the prompts diverge in ("2026-11-2|5"), then what differs.
        partial = re.split(r"\s", first[max(0, prefix_len - 24):prefix_len])[-1]
        if any(_VOLATILE.search(partial + p[prefix_len:prefix_len + 40]) for p in prompts):
            advice.append(
                f"Dates, ids or names early in the {where} change the prefix on every request "
                f"after {prefix_tokens:,} tokens: move them to the end.")
        else:
            advice.append(
                f"The {where} changes after {prefix_tokens:,} tokens on every request: "
                "keep it identical and put what varies at the end or in a later message.")
    if average < CACHE_MIN_TOKENS:
        advice.append(
            f"Prompts average {average:,} tokens, under the 1,024 OpenAI needs before it caches anything: "
            "layout does not change the cost of this template.")
    elif prefix_tokens < CACHE_MIN_TOKENS and not dynamic_first:
        advice.append(
            f"The stable prefix is {prefix_tokens:,} tokens, under the 1,024 a cached prefix needs: no request of "
            "this template is served from the cache.")
    expected = cacheable_tokens(prefix_tokens) / average if average else 0.0
    if cached_share is not None and expected >= 0.2 and cached_share < expected / 2:
        advice.append(
            f"Only {cached_share:.0%} of prompt tokens came from the cache, though the {prefix_tokens:,}-token "
            f"stable prefix could cover about {expected:.0%}: OpenAI keeps a prefix for a few minutes of "
            "inactivity, so sparse traffic misses it; a prompt_cache_key shared by this template's requests "
            "helps them reach the same cache.")
    return TemplateLayout(template, requests, average, prefix_tokens, stable, cached_share, dynamic_first, advice,
                          samples=n)


@dataclass
class _Template:
    requests: int = 0
    samples: list[str] = field(default_factory=list)
    prompt_tokens: int = 0
    cached_tokens: int = 0


def _usage_tokens(usage: Mapping[str, Any]) -> tuple[int, int]:
    """(prompt tokens, cached tokens) from a chat or responses usage object."""
    if "input_tokens" in usage:
        prompt, details = usage.get("input_tokens"), usage.get("input_tokens_details")
    else:
        prompt, details = usage.get("prompt_tokens"), usage.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, Mapping) else None
    return (prompt if isinstance(prompt, int) else 0, cached if isinstance(cached, int) else 0)


class LayoutTracker:
    """Per template key, a bounded sample of request prompts (the flattened prompt text in
    order: tools, instructions, messages) and cached-token totals from usage.

    Samples are a reservoir of `samples` prompts per template (every request equally
    likely to be kept), at most `max_templates` templates (later ones are not tracked) and
    the first 200,000 characters of a prompt. Thread-safe; `observe` flattens the body only
    when it keeps it."""

    def __init__(self, samples: int = 32, model: str = "gpt-4.1-mini", *, max_templates: int = 512,
                 seed: int | None = None) -> None:
        if samples < 1:
            raise ValueError("samples must be 1 or more")
        self.samples = samples
        self.model = model
        self.max_templates = max_templates
        self._templates: dict[str, _Template] = {}
        self._lock = threading.Lock()
        self._random = random.Random(seed)

    def _slot(self, template: str) -> tuple[_Template, int] | None:
        """Counts the request; the sample slot its prompt goes to (append at len), or None."""
        state = self._templates.get(template)
        if state is None:
            if len(self._templates) >= self.max_templates:
                return None
            state = self._templates[template] = _Template()
        state.requests += 1
        if len(state.samples) < self.samples:
            return state, len(state.samples)
        index = self._random.randrange(state.requests)
        return (state, index) if index < self.samples else None

    def observe(self, template: str, endpoint: str, body: Mapping[str, Any]) -> None:
        """Counts a request of `template` and may keep its prompt in the sample."""
        with self._lock:
            slot = self._slot(template)
        if slot is None:
            return
        prompt = flatten(endpoint, body)[:_MAX_PROMPT_CHARS]
        state, index = slot
        with self._lock:
            if index < len(state.samples):
                state.samples[index] = prompt
            elif len(state.samples) < self.samples:
                state.samples.append(prompt)

    def usage(self, template: str, usage: Mapping[str, Any]) -> None:
        """Adds the prompt and cached tokens of an answer's usage (chat or responses shape)."""
        prompt, cached = _usage_tokens(usage)
        with self._lock:
            state = self._templates.get(template)
            if state is None:
                if len(self._templates) >= self.max_templates:
                    return
                state = self._templates[template] = _Template()
            state.prompt_tokens += prompt
            state.cached_tokens += cached

    def report(self) -> list[TemplateLayout]:
        """The layout of every tracked template, by key."""
        with self._lock:
            snapshot = [(key, s.requests, list(s.samples), s.prompt_tokens, s.cached_tokens)
                        for key, s in sorted(self._templates.items())]
        return [analyze(key, samples, model=self.model, requests=requests, prompt_tokens=prompt, cached_tokens=cached)
                for key, requests, samples, prompt, cached in snapshot]


def _cell(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def render_report(layouts: Sequence[TemplateLayout]) -> str:
    """A plain-text table of the templates' figures, then their advice."""
    if not layouts:
        return "No prompt templates observed."
    width = min(32, max(8, *(len(t.template) for t in layouts)))
    head = (f"{'template':<{width}}  {'requests':>8}  {'prompt':>7}  {'stable prefix':>13}  {'stable':>7}  "
            f"{'cacheable':>9}  {'cached':>6}  layout")
    rows = [head, "-" * len(head)]
    for t in layouts:
        cached = "-" if t.cached_share is None else f"{t.cached_share:.0%}"
        if t.samples < 2:
            verdict = "unknown"
        else:
            verdict = "changing part first" if t.dynamic_first else "ok"
        rows.append(f"{_cell(t.template, width):<{width}}  {t.requests:>8,}  {t.prompt_tokens:>7,}  "
                    f"{t.stable_prefix_tokens:>13,}  {t.stable_tokens:>7,}  {cacheable_tokens(t.stable_prefix_tokens):>9,}  "
                    f"{cached:>6}  {verdict}")
    advice = [f"{t.template}: {line}" for t in layouts for line in t.advice]
    if advice:
        rows += ["", "Advice:"] + [f"- {line}" for line in advice]
    return "\n".join(rows)
