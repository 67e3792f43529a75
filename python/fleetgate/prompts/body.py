"""Compression applied to a request body: its system and developer messages and its
instructions, never what the user, the assistant or a tool said."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from fleetgate.prompts.compress import Compressor

__all__ = ["compress_body"]

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
