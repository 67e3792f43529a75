"""Token budgets by request type: a preset names the model, the most input tokens and the
most output tokens a type of request may use.

    [presets.summarize]
    model = "gpt-4.1-mini"
    max_input_tokens = 4000
    max_output_tokens = 300

A request runs under the preset its scope names (``gate.scope(preset="summarize")``), or
under the one named like its feature. Input beyond the limit is cut by the model's real
tokens, from the longest message that is not a system or developer message, keeping its
beginning and ending it with the preset's marker; the caller sees an
:class:`~fleetgate.InputTruncated` warning and the ``x-fleetgate-truncated`` response
header (the tokens cut). The output limit lowers whatever maximum the caller asked for, or
sets one.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from typing import Any

from fleetgate._core import chat_prompt_tokens, count_tokens, truncate_tokens
from fleetgate.config import PresetSettings
from fleetgate.errors import InputTruncated
from fleetgate.scope import Scope

__all__ = ["TRUNCATED_HEADER", "Presets", "Shaped", "cap_output"]

#: Response header: how many input tokens a preset cut from the request.
TRUNCATED_HEADER = "x-fleetgate-truncated"

_UNCUT_ROLES = frozenset({"system", "developer"})


@dataclass(frozen=True, slots=True)
class Shaped:
    """A request body as its preset shapes it."""

    body: dict[str, Any]
    preset: str
    #: Input tokens cut (0: none).
    cut: int


@dataclass(slots=True)
class _Text:
    """Where one piece of input text lives, and how many tokens it has."""

    holder: Any  # a dict or a list
    key: Any
    tokens: int
    cuttable: bool

    @property
    def text(self) -> str:
        return str(self.holder[self.key])


class Presets:
    def __init__(self, presets: dict[str, PresetSettings]) -> None:
        self.presets = presets

    def for_scope(self, sc: Scope) -> str | None:
        """The preset a call in scope `sc` runs under, or None."""
        if sc.preset is not None:
            return sc.preset
        return sc.feature if self.presets and sc.feature in self.presets else None

    def shape(self, name: str, endpoint: str, body: dict[str, Any]) -> Shaped:
        """`body` under preset `name`: its model, its output limit, its input cut to size.
        Raises KeyError for a preset that is not configured."""
        preset = self.presets[name]
        shaped = copy.deepcopy(body)
        if preset.model is not None:
            shaped["model"] = preset.model
        model = str(shaped.get("model", ""))
        if preset.max_output_tokens is not None:
            cap_output(endpoint, shaped, preset.max_output_tokens)
        cut = 0
        if preset.max_input_tokens is not None:
            cut = _cut_input(endpoint, shaped, model, preset.max_input_tokens, preset.marker)
            if cut:
                warnings.warn(InputTruncated(
                    f"fleetgate: preset {name!r} cut {cut} input tokens to keep the input within "
                    f"{preset.max_input_tokens} tokens; the cut text ends with {preset.marker!r}", cut=cut,
                    preset=name), stacklevel=2)
        return Shaped(shaped, name, cut)


def cap_output(endpoint: str, body: dict[str, Any], cap: int) -> None:
    """Lower `body`'s output limit to `cap` in place (set it when it has none)."""
    if endpoint == "/chat/completions":
        keys = [k for k in ("max_completion_tokens", "max_tokens") if isinstance(body.get(k), int)]
        for key in keys or ["max_completion_tokens"]:
            body[key] = min(body.get(key) or cap, cap)
    elif endpoint == "/responses":
        body["max_output_tokens"] = min(body.get("max_output_tokens") or cap, cap)


def _cut_input(endpoint: str, body: dict[str, Any], model: str, limit: int, marker: str) -> int:
    """Cut the input of `body` to `limit` tokens; returns the tokens cut."""
    if endpoint == "/embeddings":  # the limit holds for each input on its own
        return sum(_cut_to(t, limit, model, marker) for t in _embedding_texts(body, model))
    texts = _message_texts(endpoint, body, model)
    total = _prompt_tokens(endpoint, body, model, texts)
    cut = 0
    while total > limit:
        longest = max((t for t in texts if t.cuttable and t.tokens > 0), key=lambda t: t.tokens, default=None)
        if longest is None:
            break  # only system and developer messages are left: the caller's to fix
        before = longest.tokens
        _cut_to(longest, max(0, before - (total - limit)), model, marker)
        total -= before - longest.tokens
        cut += before - longest.tokens
        if longest.tokens >= before:
            break
    return cut


def _cut_to(text: _Text, keep: int, model: str, marker: str) -> int:
    """Cut `text` to `keep` tokens including the marker; returns the tokens removed."""
    if text.tokens <= keep:
        return 0
    room = max(0, keep - count_tokens(model, marker))
    head, _ = truncate_tokens(text.text, room, model)
    text.holder[text.key] = head + marker
    before, text.tokens = text.tokens, count_tokens(model, text.holder[text.key])
    return max(0, before - text.tokens)


def _prompt_tokens(endpoint: str, body: dict[str, Any], model: str, texts: list[_Text]) -> int:
    if endpoint == "/chat/completions":
        return chat_prompt_tokens(model, [t.text for t in texts])
    instructions = body.get("instructions")
    extra = count_tokens(model, instructions) if isinstance(instructions, str) else 0
    return sum(t.tokens for t in texts) + extra


def _message_texts(endpoint: str, body: dict[str, Any], model: str) -> list[_Text]:
    """Every text of a chat request's messages or a responses request's input."""
    if endpoint == "/responses" and isinstance(body.get("input"), str):
        return [_Text(body, "input", count_tokens(model, body["input"]), True)]
    items = body.get("messages") if endpoint == "/chat/completions" else body.get("input")
    found: list[_Text] = []
    for item in items if isinstance(items, list) else []:
        if not isinstance(item, dict):
            continue
        cuttable = item.get("role") not in _UNCUT_ROLES
        content = item.get("content")
        if isinstance(content, str):
            found.append(_Text(item, "content", count_tokens(model, content), cuttable))
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    found.append(_Text(part, "text", count_tokens(model, part["text"]), cuttable))
    return found


def _embedding_texts(body: dict[str, Any], model: str) -> list[_Text]:
    value = body.get("input")
    if isinstance(value, str):
        return [_Text(body, "input", count_tokens(model, value), True)]
    if isinstance(value, list):
        return [_Text(value, i, count_tokens(model, v), True) for i, v in enumerate(value) if isinstance(v, str)]
    return []
