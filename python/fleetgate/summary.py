"""What a run of requests did, for people: counts, throughput, the use of each model's
limits, and where the requests' time went.

1. Each request's time is split from what the gateway put on its answers
   (:class:`fleetgate.path.call.Spent`, every attempt's): waiting, by what for, and the
   upstream calls; the rest is the gateway's and the SDK's own work.
2. A limit's use is what the run counted against it (requests sent upstream, tokens as
   OpenAI counts them) over what the limit allows in the window the run covered
   (:func:`allowed_in`: a token bucket's rate for that time plus the burst a full bucket
   starts with), so that a short run is not credited with more than its limit.
3. The binding limit is the one used the most; it set the pace when the requests spent a
   good part of their time waiting for quota, or it was all but used up.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from fleetgate.config import QuotaLimits

__all__ = ["PACED_BY_QUOTA", "WAIT_LABELS", "QuotaUse", "RequestTimes", "RunSummary", "allowed_in"]


#: What each kind of wait is called in a summary (see :data:`fleetgate.path.call.WAITS`).
WAIT_LABELS = {"quota": "waiting for quota", "lane": "waiting for a lane slot",
               "retry": "waiting to retry after a 429", "paused": "waiting for a paused model",
               "budget": "waiting for a budget's next period", "maintenance": "waiting out maintenance"}
#: A run whose requests spent this share of their time waiting for quota, or that used a
#: limit this much, was paced by its quota.
PACED_BY_QUOTA = (0.1, 0.9)


def allowed_in(per_minute: int, seconds: float, limits: QuotaLimits) -> float:
    """How much a model's limit of `per_minute` lets through in a window of `seconds`: a
    token bucket, its rate for that time plus the burst a full bucket starts with
    (``burst_seconds`` of the rate, one second's by default); a sliding window, the whole
    limit in each minute the window touches."""
    if limits.algorithm == "sliding_window":
        return float(per_minute * max(1, math.ceil(seconds / 60)))
    return per_minute / 60 * (seconds + limits.burst_for("model"))


@dataclass(frozen=True, slots=True)
class QuotaUse:
    """What a run counted against one model's limits, and the share of what the limits
    allowed over the run's window (:func:`allowed_in`); None for a limit not set.
    `waiting`: the share of the run's time its requests spent waiting for quota."""

    model: str
    limits: QuotaLimits
    seconds: float
    requests: int
    tokens: int
    waiting: float = 0.0

    @property
    def requests_share(self) -> float | None:
        rpm = self.limits.requests_per_minute
        return self.requests / allowed_in(rpm, self.seconds, self.limits) if rpm else None

    @property
    def tokens_share(self) -> float | None:
        tpm = self.limits.tokens_per_minute
        return self.tokens / allowed_in(tpm, self.seconds, self.limits) if tpm else None

    @property
    def binding(self) -> str | None:
        """``requests`` or ``tokens``: the limit used the most (None: no limit set)."""
        shares = [(share, name) for share, name in ((self.requests_share, "requests"), (self.tokens_share, "tokens"))
                  if share is not None]
        return max(shares)[1] if shares else None

    @property
    def bound(self) -> bool:
        """Whether the quota set the run's pace: its requests spent a good part of their
        time waiting for it, or its binding limit was all but used up
        (:data:`PACED_BY_QUOTA`)."""
        used = max((s for s in (self.requests_share, self.tokens_share) if s is not None), default=0.0)
        return self.waiting >= PACED_BY_QUOTA[0] or used >= PACED_BY_QUOTA[1]

    def render(self) -> str:
        parts = {}
        if self.limits.requests_per_minute and self.requests_share is not None:
            parts["requests"] = (f"requests {self.requests_share:.1%} of {self.limits.requests_per_minute:,}/min "
                                 f"({self.requests:,} sent upstream)")
        if self.limits.tokens_per_minute and self.tokens_share is not None:
            parts["tokens"] = (f"tokens {self.tokens_share:.1%} of {self.limits.tokens_per_minute:,}/min "
                               f"({self.tokens:,} counted)")
        binding = self.binding
        head = (f"{binding} bound the pace" if self.bound
                else f"{binding} the most used, but the quota did not set the pace ({self.waiting:.0%} of the "
                     f"requests' time spent waiting for it: the concurrency or the latency did)")
        order = sorted(parts, key=lambda name: name != binding)
        burst = ("the limit over any minute it touched" if self.limits.algorithm == "sliding_window"
                 else f"its rate for that time plus its {self.limits.burst_for('model'):g} s burst")
        return (f"quota use, {self.model}: {head}: " + "; ".join(parts[name] for name in order) + "\n"
                f"  (use: what the run counted against the limit, over what the limit allows in the run's "
                f"{self.seconds:.1f} s: {burst})")


@dataclass(frozen=True, slots=True)
class RequestTimes:
    """Where one request of a run spent its time, in milliseconds: in all (as the run's
    client saw it), in upstream calls and waiting in the gateway, by what it waited for
    (every attempt's, the SDK's retries included)."""

    total_ms: float
    upstream_ms: float = 0.0
    waited_ms: dict[str, float] = field(default_factory=dict)

    @property
    def other_ms(self) -> float:
        """The rest: the gateway's and the SDK's own work, and the SDK's pauses between its
        retries."""
        return max(0.0, self.total_ms - self.upstream_ms - sum(self.waited_ms.values()))


def _percentile(values: Iterable[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


def _duration(ms: float) -> str:
    return f"{ms:.0f} ms" if ms < 1000 else f"{ms / 1000:.1f} s"


@dataclass
class RunSummary:
    """What a run did. `times` has one entry per request sent (`latencies_ms`, their
    totals); `quota_requests` and `quota_tokens`, by model, what the run counted against
    its models' limits (requests sent upstream, retries included, and tokens as OpenAI
    counts them); `limits`, the limits the gateway was given for those models;
    `started_at` and `finished_at`, the run's window (``time.time()``)."""

    total: int = 0
    skipped: int = 0
    sent: int = 0
    succeeded: int = 0
    failed: int = 0
    bad_lines: int = 0
    elapsed: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    times: list[RequestTimes] = field(default_factory=list)
    tokens: Counter[str] = field(default_factory=Counter)
    quota_requests: Counter[str] = field(default_factory=Counter)
    quota_tokens: Counter[str] = field(default_factory=Counter)
    limits: dict[str, QuotaLimits] = field(default_factory=dict)
    started_at: float = 0.0
    finished_at: float = 0.0
    cost: float = 0.0
    unpriced: int = 0
    #: Requests sent to endpoints the gateway does not gate (no quota or budget), by endpoint.
    passed_through: Counter[str] = field(default_factory=Counter)
    gateway: dict[str, int] = field(default_factory=dict)

    @classmethod
    def merge(cls, parts: Iterable[RunSummary]) -> RunSummary:
        """One summary of runs made side by side (one per worker process): counts added
        up, the window from the first start to the last finish."""
        total = cls()
        parts = list(parts)
        for p in parts:
            for name in ("total", "skipped", "sent", "succeeded", "failed", "bad_lines", "cost", "unpriced"):
                setattr(total, name, getattr(total, name) + getattr(p, name))
            total.latencies_ms.extend(p.latencies_ms)
            total.times.extend(p.times)
            total.tokens.update(p.tokens)
            total.quota_requests.update(p.quota_requests)
            total.quota_tokens.update(p.quota_tokens)
            total.passed_through.update(p.passed_through)
            total.limits.update(p.limits)
            for k, v in p.gateway.items():
                total.gateway[k] = total.gateway.get(k, 0) + v
        if parts:
            total.started_at = min(p.started_at for p in parts)
            total.finished_at = max(p.finished_at for p in parts)
            total.elapsed = max(max(p.elapsed for p in parts), total.finished_at - total.started_at)
        return total

    def percentile(self, q: float) -> float:
        return _percentile(self.latencies_ms, q)

    def quota_use(self, limits: Mapping[str, QuotaLimits] | None = None) -> list[QuotaUse]:
        """What the run counted against each model's limits (`limits`, by default those
        the gateway was given), for the models it sent requests to."""
        limits = self.limits if limits is None else limits
        spent = sum(t.total_ms for t in self.times)
        waiting = sum(t.waited_ms.get("quota", 0.0) for t in self.times) / spent if spent else 0.0
        return [QuotaUse(model, limits[model], self.elapsed, self.quota_requests[model], self.quota_tokens[model],
                         waiting)
                for model in sorted(self.quota_requests) if model in limits
                and (limits[model].requests_per_minute or limits[model].tokens_per_minute)]

    def render(self, limits: Mapping[str, QuotaLimits] | None = None) -> str:
        """The summary, for people: `limits` (by model; by default the gateway's) are what
        the quota use is measured against."""
        rate = self.sent / self.elapsed if self.elapsed else 0.0
        lines = [
            f"requests: {self.sent} sent ({self.succeeded} ok, {self.failed} failed), "
            f"{self.skipped} already done, {self.bad_lines} bad lines",
            f"time: {self.elapsed:.1f} s, throughput {rate:.1f} requests/s ({rate * 60:.0f}/min)",
        ]
        uses = self.quota_use(limits)
        lines += [use.render() for use in uses]
        binding = uses[0].binding if len(uses) == 1 and uses[0].bound else None
        lines += self._latency_lines({"requests": "request ", "tokens": "token "}.get(binding or "", ""))
        lines += [
            f"tokens: {self.tokens['input']:,} in, {self.tokens['output']:,} out",
            f"cost: ${self.cost:.4f}" + (f" ({self.unpriced} responses of unpriced models)" if self.unpriced else ""),
        ]
        if self.passed_through:
            lines.append("passed through ungated (no quota or budget): "
                         + ", ".join(f"{url} {n}" for url, n in sorted(self.passed_through.items())))
        lines += [
            "gateway: " + ", ".join(f"{k} {v}" for k, v in sorted(self.gateway.items())),
        ]
        return "\n".join(lines)

    def _latency_lines(self, quota_kind: str) -> list[str]:
        def spread(values: list[float]) -> str:
            return ", ".join(f"p{round(q * 100)} {_duration(_percentile(values, q))}" for q in (0.5, 0.95, 0.99))

        def label(kind: str) -> str:
            return f"waiting for {quota_kind}quota" if kind == "quota" else WAIT_LABELS.get(kind, f"waiting ({kind})")

        lines = [f"latency: {spread(self.latencies_ms)}"]
        if not self.times:
            return lines
        # Waits no request spent half a millisecond in are left out (the quota's, always shown).
        kinds = sorted({k for t in self.times for k, ms in t.waited_ms.items() if ms >= 0.5 or k == "quota"},
                       key=lambda k: list(WAIT_LABELS).index(k) if k in WAIT_LABELS else len(WAIT_LABELS))
        lines += [f"  {label(kind)}: {spread([t.waited_ms.get(kind, 0.0) for t in self.times])}" for kind in kinds]
        lines.append(f"  upstream: {spread([t.upstream_ms for t in self.times])}")
        ordered = sorted(self.times, key=lambda t: t.total_ms)
        p95 = ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]
        parts = [f"{label(kind)} {_duration(p95.waited_ms[kind])}" for kind in kinds
                 if p95.waited_ms.get(kind, 0.0) >= 0.5]
        parts += [f"upstream {_duration(p95.upstream_ms)}", f"other {_duration(p95.other_ms)}"]
        lines.append(f"  the p95 request: {_duration(p95.total_ms)} = " + " + ".join(parts)
                     + " (other: the gateway's and the SDK's own work, the SDK's pauses between retries)")
        return lines
