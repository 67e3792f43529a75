# Generated from fleetgate/path/_async/retry.py by scripts/unasync.py: edit that file, then run the script.
"""retry: the one owner of upstream retries. A 429 ``rate_limit_exceeded`` is sent again
after the wait upstream asks for (``retry-after-ms``, ``retry-after``), at most
``max_upstream_retries`` times and only while the deadline allows; every 429 handed back
carries ``x-should-retry: false`` so the SDK does not retry on top. Connection errors and
5xx are left to the SDK's own retries.

For a model served by several deployments (``[deployments]``), each attempt tries them in
turn, spilling over at once to the next one that can take the call (:mod:`.deploy`); the
wait for upstream's retry-after comes when none could.

Contract: each attempt goes through the breaker and the limiter again (a 429 is quota,
not health: the breaker pauses, the limiter empties the fleet's view of the model's
quota); ``insufficient_quota`` is never retried (waiting brings no credit back), nor is
Flex's ``resource_unavailable`` (not a rate limit: the flex layer decides; see
:mod:`fleetgate.tiers`).
"""

from __future__ import annotations

from functools import partial

import httpx2

from fleetgate._core import health
from fleetgate.metrics import GatewayMetrics
from fleetgate.path._sync.deploy import Deploy
from fleetgate.path._sync.layer import Layer, Next
from fleetgate.path.call import Call
from fleetgate.path.waits import sleep
from fleetgate.path.wire import retry_wait
from fleetgate.stats import GatewayStats

__all__ = ["Retry"]


class Retry(Layer):
    name = "retry"

    def __init__(self, max_retries: int, stats: GatewayStats, metrics: GatewayMetrics | None,
                 deploy: Deploy | None = None) -> None:
        self.max_retries, self.stats, self.metrics, self.deploy = max_retries, stats, metrics, deploy

    def handle(self, call: Call, next: Next) -> httpx2.Response:  # noqa: A002
        if self.deploy is not None:  # each attempt tries the model's deployments in turn
            next = partial(self.deploy.handle, next=next)  # noqa: A001
        attempt = 0
        while True:
            response = next(call)
            if response.status_code != 429:
                return response
            wait = self._retry_in(call, response, attempt)
            if wait is None:
                response.headers["x-should-retry"] = "false"
                return response
            response.close()
            attempt += 1
            sleep(call.waits(wait, "retry"))

    def _retry_in(self, call: Call, response: httpx2.Response, attempt: int) -> float | None:
        """Seconds to wait before sending a 429'd call again, or None to hand it back."""
        outcome = call.outcome
        if outcome is not None and health(429, outcome.code) == "neutral":
            return None  # Flex's capacity, not the quota: not counted as a rate limit
        self.stats.count("upstream_rate_limited")
        if self.metrics is not None:
            self.metrics.limiter_refused(call.model, "upstream")
        if outcome is None or outcome.code != "rate_limit_exceeded" or response.headers.get("x-should-retry") == "false":
            return None  # insufficient_quota and the like: waiting will not help
        wait = retry_wait(response)
        if attempt >= self.max_retries or wait > call.seconds_left():
            return None
        self.stats.count("upstream_retries")
        return wait
