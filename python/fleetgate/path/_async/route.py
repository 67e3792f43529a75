"""route: which configuration answers. The router sends a request to a rollout's side
(canary or baseline) or to the model tier its complexity calls for, and ``model_override``
sends every call (but embeddings) to one model, whatever a preset or the router chose.
After the answer, the router counts it for the rollout's gates and the spend report.

Contract (a refusal is evidence about the side it refused): when the layers that judge a
configuration's own traffic (breaker, limit, lanes, budget) refuse a call of one side, it
counts as that side's error, whatever rung of the ladder then served the caller; a canary
whose circuit breaker is open is rolled back at the router's next sync. A refusal for the
whole fleet (a degraded mode) and upstream's 429s say nothing about a side. A configuration
is judged on how it answers, not on the call's waits (for quota, a lane, a retry-after or a
paused model), which fall on the sides unevenly.
"""

from __future__ import annotations

import time

import httpx2

from fleetgate.errors import ConfigError
from fleetgate.path._async.layer import Layer, Next
from fleetgate.path.call import Call
from fleetgate.path.refusals import refuse
from fleetgate.router import Router
from fleetgate.stats import GatewayStats

__all__ = ["Route"]


class Route(Layer):
    name = "route"

    def __init__(self, router: Router, model_override: str, stats: GatewayStats) -> None:
        self.router = router if router.active else None
        self.override, self.stats = model_override, stats

    async def handle(self, call: Call, next: Next) -> httpx2.Response:  # noqa: A002
        if self.router is not None:
            try:
                routed = self.router.route(call.endpoint, call.body, call.scope)
            except ValueError as e:
                return refuse(call, ConfigError(f"routing: {e}"))
            if routed is not None:
                body, call.route = routed
                if body is not call.body and not call.rewrite(body):
                    return refuse(call, ConfigError("the router made a request the gateway cannot read: check the "
                                                    "models of [routing] tiers"))
        override = self.override
        if override and call.endpoint != "/embeddings" and call.model != override:
            if not call.rewrite({**call.body, "model": override}):
                return refuse(call, ConfigError(f"model_override = {override!r} made a request the gateway cannot "
                                                f"estimate: set model_override to a model name, or to \"\""))
        response = await next(call)
        route = call.route
        if route is not None and self.router is not None:
            call.marks.update(route.marks())
            refusal = call.refusal
            timing = call.timing
            self.router.answered(route, response, time.perf_counter() - call.started - timing.waited, self.stats,
                                 timing.usage, timing.cost, refusal.error if refusal is not None else None,
                                 refusal.by if refusal is not None else None)
        return response
