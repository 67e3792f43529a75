"""deploy, the retry layer's inner step: a call of a model served by several deployments
(``[deployments]``) is sent to one of them, in the order
:meth:`fleetgate.deployments.Deployments.order` draws for it (priorities in turn, weighted
by room left within one; calls sharing a prompt-cache key or a long system prompt kept on
one deployment while it has room, so its prompt cache stays warm). Each try is the call as
that deployment takes it (its URL shape, key and project headers): the layers below see the
deployment, so its breaker and its quota decide, and upstream's ``x-ratelimit-*`` headers
and 429s update only its quota. A call of a model with no deployments passes through.

Contract: a deployment that refuses spills the call to the next at once, without waiting:
its breaker open or paused (``CircuitOpen``), its quota without room now
(``RateLimited``), no connection (a region down), upstream's 429 (``rate_limit_exceeded``,
``insufficient_quota``) or a rejected key (401, 403); a refusal by a quota every
deployment shares (its user's, feature's or team's) has the call wait where it is. When
every one refused it for want of room, it waits for room at the one whose room comes back
first, for about a second beyond when it should, then the deployments are drawn again
(so that waiting calls go where room is, not where it was); within the last such wait
the deadline allows, and when none was out of room (breakers, keys, regions down) at the
last one tried, the call is sent as to a single upstream: its refusal or answer is the
call's (the retry layer then tries them all again after upstream's wait). A model with
one deployment is sent there as to a single upstream. A
rejected key isolates its deployment for the fleet (its breaker; without breakers, this
pod leaves it out for a minute): the model keeps being served by the rest. A call
continuing a Responses chain goes only to the deployment holding it, as the chain ledger
knows it (:mod:`fleetgate.chains`); one whose chain's home is not known tries the order, a
404 from a deployment that does not hold it spilling it to the next. The answer names the
deployment that served it in ``x-fleetgate-upstream``; each call a deployment passes on is
counted (``fleetgate_deployment_spills_total``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import httpx2

from fleetgate._core import Breaker as CircuitBreaker
from fleetgate.budget.guard import Budgets
from fleetgate.chains import continued
from fleetgate.deployments import UPSTREAM_HEADER, Deployment, Deployments
from fleetgate.errors import BudgetExceeded, CircuitOpen, RateLimited
from fleetgate.metrics import GatewayMetrics
from fleetgate.path._async.budget import reserve_hold_async
from fleetgate.path._async.layer import Layer, Next
from fleetgate.path.call import Call, Refused
from fleetgate.path.settle import release_hold, settle_hold
from fleetgate.path.wire import retry_wait
from fleetgate.stats import GatewayStats

__all__ = ["Deploy"]

log = logging.getLogger("fleetgate")

#: How long this pod leaves out a deployment whose key was rejected, without breakers.
_REJECTED_FOR = 60.0
#: How long a call every deployment refused for now waits for room at the one whose room
#: comes back first, beyond when it should, before the deployments are drawn again.
_WAIT_ON_ONE = 1.0
#: A quota every deployment shares (its user's, feature's, team's) refused the call: it
#: waits where it is, as on a single upstream.
_SHARED = "shared"
#: Upstream 429 codes that say a deployment cannot take the call now.
_SPILL_CODES = frozenset({"rate_limit_exceeded", "insufficient_quota"})


class Deploy(Layer):
    name = "deploy"

    def __init__(self, deployments: Deployments, breaker_for: Callable[[str, str], CircuitBreaker | None],
                 stats: GatewayStats, metrics: GatewayMetrics | None, budgets: Budgets | None = None,
                 background_lease: float = 0.0) -> None:
        """`budgets`: the gateway's, when some are of deployments (``scope = "deployment"``)."""
        self.deployments, self.breaker_for, self.stats, self.metrics = deployments, breaker_for, stats, metrics
        self.budgets, self.background_lease = budgets, background_lease

    async def handle(self, call: Call, next: Next) -> httpx2.Response:  # noqa: A002
        # The chain it continues is held at its home, and only there.
        home = self.deployments.home(call.model, call.home) if call.home is not None else None
        order = [home] if home is not None else self.deployments.order(call.model, call.body)
        if not order:
            return await next(call)
        asked = call.request
        try:
            while len(order) > 1:
                full: list[Deployment] = []  # those that had no room for it now
                for deployment in order:
                    answer = await self._try(call, next, deployment, asked, full)
                    if isinstance(answer, httpx2.Response):
                        return answer
                    if answer == _SHARED:  # a quota every deployment shares refused it: wait here
                        return await self._last(call, next, deployment, asked)
                if not full:  # none was out of room (breakers, keys, regions): the last one decides
                    break
                # Every one with room to come is out of it now: the call waits for the one
                # whose room comes back first, a while (waiting longer there while another
                # has room again would leave that one idle), then they are drawn again.
                soonest = min(full, key=lambda d: d.empty_until)
                wait = max(0.0, soonest.empty_until - time.monotonic()) + _WAIT_ON_ONE
                if wait >= call.seconds_left():
                    return await self._last(call, next, soonest, asked)
                answer = await self._try(call, next, soonest, asked, [], wait)
                if isinstance(answer, httpx2.Response):
                    return answer
                order = self.deployments.order(call.model, call.body)
            return await self._last(call, next, order[-1], asked)
        finally:
            call.request, call.quota_wait = asked, None

    async def _last(self, call: Call, next: Next, deployment: Deployment,  # noqa: A002
                    asked: httpx2.Request) -> httpx2.Response:
        """`call` sent to `deployment` as to a single upstream: its answer or its refusal is the call's."""
        answer = await self._try(call, next, deployment, asked, None)
        assert isinstance(answer, httpx2.Response)  # a try that may not spill answers or raises
        return answer

    async def _try(self, call: Call, next: Next, deployment: Deployment, asked: httpx2.Request,  # noqa: A002
                   full: list[Deployment] | None, wait: float = 0.0) -> httpx2.Response | str:
        """Send `call` to `deployment`: its answer, or (`full` given: it may spill, after
        waiting up to `wait` seconds for room in its quota) why it went no further: a
        spill's reason (those without room now added to `full`), or :data:`_SHARED`."""
        call.deployment, call.quota_wait = deployment, wait if full is not None else None
        budgets = self.budgets
        hold = None
        if budgets is not None:
            try:
                hold = await reserve_hold_async(budgets, self.stats, call, self.background_lease, self.name,
                                                deployment.name)
            except Refused as e:
                if full is None or not isinstance(e.error, BudgetExceeded):
                    raise
                return self._spilled(call, deployment, "budget")
        call.request = deployment.request_for(asked, call.endpoint)
        try:
            response = await next(call)
        except BaseException as e:
            if budgets is not None and hold is not None:
                release_hold(budgets, self.stats, hold)
            if full is None:
                raise
            if isinstance(e, httpx2.TransportError):
                return self._spilled(call, deployment, "unreachable")
            if not isinstance(e, Refused) or not isinstance(e.error, (CircuitOpen, RateLimited)):
                raise
            if isinstance(e.error, RateLimited):
                if deployment.quota is None or e.error.quota != deployment.quota.name:
                    return _SHARED  # its user's, feature's or team's: no other deployment has more room
                full.append(deployment)
            return self._spilled(call, deployment, "quota" if isinstance(e.error, RateLimited) else "breaker")
        if budgets is not None and hold is not None:
            call.when_done(lambda outcome: settle_hold(budgets, self.stats, call, hold, outcome))
        reason = self._cannot_take(call, deployment, response)
        if reason is not None and full is not None:
            await response.aclose()
            if reason == "upstream_429":
                full.append(deployment)
            return self._spilled(call, deployment, reason)
        call.marks[UPSTREAM_HEADER] = deployment.name
        return response

    def _spilled(self, call: Call, deployment: Deployment, reason: str) -> str:
        """`deployment` could not take `call` (`reason`: one of
        :data:`fleetgate.metrics.SPILL_REASONS`): counted; the call goes on to the next."""
        self.stats.count("deployment_spilled")
        if self.metrics is not None:
            self.metrics.spilled(call.model, deployment.name, reason)
        return reason

    def _cannot_take(self, call: Call, deployment: Deployment, response: httpx2.Response) -> str | None:
        """Why `response` says `deployment` cannot take the call now (one of
        :data:`fleetgate.metrics.SPILL_REASONS`: a rejected key isolates it; upstream's 429 is counted as
        the retry layer counts those it sees); None: it took it."""
        status = response.status_code
        if status in (401, 403):
            self._isolate(call, deployment, status)
            return "rejected_key"
        if status == 404 and call.home is None and continued(call.body) is not None:
            return "not_held"  # a chain the fleet does not know where it is held: not there
        if status == 429:
            outcome = call.outcome
            if outcome is not None and outcome.code in _SPILL_CODES:
                deployment.refused(retry_wait(response))
                if call.spill:
                    self.stats.count("upstream_rate_limited")
                    if self.metrics is not None:
                        self.metrics.limiter_refused(call.model, "upstream")
                return "upstream_429" if outcome.code == "rate_limit_exceeded" else "no_credit"
        return None

    def _isolate(self, call: Call, deployment: Deployment, status: int) -> None:
        breaker = self.breaker_for(call.endpoint, deployment.key)
        self.stats.count("deployment_rejected_key")
        log.error("fleetgate: deployment %s of %s answered %d (its API key rejected): isolated; the model is served by "
                  "its other deployments. Fix the key, then reset the breaker %r", deployment.name, deployment.model,
                  status, f"{call.endpoint}:{deployment.key}")
        if breaker is not None:
            breaker.isolate()
        else:
            deployment.refused(_REJECTED_FOR)
