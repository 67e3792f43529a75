"""upstream: the real HTTP call, through the transport the gateway was given. An answer is
read whole, its ``usage`` found and priced once; a stream passes through untouched, its
usage picked from the events as they go by. When the answer is in (a stream: when it is
closed) the call is told how it ended (:meth:`Call.done`), and the layers above settle
what they hold; an answer that says its response runs in the background (``background:
true``, ``queued``) carries a handoff instead, settled when the response ends
(:mod:`fleetgate.background`).

An answer is priced at the ``service_tier`` it reports (the tier that served it, read
beside its usage; :mod:`fleetgate.tiers`), which the call's :class:`Timing` keeps.

Contract: each upstream call's health verdict (``classify`` in the Rust core: 5xx, 408 and
no answer are failures, 2xx/3xx successes; a 429 is quota; other 4xx and Flex's 429
``resource_unavailable`` are neutral) feeds the fleet's degradation modes as it feeds the
breakers: only successes and failures count (a deployment that cannot be reached while the
call has another to spill to feeds its own breaker only); its time is counted as the call's upstream
time, apart from the gateway's.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx2

from fleetgate._core import health
from fleetgate.estimate import UsageCounts, usage_counts, usage_tokens
from fleetgate.metrics import GatewayMetrics
from fleetgate.modes import Modes
from fleetgate.path._async.layer import Layer, Next
from fleetgate.path.call import Call, Handoff, Outcome
from fleetgate.path.running import background_answer
from fleetgate.path.wire import UsageScanner, error_code, served_tier, usage_of
from fleetgate.prices import PriceTable, price_tier
from fleetgate.prompts import LayoutTracker

__all__ = ["SettlingStream", "Upstream"]

#: The verdicts that say something of upstream's health (quota and neutral ones do not).
_HEALTH = frozenset({"success", "failure"})


class Upstream(Layer):
    name = "upstream"

    def __init__(self, inner: httpx2.AsyncBaseTransport, modes: Modes, prices: PriceTable,
                 metrics: GatewayMetrics | None, layout: LayoutTracker | None) -> None:
        self.inner, self.modes, self.prices, self.metrics, self.layout = inner, modes, prices, metrics, layout

    async def handle(self, call: Call, next: Next) -> httpx2.Response:  # noqa: A002
        call.outcome = None
        call.timing.sent += 1
        sent = call.request  # as sent (a deployment's): a stream's end comes after the layers above restore theirs
        started = time.perf_counter()
        try:
            response = await self.inner.handle_async_request(sent)
        except httpx2.TransportError:
            # One deployment unreachable, with another to try: not the model's health.
            self._timed(call, started, None, None, observed=not call.spill)
            raise
        except BaseException:  # cancelled: says nothing about upstream's health
            call.timing.upstream += time.perf_counter() - started
            raise
        status = response.status_code
        if call.stream and status == 200:
            self._timed(call, started, status, None)  # time to first byte
            return httpx2.Response(status, headers=response.headers, request=sent,
                                   extensions=response.extensions,
                                   stream=SettlingStream(response.stream,  # type: ignore[arg-type]
                                                         lambda scanner: self._streamed(call, scanner, sent)))
        await response.aread()
        later = background_answer(call, response.content) if status == 200 else None
        if later is not None:  # running in the background: settled when it ends
            call.outcome = Outcome(status, call.estimate.tokens, "background", later=Handoff(call, later, sent))
        elif status == 200:
            usage = usage_of(response.content)
            tokens = usage_tokens(usage)
            counts = self._billed(call, usage, served_tier(response.content) if usage is not None else None)
            call.outcome = Outcome(status, self._settled(call, tokens, counts), "estimate" if tokens is None else "usage",
                                   usage)
        else:
            call.outcome = Outcome(status, 0, "failure", code=error_code(response) if status == 429 else None)
        call.timing.quota_tokens += call.outcome.tokens
        self._timed(call, started, status, call.outcome.code)
        return response

    def _timed(self, call: Call, started: float, status: int | None, code: str | None, observed: bool = True) -> None:
        elapsed = time.perf_counter() - started
        call.timing.upstream += elapsed
        verdict = health(status, code)
        if observed and verdict in _HEALTH:
            self.modes.observe(verdict == "failure", elapsed)

    def _streamed(self, call: Call, scanner: UsageScanner, sent: httpx2.Request) -> None:
        """A stream ended: settle from what it carried (its usage event; else at least the
        prompt and one token per content delta). A background response's stream left before
        its end hands the call over: the response runs on, and is settled when it ends."""
        estimate = call.estimate
        if scanner.usage is None and scanner.response_id is not None and call.body.get("background") is True:
            # Left before its end: the response runs on in the background, settled when it ends.
            outcome = Outcome(200, estimate.tokens, "background", later=Handoff(call, scanner.response_id, sent),
                              deltas=scanner.deltas)
        elif scanner.usage is not None:
            counts = self._billed(call, scanner.detail, scanner.tier)
            outcome = Outcome(200, self._settled(call, scanner.usage, counts), "usage",
                              scanner.detail if counts is not None else None, scanner.deltas,
                              response_id=scanner.response_id)
        else:
            outcome = Outcome(200, estimate.settle_with(estimate.input_tokens + scanner.deltas), "estimate", None,
                              scanner.deltas)
        call.timing.quota_tokens += outcome.tokens
        call.done(outcome)

    @staticmethod
    def _settled(call: Call, tokens: int | None, counts: UsageCounts | None) -> int:
        """What the call's quota reservation settles to: what upstream counted, the input
        the answer reports standing for the context it held (a continued chain)."""
        estimate = call.estimate
        return estimate.settle_with(tokens, counts.prompt if counts is not None and estimate.held else None)

    def _billed(self, call: Call, usage: object, tier: str | None) -> UsageCounts | None:
        """The answer's ``usage`` read and priced once, at the `tier` that served it (the
        answer's ``service_tier``; None: it did not say, priced at the tier asked): kept on
        the call (for the router, the budget and the log record) and counted in the metrics
        and the prompt-cache report; its counts (None: no usage)."""
        if not isinstance(usage, dict):
            return None
        model, counts = call.model, usage_counts(usage)
        served = tier if tier is not None else call.estimate.service_tier
        cost = self.prices.counts_cost(model, counts, tier=served)
        timing = call.timing
        timing.usage, timing.cost, timing.model, timing.service_tier = usage, cost, model, served
        if call.template is not None and self.layout is not None:
            self.layout.usage(call.template, usage)
        if self.metrics is not None:
            self.metrics.billed(model, call.scope.feature, counts, cost, service_tier=price_tier(served),
                                deployment=call.deployment.name if call.deployment is not None else None)
        return counts


class SettlingStream(httpx2.AsyncByteStream):
    """A stream passed through untouched, watched for its usage; `done` is told once, when
    it is closed."""

    def __init__(self, inner: httpx2.AsyncByteStream, done: Callable[[UsageScanner], None]) -> None:
        self._inner, self._done, self._scanner, self._finished = inner, done, UsageScanner(), False

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
