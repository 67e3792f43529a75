"""The fallback ladder: what a call gets when the primary path cannot serve it (its
circuit is open, or no quota comes before its deadline).

Rungs, tried in order, each only when configured:

1. ``fallback_model`` — the same request to a cheaper model (``[fallback] models``), through
   the whole path again: its own breaker and quotas.
2. ``static`` — a configured answer (``[fallback] static_answer``), shaped as the endpoint
   answers (chat completions, streamed or not, and responses; not embeddings).
3. ``deferred`` — the request is appended, in Batch API format, to ``[fallback] defer_to``
   (flushed and fsynced before the caller hears of it) and the caller gets a 503
   ``fleetgate_deferred`` naming its ``custom_id``; ``fleetgate run`` carries the file later.

The rung that served is in the ``x-fleetgate-tier`` response header (``primary`` when
none was needed) and counted in ``gate.stats`` as ``served_<tier>``.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Literal

import httpx2

from fleetgate.config import FallbackSettings

__all__ = ["TIER_HEADER", "Ladder", "Rung", "rungs"]

#: The response header naming the rung that served a call.
TIER_HEADER = "x-fleetgate-tier"


#: A rung below the primary path: the cheaper model, the cache, the static answer, the
#: deferred queue.
Rung = Literal["cheaper", "cache", "static", "deferred"]

#: The rungs tried, in order, for what a refusal asks: the whole ladder for a refusal of
#: the primary path, and for a spent budget what its ``on_exhausted`` says.
_RUNGS: dict[str, tuple[Rung, ...]] = {
    "ladder": ("cheaper", "static", "deferred"),
    "cheaper": ("cheaper",),
    "cache_only": ("cache",),
    "refuse": (),
}


def rungs(action: str) -> tuple[Rung, ...]:
    """The rungs to try, in order, for `action`: ``ladder`` (the primary path refused the
    call), or a spent budget's ``cheaper``, ``cache_only`` or ``refuse``. A call no rung
    serves is refused."""
    return _RUNGS[action]


class Ladder:
    """The configured rungs below the primary path."""

    def __init__(self, settings: FallbackSettings) -> None:
        self.settings = settings
        self._defer_lock = threading.Lock()

    def cheaper_body(self, body: dict[str, Any]) -> dict[str, Any] | None:
        """The body sent to the model configured below this one, or None."""
        model = body.get("model")
        cheaper = self.settings.models.get(model) if isinstance(model, str) else None
        if cheaper is None or cheaper == model:
            return None
        return {**body, "model": cheaper}

    def static_response(self, request: httpx2.Request, endpoint: str, body: dict[str, Any]) -> httpx2.Response | None:
        """The configured answer, shaped as `endpoint` answers, or None."""
        text = self.settings.static_answer
        if text is None or endpoint == "/embeddings":
            return None
        model = str(body.get("model", ""))
        now = int(time.time())
        headers = {TIER_HEADER: "static"}
        if endpoint == "/chat/completions":
            ident = f"chatcmpl-fleetgate-{uuid.uuid4().hex[:24]}"
            if body.get("stream"):
                return httpx2.Response(200, headers={**headers, "content-type": "text/event-stream"},
                                       content=_chat_stream(ident, model, now, text), request=request)
            message = {"role": "assistant", "content": text, "refusal": None}
            answer = {"id": ident, "object": "chat.completion", "created": now, "model": model,
                      "choices": [{"index": 0, "message": message, "finish_reason": "stop", "logprobs": None}],
                      "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}}
            return httpx2.Response(200, headers=headers, json=answer, request=request)
        if body.get("stream"):
            return None  # a responses event stream is not synthesized; the next rung serves
        output = [{"type": "message", "id": f"msg_fleetgate_{uuid.uuid4().hex[:24]}", "status": "completed",
                   "role": "assistant", "content": [{"type": "output_text", "text": text, "annotations": []}]}]
        answer = {"id": f"resp_fleetgate_{uuid.uuid4().hex[:24]}", "object": "response", "created_at": now,
                  "status": "completed", "model": model, "output": output, "parallel_tool_calls": False,
                  "tool_choice": "auto", "tools": [], "usage": {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0}}
        return httpx2.Response(200, headers=headers, json=answer, request=request)

    def defer(self, request: httpx2.Request, endpoint: str, body: dict[str, Any], why: str) -> httpx2.Response | None:
        """Queue the request for later in Batch API format; the caller's 503, or None."""
        path = self.settings.defer_to
        if path is None:
            return None
        custom_id = f"deferred-{uuid.uuid4().hex}"
        line = json.dumps({"custom_id": custom_id, "method": "POST", "url": f"/v1{endpoint}",
                           "body": {k: v for k, v in body.items() if k not in ("stream", "stream_options")}})
        _append_durably(Path(path), line, self._defer_lock)
        message = (f"fleetgate: {why}; the request was queued as {custom_id!r} in {str(path)!r} — "
                   f"`fleetgate run {path} --out results.jsonl` sends it when upstream has room")
        error = {"message": message, "type": "fleetgate", "param": None, "code": "fleetgate_deferred"}
        headers = {TIER_HEADER: "deferred", "x-should-retry": "false", "x-fleetgate-deferred-id": custom_id}
        return httpx2.Response(503, headers=headers, json={"error": error}, request=request)


def _chat_stream(ident: str, model: str, created: int, text: str) -> bytes:
    def event(delta: dict[str, Any], finish: str | None) -> bytes:
        chunk = {"id": ident, "object": "chat.completion.chunk", "created": created, "model": model,
                 "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]}
        return b"data: " + json.dumps(chunk).encode() + b"\n\n"

    return event({"role": "assistant", "content": text}, None) + event({}, "stop") + b"data: [DONE]\n\n"


def _append_durably(path: Path, line: str, lock: threading.Lock) -> None:
    """One whole line, on disk before returning (a crash loses no deferred request)."""
    with lock:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(fd, (line + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)
