"""limit: the call's requests and tokens (its prompt estimate plus the most output it may
produce, as OpenAI counts them) are reserved on every quota that applies (the model's, and
its user's, feature's and team's) in one round trip, waiting for room at most until the
deadline. Once the answer is in (a stream: at its end), the reservation is settled to what
upstream counted, and the fleet's view of the model's quota is lowered to what upstream's
``x-ratelimit-*`` headers report (in the background). A response still running in the
background (``background: true``) leaves its reservation to be settled when it ends. A 429
``rate_limit_exceeded`` empties that view for the whole fleet: upstream refused what it
admitted. Every ``service_tier`` draws on the model's one quota: OpenAI shares rate limits
across tiers (:mod:`fleetgate.tiers`).

A call sent to one of its model's deployments (:mod:`fleetgate.deployments`) draws on that
deployment's quota in place of the model's, and tells the deployment the room it left;
one that may spill to another deployment does not wait for room.

Contract: no room before the deadline refuses with ``RateLimited`` (Redis down under
``fail_closed``: ``StoreUnavailable``), a refusal of the call's own configuration; a call
that no quota could ever admit (its cost over a bucket's size) is refused with the
``ConfigError`` that says which setting to change; a call
whose deadline passed while it waited is never sent (``DeadlineExpired``). A call that
got no answer keeps its reservation until it lapses: upstream may have counted it.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx2

from fleetgate._core import Decision, Limiter, Quota
from fleetgate.errors import ConfigError, DeadlineExpired, FleetgateError, RateLimited, StoreUnavailable
from fleetgate.metrics import GatewayMetrics
from fleetgate.path._async.layer import Layer, Next
from fleetgate.path.call import Call, Outcome, Refused
from fleetgate.path.settle import settle_failed
from fleetgate.path.wire import EXHAUSTED, rate_limit_headers
from fleetgate.scope import Scope
from fleetgate.stats import GatewayStats

__all__ = ["Limit"]


class Limit(Layer):
    name = "limit"

    def __init__(self, limiter: Limiter, quotas_for: Callable[[str, Scope], tuple[Quota | None, list[Quota]]],
                 stats: GatewayStats, metrics: GatewayMetrics | None) -> None:
        self.limiter, self.quotas_for, self.stats, self.metrics = limiter, quotas_for, stats, metrics

    async def handle(self, call: Call, next: Next) -> httpx2.Response:  # noqa: A002
        model_quota, quotas = self.quotas_for(call.model, call.scope)
        deployment = call.deployment
        if deployment is not None:  # its own quota in place of the model's
            quotas = ([deployment.quota] if deployment.quota is not None else []) + \
                (quotas[1:] if model_quota is not None else quotas)
            model_quota = deployment.quota
        decision = None
        if quotas:
            asked = time.perf_counter()
            timeout = call.seconds_left()
            if call.quota_wait is not None:  # a deployment's try that spills after a while
                timeout = min(timeout, call.quota_wait)
            try:
                decision = await self.limiter.acquire_async(quotas, tokens=call.estimate.tokens, timeout=timeout)
                if deployment is not None:
                    deployment.noted(decision)
            except (RateLimited, StoreUnavailable, ConfigError) as e:
                if deployment is not None and isinstance(e, RateLimited) and deployment.quota is not None \
                        and e.quota == deployment.quota.name:
                    deployment.refused(e.retry_after)
                self.stats.count("refused")
                if self.metrics is not None:
                    self.metrics.limiter_refused(call.model, "gateway")
                raise Refused(e, self.name) from e
            finally:
                waited = time.perf_counter() - asked
                call.waits(waited, "quota")
                if self.metrics is not None:
                    self.metrics.limiter_waited(call.model, waited)
        if call.deadline <= time.monotonic():
            self._settle(decision, Outcome(0, 0, "failure"))
            self.stats.count("deadline_expired")
            raise Refused(DeadlineExpired("the request's deadline passed before it could be sent; it was not sent; give "
                                          "it a later deadline (scope(deadline=…) or default_deadline_seconds)"),
                          self.name)
        response = await next(call)
        if model_quota is not None:
            self._sync(model_quota, call, response)
        if decision is not None:
            call.when_done(lambda outcome: self._settle(decision, outcome))
        return response

    def _sync(self, quota: Quota, call: Call, response: httpx2.Response) -> None:
        """Lower the model's shared view to what upstream reports (in the background)."""
        outcome = call.outcome
        if outcome is not None and outcome.code == "rate_limit_exceeded":
            reported: dict[str, str] | None = EXHAUSTED
        else:
            headers = rate_limit_headers(response.headers)
            reported = headers if "x-ratelimit-remaining-requests" in headers else None
        if reported is not None:
            try:
                self.limiter.sync_from_headers_later(quota, reported)
            except FleetgateError as e:
                settle_failed(self.stats, e)

    def _settle(self, decision: Decision | None, outcome: Outcome) -> None:
        """Settle a reservation (in the background on a shared store), counted by source."""
        if decision is None or decision.reservation is None:
            return
        if outcome.later is not None:  # a background response: settled when it ends
            outcome.later.quota = decision.reservation
            return
        try:
            self.limiter.settle_later(decision.reservation, outcome.tokens)
            self.stats.count(f"settled_from_{outcome.source}")
        except FleetgateError as e:
            settle_failed(self.stats, e)
