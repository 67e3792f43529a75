"""Server-held context in the fake, as OpenAI holds it for the Responses API.

1. Every Responses answer that is stored (``store`` not false) is kept as the context a
   call continuing it carries: its input tokens plus its output tokens.
2. A call with ``previous_response_id`` carries that context; one with ``conversation``
   carries the conversation's (made by ``POST /v1/conversations``, its initial items
   counted, then the context of the last answer given in it). The context is added to the
   call's input: in ``usage.input_tokens``, in the bill, and against the model's tokens per
   minute. An unknown response or conversation is a 404, as OpenAI answers it; both at
   once is a 400.
3. Server-side compaction (``context_management=[{"type": "compaction", "compact_threshold":
   N}]``): a call whose input crosses N is billed for all of it, and what continuing it
   carries is compacted: a quarter of N (the compaction item) plus its output.
4. ``POST /v1/responses/input_tokens`` counts a request's input as the call would carry it
   (body and held context), without billing or counting it against the limits.

State lives on the server's event loop; the handlers are its only writers.
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from fleetgate.testing.fake_openai import api, content
from fleetgate.testing.fake_openai.api import ApiError, Completion

__all__ = ["ServerContext"]


def _conversation_id(body: dict[str, Any]) -> str | None:
    value = body.get("conversation")
    if isinstance(value, dict):
        value = value.get("id")
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ApiError(400, "Invalid 'conversation': expected a conversation id or an object with one.",
                       param="conversation", code="invalid_type")
    return value


def _compact_threshold(body: dict[str, Any]) -> int | None:
    """The input size at which the request asks for server-side compaction (None: never)."""
    entries = body.get("context_management")
    for entry in entries if isinstance(entries, list) else []:
        if isinstance(entry, dict) and entry.get("type") == "compaction":
            threshold = entry.get("compact_threshold")
            return threshold if isinstance(threshold, int) and threshold > 0 else 200_000
    return None


class ServerContext:
    """The responses and conversations the fake holds, by id: the input tokens a call
    continuing each carries."""

    def __init__(self) -> None:
        self.responses: dict[str, int] = {}
        self.conversations: dict[str, int] = {}

    def held(self, body: dict[str, Any]) -> int:
        """The context a Responses request carries besides its body; raises the ApiError
        OpenAI answers for an unknown response or conversation."""
        previous = body.get("previous_response_id")
        conversation = _conversation_id(body)
        if previous is not None and conversation is not None:
            raise ApiError(400, "Mutually exclusive parameters: 'previous_response_id' and 'conversation'. Ensure you "
                           "are only providing one of: 'previous_response_id' or 'conversation'.",
                           param="conversation", code="mutually_exclusive_parameters")
        if previous is not None:
            if not isinstance(previous, str) or previous not in self.responses:
                raise ApiError(404, f"Previous response with id '{previous}' not found.",
                               param="previous_response_id", code="previous_response_not_found")
            return self.responses[previous]
        if conversation is not None:
            if conversation not in self.conversations:
                raise ApiError(404, f"Conversation with id '{conversation}' not found.", param="conversation",
                               code="conversation_not_found")
            return self.conversations[conversation]
        return 0

    def plan(self, plan: Completion) -> Completion:
        """`plan` with the context it carries added to its input (a Responses plan; others
        as they are), and the id its answer will have."""
        if plan.kind != "responses":
            return plan
        held = self.held(plan.body)
        plan.held = held
        plan.prompt_tokens += held
        plan.rate_tokens += held
        plan.response_id = api.new_id("resp")
        return plan

    def answered(self, plan: Completion, usage: dict[str, Any]) -> None:
        """`plan`'s answer was given (and billed with `usage`): keep what continuing it carries."""
        if plan.kind != "responses" or plan.response_id is None:
            return
        input_tokens, output_tokens = int(usage.get("input_tokens", 0)), int(usage.get("output_tokens", 0))
        threshold = _compact_threshold(plan.body)
        if threshold is not None and input_tokens > threshold:
            input_tokens = max(1, threshold // 4)
        carried = input_tokens + output_tokens
        if plan.body.get("store") is not False:
            self.responses[plan.response_id] = carried
        conversation = _conversation_id(plan.body)
        if conversation is not None:
            self.conversations[conversation] = carried

    # -- endpoints ---------------------------------------------------------------------------

    async def create_conversation(self, request: web.Request) -> web.Response:
        """``POST /v1/conversations``: a conversation, its initial ``items`` (at most 20) held."""
        body = await request.json() if request.can_read_body else {}
        if not isinstance(body, dict):
            raise ApiError(400, "The request body must be a JSON object.", code="invalid_json")
        items = body.get("items") or []
        if not isinstance(items, list) or len(items) > 20:
            raise ApiError(400, "Invalid 'items': expected an array of at most 20 items.", param="items")
        conversation = api.new_id("conv")
        self.conversations[conversation] = content.estimate_tokens(content.responses_input_text({"input": items}))
        return web.json_response({"id": conversation, "object": "conversation", "created_at": int(time.time()),
                                  "metadata": body.get("metadata") or {}},
                                 headers={"x-request-id": api.new_id("req")})

    async def count_input_tokens(self, request: web.Request) -> web.Response:
        """``POST /v1/responses/input_tokens``: the request's input as a call would carry it."""
        try:
            body = await request.json()
        except ValueError:
            raise ApiError(400, "We could not parse the JSON body of your request.", code="invalid_json") from None
        if not isinstance(body, dict):
            raise ApiError(400, "The request body must be a JSON object.", code="invalid_json")
        tokens = content.estimate_tokens(content.responses_input_text(body)) + self.held(body)
        return web.json_response({"object": "response.input_tokens", "input_tokens": tokens},
                                 headers={"x-request-id": api.new_id("req")})
