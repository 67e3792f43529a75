"""Structured output: an answer validated into a pydantic model, or a typed error that
carries every attempt.

``gate.complete(prompt_or_messages, response_model=Model)`` asks with structured outputs
(a strict JSON schema) where the model supports them and JSON mode elsewhere, then
recovers the value in order — the text as it is, a fenced code block, the outermost JSON
value in the text — and, when none validates, asks again (at most `retries` times) with
the validation errors fed back.

``accumulate(stream, idle_timeout=…)`` (and ``accumulate_async``) gathers a streamed
answer and raises :class:`PartialResponseError` with the partial text when the stream
stalls, breaks, or ends without a finish reason.
"""

from __future__ import annotations

import asyncio
import copy
import json
import queue
import re
import threading
from collections.abc import AsyncIterable, Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel, ValidationError

from fleetgate.errors import PartialResponseError, StructuredOutputError

if TYPE_CHECKING:
    import openai

__all__ = ["Attempt", "accumulate", "accumulate_async", "complete", "complete_async", "recover", "request_for",
           "strict_schema"]

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
             model: str, retries: int = 2, on_checked: Callable[[Any, bool], None] | None = None, **create: Any) -> M:
    """Ask `model` through `client` and return the answer validated as `response_model`.
    Raises StructuredOutputError (with the raw text and every attempt) when `retries`
    more tries do not give a valid answer. `on_checked(headers, valid)` hears of each
    answer checked (the gateway counts it in its metrics, and an invalid one against the
    answer's rollout)."""
    messages = _messages(prompt_or_messages)
    response_format = request_for(model, response_model)
    attempts: list[Attempt] = []
    for _ in range(retries + 1):
        raw = client.chat.completions.with_raw_response.create(  # type: ignore[call-overload]
            model=model, messages=messages, response_format=response_format, **create)
        done = _judge(raw, response_model, attempts, messages, on_checked)
        if done is not None:
            return done
    raise _failure(response_model, attempts)


async def complete_async(client: openai.AsyncOpenAI, prompt_or_messages: str | list[dict[str, Any]],
                         response_model: type[M], *, model: str, retries: int = 2,
                         on_checked: Callable[[Any, bool], None] | None = None, **create: Any) -> M:
    """`complete` with an async client."""
    messages = _messages(prompt_or_messages)
    response_format = request_for(model, response_model)
    attempts: list[Attempt] = []
    for _ in range(retries + 1):
        raw = await client.chat.completions.with_raw_response.create(  # type: ignore[call-overload]
            model=model, messages=messages, response_format=response_format, **create)
        done = _judge(raw, response_model, attempts, messages, on_checked)
        if done is not None:
            return done
    raise _failure(response_model, attempts)


#: What a cut-short stream's error says to do.
_PARTIAL = "; what arrived is in the error's content: retry the request, or use it as is"


def accumulate(stream: Iterable[Any], *, idle_timeout: float = 30.0) -> tuple[str, str | None]:
    """(the text, the finish reason) of a chat completion stream. Raises
    PartialResponseError with what arrived when no chunk comes for `idle_timeout` seconds
    (the stream is then closed) or the stream breaks, or when it ends without a finish."""
    chunks: queue.Queue[tuple[str, Any]] = queue.Queue()

    def read() -> None:
        try:
            for chunk in stream:
                chunks.put(("chunk", chunk))
            chunks.put(("end", None))
        except Exception as e:  # handed to the waiting caller below, which raises it on
            chunks.put(("error", e))

    threading.Thread(target=read, name="fleetgate-stream-reader", daemon=True).start()
    parts: list[str] = []
    finish: str | None = None
    while True:
        try:
            kind, item = chunks.get(timeout=idle_timeout)
        except queue.Empty:
            raise PartialResponseError(f"the stream sent nothing for {idle_timeout:g} s{_PARTIAL}",
                                       "".join(parts), finish) from _close(stream)
        if kind == "end":
            break
        if kind == "error":
            raise PartialResponseError(f"the stream broke ({item}){_PARTIAL}", "".join(parts), finish) from item
        finish = _take(item, parts) or finish
    if finish is None:
        raise PartialResponseError(f"the stream ended without a finish reason{_PARTIAL}", "".join(parts))
    return "".join(parts), finish


async def accumulate_async(stream: AsyncIterable[Any], *, idle_timeout: float = 30.0) -> tuple[str, str | None]:
    """`accumulate` for an async stream."""
    parts: list[str] = []
    finish: str | None = None
    iterator = aiter(stream)
    while True:
        try:
            chunk = await asyncio.wait_for(anext(iterator), idle_timeout)
        except StopAsyncIteration:
            break
        except asyncio.TimeoutError:
            close = getattr(stream, "close", None)
            if close is not None:
                await close()
            raise PartialResponseError(f"the stream sent nothing for {idle_timeout:g} s{_PARTIAL}",
                                       "".join(parts), finish) from None
        except Exception as e:
            raise PartialResponseError(f"the stream broke ({e}){_PARTIAL}", "".join(parts), finish) from e
        finish = _take(chunk, parts) or finish
    if finish is None:
        raise PartialResponseError(f"the stream ended without a finish reason{_PARTIAL}", "".join(parts))
    return "".join(parts), finish


def _close(stream: Any) -> Exception | None:
    """Close a stalled stream (an SDK stream closes its response from any thread); what
    went wrong closing it, if anything (a plain generator cannot be closed while its
    reader runs it), to chain onto the error raised."""
    close = getattr(stream, "close", None)
    if close is None:
        return None
    try:
        close()
    except (ValueError, RuntimeError) as e:
        return e
    return None


def _take(chunk: Any, parts: list[str]) -> str | None:
    """Add a chunk's text to `parts`; its finish reason, if it has one."""
    choices = getattr(chunk, "choices", None) or []
    if not choices:
        return None
    delta = getattr(choices[0], "delta", None)
    if delta is not None and getattr(delta, "content", None):
        parts.append(delta.content)
    return getattr(choices[0], "finish_reason", None)


def _messages(prompt_or_messages: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    if isinstance(prompt_or_messages, str):
        return [{"role": "user", "content": prompt_or_messages}]
    return list(prompt_or_messages)


def _judge(raw: Any, response_model: type[M], attempts: list[Attempt], messages: list[dict[str, Any]],
           on_checked: Callable[[Any, bool], None] | None) -> M | None:
    """The validated value of the answer in `raw` (a raw response); else None, with the
    attempt noted and the validation errors appended to `messages` for the next try.
    `on_checked` hears which it was."""
    choice = raw.parse().choices[0]
    text = choice.message.content or ""
    if getattr(choice.message, "refusal", None):
        why = f"the model refused: {choice.message.refusal}"
    else:
        try:
            value = recover(text, response_model)
        except (ValidationError, ValueError) as e:
            why = str(e) if not isinstance(e, ValidationError) else "; ".join(
                f"{'.'.join(map(str, err['loc'])) or 'value'}: {err['msg']}" for err in e.errors())
            if choice.finish_reason == "length":
                why = f"the answer was cut off at the output limit ({why})"
            messages.extend([{"role": "assistant", "content": text},
                             {"role": "user", "content": f"That answer is not valid: {why}. Answer again with only "
                                                         f"a JSON value that matches the schema."}])
        else:
            if on_checked is not None:
                on_checked(raw.headers, True)
            return value
    attempts.append(Attempt(text, why, choice.finish_reason))
    if on_checked is not None:
        on_checked(raw.headers, False)
    return None


def _failure(response_model: type[BaseModel], attempts: list[Attempt]) -> StructuredOutputError:
    return StructuredOutputError(
        f"no answer validated as {response_model.__name__} after {len(attempts)} attempts "
        f"(last: {attempts[-1].error}); the error's raw and attempts hold the answers: allow more retries, "
        f"or loosen {response_model.__name__}", raw=attempts[-1].text, attempts=attempts)


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
