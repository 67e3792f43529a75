"""WebSocket mode and Realtime through the gateway. ``client.responses.connect()`` and
``client.realtime.connect()`` do not use the HTTP transport (the SDK opens the socket with
the ``websockets`` library), so the clients that ``gate.openai()`` and
``gate.async_openai()`` hand out wrap the SDK's connections instead: the same classes, the
same API, sync and async, with every ``response.create`` frame gated as an HTTP call of
its model is.

    with gate.scope(user="u-42", feature="voice"):
        with client.responses.connect() as connection:
            connection.response.create(model="gpt-4.1-mini", input="Hello", max_output_tokens=200)
            for event in connection:                     # fleetgate.BudgetExceeded, RateLimited...
                if event.type == "response.completed":   # ...are raised by create(), unsent
                    break

One ``response.create`` frame, as a gated connection drives it:

1. It is estimated as the HTTP call would be (its prompt and the most output it may
   produce; on Realtime, the session's instructions and the conversation sent so far), in
   the scope current when it is sent (user, feature, team, deadline).
2. The fleet's degradation mode may refuse it (``maintenance`` once its deadline passed;
   ``cached-only`` and ``static``, which have no answer for a socket; an optional feature
   in ``reduced``). Its worst-case cost is reserved on every budget of the scope, then
   its requests and tokens on every quota of its model, user, feature and team, waiting
   for room until its deadline. A refusal (``ServiceDegraded``, ``BudgetExceeded``,
   ``RateLimited``, ``DeadlineExpired``, ``StoreUnavailable``, ``ConfigError``) is raised
   to the caller of ``send`` (or ``response.create``), and the frame is not sent; what
   was held is given back. Its log record, metrics and span are a refused HTTP call's.
3. It is sent, and waits in its lane (its ``stream_id``: frames of one lane are answered
   in order) until a ``response.created`` names its response.
4. The response's last event (``response.completed``, ``response.failed``,
   ``response.incomplete``; on Realtime ``response.done``) settles the quotas and budgets
   from its ``usage``, priced at the ``service_tier`` it reports; its log record,
   metrics and span are written as an HTTP call's. An ``error`` answering the frame itself (a 429
   from upstream, a bad request) settles it as nothing billed; a 429
   ``rate_limit_exceeded`` also empties the fleet's view of the model's quota.
5. A connection closed (or lost, or reconnected) with responses in flight settles them
   from their estimate (the prompt and the most output they could write): upstream may
   have billed them, so nothing is released.
6. A response the server started on its own (Realtime's turn detection, a steered
   successor) could not be refused: when it ends, its spend and tokens are counted on the
   budgets and quotas of the connection's latest scope, room or not (a budget that cannot
   take it is logged and counted in ``stats["budget_overrun"]``).

Frames that are not ``response.create`` pass untouched. :class:`SocketMeter` decides and
settles; the SDK's connections drive it, waiting as their caller does
(:mod:`fleetgate.path.socket_clients`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx2

from fleetgate._core import Decision, Quota
from fleetgate.budget.guard import Hold
from fleetgate.errors import (
    BudgetExceeded,
    ConfigError,
    DeadlineExpired,
    FleetgateError,
    RateLimited,
    ServiceDegraded,
    StoreUnavailable,
)
from fleetgate.estimate import Estimate, UsageCounts, estimate_request, usage_counts, usage_tokens
from fleetgate.fallback import TIER_HEADER
from fleetgate.modes import MODE_HEADER, ModeState
from fleetgate.modes.degrade import degraded, optional_off
from fleetgate.path.realtime_session import RealtimeSession
from fleetgate.path.refusals import refusal
from fleetgate.path.services import Services
from fleetgate.path.settle import settle_failed
from fleetgate.path.wire import EXHAUSTED
from fleetgate.prices import price_tier
from fleetgate.records import log_request
from fleetgate.scope import Scope, current_scope

__all__ = ["Adopted", "SocketMeter"]

log = logging.getLogger("fleetgate")

#: The events that start or end a response, or refuse a frame: the only ones parsed.
_WATCHED = re.compile(rb'"(response\.(created|completed|failed|incomplete|done)|error)"')
_ENDINGS = frozenset({"response.completed", "response.failed", "response.incomplete", "response.done"})
_REFUSALS = (BudgetExceeded, ConfigError, StoreUnavailable, RateLimited)


@dataclass(frozen=True, slots=True)
class _Plan:
    """What one ``response.create`` frame asks: the frame to send (as sent), its estimate,
    scope, deadline (a ``time.monotonic()`` instant), lane, and its trace span (None: not
    traced)."""

    event: dict[str, Any]
    estimate: Estimate
    scope: Scope
    deadline: float
    lane: str | None
    span: Any = None


@dataclass(slots=True, eq=False)
class _Frame:
    """One admitted frame: what it holds until its response ends."""

    plan: _Plan
    hold: Hold | None
    decision: Decision | None
    model_quota: Quota | None
    #: ``time.perf_counter()`` when it was taken, and the seconds the gateway spent on it
    #: (admission, less waiting).
    started: float
    overhead: float = 0.0
    response_id: str | None = None
    #: The Realtime ``event_id`` an ``error`` about it names.
    event_id: str | None = None
    #: A response the server started on its own (no frame of ours asked for it): counted
    #: when it ends, since nothing could be reserved before.
    adopted: bool = False
    settled: bool = field(default=False)


@dataclass(frozen=True, slots=True)
class _Ending:
    """How a response ended: its HTTP-like status for records and metrics, its usage (None:
    not known), the tier it reports, its id and a refusal's code."""

    status: int
    usage: dict[str, Any] | None
    tier: str | None = None
    response_id: str | None = None
    code: str | None = None
    #: The response's own ``status`` (``completed``, ``incomplete``, ``failed``...).
    state: str | None = None


#: How a response ended when its connection went before it did: billed, count unknown.
_LOST = _Ending(0, None)

#: How the span of a frame ends when it never left, or its connection went before its answer.
_NOT_SENT = ConnectionError("the frame was not sent")
_CLOSED = ConnectionAbortedError("the connection closed with the response in flight")

#: A response the server started on its own that ended: to count (:meth:`SocketMeter.count`).
Adopted = tuple[_Frame, _Ending]


class SocketMeter:
    """The gated side of one connection: decides what a frame is (:meth:`plan`), holds
    what it reserved, and settles it from the events read back (:meth:`observe`) or from
    its estimate when the connection goes (:meth:`lost`). The connections' drivers do
    the waiting (sync or async); this class never blocks on its own."""

    def __init__(self, gate: Services, endpoint: str, model: str | None = None) -> None:
        """`endpoint`: ``/responses`` or ``/realtime``; `model`: the Realtime session's."""
        self.gate, self.endpoint = gate, endpoint
        #: What a Realtime session said so far (None: a Responses WebSocket).
        self.session = RealtimeSession(model) if endpoint == "/realtime" else None
        #: Whom the connection's responses are counted for: the scope of its latest frame
        #: (at first, of the ``connect()`` call).
        self.scope = current_scope()
        self._waiting: list[_Frame] = []
        self._running: dict[str, _Frame] = {}
        self._lock = threading.Lock()

    # -- deciding ----------------------------------------------------------------------

    def plan(self, event: dict[str, Any]) -> _Plan | None:
        """The ``response.create`` frame `event` as a call to gate, or None for any other
        frame (which a Realtime session's ``session.update`` and ``conversation.item.create``
        still inform: its model, instructions, maximum output and the text said so far)."""
        self.scope = current_scope()
        if self.session is not None:
            self.session.update(event)
        if event.get("type") != "response.create":
            return None
        config = self.gate.config
        if self.session is not None:
            estimate = self.session.estimate(event.get("response"), config.assumed_max_output_tokens)
            if estimate is None:
                return None  # joined a call by its id: the model is not known here
            if not isinstance(event.get("event_id"), str):  # what an error about this frame will name
                event = {**event, "event_id": f"fg_{uuid.uuid4().hex[:20]}"}
        else:
            body = {k: v for k, v in event.items() if k not in ("type", "stream_id")}
            try:
                estimate = estimate_request("/responses", body, config.assumed_max_output_tokens)
            except (ValueError, TypeError):
                return None  # no model to gate it by: let upstream judge it
        sc = self.scope
        lane = event.get("stream_id")
        return _Plan(event, estimate, sc, sc.call_deadline(config.default_deadline_seconds),
                     lane if isinstance(lane, str) else None, self._span(event, estimate, sc))

    def _request(self) -> httpx2.Request:
        """The request a frame stands for, where records and spans want one."""
        base = (self.gate.config.base_url or "https://api.openai.com/v1").rstrip("/")
        return httpx2.Request("GET", f"{base}{self.endpoint}")

    def _span(self, event: dict[str, Any], estimate: Estimate, sc: Scope) -> Any:
        tracer = self.gate.tracer
        if tracer is None:
            return None
        body = {**event, "model": estimate.model, "max_output_tokens": estimate.max_output_tokens}
        return tracer.start(self.endpoint, body, self._request(),
                            self.gate.privacy.label("feature", sc.feature))

    def quotas(self, plan: _Plan) -> tuple[Quota | None, list[Quota]]:
        return self.gate.quotas_for(plan.estimate.model, plan.scope)

    def refused(self, plan: _Plan, error: FleetgateError, hold: Hold | None, by_limit: bool,
                started: float) -> None:
        """Count a refusal (the caller raises it), give back what was held, and write its
        record and metrics as an HTTP call's refusal (the answer the SDK would have had)."""
        stats, metrics = self.gate.stats, self.gate.metrics
        stats.count("requests")
        stats.count("budget_refused" if isinstance(error, BudgetExceeded) else "refused")
        if by_limit and metrics is not None:
            metrics.limiter_refused(plan.estimate.model, "gateway")
        self._release(hold)
        seconds = time.perf_counter() - started
        answer = refusal(self._request(), error)
        answer.headers[MODE_HEADER] = self.gate.modes.current.mode
        if metrics is not None:
            metrics.answered(self.endpoint, plan.estimate.model, plan.scope.feature, answer, seconds, 0.0, False)
        log_request(self.endpoint, _logged_body(plan), plan.scope, answer, seconds, None, None, None,
                    privacy=self.gate.privacy)
        if plan.span is not None and self.gate.tracer is not None:
            self.gate.tracer.answered(plan.span, answer)

    def check_mode(self, plan: _Plan, mode: ModeState) -> None:
        """What the fleet's degradation mode (after waiting out maintenance) says of a frame:
        ServiceDegraded, or nothing to go on. A socket has no cached or static answer to give
        instead, so ``cached-only`` and ``static`` refuse its frames, as ``maintenance`` does
        once the deadline passed, and ``reduced`` those of its optional features."""
        settings = self.gate.config.modes
        if mode.mode == "full" or (mode.mode == "reduced" and not optional_off(settings, plan.scope.feature)):
            return
        if mode.mode == "reduced":
            why = (f"feature {self.gate.privacy.label('feature', plan.scope.feature)!r} is optional and off in "
                   "reduced mode")
        elif mode.mode == "maintenance":
            why = "the deadline passed while the fleet was in maintenance; the frame was not sent"
        else:
            why = f"a WebSocket frame has no cached or static answer in {mode.mode} mode; the frame was not sent"
        self.gate.stats.count("mode_refused")
        raise degraded(mode, settings, why)

    def not_admitted(self, plan: _Plan, error: BaseException, hold: Hold | None, by_limit: bool,
                     started: float) -> None:
        """Admission ended in `error` (the caller raises it): a refusal is counted and
        recorded; anything else (cancelled, ...) only gives back what was held."""
        if isinstance(error, (*_REFUSALS, ServiceDegraded)):
            self.refused(plan, error, hold, by_limit, started)
            return
        self._release(hold)
        if plan.span is not None and self.gate.tracer is not None:
            self.gate.tracer.failed(plan.span, error)

    def admitted(self, plan: _Plan, hold: Hold | None, decision: Decision | None, model_quota: Quota | None,
                 started: float, waited: float) -> _Frame:
        """The frame, once its quotas answered after `waited` seconds: DeadlineExpired (what
        was held given back) when its deadline passed meanwhile."""
        model = plan.estimate.model
        if self.gate.metrics is not None and waited:
            self.gate.metrics.limiter_waited(model, waited)
        frame = _Frame(plan, hold, decision, model_quota, started)
        if plan.deadline <= time.monotonic():
            if decision is not None and decision.reservation is not None:
                try:
                    self.gate.limiter.settle_later(decision.reservation, 0)
                except FleetgateError as e:
                    settle_failed(self.gate.stats, e)
            self.gate.stats.count("deadline_expired")
            expired = DeadlineExpired("the frame's deadline passed before it could be sent; it was not sent; give "
                                      "it a later deadline (scope(deadline=…) or default_deadline_seconds)")
            self.refused(plan, expired, hold, by_limit=False, started=started)
            raise expired
        self.gate.stats.count("requests")
        frame.overhead = time.perf_counter() - started - waited
        event_id = plan.event.get("event_id")
        frame.event_id = event_id if isinstance(event_id, str) else None
        return frame

    # -- the frame on the wire ---------------------------------------------------------

    def sending(self, frame: _Frame) -> None:
        """`frame` goes out now: it waits for its response, after those sent before it."""
        with self._lock:
            self._waiting.append(frame)

    def unsent(self, frame: _Frame) -> None:
        """Sending `frame` failed: nothing reached upstream."""
        with self._lock:
            if frame in self._waiting:
                self._waiting.remove(frame)
        self._settle(frame, _Ending(0, None), billed=False, record=False)

    def observe(self, message: bytes | str) -> Adopted | None:
        """Read an event coming back: a response created, ended, or a frame refused. A
        response the server started on its own that ended is returned, for the caller to
        :meth:`count` (or :meth:`count_async`)."""
        raw = message.encode() if isinstance(message, str) else message
        if _WATCHED.search(raw) is None:
            return None
        try:
            event = json.loads(raw)
        except ValueError:
            return None
        if not isinstance(event, dict):
            return None
        kind = event.get("type")
        if kind == "response.created":
            self._created(event)
        elif kind in _ENDINGS:
            return self._ended(event)
        elif kind == "error":
            self._error(event)
        return None

    def lost(self) -> list[Adopted]:
        """The connection went: every response in flight is settled from its estimate;
        those the server started on its own are returned, for the caller to :meth:`count`
        (or :meth:`count_async`)."""
        with self._lock:
            frames, self._waiting, self._running = [*self._waiting, *self._running.values()], [], {}
        adopted: list[Adopted] = []
        for frame in frames:
            if frame.adopted:
                adopted.append((frame, _LOST))
            else:
                self._settle(frame, _LOST, billed=True, record=True)
        return adopted

    def abandon(self) -> None:
        """The connection never opened: frames queued for it were never sent."""
        with self._lock:
            frames, self._waiting = self._waiting, []
        for frame in frames:
            self._settle(frame, _Ending(0, None), billed=False, record=False)

    def _created(self, event: dict[str, Any]) -> None:
        response = event.get("response")
        if not isinstance(response, dict) or not isinstance(response.get("id"), str):
            return
        rid = response["id"]
        with self._lock:
            frame = self._next_waiting(event)
            if frame is None:  # the server started it (turn detection, a steered successor)
                frame = self._adopt(response)
            if frame is not None:
                frame.response_id = rid
                self._running[rid] = frame

    def _adopt(self, response: dict[str, Any]) -> _Frame | None:
        """A frame for a response nobody here asked for, in the connection's scope, to
        count when it ends (None: its model is not known)."""
        found = response.get("model")
        model = found if isinstance(found, str) and found else None
        assumed = self.gate.config.assumed_max_output_tokens
        if self.session is not None:
            estimate = self.session.estimate(None, assumed, model)
        elif model:
            estimate = estimate_request("/responses", {"model": model, "input": "",
                                                       "max_output_tokens": response.get("max_output_tokens")}, assumed)
        else:
            estimate = None
        if estimate is None:
            return None
        sc = self.scope
        event = {"type": "response.create", "model": estimate.model}
        plan = _Plan(event, estimate, sc, sc.call_deadline(self.gate.config.default_deadline_seconds),
                     None, self._span(event, estimate, sc))
        return _Frame(plan, None, None, self.gate.quotas_for(estimate.model, sc)[0], time.perf_counter(),
                      adopted=True)

    def _ended(self, event: dict[str, Any]) -> Adopted | None:
        response = event.get("response")
        if not isinstance(response, dict):
            return None
        rid = response.get("id")
        with self._lock:
            frame = self._running.pop(rid, None) if isinstance(rid, str) else None
            if frame is None:
                frame = self._next_waiting(event)
        if frame is None:
            return None
        usage = response.get("usage")
        status = str(response.get("status") or event.get("type", "").removeprefix("response."))
        tier = response.get("service_tier")
        ending = _Ending(500 if status == "failed" else 200, usage if isinstance(usage, dict) else None,
                         tier if isinstance(tier, str) else None, rid if isinstance(rid, str) else None,
                         state=status)
        if frame.adopted:
            return frame, ending
        self._settle(frame, ending, billed=ending.usage is not None or status != "failed", record=True)
        return None

    # -- counting what the server started on its own -------------------------------------

    def _nothing_held(self, frame: _Frame) -> Estimate:
        """An adopted response's estimate with nothing left to reserve: it has run."""
        return dataclasses.replace(frame.plan.estimate, prompt_tokens=0, prompt_chars_estimate=0,
                                   max_output_tokens=0)

    def _counted(self, frame: _Frame, ending: _Ending, hold: Hold | None, decision: Decision | None,
                 error: FleetgateError | None) -> None:
        if error is not None:  # spent all the same: said, counted, and in the records and metrics
            log.warning("fleetgate: a response the server started on its own on a %s connection is not in the "
                        "budgets (%s); it is in the request records and metrics", self.endpoint, error)
            self.gate.stats.count("budget_overrun")
        frame.hold, frame.decision = hold, decision
        self.gate.stats.count("requests")
        self._settle(frame, ending, billed=True, record=True)

    def count(self, adopted: Adopted) -> None:
        """Count a response the server started on its own, now that it ended: its spend on
        the budgets and its request and tokens on the quotas, whether or not they have room
        (upstream already served it)."""
        frame, ending = adopted
        hold, error = None, None
        try:
            hold = self.gate.budgets.reserve(self._nothing_held(frame), frame.plan.scope)
        except _REFUSALS as e:
            error = e
        _, quotas = self.quotas(frame.plan)
        decision = self.gate.limiter.try_acquire(quotas, tokens=0) if quotas else None
        self._counted(frame, ending, hold, decision, error)

    async def count_async(self, adopted: Adopted) -> None:
        """:meth:`count`, off the event loop."""
        frame, ending = adopted
        hold, error = None, None
        try:
            hold = await self.gate.budgets.reserve_async(self._nothing_held(frame), frame.plan.scope)
        except _REFUSALS as e:
            error = e
        _, quotas = self.quotas(frame.plan)
        decision = await self.gate.limiter.try_acquire_async(quotas, tokens=0) if quotas else None
        self._counted(frame, ending, hold, decision, error)

    def _error(self, event: dict[str, Any]) -> None:
        found = event.get("error")
        error: dict[str, Any] = found if isinstance(found, dict) else {}
        code = error.get("code") if isinstance(error.get("code"), str) else None
        status = event.get("status")
        if not isinstance(status, int):
            status = 429 if code == "rate_limit_exceeded" else 400
        with self._lock:
            if self.endpoint == "/realtime":  # errors name the client event they answer
                about = error.get("event_id")
                frame = next((f for f in self._waiting if about is not None and f.event_id == about), None)
                if frame is not None:
                    self._waiting.remove(frame)
            else:  # the socket carries only response.create: an error answers the next one
                frame = self._next_waiting(event)
        if frame is None:
            return
        if code == "rate_limit_exceeded":
            if self.gate.metrics is not None:
                self.gate.metrics.limiter_refused(frame.plan.estimate.model, "upstream")
            if frame.model_quota is not None:
                try:  # upstream refused what the fleet admitted: nothing is left
                    self.gate.limiter.sync_from_headers_later(frame.model_quota, EXHAUSTED)
                except FleetgateError as e:
                    settle_failed(self.gate.stats, e)
        self._settle(frame, _Ending(status, None, code=code), billed=False, record=True)

    def _next_waiting(self, event: dict[str, Any]) -> _Frame | None:
        """The oldest frame still waiting in `event`'s lane (the lock held)."""
        lane = event.get("stream_id")
        lane = lane if isinstance(lane, str) else None
        for i, frame in enumerate(self._waiting):
            if frame.plan.lane == lane:
                return self._waiting.pop(i)
        return None

    # -- settling ----------------------------------------------------------------------

    def _settle(self, frame: _Frame, ending: _Ending, *, billed: bool, record: bool) -> None:
        """Settle `frame`'s quotas and budgets from how it ended, once: its usage when
        known; else, `billed`, its estimate (the most it could have cost), or nothing."""
        if frame.settled:
            return
        frame.settled = True
        gate, plan = self.gate, frame.plan
        estimate, model = plan.estimate, plan.estimate.model
        counted = usage_tokens(ending.usage)
        cost: float | None = None
        counts = None
        served = ending.tier if ending.tier is not None else estimate.service_tier
        if ending.usage is not None and counted is not None:
            counts = usage_counts(ending.usage)
            cost = gate.prices.counts_cost(model, counts, tier=served)
            tokens, source = estimate.settle_with(counted), "usage"
        elif billed:
            tokens, source = estimate.settle_with(None), "estimate"
        else:
            tokens, source = 0, "failure"
        try:
            if frame.decision is not None and frame.decision.reservation is not None:
                gate.limiter.settle_later(frame.decision.reservation, tokens)
            if source == "failure":
                self._release(frame.hold)
            elif frame.hold is not None:
                output = counts.output if counts is not None else estimate.max_output_tokens
                gate.budgets.spend(frame.hold, cost, estimate.prompt_tokens, output)
        except FleetgateError as e:
            settle_failed(gate.stats, e)
        if frame.decision is not None:
            gate.stats.count(f"settled_from_{source}")
        if record:
            self._record(frame, ending, counts, cost, served)
        elif plan.span is not None and gate.tracer is not None:
            gate.tracer.failed(plan.span, _NOT_SENT)

    def _record(self, frame: _Frame, ending: _Ending, counts: UsageCounts | None, cost: float | None,
                served: str | None) -> None:
        """Its log record and metrics, as an HTTP call's (the user by pseudonym; what it
        was billed, at the tier that `served` it)."""
        gate, plan = self.gate, frame.plan
        model, feature = plan.estimate.model, plan.scope.feature
        seconds = time.perf_counter() - frame.started
        metrics = gate.metrics
        tracer = gate.tracer if plan.span is not None else None
        if ending is _LOST:
            if metrics is not None:
                metrics.failed(self.endpoint, model, feature, seconds, "failed")
            if tracer is not None:
                tracer.failed(plan.span, _CLOSED)
            return
        if metrics is not None and counts is not None:
            metrics.billed(model, feature, counts, cost, service_tier=price_tier(served))
        headers = {TIER_HEADER: "primary", MODE_HEADER: gate.modes.current.mode}
        if ending.response_id is not None:
            headers["x-request-id"] = ending.response_id
        answer = httpx2.Response(ending.status, headers=headers, request=self._request(),
                                 json={"error": {"code": ending.code}} if ending.status >= 400 else
                                 {"id": ending.response_id, "model": model, "status": ending.state,
                                  "usage": ending.usage})
        if metrics is not None:
            metrics.answered(self.endpoint, model, feature, answer, seconds, max(0.0, seconds - frame.overhead),
                             False)
        log_request(self.endpoint, _logged_body(plan), plan.scope, answer, seconds, ending.usage, cost,
                    model if ending.usage is not None else None, privacy=gate.privacy, service_tier=served)
        if tracer is not None:
            tracer.answered(plan.span, answer)

    def _release(self, hold: Hold | None) -> None:
        try:
            self.gate.budgets.release(hold)
        except FleetgateError as e:
            settle_failed(self.gate.stats, e)

    # -- the drivers: admission, waiting as the caller does ------------------------------

    def admit(self, event: dict[str, Any], *, wait: bool = True) -> _Frame | None:
        """Gate `event` (None: not a frame to gate), waiting for quota until its deadline
        (`wait` False: not at all). Raises the refusal."""
        plan = self.plan(event)
        if plan is None:
            return None
        started, hold, stage = time.perf_counter(), None, "mode"
        try:
            self.gate.warmed()
            mode = self.gate.modes.current
            if mode.mode == "maintenance":
                mode = self.gate.modes.wait_out(_seconds_left(plan) if wait else 0.0)
            self.check_mode(plan, mode)
            stage = "budget"
            hold = self.gate.budgets.reserve(plan.estimate, plan.scope)
            stage = "limit"
            model_quota, quotas = self.quotas(plan)
            asked = time.perf_counter()
            decision = (self.gate.limiter.acquire(quotas, tokens=plan.estimate.tokens,
                                                  timeout=_seconds_left(plan) if wait else 0.0) if quotas else None)
        except BaseException as e:
            self.not_admitted(plan, e, hold, stage == "limit", started)
            raise
        return self.admitted(plan, hold, decision, model_quota, started, time.perf_counter() - asked)

    async def admit_async(self, event: dict[str, Any]) -> _Frame | None:
        """:meth:`admit`, waiting off the event loop."""
        plan = self.plan(event)
        if plan is None:
            return None
        started, hold, stage = time.perf_counter(), None, "mode"
        try:
            await self.gate.warmed_async()
            mode = self.gate.modes.current
            if mode.mode == "maintenance":
                mode = await self.gate.modes.wait_out_async(_seconds_left(plan))
            self.check_mode(plan, mode)
            stage = "budget"
            hold = await self.gate.budgets.reserve_async(plan.estimate, plan.scope)
            stage = "limit"
            model_quota, quotas = self.quotas(plan)
            asked = time.perf_counter()
            decision = (await self.gate.limiter.acquire_async(quotas, tokens=plan.estimate.tokens,
                                                              timeout=_seconds_left(plan)) if quotas else None)
        except BaseException as e:
            self.not_admitted(plan, e, hold, stage == "limit", started)
            raise
        return self.admitted(plan, hold, decision, model_quota, started, time.perf_counter() - asked)


def _logged_body(plan: _Plan) -> dict[str, Any]:
    """The frame as its log record reads it (a request body: its model, instructions...)."""
    return {"model": plan.estimate.model, **{k: v for k, v in plan.event.items() if k != "type"}}


def _seconds_left(plan: _Plan) -> float:
    return max(0.0, plan.deadline - time.monotonic())
