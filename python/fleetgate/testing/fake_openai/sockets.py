"""The fake's WebSocket endpoints: the Responses API's WebSocket mode (``GET
/v1/responses``, what ``client.responses.connect()`` opens) and a minimal Realtime API
(``GET /v1/realtime?model=…``, what ``client.realtime.connect()`` opens).

A ``response.create`` frame, on either:

1. is checked as the HTTP endpoint checks a request (a bad one: an ``error`` event with
   ``status`` 400), then against the model's limits as an HTTP call is: over the tokens
   per minute or with no room in this slice, an ``error`` event ``rate_limit_exceeded``
   (status 429) and nothing else;
2. is answered with the events the SDK expects, the last one carrying the usage
   (``response.completed`` here, ``response.done`` on Realtime), at the service tier
   asked for (``flex``, ``priority``; else ``default``);
3. is billed once, at that tier, when that last event is sent. A socket closed before
   then cancels its responses still in flight: they are not billed.

On Realtime, a session with ``turn_detection`` answers each ``input_audio_buffer.commit``
on its own (the audio is not listened to: a commit stands for a spoken turn), as server
turn detection does, without a ``response.create``.

Responses WebSocket frames with the same ``stream_id`` (lane) are answered in order, one
at a time; different lanes run side by side, and every event echoes its lane. A
``latency`` fault holds a response after ``response.created`` (so a test can close the
socket mid-response), and a ``reset`` fault closes the socket there (code 1011, which the
SDK may reconnect after); the other faults do not apply here. Either way the response is
not billed.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Protocol

from aiohttp import WSMsgType, web

from fleetgate.prices import price_tier
from fleetgate.testing.fake_openai import api, content
from fleetgate.testing.fake_openai.api import ApiError, Completion
from fleetgate.testing.fake_openai.billing import Bill
from fleetgate.testing.fake_openai.config import FakeConfig, Fault

__all__ = ["Sockets"]


class _Server(Protocol):
    """What the handlers use of the fake server: its limits, faults and bill."""

    config: FakeConfig
    prompt_cache: content.PrefixCache
    bill: Bill

    def now(self) -> float: ...

    def admit(self, plan: Completion, now: float) -> tuple[float, ApiError | None]: ...

    def _active_faults(self, model: str) -> list[Fault]: ...

    def _count_fault(self, model: str, kind: str) -> None: ...

    def _sample_ms(self, fault: Fault) -> float: ...

#: What the fake answers a ``service_tier`` with (``fast`` is ``priority``'s other name).
_SERVED = {"flex": "flex", "priority": "priority", "fast": "priority"}


class Sockets:
    """The WebSocket handlers of one fake server (its limits, counters, faults and bill)."""

    def __init__(self, server: _Server) -> None:
        self.server = server

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/v1/responses", self.responses), web.get("/v1/realtime", self.realtime)]

    # -- Responses WebSocket mode ------------------------------------------------------

    async def responses(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        project = _project(request)
        lanes: dict[str | None, asyncio.Queue[dict[str, Any]]] = {}
        workers: list[asyncio.Task[None]] = []
        try:
            async for message in ws:
                if message.type != WSMsgType.TEXT:
                    continue
                frame = _frame(message.data)
                if frame is None or frame.get("type") != "response.create":
                    await _send(ws, _error(ApiError(400, "The fake supports only response.create events on this "
                                                    "socket.", code="unsupported_event")))
                    continue
                lane = frame.get("stream_id") if isinstance(frame.get("stream_id"), str) else None
                queue = lanes.get(lane)
                if queue is None:
                    queue = lanes[lane] = asyncio.Queue()
                    workers.append(asyncio.create_task(self._lane(ws, queue, lane, project)))
                queue.put_nowait(frame)
        finally:
            for worker in workers:
                worker.cancel()  # the socket is gone: what is still in flight is not billed
            await asyncio.gather(*workers, return_exceptions=True)
        return ws

    async def _lane(self, ws: web.WebSocketResponse, queue: asyncio.Queue[dict[str, Any]], lane: str | None,
                    project: str) -> None:
        while True:
            frame = await queue.get()
            body = {k: v for k, v in frame.items() if k not in ("type", "stream_id")}
            plan = self._admitted(body)
            if isinstance(plan, ApiError):
                await _send(ws, _in_lane(_error(plan), lane))
                continue
            await self._respond(ws, plan, lane, project)

    async def _respond(self, ws: web.WebSocketResponse, plan: Completion, lane: str | None, project: str) -> None:
        server = self.server
        cached = server.prompt_cache.cached(plan.model, plan.prompt, plan.prompt_tokens)
        tier = _SERVED.get(str(plan.body.get("service_tier")), "default")
        rid, mid = api.new_id("resp"), api.new_id("msg")
        seq = iter(range(1_000_000))
        started = {**api.response_object(plan, cached, "in_progress", "", response_id=rid), "service_tier": tier}
        done = {**api.response_object(plan, cached, "completed", plan.text, response_id=rid, item_id=mid),
                "service_tier": tier}
        item = {"type": "message", "id": mid, "status": "in_progress", "role": "assistant", "content": []}
        part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}

        async def ev(kind: str, **fields: Any) -> None:
            await _send(ws, _in_lane({"type": kind, "sequence_number": next(seq), **fields}, lane))

        await ev("response.created", response=started)
        if await self._held(ws, plan.model):
            return
        await ev("response.in_progress", response=started)
        await ev("response.output_item.added", output_index=0, item=item)
        await ev("response.content_part.added", item_id=mid, output_index=0, content_index=0, part=part)
        for delta in content.split_for_stream(plan.text):
            await ev("response.output_text.delta", item_id=mid, output_index=0, content_index=0, delta=delta,
                     logprobs=[])
        await ev("response.output_text.done", item_id=mid, output_index=0, content_index=0, text=plan.text,
                 logprobs=[])
        await ev("response.content_part.done", item_id=mid, output_index=0, content_index=0,
                 part={**part, "text": plan.text})
        await ev("response.output_item.done", output_index=0, item=done["output"][0])
        server.bill.charge(plan.model, done["usage"], tier=price_tier(tier), project=project)
        await ev("response.completed", response=done)

    # -- Realtime ----------------------------------------------------------------------

    async def realtime(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        project = _project(request)
        session: dict[str, Any] = {"type": "realtime", "object": "realtime.session", "id": api.new_id("sess"),
                                   "model": request.query.get("model", ""), "instructions": "",
                                   "output_modalities": ["text"], "max_output_tokens": "inf"}
        said: list[dict[str, Any]] = []  # the conversation's items so far: every response reads all of them
        await _send(ws, {"type": "session.created", "event_id": api.new_id("event"), "session": session})
        current: asyncio.Task[None] | None = None
        try:
            async for message in ws:
                if message.type != WSMsgType.TEXT:
                    continue
                frame = _frame(message.data) or {}
                kind = frame.get("type")
                if kind == "session.update":
                    found = frame.get("session")
                    update: dict[str, Any] = found if isinstance(found, dict) else {}
                    session.update({k: v for k, v in update.items() if k != "type"})
                    await _send(ws, {"type": "session.updated", "event_id": api.new_id("event"), "session": session})
                elif kind == "conversation.item.create" and isinstance(frame.get("item"), dict):
                    item = {"id": api.new_id("item"), **frame["item"]}
                    said.append(item)
                    await _send(ws, {"type": "conversation.item.created", "event_id": api.new_id("event"),
                                     "previous_item_id": None, "item": item})
                elif kind == "input_audio_buffer.append":
                    continue  # the audio is not listened to: a commit stands for a turn spoken
                elif kind == "input_audio_buffer.commit":
                    item_id = api.new_id("item")
                    said.append({"id": item_id, "type": "message", "role": "user", "content": "(a spoken turn)"})
                    await _send(ws, {"type": "input_audio_buffer.committed", "event_id": api.new_id("event"),
                                     "previous_item_id": None, "item_id": item_id})
                    if isinstance(session.get("turn_detection"), dict):  # the server answers the turn itself
                        if current is not None:
                            await current
                        current = asyncio.create_task(self._realtime_response(ws, session, said, {}, project, None))
                elif kind == "response.create":
                    if current is not None:
                        await current  # one response at a time, as Realtime answers them
                    asked = frame.get("response")
                    options: dict[str, Any] = asked if isinstance(asked, dict) else {}
                    current = asyncio.create_task(self._realtime_response(ws, session, said, options, project,
                                                                          frame.get("event_id")))
                else:
                    await _send(ws, _realtime_error(ApiError(400, f"The fake does not support {kind!r} events.",
                                                             code="unsupported_event"), frame.get("event_id")))
        finally:
            if current is not None:
                current.cancel()
                await asyncio.gather(current, return_exceptions=True)
        return ws

    async def _realtime_response(self, ws: web.WebSocketResponse, session: dict[str, Any], said: list[dict[str, Any]],
                                 options: dict[str, Any], project: str, event_id: object) -> None:
        model = str(session.get("model") or "")
        items = ([] if options.get("conversation") == "none" else said) + [
            i for i in options.get("input") or [] if isinstance(i, dict)]
        limit = options.get("max_output_tokens", session.get("max_output_tokens"))
        body = {"model": model, "instructions": options.get("instructions") or session.get("instructions") or "",
                "input": items, **({"max_output_tokens": limit} if isinstance(limit, int) else {})}
        plan = self._admitted(body)
        if isinstance(plan, ApiError):
            await _send(ws, _realtime_error(plan, event_id))
            return
        rid, iid = api.new_id("resp"), api.new_id("item")
        response = {"id": rid, "object": "realtime.response", "status": "in_progress", "output": [],
                    "conversation_id": "conv_fake", "output_modalities": ["text"],
                    "max_output_tokens": limit if isinstance(limit, int) else "inf", "usage": None}
        await _send(ws, {"type": "response.created", "event_id": api.new_id("event"), "response": response})
        if await self._held(ws, model):
            return
        item = {"id": iid, "object": "realtime.item", "type": "message", "role": "assistant", "status": "completed",
                "content": [{"type": "output_text", "text": plan.text}]}
        for delta in content.split_for_stream(plan.text):
            await _send(ws, {"type": "response.output_text.delta", "event_id": api.new_id("event"),
                             "response_id": rid, "item_id": iid, "output_index": 0, "content_index": 0,
                             "delta": delta})
        await _send(ws, {"type": "response.output_text.done", "event_id": api.new_id("event"), "response_id": rid,
                         "item_id": iid, "output_index": 0, "content_index": 0, "text": plan.text})
        usage = {"total_tokens": plan.prompt_tokens + plan.completion_tokens, "input_tokens": plan.prompt_tokens,
                 "output_tokens": plan.completion_tokens,
                 "input_token_details": {"cached_tokens": 0, "text_tokens": plan.prompt_tokens, "audio_tokens": 0},
                 "output_token_details": {"text_tokens": plan.completion_tokens, "audio_tokens": 0}}
        said.append(item)
        self.server.bill.charge(model, usage, project=project)
        await _send(ws, {"type": "response.done", "event_id": api.new_id("event"),
                         "response": {**response, "status": "completed", "output": [item], "usage": usage}})

    # -- shared ------------------------------------------------------------------------

    def _admitted(self, body: dict[str, Any]) -> Completion | ApiError:
        """The planned answer to the Responses request `body`, or the error refusing it (a
        bad request, or one over the model's limits), counted as the HTTP endpoints count
        theirs."""
        try:
            plan = api.plan_responses(self.server.config, body)
        except ApiError as e:
            return e
        _, refused = self.server.admit(plan, self.server.now())
        return plan if refused is None else refused

    async def _held(self, ws: web.WebSocketResponse, model: str) -> bool:
        """A ``latency`` fault on `model` holds the response here, mid-way; a ``reset``
        closes the socket (True: the response goes no further)."""
        server = self.server
        for fault in server._active_faults(model):
            if fault.kind == "latency":
                server._count_fault(model, fault.kind)
                await asyncio.sleep(server._sample_ms(fault) / 1000)
            elif fault.kind == "reset":
                server._count_fault(model, fault.kind)
                await ws.close(code=1011, message=b"the fake cut the socket")
                return True
        return False


def _project(request: web.Request) -> str:
    return request.headers.get("openai-project") or "proj_default"


def _frame(data: str) -> dict[str, Any] | None:
    try:
        frame = json.loads(data)
    except ValueError:
        return None
    return frame if isinstance(frame, dict) else None


def _error(error: ApiError) -> dict[str, Any]:
    """`error` as the ``error`` event that answers a frame (its HTTP status beside it)."""
    return {"type": "error", "status": error.status, **error.body()}


def _realtime_error(error: ApiError, event_id: object) -> dict[str, Any]:
    """`error` as Realtime answers a client event with it: naming that event's id."""
    event = _error(error)
    return {**event, "event_id": api.new_id("event"), "error": {**event["error"], "event_id": event_id}}


def _in_lane(event: dict[str, Any], lane: str | None) -> dict[str, Any]:
    return event if lane is None else {**event, "stream_id": lane}


async def _send(ws: web.WebSocketResponse, event: dict[str, Any]) -> None:
    await ws.send_str(json.dumps(event))
