# Generated from fleetgate/path/_async/record.py by scripts/unasync.py: edit that file, then run the script.
"""record: the first layer and the last word on every gated call. It is the only writer
of the ``x-fleetgate-*`` headers (what the layers below marked on the call: its mode, its
rung of the ladder, its route, its preset's cut, a refusal), and it counts the call in the
stats, the metrics, the trace and the log record, where its user (and a sensitive team or
feature) appears only by pseudonym (:mod:`fleetgate.privacy`).

Contract: a refusal by any layer is an answer here like any other (marked
``x-fleetgate: refused``); a call that raises is counted as failed (or cancelled) and the
error goes on to the caller unchanged.
"""

from __future__ import annotations

import asyncio
import time

import httpx2

from fleetgate.budget.presets import TRUNCATED_HEADER
from fleetgate.fallback import TIER_HEADER
from fleetgate.metrics import GatewayMetrics
from fleetgate.modes import MODE_HEADER
from fleetgate.path._sync.layer import Layer, Next
from fleetgate.path.call import Call, Spent
from fleetgate.path.refusals import REFUSED_HEADER
from fleetgate.privacy import Privacy
from fleetgate.records import log_request
from fleetgate.stats import GatewayStats
from fleetgate.tracing import Tracer

__all__ = ["Record"]

class Record(Layer):
    name = "record"

    def __init__(self, stats: GatewayStats, metrics: GatewayMetrics | None, tracer: Tracer | None,
                 privacy: Privacy) -> None:
        self.stats, self.metrics, self.tracer, self.privacy = stats, metrics, tracer, privacy

    def handle(self, call: Call, next: Next) -> httpx2.Response:  # noqa: A002
        self.stats.count("requests")
        if self.tracer is not None:
            call.span = self.tracer.start(call.endpoint, call.body, call.request,
                                          self.privacy.label("feature", call.scope.feature))
        try:
            response = next(call)
        except BaseException as e:
            self._failed(call, e)
            raise
        return self._answered(call, response)

    def _answered(self, call: Call, response: httpx2.Response) -> httpx2.Response:
        seconds = time.perf_counter() - call.started
        headers, timing = response.headers, call.timing
        headers[MODE_HEADER] = call.mode
        if call.shared in ("follower", "fleet"):
            pass  # the answer carries its leader's marks: the leader's call was served
        elif call.tier == "refused":
            headers[TIER_HEADER] = headers[REFUSED_HEADER] = "refused"
        else:
            headers[TIER_HEADER] = call.tier
            if call.cut:
                headers[TRUNCATED_HEADER] = str(call.cut)
            self.stats.count(f"served_{call.tier}")
        for name, value in call.marks.items():
            headers[name] = value
        if self.metrics is not None:
            self.metrics.answered(call.endpoint, call.model, call.scope.feature, response, seconds,
                                  timing.upstream + timing.waited if timing.upstream else 0.0, call.looked_up)
        if call.span is not None and self.tracer is not None:
            self.tracer.answered(call.span, response)
        log_request(call.endpoint, call.body, call.scope, response, seconds, timing.usage, timing.cost, timing.model,
                    privacy=self.privacy, service_tier=timing.service_tier)
        response.extensions[Spent.KEY] = (seconds, timing)  # made a Spent when asked: Spent.of(response)
        return response

    def _failed(self, call: Call, error: BaseException) -> None:
        if self.metrics is not None:
            self.metrics.failed(call.endpoint, call.model, call.scope.feature, time.perf_counter() - call.started,
                                "cancelled" if isinstance(error, asyncio.CancelledError) else "failed")
        if call.span is not None and self.tracer is not None:
            self.tracer.failed(call.span, error)

