"""Background responses (``background: true``) with OpenAI's contract: answered at once
``queued`` with ``usage: null``, ``in_progress`` then ``completed`` after the configured
times (:class:`~fleetgate.testing.fake_openai.config.BackgroundTimings`), read with
``GET /v1/responses/{id}``, cancelled with ``POST /v1/responses/{id}/cancel``, forgotten
(404) ``keep_seconds`` after they end, and announced by signed ``response.*`` webhooks.

A response is billed once, when it ends, at the service tier that served it: a completed
one its whole usage; one cancelled while in progress its input (the answer it had begun is
dropped); one cancelled while queued nothing.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import ClientSession, ClientTimeout, web

from fleetgate.prices import price_tier
from fleetgate.testing.fake_openai import api, content
from fleetgate.testing.fake_openai.api import ApiError, Completion
from fleetgate.testing.fake_openai.billing import Bill
from fleetgate.testing.fake_openai.config import FakeConfig

__all__ = ["BackgroundStore", "Delivery", "sign"]

log = logging.getLogger("fleetgate.testing")


def sign(secret: str, webhook_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header of a delivery (Standard Webhooks: HMAC-SHA256 of
    ``id.timestamp.body`` with the secret's bytes, ``v1,<base64>``)."""
    key = base64.b64decode(secret.removeprefix("whsec_")) if secret.startswith("whsec_") else secret.encode()
    digest = hmac.new(key, f"{webhook_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return f"v1,{base64.b64encode(digest).decode()}"


@dataclass(frozen=True, slots=True)
class Delivery:
    """One webhook sent: its event type, the response it is about, and the status its
    receiver answered (None: no answer)."""

    type: str
    response_id: str
    status: int | None


@dataclass
class _Running:
    obj: dict[str, Any]
    plan: Completion
    cached: int
    text: str
    project: str
    tier: str
    ended_at: float | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    ended: asyncio.Event = field(default_factory=asyncio.Event)


class BackgroundStore:
    """The background responses of one fake server (on its event loop)."""

    def __init__(self, config: FakeConfig, bill: Bill) -> None:
        self.config = config
        self.bill = bill
        self.responses: dict[str, _Running] = {}
        self.deliveries: list[Delivery] = []
        self._session: ClientSession | None = None

    def start(self, plan: Completion, cached: int, text: str, headers: dict[str, str], project: str) -> web.Response:
        """Answer a ``background: true`` request: ``queued``, to end later."""
        return _json(self._begin(plan, cached, text, project).obj, headers=headers)

    def _begin(self, plan: Completion, cached: int, text: str, project: str) -> _Running:
        asked = plan.body.get("service_tier")
        tier = price_tier(asked if isinstance(asked, str) else None)
        served = "default" if tier == "batch" else tier
        obj = {**api.response_object(plan, cached, "queued", ""), "background": True, "service_tier": served}
        running = _Running(obj, plan, cached, text, project, served)
        self.responses[obj["id"]] = running
        running.tasks.append(asyncio.get_running_loop().create_task(self._run(running)))
        return running

    async def stream(self, request: web.Request, plan: Completion, cached: int, text: str, headers: dict[str, str],
                     project: str) -> web.StreamResponse:
        """Answer a ``background: true, stream: true`` request: the response's events as it
        runs. A client that leaves early leaves the response running: it ends, and is
        billed, all the same."""
        running = self._begin(plan, cached, text, project)
        response = web.StreamResponse(headers={**headers, "content-type": "text/event-stream"})
        sequence = iter(range(1_000_000))

        def event(kind: str, **fields: Any) -> bytes:
            data = {"type": kind, "sequence_number": next(sequence), **fields}
            return f"event: {kind}\ndata: {json.dumps(data)}\n\n".encode()

        try:
            await response.prepare(request)
            await response.write(event("response.created", response=dict(running.obj)))
            await running.ended.wait()
            for piece in content.split_for_stream(running.text) if running.obj["status"] == "completed" else []:
                await response.write(event("response.output_text.delta", output_index=0, content_index=0,
                                           delta=piece))
            await response.write(event(f"response.{running.obj['status']}", response=dict(running.obj)))
            await response.write_eof()
        except (ConnectionResetError, asyncio.CancelledError):
            pass  # the client left: the response runs on
        return response

    async def retrieve(self, request: web.Request) -> web.Response:
        running = self._found(request.match_info["id"])
        return _json(running.obj)

    async def cancel(self, request: web.Request) -> web.Response:
        running = self._found(request.match_info["id"])
        if running.obj["status"] not in ("queued", "in_progress"):
            raise ApiError(400, f"Cannot cancel a response with status '{running.obj['status']}'.", param="response_id")
        for task in running.tasks:
            task.cancel()
        began = running.obj["status"] == "in_progress"
        usage = None
        if began:
            usage = {**api.usage(running.plan, running.cached), "output_tokens": 0,
                     "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": running.plan.prompt_tokens}
        self._end(running, "cancelled", usage)
        return _json(running.obj)

    def _found(self, response_id: str) -> _Running:
        running = self.responses.get(response_id)
        keep = self.config.background.keep_seconds
        if running is not None and running.ended_at is not None and time.monotonic() - running.ended_at > keep:
            del self.responses[response_id]
            running = None
        if running is None:
            raise ApiError(404, f"Response with id '{response_id}' not found.", param="response_id")
        return running

    async def _run(self, running: _Running) -> None:
        timings = self.config.background
        await asyncio.sleep(timings.queued_seconds)
        running.obj["status"] = "in_progress"
        await asyncio.sleep(max(0.0, timings.complete_seconds - timings.queued_seconds))
        done = api.response_object(running.plan, running.cached, "completed", running.text,
                                   response_id=running.obj["id"])
        running.obj.update(output=done["output"])
        self._end(running, "completed", done["usage"])

    def _end(self, running: _Running, status: str, usage: dict[str, Any] | None) -> None:
        """The response ends: billed once, kept for ``keep_seconds``, announced."""
        running.obj.update(status=status, usage=usage, completed_at=int(time.time()) if status == "completed" else None)
        running.ended_at = time.monotonic()
        running.ended.set()
        self.bill.charge(running.plan.model, usage, tier=running.tier, project=running.project)
        if self.config.background.webhook_url:
            task = asyncio.get_running_loop().create_task(self._announce(f"response.{status}", running.obj["id"]))
            running.tasks = [task]

    async def _announce(self, kind: str, response_id: str) -> None:
        timings = self.config.background
        assert timings.webhook_url is not None
        event_id = api.new_id("evt")
        now = int(time.time())
        body = json.dumps({"id": event_id, "object": "event", "type": kind, "created_at": now,
                           "data": {"id": response_id}}).encode()
        headers = {"content-type": "application/json", "webhook-id": event_id, "webhook-timestamp": str(now)}
        if timings.webhook_secret:
            headers["webhook-signature"] = sign(timings.webhook_secret, event_id, now, body)
        if self._session is None:
            self._session = ClientSession(timeout=ClientTimeout(total=30))
        status: int | None = None
        try:
            async with self._session.post(timings.webhook_url, data=body, headers=headers) as answer:
                status = answer.status
        except (OSError, asyncio.TimeoutError) as e:
            log.warning("fake OpenAI: webhook %s for %s to %s got no answer: %s", kind, response_id,
                        timings.webhook_url, e)
        self.deliveries.append(Delivery(kind, response_id, status))

    async def shutdown(self, app: web.Application) -> None:
        for running in self.responses.values():
            for task in running.tasks:
                task.cancel()
        if self._session is not None:
            await self._session.close()


def _json(body: Any, *, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(text=json.dumps(body), content_type="application/json",
                        headers=headers or {"x-request-id": api.new_id("req")})
