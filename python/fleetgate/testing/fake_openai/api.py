"""The bodies of the fake API: validation of requests and the objects OpenAI returns,
shared by the HTTP handlers and the batch runner."""

from __future__ import annotations

import json

import itertools
import time
from dataclasses import dataclass
from typing import Any, Callable

from fleetgate.testing.fake_openai import content
from fleetgate.testing.fake_openai.config import FakeConfig

__all__ = ["ApiError", "Completion", "plan_chat", "plan_embeddings", "plan_responses"]

_ids = itertools.count(1)


def new_id(prefix: str) -> str:
    return f"{prefix}_{next(_ids):012x}"


class ApiError(Exception):
    """An error answered as OpenAI does: ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def _require(body: dict[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    value = body.get(name)
    if value is None:
        raise ApiError(400, f"Missing required parameter: '{name}'.", param=name, code="missing_required_parameter")
    if not isinstance(value, kind):
        raise ApiError(400, f"Invalid type for '{name}'.", param=name, code="invalid_type")
    return value


def _max_output(body: dict[str, Any], *names: str) -> int | None:
    for name in names:
        value = body.get(name)
        if value is not None:
            if not isinstance(value, int) or value < 1:
                raise ApiError(400, f"Invalid '{name}': integer below minimum value.", param=name,
                               code="integer_below_min_value")
            return value
    return None


@dataclass
class Completion:
    """A planned answer: what it costs against the limits, and how to render it."""

    kind: str  # "chat" | "responses" | "embeddings"
    model: str
    body: dict[str, Any]
    prompt: str
    prompt_tokens: int
    #: What counts against tokens per minute: the prompt estimate plus the maximum output.
    rate_tokens: int
    text: str = ""
    completion_tokens: int = 0
    finish_reason: str = "stop"
    #: Endpoints answered by :mod:`~fleetgate.testing.fake_openai.other_endpoints`
    #: (completions, moderations, images): the answer's body, given its text.
    render_body: Callable[[FakeConfig, Completion, str], dict[str, Any]] | None = None
    #: Their usage as the answer reports it (None: none, and nothing is billed).
    own_usage: dict[str, Any] | None = None
    #: Embeddings: each input text.
    inputs: tuple[str, ...] = ()
    #: Prompt tokens written to the prompt cache (models that bill cache writes).
    written: int = 0
    #: The tier that serves it, as the answer reports it (:mod:`.tiers`).
    service_tier: str = "default"
    #: Responses: input tokens held by the server (a chain's context), within `prompt_tokens`.
    held: int = 0
    #: Responses: the id its answer has (None: a new one each time it is rendered).
    response_id: str | None = None


def _answer(config: FakeConfig, model: str, prompt: str, limit: int | None,
            response_format: Any = None) -> tuple[str, int, str]:
    """Text of about `config.answer_words` words (JSON when `response_format` asks for
    it: an instance of its schema, or an object), cut at `limit` tokens like OpenAI."""
    words = config.answer_words if limit is None else min(config.answer_words, max(1, limit))
    text = content.answer(config.seed, model, prompt, words)
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind == "json_schema":
        schema = (response_format.get("json_schema") or {}).get("schema") or {}
        text, words = json.dumps(content.schema_instance(config.seed, schema, prompt)), config.answer_words
    elif kind == "json_object":
        text, words = json.dumps({"answer": text}), config.answer_words
    tokens = max(1, content.estimate_tokens(text))
    cut = limit is not None and (words < config.answer_words or tokens > limit)
    if limit is not None and tokens > limit:  # like OpenAI: never more output than the request allows
        text, tokens = text[: limit * 4], limit
    return text, tokens, "length" if cut else "stop"


def plan_chat(config: FakeConfig, body: dict[str, Any]) -> Completion:
    model = _require(body, "model", str)
    messages = _require(body, "messages", list)
    if not messages:
        raise ApiError(400, "'messages' must contain at least one message.", param="messages")
    prompt = content.message_text(messages)
    limit = _max_output(body, "max_completion_tokens", "max_tokens")
    prompt_tokens = content.estimate_tokens(prompt) + 3 * len(messages)
    text, completion_tokens, finish = _answer(config, model, prompt, limit, body.get("response_format"))
    return Completion("chat", model, body, prompt, prompt_tokens, prompt_tokens + (limit or 0),
                      text, completion_tokens, finish)


def plan_responses(config: FakeConfig, body: dict[str, Any]) -> Completion:
    model = _require(body, "model", str)
    if body.get("input") is None and body.get("instructions") is None:
        raise ApiError(400, "Missing required parameter: 'input'.", param="input", code="missing_required_parameter")
    prompt = content.responses_input_text(body)
    limit = _max_output(body, "max_output_tokens")
    prompt_tokens = content.estimate_tokens(prompt)
    text, completion_tokens, finish = _answer(config, model, prompt, limit)
    return Completion("responses", model, body, prompt, prompt_tokens, prompt_tokens + (limit or 0),
                      text, completion_tokens, finish)


def plan_embeddings(config: FakeConfig, body: dict[str, Any]) -> Completion:
    model = _require(body, "model", str)
    raw = _require(body, "input", (str, list))
    inputs = [raw] if isinstance(raw, str) else raw
    if not inputs or not all(isinstance(i, str) and i for i in inputs):
        raise ApiError(400, "'input' must be a non-empty string or a list of non-empty strings.", param="input")
    tokens = sum(content.estimate_tokens(i) for i in inputs)
    return Completion("embeddings", model, body, "\n".join(inputs), tokens, tokens, inputs=tuple(inputs))


def usage(plan: Completion, cached: int) -> dict[str, Any]:
    if plan.render_body is not None:
        return dict(plan.own_usage or {})
    if plan.kind == "embeddings":
        return {"prompt_tokens": plan.prompt_tokens, "total_tokens": plan.prompt_tokens}
    total = plan.prompt_tokens + plan.completion_tokens
    if plan.kind == "chat":
        return {
            "prompt_tokens": plan.prompt_tokens,
            "completion_tokens": plan.completion_tokens,
            "total_tokens": total,
            "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0, **_writes(plan)},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                          "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0},
        }
    return {
        "input_tokens": plan.prompt_tokens,
        "input_tokens_details": {"cached_tokens": cached, **_writes(plan)},
        "output_tokens": plan.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": total,
    }


def _writes(plan: Completion) -> dict[str, int]:
    """``cache_write_tokens``, reported by models that bill cache writes."""
    return {"cache_write_tokens": plan.written} if plan.written else {}


def render(config: FakeConfig, plan: Completion, cached: int, *, text: str | None = None) -> dict[str, Any]:
    """The whole (non-streamed) response object."""
    now = int(time.time())
    text = plan.text if text is None else text
    if plan.render_body is not None:
        return plan.render_body(config, plan, text)
    if plan.kind == "chat":
        return {
            "id": new_id("chatcmpl"), "object": "chat.completion", "created": now, "model": plan.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text, "refusal": None,
                                                 "annotations": []},
                         "logprobs": None, "finish_reason": plan.finish_reason}],
            "usage": usage(plan, cached), "service_tier": plan.service_tier, "system_fingerprint": "fp_fleetgate_fake",
        }
    if plan.kind == "responses":
        return response_object(plan, cached, "completed", text)
    encoding = plan.body.get("encoding_format", "float")
    dims = plan.body.get("dimensions") or config.embedding_dimensions
    data = []
    for i, item in enumerate(plan.inputs):
        vec = content.embedding(config.seed, plan.model, item, dims)
        data.append({"object": "embedding", "index": i,
                     "embedding": content.encode_base64(vec) if encoding == "base64" else vec})
    return {"object": "list", "data": data, "model": plan.model, "usage": usage(plan, 0)}


def response_object(plan: Completion, cached: int, status: str, text: str, *, response_id: str | None = None,
                    item_id: str | None = None) -> dict[str, Any]:
    done = status == "completed"
    output = [{
        "type": "message", "id": item_id or new_id("msg"), "status": "completed" if done else "in_progress",
        "role": "assistant", "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}],
    }] if done else []
    return {
        "id": response_id or plan.response_id or new_id("resp"), "object": "response", "created_at": int(time.time()),
        "status": status, "model": plan.model, "output": output, "error": None, "incomplete_details": None,
        "instructions": plan.body.get("instructions"), "max_output_tokens": plan.body.get("max_output_tokens"),
        "parallel_tool_calls": True, "service_tier": plan.service_tier, "temperature": plan.body.get("temperature", 1.0),
        "tool_choice": "auto", "tools": [], "top_p": plan.body.get("top_p", 1.0),
        "usage": usage(plan, cached) if done else None, "metadata": plan.body.get("metadata") or {},
    }
