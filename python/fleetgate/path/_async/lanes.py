"""lanes: priority lanes in front of a model with a concurrency cap. A call waits in its
priority's lane for a slot (realtime first, then interactive and batch by weight), at most
until its deadline, and holds the slot until its answer is in (a stream: its end). See
``rust/core/src/lanes.rs``.

Contract: a full lane refuses with ``QueueFull``, a deadline that passes in the queue with
``DeadlineExpired``; either is a refusal of the call's own configuration (the fallback
layer decides, the router counts it against a rollout side). A call refused here has taken
no quota and sent nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx2

from fleetgate._core import Lanes as ModelLanes
from fleetgate.errors import DeadlineExpired, QueueFull
from fleetgate.metrics import GatewayMetrics
from fleetgate.path._async.layer import Layer, Next
from fleetgate.path.call import Call, Refused
from fleetgate.stats import GatewayStats

__all__ = ["Lanes"]


class Lanes(Layer):
    name = "lanes"

    def __init__(self, lanes_for: Callable[[str], ModelLanes | None], stats: GatewayStats,
                 metrics: GatewayMetrics | None) -> None:
        self.lanes_for, self.stats, self.metrics = lanes_for, stats, metrics

    async def handle(self, call: Call, next: Next) -> httpx2.Response:  # noqa: A002
        lanes = self.lanes_for(call.model)
        if lanes is None:
            return await next(call)
        metrics = self.metrics
        if metrics is not None:
            metrics.joined_queue(call.model, call.priority)
        joined = time.perf_counter()
        try:
            slot = await lanes.enter_async(call.priority, call.seconds_left())
        except (QueueFull, DeadlineExpired) as e:
            self.stats.count("lane_full" if isinstance(e, QueueFull) else "deadline_expired")
            raise Refused(e, self.name) from e
        finally:
            waited = time.perf_counter() - joined
            call.waits(waited, "lane")
            if metrics is not None:
                metrics.left_queue(call.model, call.priority, waited)
        try:
            response = await next(call)
        except BaseException:
            slot.release()
            raise
        call.when_done(lambda _: slot.release())
        return response
