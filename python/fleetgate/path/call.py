"""One gated call on its way through the layers: what was asked (the request, its body and
estimate, who asked and until when), what the layers decided about it (its route, mode,
rung of the ladder, preset cut), where its time went, and how it ended.

Layers talk to each other only through the call: a layer that changes what is sent makes
a new call for the new body (:meth:`Call.reshaped`), one that decides something the
answer must show marks it (:attr:`Call.marks`; the record layer writes them as
``x-fleetgate-*`` headers), and one that holds something until the answer is in (a quota
reservation, a budget hold, a lane's slot) asks to be told when it is
(:meth:`Call.when_done`): at once for an answer read whole, at its end for a stream.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx2

from fleetgate.errors import FleetgateError
from fleetgate.estimate import GATED_PATHS, Estimate, estimate_request
from fleetgate.rewrite import with_body
from fleetgate.router import Route
from fleetgate.scope import Scope, current_scope
from fleetgate.sharing import identity

if TYPE_CHECKING:
    from fleetgate._core import Reservation
    from fleetgate.budget.guard import Hold
    from fleetgate.cache import CacheAddress
    from fleetgate.deployments import Deployment

__all__ = ["WAITS", "Call", "Handoff", "Outcome", "Refused", "Spent", "Timing", "gated_call"]


#: What a call may wait for (:meth:`Call.waits`): quota, a lane's slot, a retry after a 429,
#: a paused model, a budget's next period, the end of maintenance.
WAITS = ("quota", "lane", "retry", "paused", "budget", "maintenance")


@dataclass(slots=True)
class Timing:
    """Where a call's time went outside the gateway (the upstream call, and waiting:
    `waited` in all, `waited_for` by what it waited for, one of `WAITS`), what it counted
    against its model's quota (the requests `sent` upstream, and the tokens they were
    settled to, as OpenAI counts them), and what its answer was billed: the usage, its
    price, the model that answered and the ``service_tier`` that served it, as the answer
    reports it (None when nothing was billed). Shared by a call and the calls it is
    reshaped into."""

    upstream: float = 0.0
    waited: float = 0.0
    waited_for: dict[str, float] = field(default_factory=dict)
    sent: int = 0
    quota_tokens: int = 0
    usage: dict[str, Any] | None = None
    cost: float | None = None
    model: str | None = None
    service_tier: str | None = None


@dataclass(frozen=True, slots=True)
class Spent:
    """Where one answered call's time went (``Spent.of(response)``; ``fleetgate run`` sums
    them up): `seconds` in the gateway from taking the call to its answer, of which
    `upstream` in the upstream call and `waited` waiting, by what (one of `WAITS`); the
    requests it `sent` upstream and the `quota_tokens` they counted against the model's
    tokens per minute (a stream's: those known when it is asked, all of them once it ended)."""

    seconds: float
    upstream: float
    waited: dict[str, float]
    sent: int
    quota_tokens: int

    #: The key of ``httpx2.Response.extensions`` under which the record layer leaves what
    #: :meth:`of` reads: the call's seconds and its :class:`Timing`, made into a
    #: :class:`Spent` only when asked, so that calls nobody asks about pay nothing for it.
    KEY = "fleetgate.spent"

    @classmethod
    def of(cls, response: httpx2.Response) -> Spent | None:
        """What the gateway spent on the call `response` answers (None: not a gated call)."""
        left = response.extensions.get(cls.KEY)
        if not isinstance(left, tuple):
            return None
        seconds, timing = left
        return cls(seconds, timing.upstream, dict(timing.waited_for), timing.sent, timing.quota_tokens)


@dataclass(eq=False)
class Handoff:
    """What a call whose response runs on in the background holds until it ends: the
    layers put their holds here instead of settling them, and the background layer hands
    it to the watcher (:mod:`fleetgate.background`), which settles them."""

    call: Call
    response_id: str
    #: The request that made it, as sent (a deployment's URL and key: where it is polled).
    request: httpx2.Request
    #: The limit layer's reservation on the call's quotas (None: no quota applies).
    quota: Reservation | None = None
    #: The budget holds on it: the budget layer's (which records its spend), and that of the
    #: deployment that took it (``scope = "deployment"``).
    holds: list[Hold] = field(default_factory=list)

    @property
    def recorded(self) -> Hold | None:
        """The hold whose settlement records the call's spend (None: no budget holds it)."""
        return next((h for h in self.holds if h.records), None)


@dataclass(frozen=True, slots=True)
class Outcome:
    """How the upstream call ended, once its answer is in: the status, the tokens to
    settle its quota with and where they come from (``usage``, ``estimate`` or
    ``failure``: nothing spent), its ``usage`` object, how many content deltas a stream
    carried, the error ``code`` of a refusal (a 429's ``rate_limit_exceeded`` or
    ``insufficient_quota``), and the id of the Responses object a stream completed (an
    answer read whole has it in its body). A response still running in the background
    (source ``background``) is settled `later`: the layers leave what they hold on the
    handoff."""

    status: int
    tokens: int
    source: str
    usage: dict[str, Any] | None = None
    deltas: int = 0
    code: str | None = None
    response_id: str | None = None
    later: Handoff | None = None

    @property
    def billed(self) -> bool:
        return self.source != "failure"


class Refused(Exception):
    """A layer below the ladder cannot serve a call (its circuit is open, no quota or lane
    slot comes in time, a budget has no room): the fallback layer decides what the caller
    gets. `by` names the layer."""

    def __init__(self, error: FleetgateError, by: str) -> None:
        super().__init__(str(error))
        self.error = error
        self.by = by


@dataclass(slots=True, eq=False)
class Call:
    request: httpx2.Request
    endpoint: str
    body: dict[str, Any]
    estimate: Estimate
    scope: Scope
    #: A ``time.monotonic()`` instant.
    deadline: float
    #: What a request that does not say how much it may write is assumed to write.
    assumed_max_output: int
    #: Shared with the calls it is reshaped into.
    timing: Timing = field(default_factory=Timing)
    #: Input tokens its preset cut (0: none).
    cut: int = 0
    #: What the router did to it (None: nothing).
    route: Route | None = None
    #: The degradation mode it is served in.
    mode: str = "full"
    #: Its template in the prompt-cache layout report (None: not tracked).
    template: str | None = None
    #: The rung of the fallback ladder serving it.
    tier: str = "primary"
    #: Why the primary path could not serve it (None: it could, or was not tried).
    refusal: Refused | None = None
    #: Sent upstream to see whether a degraded fleet recovered: neither served from the
    #: cache nor shared with identical calls.
    probe: bool = False
    #: Whether the cache was asked for its answer.
    looked_up: bool = False
    #: Where the cache keeps its answer (None: not cached).
    cache_address: CacheAddress | None = None
    #: Its part in a collapsed flight: None (not shared), ``leader``, ``follower`` (of a
    #: call in this pod) or ``fleet`` (answered by another pod).
    shared: str | None = None
    #: Its OpenTelemetry span (None: not traced).
    span: Any = None
    #: How the upstream call ended (None: not yet, or a stream still open).
    outcome: Outcome | None = None
    #: The deployment it is sent to (None: the gateway's one upstream).
    deployment: Deployment | None = None
    #: The longest the limit layer waits for room in its quotas (None: until the deadline),
    #: set when a refusal at the deployment spills the call to the next (:attr:`spill`).
    quota_wait: float | None = None
    #: The deployment holding the Responses chain it continues (None: not known, or none).
    home: str | None = None
    #: ``x-fleetgate-*`` headers the record layer writes on the answer.
    marks: dict[str, str] = field(default_factory=dict)
    #: ``time.perf_counter()`` when the gateway took it: everything the gateway does counts.
    started: float = field(default_factory=time.perf_counter)
    _identity: str | None = None
    _pending: list[Callable[[Outcome], None]] = field(default_factory=list)

    @property
    def model(self) -> str:
        return self.estimate.model

    @property
    def stream(self) -> bool:
        return self.estimate.stream

    @property
    def priority(self) -> int:
        return int(self.scope.priority)

    @property
    def identity(self) -> str:
        """What makes this request's answer what it is (endpoint and body less the fields
        that do not change it): the one identity the cache and deduplication both use."""
        if self._identity is None:
            self._identity = identity(self.endpoint, self.body)
        return self._identity

    def seconds_left(self) -> float:
        return max(0.0, self.deadline - time.monotonic())

    def rewrite(self, body: dict[str, Any]) -> bool:
        """Send `body` instead (a preset's, a route's, a degraded mode's): the request
        rewritten and estimated anew, in place; False (and nothing changed) when the body
        cannot be estimated."""
        estimate = self._estimate(body)
        if estimate is None:
            return False
        self.request, self.body, self.estimate, self._identity = with_body(self.request, body), body, estimate, None
        return True

    def step_down(self, body: dict[str, Any]) -> Call | None:
        """A call for another rung of the ladder (a cheaper model's `body`, the standard
        tier's), in the same scope, deadline and timing; None when the body cannot be
        estimated. What the rung decides is noted on this call, which the caller's answer
        reports, and its outcome is this call's too (:meth:`when_done`)."""
        estimate = self._estimate(body)
        if estimate is None:
            return None
        stepped = Call(with_body(self.request, body), self.endpoint, body, estimate, self.scope, self.deadline,
                       self.assumed_max_output, self.timing, self.cut, self.route, self.mode, self.template,
                       started=self.started)
        stepped.when_done(self.done)
        return stepped

    def _estimate(self, body: dict[str, Any]) -> Estimate | None:
        """The estimate of `body` sent in place of this call's (None: it cannot be made),
        with the context OpenAI holds for this call when `body` continues the same chain."""
        try:
            estimate = estimate_request(self.endpoint, body, self.assumed_max_output)
        except (ValueError, TypeError):
            return None
        held = self.estimate.held
        if held and all(body.get(k) == self.body.get(k) for k in ("previous_response_id", "conversation")):
            estimate = dataclasses.replace(estimate, held=held)
        return estimate

    def waits(self, seconds: float, what: str) -> float:
        """`seconds` the call waits (or waited) for `what` (one of `WAITS`: quota, a lane,
        a retry-after, a paused model...), counted as its waiting."""
        timing = self.timing
        timing.waited += seconds
        timing.waited_for[what] = timing.waited_for.get(what, 0.0) + seconds
        return seconds

    @property
    def spill(self) -> bool:
        """A refusal at its deployment spills it to the next (it waits for room there at
        most :attr:`quota_wait`)."""
        return self.quota_wait is not None

    def when_done(self, then: Callable[[Outcome], None]) -> None:
        """Call `then` with the outcome once the answer is in: now for an answer read whole
        (or no answer), at its end for a stream still being read."""
        if self.outcome is not None:
            then(self.outcome)
        else:
            self._pending.append(then)

    def done(self, outcome: Outcome) -> None:
        """The answer is in: tell everyone waiting for it, the innermost first; each is
        told even when an earlier one raised."""
        self.outcome = outcome
        pending, self._pending = self._pending, []
        error: BaseException | None = None
        for then in pending:
            try:
                then(outcome)
            except BaseException as e:  # noqa: BLE001 - raised below, after the others ran
                error = error or e
        if error is not None:
            raise error


def gated_call(request: httpx2.Request, assumed_max_output: int, default_deadline: float) -> Call | None:
    """The gated call `request` is, or None for a request that passes straight through
    (not a POST to a gated endpoint, or not a JSON body the gateway can read)."""
    if request.method != "POST":
        return None
    path = request.url.path
    endpoint = next((e for e in GATED_PATHS if path.endswith(e)), None)
    if endpoint is None:
        return None
    sc = current_scope()
    deadline = sc.call_deadline(default_deadline)  # from this call's start, not its scope's
    try:
        body = json.loads(request.content)
        estimate = estimate_request(endpoint, body, assumed_max_output)
    except (ValueError, TypeError, httpx2.RequestNotRead):
        return None  # not a JSON body we can read: let upstream judge it
    return Call(request, endpoint, body, estimate, sc, deadline, assumed_max_output)
