"""Structured output: an answer validated into a pydantic model, or a typed error that
carries every attempt.

``gate.complete(prompt_or_messages, response_model=Model)`` asks with structured outputs
(a strict JSON schema) where the model supports them and JSON mode elsewhere, then
recovers the value in order — the text as it is, a fenced code block, the outermost JSON
value in the text — and, when none validates, asks again (at most `retries` times) with
the validation errors fed back.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel, ValidationError

from fleetgate.errors import StructuredOutputError

if TYPE_CHECKING:
    import openai

__all__ = ["Attempt", "complete", "complete_async", "recover", "request_for", "strict_schema"]

M = TypeVar("M", bound=BaseModel)

#: Models that take ``response_format = {"type": "json_schema", …, "strict": true}``.
_STRUCTURED = ("gpt-4o", "gpt-4.1", "gpt-5", "o1", "o3", "o4")
_FENCE = re.compile(r"```(?:json|JSON)?\s*\n(.*?)\n?```", re.S)


@dataclass(frozen=True)
class Attempt:
    """One answer and why it did not validate."""

    text: str
    error: str
    finish_reason: str | None = None


def strict_schema(model: type[BaseModel]) -> dict[str, Any]:
    """`model`'s JSON schema as structured outputs require it: every object closed
    (``additionalProperties: false``) with all its properties required."""
    schema = copy.deepcopy(model.model_json_schema())

    def close(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("type") == "object" or "properties" in node:
                node["additionalProperties"] = False
                node["required"] = list(node.get("properties", {}))
            node.pop("default", None)
            for value in node.values():
                close(value)
        elif isinstance(node, list):
            for value in node:
                close(value)

    close(schema)
    return schema


def request_for(model_name: str, response_model: type[BaseModel]) -> dict[str, Any]:
    """The ``response_format`` to ask `model_name` with."""
    if model_name.startswith(_STRUCTURED):
        return {"type": "json_schema", "json_schema": {"name": response_model.__name__[:64],
                                                       "schema": strict_schema(response_model), "strict": True}}
    return {"type": "json_object"}


def recover(text: str, response_model: type[M]) -> M:
    """The value in `text`: as it is, else in a fenced block, else the outermost JSON value
    in it. Raises ValidationError (or ValueError when no JSON is found) from the last try."""
    candidates = [text]
    candidates += [m.group(1) for m in _FENCE.finditer(text)]
    outer = _outermost_json(text)
    if outer is not None:
        candidates.append(outer)
    error: Exception = ValueError("no JSON value in the answer")
    for candidate in candidates:
        try:
            return response_model.model_validate_json(candidate)
        except ValidationError as e:
            if not all(err["type"] == "json_invalid" for err in e.errors()):
                error = e  # JSON, but not of the schema: the errors to feed back
    raise error


def complete(client: openai.OpenAI, prompt_or_messages: str | list[dict[str, Any]], response_model: type[M], *,
             model: str, retries: int = 2, on_invalid: Callable[[Any], None] | None = None, **create: Any) -> M:
    """Ask `model` through `client` and return the answer validated as `response_model`.
    Raises StructuredOutputError (with the raw text and every attempt) when `retries`
    more tries do not give a valid answer. `on_invalid(headers)` hears of each answer
    that did not validate (the gateway counts it against the answer's rollout)."""
    messages = _messages(prompt_or_messages)
    attempts: list[Attempt] = []
    for _ in range(retries + 1):
        raw = client.chat.completions.with_raw_response.create(  # type: ignore[call-overload]
            model=model, messages=messages, response_format=request_for(model, response_model), **create)
        done = _judge(raw.parse(), response_model, attempts, messages)
        if done is not None:
            return done
        if on_invalid is not None:
            on_invalid(raw.headers)
    raise _failure(response_model, attempts)


async def complete_async(client: openai.AsyncOpenAI, prompt_or_messages: str | list[dict[str, Any]],
                         response_model: type[M], *, model: str, retries: int = 2,
                         on_invalid: Callable[[Any], None] | None = None, **create: Any) -> M:
    """`complete` with an async client."""
    messages = _messages(prompt_or_messages)
    attempts: list[Attempt] = []
    for _ in range(retries + 1):
        raw = await client.chat.completions.with_raw_response.create(  # type: ignore[call-overload]
            model=model, messages=messages, response_format=request_for(model, response_model), **create)
        done = _judge(raw.parse(), response_model, attempts, messages)
        if done is not None:
            return done
        if on_invalid is not None:
            on_invalid(raw.headers)
    raise _failure(response_model, attempts)


def _messages(prompt_or_messages: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    if isinstance(prompt_or_messages, str):
        return [{"role": "user", "content": prompt_or_messages}]
    return list(prompt_or_messages)


def _judge(answer: Any, response_model: type[M], attempts: list[Attempt],
           messages: list[dict[str, Any]]) -> M | None:
    """The validated value of `answer`; else None, with the attempt noted and the
    validation errors appended to `messages` for the next try."""
    choice = answer.choices[0]
    text = choice.message.content or ""
    if getattr(choice.message, "refusal", None):
        attempts.append(Attempt(text, f"the model refused: {choice.message.refusal}", choice.finish_reason))
        return None
    try:
        return recover(text, response_model)
    except (ValidationError, ValueError) as e:
        why = str(e) if not isinstance(e, ValidationError) else "; ".join(
            f"{'.'.join(map(str, err['loc'])) or 'value'}: {err['msg']}" for err in e.errors())
        if choice.finish_reason == "length":
            why = f"the answer was cut off at the output limit ({why})"
        attempts.append(Attempt(text, why, choice.finish_reason))
        messages.extend([{"role": "assistant", "content": text},
                         {"role": "user", "content": f"That answer is not valid: {why}. Answer again with only "
                                                     f"a JSON value that matches the schema."}])
        return None


def _failure(response_model: type[BaseModel], attempts: list[Attempt]) -> StructuredOutputError:
    return StructuredOutputError(
        f"no answer validated as {response_model.__name__} after {len(attempts)} attempts "
        f"(last: {attempts[-1].error})", raw=attempts[-1].text, attempts=attempts)


def _outermost_json(text: str) -> str | None:
    """The first complete JSON object or array in `text` (brackets matched outside strings)."""
    start = next((i for i, c in enumerate(text) if c in "{["), None)
    while start is not None:
        depth, in_string, escaped = 0, False, False
        for i in range(start, len(text)):
            c = text[i]
            if in_string:
                escaped, in_string = (not escaped and c == "\\"), in_string and (escaped or c != '"')
                continue
            if c == '"':
                in_string = True
            elif c in "{[":
                depth += 1
            elif c in "}]":
                depth -= 1
                if depth == 0:
                    candidate = text[start:i + 1]
                    try:
                        json.loads(candidate)
                        return candidate
                    except ValueError:
                        break
        start = next((i for i in range(start + 1, len(text)) if text[i] in "{["), None)
    return None
