"""breaker: a circuit breaker per (endpoint, model), or per (endpoint, deployment) for a
call sent to one of its model's deployments, asked before any quota is taken. A
closed breaker lets the call through with a permit; an open one refuses it at once; a
half-open one lets the fleet's probes through, one round for the whole fleet. How the call
went is recorded on the permit: the health verdict of ``classify`` in the Rust core (5xx,
408, no answer: failures; 429: quota, not health; other 4xx, and Flex's 429
``resource_unavailable``: neutral, see :mod:`fleetgate.tiers`).

Contract: an open breaker refuses with ``CircuitOpen`` (the fallback layer decides; the
router counts it against the side it refused and rolls a canary back); a breaker paused by
upstream's 429 holds the call until the reset when that comes within the deadline, else
refuses it as a rate limit (a call that may spill to another deployment is refused at
once). A call refused below (no quota, an expired deadline) or
cancelled gives its permit back: it says nothing of upstream's health.
"""

from __future__ import annotations

from collections.abc import Callable

import httpx2

from fleetgate._core import Breaker as CircuitBreaker
from fleetgate.errors import CircuitOpen
from fleetgate.path._async.layer import Layer, Next
from fleetgate.path.call import Call, Refused
from fleetgate.path.waits import sleep_async
from fleetgate.path.wire import retry_wait
from fleetgate.stats import GatewayStats

__all__ = ["Breaker"]


class Breaker(Layer):
    name = "breaker"

    def __init__(self, breaker_for: Callable[[str, str], CircuitBreaker | None], stats: GatewayStats) -> None:
        self.breaker_for, self.stats = breaker_for, stats

    async def handle(self, call: Call, next: Next) -> httpx2.Response:  # noqa: A002
        deployment = call.deployment
        breaker = self.breaker_for(call.endpoint, call.model if deployment is None else deployment.key)
        if breaker is None:
            return await next(call)
        while True:
            try:
                permit = breaker.allow()
                break
            except CircuitOpen as e:
                if e.reason == "paused" and e.retry_after is not None and e.retry_after < call.seconds_left() \
                        and not call.spill:
                    await sleep_async(call.waits(e.retry_after, "paused"))
                    continue
                self.stats.count("breaker_refused")
                raise Refused(e, self.name) from e
        before = call.timing.upstream
        try:
            response = await next(call)
        except httpx2.TransportError:
            breaker.record(permit, None, None, call.timing.upstream - before)
            raise
        except BaseException:
            breaker.release(permit)
            raise
        elapsed = call.timing.upstream - before
        if response.status_code == 429:
            outcome = call.outcome
            breaker.record(permit, 429, outcome.code if outcome is not None else None, elapsed,
                           retry_wait(response))
        else:
            breaker.record(permit, response.status_code, None, elapsed)
        return response
