"""The openai SDK's HTTP transport: every chat, responses and embeddings call passes
through the gateway's path (scope → limit → upstream → settle); everything else goes
straight through.

Sync and async transports are twins: the policy (what a call costs, which quotas apply,
what a refusal or an upstream 429 means) is shared; only the I/O differs.

Bookkeeping never delays an answer: settling and header sync run in the background on a
shared store (``settle_later``, ``sync_from_headers_later``).

Retries have one owner. The gateway waits for quota itself, and retries an upstream
``rate_limit_exceeded`` 429 after the server's ``retry-after`` within the caller's
deadline; every 429 it hands back carries ``x-should-retry: false`` so the SDK does not
retry on top. The SDK keeps its own retries for connection errors and 5xx.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx2

from fleetgate._core import Breaker, Decision, Quota, Slot
from fleetgate.cache.semantic import SemanticQuery
from fleetgate.router import Route
from fleetgate.budget.guard import Budgets, Hold
from fleetgate.budget.presets import TRUNCATED_HEADER, cap_output
from fleetgate.errors import (
    BudgetExceeded,
    CircuitOpen,
    ConfigError,
    REFUSAL_CODES,
    DeadlineExpired,
    FleetgateError,
    QueueFull,
    RateLimited,
    ServiceDegraded,
    StoreUnavailable,
)
from fleetgate.estimate import GATED_PATHS, Estimate, estimate_request, usage_counts, usage_tokens
from fleetgate.dedup import DEDUP_HEADER
from fleetgate.fallback import TIER_HEADER
from fleetgate.modes import MODE_HEADER, ModeState
from fleetgate.prices import ModelPrice
from fleetgate.prompts import compress_body
from fleetgate.records import log_request, template_hash
from fleetgate.rewrite import with_body
from fleetgate.scope import Scope, current_scope

if TYPE_CHECKING:
    from fleetgate.gateway import Gateway

__all__ = ["AsyncGateTransport", "GateTransport"]

log = logging.getLogger("fleetgate")


@dataclass(slots=True)
class _Timing:
    """Where a call's time went outside the gateway (the upstream call, and waiting for
    quota, a lane, a retry or a paused model), and what its answer was billed: the usage,
    its price and the model that answered (None when nothing was billed)."""

    upstream: float = 0.0
    waited: float = 0.0
    usage: dict[str, Any] | None = None
    cost: float | None = None
    model: str | None = None


@dataclass(slots=True)
class _Call:
    endpoint: str
    body: dict[str, Any]
    estimate: Estimate
    quotas: list[Quota]
    model_quota: Quota | None
    deadline: float
    breaker: Breaker | None
    priority: int
    scope: Scope
    #: Input tokens its preset cut (0: none).
    cut: int = 0
    #: Where its answer is cached (None: not cached).
    cache_key: str | None = None
    #: What the semantic layer matches it on (None: not by meaning).
    semantic: SemanticQuery | None = None
    #: What the router did to it (None: nothing).
    route: Route | None = None
    #: Shared with the calls it steps down to.
    timing: _Timing = field(default_factory=_Timing)
    #: Its OpenTelemetry span (None: not traced).
    span: Any = None
    #: Whether the cache was asked for its answer.
    looked_up: bool = False
    #: The degradation mode it is served in.
    mode: str = "full"
    #: Its template in the prompt-cache layout report (None: not tracked).
    template: str | None = None

    def seconds_left(self) -> float:
        return max(0.0, self.deadline - time.monotonic())


def _prepare(gateway: Gateway, request: httpx2.Request) -> _Call | None:
    """The gated call a request is, or None for requests that pass straight through."""
    if request.method != "POST":
        return None
    endpoint = _gated_endpoint(request.url.path)
    if endpoint is None:
        return None
    sc = current_scope()
    deadline = sc.deadline if sc.deadline is not None else time.monotonic() + gateway.config.default_deadline_seconds
    try:
        return _call_for(gateway, endpoint, json.loads(request.content), sc, deadline)
    except (ValueError, TypeError, httpx2.RequestNotRead):
        return None  # not a JSON body we can read: let upstream judge it


def _gated_endpoint(path: str) -> str | None:
    """The gated endpoint `path` ends with, or None."""
    for endpoint in GATED_PATHS:
        if path.endswith(endpoint):
            return endpoint
    return None


def _call_for(gateway: Gateway, endpoint: str, body: dict[str, Any], sc: Scope, deadline: float) -> _Call:
    """The call `body` makes: estimated, with its quotas and breaker. Raises ValueError
    or TypeError for a body that cannot be estimated."""
    estimate = estimate_request(endpoint, body, gateway.config.assumed_max_output_tokens)
    model_quota, quotas = gateway.quotas_for(estimate.model, sc)
    # With no quota to draw on, the call is still the gateway's: it owns the 429 retries.
    return _Call(endpoint, body, estimate, quotas, model_quota, deadline, gateway.breaker_for(endpoint, estimate.model),
                 int(sc.priority), sc)


def _reshaped(gateway: Gateway, request: httpx2.Request, call: _Call,
              body: dict[str, Any]) -> tuple[httpx2.Request, _Call] | None:
    """`call` sent with another body (a preset's, a route's, a cheaper model's): the request
    rewritten and the call made for it, in the same scope, deadline, preset cut and
    timing; None when the body cannot be estimated."""
    try:
        reshaped = _call_for(gateway, call.endpoint, body, call.scope, call.deadline)
    except (ValueError, TypeError):
        return None
    reshaped.cut, reshaped.timing, reshaped.template, reshaped.mode = call.cut, call.timing, call.template, call.mode
    return with_body(request, body), reshaped


def _compressed(gateway: Gateway, request: httpx2.Request, call: _Call) -> tuple[httpx2.Request, _Call]:
    """The call with its instructions compressed (opted in by its feature), the saving
    counted per template; as it was when nothing could be saved."""
    assert gateway.compressor is not None
    done = compress_body(gateway.compressor, call.endpoint, call.body)
    if done is None:
        return request, call
    body, saved = done
    reshaped = _reshaped(gateway, request, call, body)
    if reshaped is None:
        return request, call
    gateway.prompt_savings.add(str(call.scope.feature), call.estimate.prompt_tokens, saved)  # the layout's key
    if gateway.metrics is not None:
        gateway.metrics.prompt_saved(call.scope.feature, saved)
    return reshaped


def _shaped(gateway: Gateway, request: httpx2.Request, call: _Call) -> tuple[httpx2.Request, _Call] | _Unserved:
    """The request as compression and the preset of its scope shape it (model, output
    limit, input cut to size), or a refusal naming a preset that is not configured."""
    if gateway.compressor is not None and call.scope.feature in gateway.config.prompts.compress_features:
        request, call = _compressed(gateway, request, call)
    presets = gateway.presets
    name = presets.for_scope(call.scope)
    if name is None:
        return request, call
    try:
        shaped = presets.shape(name, call.endpoint, call.body)
    except KeyError:
        return _Unserved(ConfigError(
            f"preset {name!r} is not configured: add [presets.{name}] to the gateway's config "
            f"(known: {', '.join(sorted(presets.presets)) or 'none'})"))
    reshaped = _reshaped(gateway, request, call, shaped.body)
    if reshaped is None:
        return _Unserved(ConfigError(f"preset {name!r} made a request the gateway cannot read"))
    reshaped[1].cut = shaped.cut
    return reshaped


def _enter(gateway: Gateway, request: httpx2.Request) -> tuple[httpx2.Request, _Call] | httpx2.Response | None:
    """The gated call `request` is, shaped by its preset; a refusal; or None when it passes
    straight through."""
    call = _prepare(gateway, request)
    if call is None:
        return None
    gateway.stats.count("requests")
    shaped = _shaped(gateway, request, call)
    if isinstance(shaped, _Unserved):
        return _refusal(request, shaped.error)
    if gateway.layout is not None:
        _, shaped_call = shaped
        shaped_call.template = shaped_call.scope.feature or template_hash(shaped_call.body)
        gateway.layout.observe(shaped_call.template, shaped_call.endpoint, shaped_call.body)
    routed = _routed(gateway, *shaped) if gateway.router.active else shaped
    if gateway.config.model_override and not isinstance(routed, httpx2.Response):
        return _overridden(gateway, *routed)
    return routed


def _overridden(gateway: Gateway, request: httpx2.Request,
                call: _Call) -> tuple[httpx2.Request, _Call] | httpx2.Response:
    """The call sent to ``model_override`` whatever a preset or the router chose (not
    embeddings: their model is not interchangeable)."""
    override = gateway.config.model_override
    if call.endpoint == "/embeddings" or call.estimate.model == override:
        return request, call
    reshaped = _reshaped(gateway, request, call, {**call.body, "model": override})
    if reshaped is None:
        return _refusal(request, ConfigError(f"model_override = {override!r} made a request the gateway cannot "
                                             f"estimate: set model_override to a model name, or to \"\""))
    reshaped[1].route = call.route
    return reshaped


def _routed(gateway: Gateway, request: httpx2.Request, call: _Call) -> tuple[httpx2.Request, _Call] | httpx2.Response:
    """The request as the router sends it (a rollout's configuration, or a tier's model)."""
    try:
        routed = gateway.router.route(call.endpoint, call.body, call.scope)
    except ValueError as e:
        return _refusal(request, ConfigError(f"routing: {e}"))
    if routed is None:
        return request, call
    body, route = routed
    if body is not call.body:
        reshaped = _reshaped(gateway, request, call, body)
        if reshaped is None:
            return _refusal(request, ConfigError("the router made a request the gateway cannot read"))
        request, call = reshaped
    call.route = route
    return request, call


def _answered(gateway: Gateway, call: _Call, response: httpx2.Response, seconds: float) -> httpx2.Response:
    """The last step of every gated call: the router's marks and figures, the metrics, the
    log record."""
    timing = call.timing
    response.headers[MODE_HEADER] = call.mode
    if call.route is not None:
        # A configuration is judged on how it answers, not on its call's waits (for quota, a
        # lane, a retry-after or a paused model), which fall on baseline and canary unevenly.
        response = gateway.router.answered(call.route, response, seconds - timing.waited, gateway.stats,
                                           timing.usage, timing.cost)
    if gateway.metrics is not None:
        gateway.metrics.answered(call.endpoint, call.estimate.model, call.scope.feature, response, seconds,
                                 timing.upstream + timing.waited if timing.upstream else 0.0, call.looked_up)
    if call.span is not None and gateway.tracer is not None:
        gateway.tracer.answered(call.span, response)
    log_request(call.endpoint, call.body, call.scope, response, seconds, timing.usage, timing.cost, timing.model)
    return response


def _traced(gateway: Gateway, request: httpx2.Request, call: _Call) -> None:
    if gateway.tracer is not None:
        call.span = gateway.tracer.start(call.endpoint, call.body, request, call.scope.feature)


def _failed(gateway: Gateway, call: _Call, seconds: float, error: BaseException) -> None:
    """A gated call that raised instead of answering."""
    if gateway.metrics is not None:
        gateway.metrics.failed(call.endpoint, call.estimate.model, call.scope.feature, seconds,
                               "cancelled" if isinstance(error, asyncio.CancelledError) else "failed")
    if call.span is not None and gateway.tracer is not None:
        gateway.tracer.failed(call.span, error)


def _release(slot: Slot | None) -> None:
    if slot is not None:
        slot.release()


class _Unserved(Exception):
    """The primary path cannot serve a call: its circuit is open, or no quota comes in time."""

    def __init__(self, error: FleetgateError) -> None:
        super().__init__(str(error))
        self.error = error


def _refusal(request: httpx2.Request, error: FleetgateError) -> httpx2.Response:
    """A refusal by the gateway, shaped as the SDK expects an error, never retried by it.
    The error's attributes ride along under ``error.fleetgate``: the gateway's clients
    raise the fleetgate exception again from them (see :mod:`fleetgate.sdk`)."""
    paused = isinstance(error, CircuitOpen) and error.reason == "paused"  # upstream's quota: a rate limit
    code, names = REFUSAL_CODES[RateLimited] if paused else REFUSAL_CODES.get(type(error), REFUSAL_CODES[RateLimited])
    if isinstance(error, (StoreUnavailable, QueueFull, ServiceDegraded)):
        status = 503
    elif isinstance(error, DeadlineExpired):
        status = 504
    elif isinstance(error, ConfigError):
        status = 400
    elif isinstance(error, CircuitOpen) and not paused:
        status = 503
    else:
        status = 429
    headers = {"x-should-retry": "false", "x-fleetgate": "refused", TIER_HEADER: "refused"}
    retry_after = (error.retry_after if isinstance(error, (RateLimited, CircuitOpen, BudgetExceeded, ServiceDegraded))
                   else None)
    if retry_after is not None:
        headers["retry-after-ms"] = str(max(1, int(retry_after * 1000)))
    fields = {name: getattr(error, name, None) for name in names if name != "retry_after"}
    body = {"error": {"message": f"fleetgate: {error}", "type": "fleetgate", "param": None, "code": code,
                      "fleetgate": fields}}
    return httpx2.Response(status, headers=headers, json=body, request=request)


_EXHAUSTED = {"x-ratelimit-remaining-requests": "0", "x-ratelimit-remaining-tokens": "0"}
_RATE_LIMIT_PREFIX = b"x-ratelimit-"


def _rate_limit_headers(headers: httpx2.Headers) -> dict[str, str]:
    """The ``x-ratelimit-*`` headers, as ``headers.items()`` gives them (names in lower
    case, a repeated header's values joined by ", "), picked in one pass over the raw
    headers: the limiter reads only these, and decoding every header costs more. Headers
    are ASCII but for a rare server: then ``items()`` decodes them as it does."""
    found: dict[str, str] = {}
    try:
        for name, value in headers.raw:
            if name[:12].lower() == _RATE_LIMIT_PREFIX:
                key, text = name.lower().decode("ascii"), value.decode("ascii")
                found[key] = f"{found[key]}, {text}" if key in found else text
    except UnicodeDecodeError:
        return {key: value for key, value in headers.items() if key.startswith("x-ratelimit-")}
    return found


def _retry_wait(response: httpx2.Response) -> float:
    """Seconds the server asks to wait: retry-after-ms, then retry-after (seconds)."""
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = response.headers.get(name)
        if value:
            try:
                return max(0.0, float(value) * scale)
            except ValueError:
                continue
    return 1.0


def _error_code(response: httpx2.Response) -> str | None:
    try:
        error = response.json().get("error") or {}
    except (ValueError, AttributeError):
        return None
    code = error.get("code") if isinstance(error, dict) else None
    return code if isinstance(code, str) else None


_DECODER = json.JSONDecoder()


def _usage_of(body: bytes) -> object:
    """The top-level ``usage`` of a JSON response. OpenAI puts it last, so it is parsed
    alone from its key on (the answer, often most of the body, is not parsed twice); the
    whole body is parsed only when that fails."""
    at = body.rfind(b'"usage"')
    if at >= 0:
        try:
            rest = body[at + 7:].decode().lstrip()
            if rest.startswith(":"):
                value, _ = _DECODER.raw_decode(rest[1:].lstrip())
                if isinstance(value, dict):
                    return value
        except (ValueError, UnicodeDecodeError):
            pass  # not where it usually is: parse the whole body below
    try:
        whole = json.loads(body)
    except ValueError:
        return None
    return whole.get("usage") if isinstance(whole, dict) else None


class _UsageScanner:
    """Watches a passing SSE stream for its usage, without holding it back."""

    __slots__ = ("_pending", "usage", "detail", "deltas")

    def __init__(self) -> None:
        self._pending = b""
        self.usage: int | None = None
        #: The usage object itself (for its cost).
        self.detail: Any = None
        self.deltas = 0

    def feed(self, chunk: bytes) -> None:
        data = self._pending + chunk
        lines = data.split(b"\n")
        self._pending = lines.pop()
        for line in lines:
            if not line.startswith(b"data: "):
                continue
            if b'"usage"' in line and b'"usage": null' not in line and b'"usage":null' not in line:
                try:
                    event = json.loads(line[6:])
                except ValueError:
                    continue
                usage = event.get("usage") or (event.get("response") or {}).get("usage")
                tokens = usage_tokens(usage)
                if tokens is not None:
                    self.usage, self.detail = tokens, usage
            elif b'"delta"' in line:
                self.deltas += 1


class _Policy:
    """What both transports do around the upstream call."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    def enter_lane(self, call: _Call) -> Slot | None:
        """A slot in the model's lanes (waiting in the call's priority lane), or None when
        the model is not capped. Raises ``_Unserved`` when the lane is full or the deadline
        passes first: such a call is never sent."""
        lanes = self.gateway.lanes_for(call.estimate.model)
        if lanes is None:
            return None
        joined = self.joined_queue(call)
        try:
            return lanes.enter(call.priority, call.seconds_left())
        except (QueueFull, DeadlineExpired) as e:
            raise self.lane_refused(e) from e
        finally:
            self.left_queue(call, joined)

    async def enter_lane_async(self, call: _Call) -> Slot | None:
        lanes = self.gateway.lanes_for(call.estimate.model)
        if lanes is None:
            return None
        joined = self.joined_queue(call)
        try:
            return await lanes.enter_async(call.priority, call.seconds_left())
        except (QueueFull, DeadlineExpired) as e:
            raise self.lane_refused(e) from e
        finally:
            self.left_queue(call, joined)

    def joined_queue(self, call: _Call) -> float:
        """Count the call into its lane's queue; the time it joined."""
        if self.gateway.metrics is not None:
            self.gateway.metrics.joined_queue(call.estimate.model, call.priority)
        return time.perf_counter()

    def left_queue(self, call: _Call, joined: float) -> None:
        waited = time.perf_counter() - joined
        call.timing.waited += waited
        if self.gateway.metrics is not None:
            self.gateway.metrics.left_queue(call.estimate.model, call.priority, waited)

    def acquired(self, call: _Call, started: float) -> None:
        """The time the call took to get quota (or be refused it); nothing without quotas."""
        if not call.quotas:
            return
        waited = time.perf_counter() - started
        call.timing.waited += waited
        if self.gateway.metrics is not None:
            self.gateway.metrics.limiter_waited(call.estimate.model, waited)

    def waits(self, call: _Call, seconds: float) -> float:
        """`seconds` to sleep before going on, counted as the call's waiting."""
        call.timing.waited += seconds
        return seconds

    def lane_refused(self, error: QueueFull | DeadlineExpired) -> _Unserved:
        self.gateway.stats.count("lane_full" if isinstance(error, QueueFull) else "deadline_expired")
        return _Unserved(error)

    def check_deadline(self, call: _Call, permit: int | None) -> None:
        """An expired call is never sent (its breaker permit goes back)."""
        if call.deadline <= time.monotonic():
            if permit is not None and call.breaker is not None:
                call.breaker.release(permit)
            raise self.lane_refused(DeadlineExpired("the request's deadline passed before it could be sent; it was not sent"))

    def permit(self, call: _Call) -> tuple[int | None, float]:
        """Ask the call's breaker: ``(permit, 0)`` to go (``None`` without a breaker),
        ``(None, seconds)`` to wait first (upstream paused the model with a 429 whose reset
        comes within the deadline). Raises ``_Unserved`` when the circuit refuses."""
        if call.breaker is None:
            return None, 0.0
        try:
            return call.breaker.allow(), 0.0
        except CircuitOpen as e:
            if e.reason == "paused" and e.retry_after is not None and e.retry_after < call.seconds_left():
                return None, e.retry_after
            self.gateway.stats.count("breaker_refused")
            raise _Unserved(e) from e

    def acquire_failed(self, call: _Call, permit: int | None, error: FleetgateError) -> _Unserved:
        """No quota in time (or the store is down and fail-closed): the permit goes back."""
        if permit is not None and call.breaker is not None:
            call.breaker.release(permit)
        self.gateway.stats.count("refused")
        if self.gateway.metrics is not None:
            self.gateway.metrics.limiter_refused(call.estimate.model, "gateway")
        return _Unserved(error)

    def record(self, call: _Call, permit: int | None, response: httpx2.Response | None, started: float,
               code: str | None = None) -> None:
        """Tell the breaker how the call went (None: no response came); count the upstream
        call's time."""
        elapsed = time.perf_counter() - started
        call.timing.upstream += elapsed
        if response is None or response.status_code != 429:  # a 429 is quota, not health
            self.gateway.modes.observe(response is None or response.status_code >= 500, elapsed)
        if permit is None or call.breaker is None:
            return
        if response is None:
            call.breaker.record(permit, None, None, elapsed)
        elif response.status_code == 429:
            call.breaker.record(permit, 429, code, elapsed, _retry_wait(response))
        else:
            call.breaker.record(permit, response.status_code, None, elapsed)

    def stream_done(self, call: _Call, decision: Decision | None, slot: Slot | None,
                    hold: Hold | None) -> Callable[[_UsageScanner], None]:
        """What to do when a stream ends: settle from what it carried, free the lane's slot."""
        def done(scanner: _UsageScanner) -> None:
            try:
                self.settle(decision, self.stream_tokens(call, scanner))
                self.spend(call, hold, scanner.detail, scanner.deltas)
            finally:
                _release(slot)
        return done

    def cache_key(self, request: httpx2.Request, call: _Call) -> str | None:
        """Give the call its cache key (None: its answer is not cached)."""
        cache = self.gateway.cache
        if cache.store is not None:
            call.cache_key = cache.key(call.endpoint, call.body, request, call.scope)
            if call.cache_key is not None:
                call.semantic = cache.query(call.endpoint, call.body, request, call.scope)
        return call.cache_key

    # -- degradation modes ------------------------------------------------------------------

    def waited_out(self, call: _Call, began: float) -> None:
        """Count the time a call waited for maintenance to end as waiting."""
        call.timing.waited += time.perf_counter() - began

    def degraded(self, request: httpx2.Request, call: _Call,
                 mode: ModeState) -> tuple[httpx2.Request, _Call] | httpx2.Response | None:
        """The call as `mode` serves it: reshaped to go on (reduced), refused, or None: a
        probe, else from the cache (cached-only) or the static answer."""
        gateway = self.gateway
        call.mode = mode.mode
        settings = gateway.config.modes
        if mode.mode == "maintenance":
            why = "the deadline passed while the fleet was in maintenance; the request was not sent"
            deferred = gateway.ladder.defer(request, call.endpoint, call.body, f"the fleet is in maintenance ({mode.reason})")
            if deferred is not None:  # kept on disk for later instead of lost
                return self.served(deferred, "deferred")
            return _refusal(request, self._degraded_error(mode, why))
        if mode.mode == "reduced":
            if call.scope.feature is not None and call.scope.feature in settings.optional_features:
                return _refusal(request, self._degraded_error(
                    mode, f"feature {call.scope.feature!r} is optional and off in reduced mode"))
            cheaper, cap = gateway.ladder.cheaper_body(call.body), settings.reduced_max_output_tokens
            if cheaper is None and cap is None:
                return request, call
            body = dict(cheaper or call.body)
            if cap is not None:
                cap_output(call.endpoint, body, cap)
            reshaped = _reshaped(gateway, request, call, body)
            if reshaped is None:
                return _refusal(request, ConfigError(f"reduced mode made a request the gateway cannot estimate (its "
                                                 f"[fallback] models step from {call.estimate.model!r})"))
            reshaped[1].mode = mode.mode
            return reshaped
        return None

    def probes(self) -> bool:
        """Whether this call, in an automatic mode that sends nothing upstream, goes as a probe."""
        if self.gateway.modes.probe():
            self.gateway.stats.count("mode_probes")
            return True
        return False

    def below_cache(self, request: httpx2.Request, call: _Call, mode: ModeState) -> httpx2.Response:
        """What cached-only mode gives on a miss, and static mode always: the static answer,
        else a refusal naming the mode."""
        static = self.gateway.ladder.static_response(request, call.endpoint, call.body)
        if static is not None:
            return self.served(static, "static")
        return _refusal(request, self._degraded_error(
            mode, "no cached answer for this request" if mode.mode == "cached-only" else "no static answer configured "
            "([fallback] static_answer)"))

    def _degraded_error(self, mode: ModeState, why: str) -> ServiceDegraded:
        self.gateway.stats.count("mode_refused")
        if mode.source == "operator":
            source, ends = "set by an operator", "; `fleetgate mode show` says until when, `fleetgate mode clear` ends it"
        else:
            source, ends = "entered by itself", "; it ends when upstream recovers: retry after retry_after"
        return ServiceDegraded(f"the fleet is in {mode.mode} mode ({source}: {mode.reason}): {why}{ends}", mode.mode,
                               mode.retry_after(self.gateway.config.modes.exit_after_seconds))

    # -- budgets ----------------------------------------------------------------------------

    def reserve_budget(self, call: _Call) -> Hold | None:
        """Reserve the call's worst-case cost on its budgets (None: no budgets configured,
        or an unpriced model allowed through). Raises ``_Unserved`` with BudgetExceeded
        when one has no room."""
        plan = self._budget_plan(call)
        if plan is None:
            return None
        budgets, price, worst = plan
        try:
            reservation = budgets.ledger.reserve(budgets.applicable(call.scope), worst,
                                                 lease=budgets.settings.reservation_seconds, now=budgets.clock())
        except (BudgetExceeded, StoreUnavailable) as e:
            raise self.budget_refused(e) from e
        return budgets.hold(call.estimate, call.scope, reservation, price)

    async def reserve_budget_async(self, call: _Call) -> Hold | None:
        plan = self._budget_plan(call)
        if plan is None:
            return None
        budgets, price, worst = plan
        try:
            reservation = await budgets.ledger.reserve_async(budgets.applicable(call.scope), worst,
                                                             lease=budgets.settings.reservation_seconds,
                                                             now=budgets.clock())
        except (BudgetExceeded, StoreUnavailable) as e:
            raise self.budget_refused(e) from e
        return budgets.hold(call.estimate, call.scope, reservation, price)

    def _budget_plan(self, call: _Call) -> tuple[Budgets, ModelPrice, float] | None:
        budgets = self.gateway.budgets
        if not budgets.active:
            return None
        try:
            price, worst = budgets.worst_case(call.estimate)
        except ConfigError as e:
            raise self.budget_refused(e) from e
        return None if price is None else (budgets, price, worst)

    def budget_refused(self, error: FleetgateError) -> _Unserved:
        self.gateway.stats.count("budget_refused" if isinstance(error, BudgetExceeded) else "refused")
        return _Unserved(error)

    def spend(self, call: _Call, hold: Hold | None, usage: Any, output_tokens: int | None = None) -> None:
        """Settle the call's budgets with what it cost (its usage; else the prompt and
        `output_tokens`, or the most it could produce when that is unknown), and count its
        tokens and dollars in the metrics; the cost is priced once, and kept on the call
        for the router and the log record."""
        metrics = self.gateway.metrics
        model = call.estimate.model
        cost = None
        if isinstance(usage, dict):
            counts = usage_counts(usage)
            cost = self.gateway.prices.counts_cost(model, counts)
            call.timing.usage, call.timing.cost, call.timing.model = usage, cost, model
            if call.template is not None and self.gateway.layout is not None:
                self.gateway.layout.usage(call.template, usage)
            if metrics is not None:
                metrics.billed(model, call.scope.feature, counts, cost)
        if hold is None:
            return
        output = call.estimate.max_output_tokens if output_tokens is None else output_tokens
        try:
            self.gateway.budgets.spend(hold, cost, call.estimate.prompt_tokens, output)
        except FleetgateError as e:
            self.note_settle_failure(e)

    def unspent(self, hold: Hold | None) -> None:
        try:
            self.gateway.budgets.release(hold)
        except FleetgateError as e:
            self.note_settle_failure(e)

    def when_spent(self, call: _Call, error: FleetgateError) -> tuple[str, float]:
        """What to do when a budget refused the call: ``("queue", seconds)`` to wait for the
        next period, ``("cheaper", 0)`` to step down, or ``("refuse", 0)``."""
        if isinstance(error, ConfigError):
            return "refuse", 0.0  # a setting to fix: no rung below can help
        if not isinstance(error, BudgetExceeded):
            return "other", 0.0
        action = self.gateway.budgets.action(error.budget)
        if action == "queue":
            wait = max(0.0, error.resets_at - self.gateway.budgets.clock()) + 0.001
            if wait < call.seconds_left():
                self.gateway.stats.count("budget_queued")
                return "queue", wait
            return "refuse", 0.0
        return action, 0.0

    def served(self, response: httpx2.Response, tier: str, call: _Call | None = None) -> httpx2.Response:
        response.headers[TIER_HEADER] = tier
        if call is not None and call.cut:
            response.headers[TRUNCATED_HEADER] = str(call.cut)
        self.gateway.stats.count(f"served_{tier}")
        return response

    def finished(self, call: _Call, decision: Decision | None, hold: Hold | None,
                 response: httpx2.Response, tier: str) -> httpx2.Response:
        """A non-streamed answer read whole: settle the quotas and budgets, hand it over."""
        if response.status_code == 200:
            usage = _usage_of(response.content)
            self.settle(decision, self.settle_tokens(call, response, usage))
            self.spend(call, hold, usage)
        else:
            self.settle(decision, (0, "failure"))
            self.unspent(hold)
        return self.served(response, tier, call)

    def cheaper(self, request: httpx2.Request, call: _Call) -> tuple[httpx2.Request, _Call] | None:
        """The first rung: the request for the cheaper model, prepared, or None."""
        body = self.gateway.ladder.cheaper_body(call.body)
        return _reshaped(self.gateway, request, call, body) if body is not None else None

    def last_rungs(self, request: httpx2.Request, call: _Call, error: FleetgateError) -> httpx2.Response:
        """Below the models: the static answer, then the deferred queue, then the refusal."""
        ladder = self.gateway.ladder
        static = ladder.static_response(request, call.endpoint, call.body)
        if static is not None:
            return self.served(static, "static")
        deferred = ladder.defer(request, call.endpoint, call.body, str(error))
        if deferred is not None:
            return self.served(deferred, "deferred")
        return _refusal(request, error)

    def may_retry(self, call: _Call, response: httpx2.Response, attempt: int) -> float | None:
        """After an upstream 429: seconds to wait before retrying, or None to hand it back.

        Upstream refused what the fleet's view admitted, so the view was too generous: it is
        emptied for the whole fleet, which then waits for room like this call does."""
        stats = self.gateway.stats
        stats.count("upstream_rate_limited")
        if self.gateway.metrics is not None:
            self.gateway.metrics.limiter_refused(call.estimate.model, "upstream")
        if _error_code(response) != "rate_limit_exceeded":
            return None  # insufficient_quota and the like: waiting will not help
        if call.model_quota is not None:
            try:
                self.gateway.limiter.sync_from_headers_later(call.model_quota, _EXHAUSTED)
            except FleetgateError as e:
                self.note_settle_failure(e)
        if response.headers.get("x-should-retry") == "false":
            return None
        wait = _retry_wait(response)
        if attempt >= self.gateway.config.max_upstream_retries or wait > call.seconds_left():
            return None
        stats.count("upstream_retries")
        return wait

    def settle_tokens(self, call: _Call, response: httpx2.Response, usage: object) -> tuple[int, str]:
        """Tokens to settle a finished non-streamed call with, and where they come from."""
        if response.status_code != 200:
            return 0, "failure"  # refused or failed upstream: no tokens were spent
        tokens = usage_tokens(usage)
        settled = call.estimate.settle_with(tokens)
        return (settled, "estimate") if tokens is None else (settled, "usage")

    def stream_tokens(self, call: _Call, scanner: _UsageScanner) -> tuple[int, str]:
        if scanner.usage is not None:
            return call.estimate.settle_with(scanner.usage), "usage"
        # No usage event (the caller did not ask for one, or the stream was cut): what
        # upstream counted stands, at least the prompt plus one token per content delta.
        return call.estimate.settle_with(call.estimate.prompt_tokens + scanner.deltas), "estimate"

    def sync_headers(self, call: _Call, response: httpx2.Response) -> None:
        """Lower the model's shared view to what upstream reports (in the background)."""
        if call.model_quota is None:
            return
        reported = _rate_limit_headers(response.headers)
        if "x-ratelimit-remaining-requests" in reported:
            try:
                self.gateway.limiter.sync_from_headers_later(call.model_quota, reported)
            except FleetgateError as e:
                self.note_settle_failure(e)

    def settle(self, decision: Decision | None, settlement: tuple[int, str]) -> None:
        """Settle a reservation (in the background on a shared store), counted by source."""
        if decision is None or decision.reservation is None:
            return
        tokens, source = settlement
        try:
            self.gateway.limiter.settle_later(decision.reservation, tokens)
            self.gateway.stats.count(f"settled_from_{source}")
        except FleetgateError as e:
            self.note_settle_failure(e)

    def note_settle_failure(self, error: FleetgateError) -> None:
        self.gateway.stats.count("settle_failures")
        log.warning("fleetgate: could not settle a reservation (%s); the quota refills by itself", error)


class _SettlingStream(httpx2.SyncByteStream):
    def __init__(self, inner: httpx2.SyncByteStream, done: Callable[[_UsageScanner], None]) -> None:
        self._inner, self._done, self._scanner, self._finished = inner, done, _UsageScanner(), False

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._inner:
            self._scanner.feed(chunk)
            yield chunk

    def close(self) -> None:
        try:
            self._inner.close()
        finally:
            if not self._finished:
                self._finished = True
                self._done(self._scanner)


class _AsyncSettlingStream(httpx2.AsyncByteStream):
    def __init__(self, inner: httpx2.AsyncByteStream, done: Callable[[_UsageScanner], None]) -> None:
        self._inner, self._done, self._scanner, self._finished = inner, done, _UsageScanner(), False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._inner:
            self._scanner.feed(chunk)
            yield chunk

    async def aclose(self) -> None:
        try:
            await self._inner.aclose()
        finally:
            if not self._finished:
                self._finished = True
                self._done(self._scanner)


class GateTransport(httpx2.BaseTransport):
    """The sync transport (``gate.openai()`` installs it)."""

    def __init__(self, gateway: Gateway, inner: httpx2.BaseTransport | None = None) -> None:
        self.gateway = gateway
        self.inner = inner or httpx2.HTTPTransport(limits=httpx2.Limits(max_connections=1000, max_keepalive_connections=100))
        self.policy = _Policy(gateway)

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        started = time.perf_counter()  # everything the gateway does counts
        entered = _enter(self.gateway, request)
        if entered is None:
            return self.inner.handle_request(request)
        if isinstance(entered, httpx2.Response):
            return entered
        request, call = entered
        _traced(self.gateway, request, call)
        try:
            response = self._moded(request, call)
        except BaseException as e:
            _failed(self.gateway, call, time.perf_counter() - started, e)
            raise
        return _answered(self.gateway, call, response, time.perf_counter() - started)

    def _moded(self, request: httpx2.Request, call: _Call) -> httpx2.Response:
        """The call as the fleet's degradation mode serves it."""
        modes = self.gateway.modes
        mode = modes.current
        if mode.mode == "full":
            return self._handle(request, call)
        if mode.mode == "maintenance":
            began = time.perf_counter()
            mode = modes.wait_out(call.seconds_left())
            self.policy.waited_out(call, began)
            if mode.mode == "full":
                return self._handle(request, call)
        step = self.policy.degraded(request, call, mode)
        if isinstance(step, httpx2.Response):
            return step
        if step is not None:
            return self._handle(*step)
        key = self.policy.cache_key(request, call)
        if self.policy.probes():
            probed = self._probe(request, call)
            if probed is not None:
                return probed
        if mode.mode == "cached-only":
            call.looked_up = key is not None
            hit = self.gateway.cache.lookup(key, request, call.semantic) if key is not None else None
            if hit is not None:
                return self.policy.served(hit, "cache", call)
        return self.policy.below_cache(request, call, mode)

    def _probe(self, request: httpx2.Request, call: _Call) -> httpx2.Response | None:
        """Upstream's answer to a probe (kept for the cache), or None when upstream still
        fails: the caller then gets what the mode gives, not the probe's failure."""
        try:
            response = self._answer(request, call)
        except httpx2.TransportError:
            return None
        if response.status_code >= 500:
            response.close()
            return None
        return response

    def _handle(self, request: httpx2.Request, call: _Call) -> httpx2.Response:
        gateway = self.gateway
        key = self.policy.cache_key(request, call)
        if key is not None and gateway.cache.serves(call.body):
            call.looked_up = True
            hit = gateway.cache.lookup(key, request, call.semantic)
            if hit is not None:
                return self.policy.served(hit, "cache", call)
        collapser = gateway.collapser
        # Threads collapse answers read whole; streams go their own way.
        namespace = None if call.estimate.stream else collapser.namespace(call, request, current_scope())
        if namespace is None:
            return self._answer(request, call)
        flight, leader = collapser.join(call, namespace, request)
        if not leader:
            gateway.stats.count("dedup_followers")
            return collapser.follow_sync(flight, request, call.seconds_left())
        try:
            if collapser.fleet is not None:
                response = collapser.across_pods(flight, request, call, lambda: self._answer(request, call),
                                                 lambda e: _refusal(request, e))
            else:
                response = self._answer(request, call)
        except BaseException as e:
            flight.finish(failure=(type(e).__name__, str(e)))
            collapser.leave(flight)
            raise
        collapser.publish(flight, response)
        collapser.leave(flight)
        response.headers.setdefault(DEDUP_HEADER, "leader")  # "fleet" when another pod answered
        return response

    def _answer(self, request: httpx2.Request, call: _Call) -> httpx2.Response:
        """The primary path, then the fallback ladder (a spent budget: its own action)."""
        while True:
            try:
                response = self._serve(request, call, "primary")
            except _Unserved as unserved:
                error = unserved.error
            else:
                return self.gateway.cache.keep(call.cache_key, response, call.semantic) if call.cache_key else response
            action, wait = self.policy.when_spent(call, error)
            if action != "queue":
                break
            time.sleep(self.policy.waits(call, wait))
        if action == "cache_only":
            hit = self.gateway.cache.lookup(call.cache_key, request, call.semantic) if call.cache_key else None
            return self.policy.served(hit, "cache", call) if hit is not None else _refusal(request, error)
        if action == "refuse":
            return _refusal(request, error)
        cheaper = self.policy.cheaper(request, call)
        if cheaper is not None:
            try:
                return self._serve(*cheaper, "fallback_model")
            except _Unserved as unserved:
                if action == "cheaper":  # the step down was refused too: say why
                    return _refusal(request, unserved.error)
        if action == "cheaper":  # no cheaper model under [fallback] models
            return _refusal(request, error)
        return self.policy.last_rungs(request, call, error)

    def _serve(self, request: httpx2.Request, call: _Call, tier: str) -> httpx2.Response:
        """Budget → lane → breaker → limit → upstream → settle; the lane's slot is held until
        the answer (a stream: its end) is in."""
        hold = self.policy.reserve_budget(call)
        try:
            slot = self.policy.enter_lane(call)
        except BaseException:
            self.policy.unspent(hold)
            raise
        try:
            response = self._call(request, call, tier, slot, hold)
        except BaseException:
            _release(slot)
            self.policy.unspent(hold)
            raise
        if not isinstance(response.stream, _SettlingStream):
            _release(slot)
        return response

    def _call(self, request: httpx2.Request, call: _Call, tier: str, slot: Slot | None,
              hold: Hold | None) -> httpx2.Response:
        """Breaker → limit → upstream → settle, retrying upstream 429s within the deadline."""
        limiter, policy = self.gateway.limiter, self.policy
        attempt = 0
        while True:
            permit, wait = policy.permit(call)
            if wait:
                time.sleep(policy.waits(call, wait))
                continue
            asked = time.perf_counter()
            try:
                decision = (limiter.acquire(call.quotas, tokens=call.estimate.tokens, timeout=call.seconds_left())
                            if call.quotas else None)
            except (RateLimited, StoreUnavailable) as e:
                raise policy.acquire_failed(call, permit, e) from e
            finally:
                policy.acquired(call, asked)
            policy.check_deadline(call, permit)
            started = time.perf_counter()
            try:
                response = self.inner.handle_request(request)
            except httpx2.TransportError:
                policy.record(call, permit, None, started)
                raise
            except BaseException:
                if permit is not None and call.breaker is not None:
                    call.breaker.release(permit)
                raise
            policy.sync_headers(call, response)
            if response.status_code == 429:
                response.read()
                policy.record(call, permit, response, started, _error_code(response))
                policy.settle(decision, (0, "failure"))
                retry_in = policy.may_retry(call, response, attempt)
                if retry_in is not None:
                    response.close()
                    attempt += 1
                    time.sleep(policy.waits(call, retry_in))
                    continue
                response.headers["x-should-retry"] = "false"
                policy.unspent(hold)
                return policy.served(response, tier, call)
            if call.estimate.stream and response.status_code == 200:
                policy.record(call, permit, response, started)  # time to first byte
                return policy.served(httpx2.Response(
                    response.status_code, headers=response.headers, request=request, extensions=response.extensions,
                    stream=_SettlingStream(response.stream, policy.stream_done(call, decision, slot, hold)),  # type: ignore[arg-type]
                ), tier, call)
            response.read()
            policy.record(call, permit, response, started)
            return policy.finished(call, decision, hold, response, tier)

    def close(self) -> None:
        self.inner.close()


class AsyncGateTransport(httpx2.AsyncBaseTransport):
    """The async transport (``gate.async_openai()`` installs it)."""

    def __init__(self, gateway: Gateway, inner: httpx2.AsyncBaseTransport | None = None) -> None:
        self.gateway = gateway
        self.inner = inner or httpx2.AsyncHTTPTransport(limits=httpx2.Limits(max_connections=1000, max_keepalive_connections=100))
        self.policy = _Policy(gateway)

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        started = time.perf_counter()  # everything the gateway does counts
        entered = _enter(self.gateway, request)
        if entered is None:
            return await self.inner.handle_async_request(request)
        if isinstance(entered, httpx2.Response):
            return entered
        request, call = entered
        _traced(self.gateway, request, call)
        try:
            response = await self._moded(request, call)
        except BaseException as e:
            _failed(self.gateway, call, time.perf_counter() - started, e)
            raise
        return _answered(self.gateway, call, response, time.perf_counter() - started)

    async def _moded(self, request: httpx2.Request, call: _Call) -> httpx2.Response:
        """The call as the fleet's degradation mode serves it."""
        modes = self.gateway.modes
        mode = modes.current
        if mode.mode == "full":
            return await self._handle(request, call)
        if mode.mode == "maintenance":
            began = time.perf_counter()
            mode = await modes.wait_out_async(call.seconds_left())
            self.policy.waited_out(call, began)
            if mode.mode == "full":
                return await self._handle(request, call)
        step = self.policy.degraded(request, call, mode)
        if isinstance(step, httpx2.Response):
            return step
        if step is not None:
            return await self._handle(*step)
        key = self.policy.cache_key(request, call)
        if self.policy.probes():
            probed = await self._probe(request, call)
            if probed is not None:
                return probed
        if mode.mode == "cached-only":
            call.looked_up = key is not None
            hit = await self.gateway.cache.lookup_async(key, request, call.semantic) if key is not None else None
            if hit is not None:
                return self.policy.served(hit, "cache", call)
        return self.policy.below_cache(request, call, mode)

    async def _probe(self, request: httpx2.Request, call: _Call) -> httpx2.Response | None:
        """Upstream's answer to a probe (kept for the cache), or None when upstream still
        fails: the caller then gets what the mode gives, not the probe's failure."""
        try:
            response = await self._answer(request, call)
        except httpx2.TransportError:
            return None
        if response.status_code >= 500:
            await response.aclose()
            return None
        return response

    async def _handle(self, request: httpx2.Request, call: _Call) -> httpx2.Response:
        gateway = self.gateway
        key = self.policy.cache_key(request, call)
        if key is not None and gateway.cache.serves(call.body):
            call.looked_up = True
            hit = await gateway.cache.lookup_async(key, request, call.semantic)
            if hit is not None:
                return self.policy.served(hit, "cache", call)
        collapser = gateway.collapser
        namespace = collapser.namespace(call, request, current_scope())
        if namespace is None:
            return await self._answer(request, call)
        flight, leader = collapser.join(call, namespace, request)
        if leader:
            # The call is its own task: any caller, this one included, may give up alone.
            answer = (collapser.across_pods_async(flight, request, call, lambda: self._answer(request, call),
                                                  lambda e: _refusal(request, e))
                      if collapser.fleet is not None and not call.estimate.stream else self._answer(request, call))
            task = asyncio.get_running_loop().create_task(collapser.lead(flight, answer))
            collapser.track(flight, task)
        else:
            gateway.stats.count("dedup_followers")
        return await collapser.follow(flight, request, "leader" if leader else "follower", call.estimate.stream)

    async def _answer(self, request: httpx2.Request, call: _Call) -> httpx2.Response:
        """The primary path, then the fallback ladder (a spent budget: its own action)."""
        while True:
            try:
                response = await self._serve(request, call, "primary")
            except _Unserved as unserved:
                error = unserved.error
            else:
                return await self.gateway.cache.keep_async(call.cache_key, response, call.semantic) if call.cache_key else response
            action, wait = self.policy.when_spent(call, error)
            if action != "queue":
                break
            await asyncio.sleep(self.policy.waits(call, wait))
        if action == "cache_only":
            hit = await self.gateway.cache.lookup_async(call.cache_key, request, call.semantic) if call.cache_key else None
            return self.policy.served(hit, "cache", call) if hit is not None else _refusal(request, error)
        if action == "refuse":
            return _refusal(request, error)
        cheaper = self.policy.cheaper(request, call)
        if cheaper is not None:
            try:
                return await self._serve(*cheaper, "fallback_model")
            except _Unserved as unserved:
                if action == "cheaper":  # the step down was refused too: say why
                    return _refusal(request, unserved.error)
        if action == "cheaper":  # no cheaper model under [fallback] models
            return _refusal(request, error)
        return self.policy.last_rungs(request, call, error)

    async def _serve(self, request: httpx2.Request, call: _Call, tier: str) -> httpx2.Response:
        """Budget → lane → breaker → limit → upstream → settle; the lane's slot is held until
        the answer (a stream: its end) is in."""
        hold = await self.policy.reserve_budget_async(call)
        try:
            slot = await self.policy.enter_lane_async(call)
        except BaseException:
            self.policy.unspent(hold)
            raise
        try:
            response = await self._call(request, call, tier, slot, hold)
        except BaseException:
            _release(slot)
            self.policy.unspent(hold)
            raise
        if not isinstance(response.stream, _AsyncSettlingStream):
            _release(slot)
        return response

    async def _call(self, request: httpx2.Request, call: _Call, tier: str, slot: Slot | None,
                    hold: Hold | None) -> httpx2.Response:
        """Breaker → limit → upstream → settle, retrying upstream 429s within the deadline."""
        limiter, policy = self.gateway.limiter, self.policy
        attempt = 0
        while True:
            permit, wait = policy.permit(call)
            if wait:
                await asyncio.sleep(policy.waits(call, wait))
                continue
            asked = time.perf_counter()
            try:
                decision = (await limiter.acquire_async(call.quotas, tokens=call.estimate.tokens,
                                                        timeout=call.seconds_left())
                            if call.quotas else None)
            except (RateLimited, StoreUnavailable) as e:
                raise policy.acquire_failed(call, permit, e) from e
            except BaseException:
                if permit is not None and call.breaker is not None:
                    call.breaker.release(permit)
                raise
            finally:
                policy.acquired(call, asked)
            policy.check_deadline(call, permit)
            started = time.perf_counter()
            try:
                response = await self.inner.handle_async_request(request)
            except httpx2.TransportError:
                policy.record(call, permit, None, started)
                raise
            except BaseException:  # cancelled: says nothing about upstream's health
                if permit is not None and call.breaker is not None:
                    call.breaker.release(permit)
                raise
            policy.sync_headers(call, response)
            if response.status_code == 429:
                await response.aread()
                policy.record(call, permit, response, started, _error_code(response))
                policy.settle(decision, (0, "failure"))
                retry_in = policy.may_retry(call, response, attempt)
                if retry_in is not None:
                    await response.aclose()
                    attempt += 1
                    await asyncio.sleep(policy.waits(call, retry_in))
                    continue
                response.headers["x-should-retry"] = "false"
                policy.unspent(hold)
                return policy.served(response, tier, call)
            if call.estimate.stream and response.status_code == 200:
                policy.record(call, permit, response, started)  # time to first byte
                return policy.served(httpx2.Response(
                    response.status_code, headers=response.headers, request=request, extensions=response.extensions,
                    stream=_AsyncSettlingStream(response.stream, policy.stream_done(call, decision, slot, hold)),  # type: ignore[arg-type]
                ), tier, call)
            await response.aread()
            policy.record(call, permit, response, started)
            return policy.finished(call, decision, hold, response, tier)

    async def aclose(self) -> None:
        await self.inner.aclose()
