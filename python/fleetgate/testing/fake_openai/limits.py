"""The fake server's own rate limiter, shaped like OpenAI's: requests and tokens per
minute per model, enforced in one-second slices, reported in ``x-ratelimit-*`` headers.

It is deliberately independent of fleetgate's limiter, so that a test of fleetgate
against it is not a test of fleetgate against itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from fleetgate.testing.fake_openai.config import ModelLimits

__all__ = ["ModelQuota", "go_duration"]


def go_duration(seconds: float) -> str:
    """Format seconds as OpenAI does: ``120ms``, ``1s``, ``6m0s``, ``4m12.172s``."""
    if seconds < 1:
        return f"{max(0, math.ceil(seconds * 1000))}ms"
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    text = f"{secs:.3f}".rstrip("0").rstrip(".") + "s"
    if hours >= 1:
        return f"{int(hours)}h{int(minutes)}m{text}"
    if minutes >= 1:
        return f"{int(minutes)}m{text}"
    return text


@dataclass
class _Bucket:
    capacity: float
    rate: float
    level: float
    stamp: float

    def refill(self, now: float) -> None:
        if now > self.stamp:
            self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
            self.stamp = now

    def wait_for(self, cost: float) -> float:
        need = min(cost, self.capacity)
        return 0.0 if self.level >= need else (need - self.level) / self.rate


class ModelQuota:
    """Requests and tokens of one model: a minute bucket (what the headers report) and a
    one-second slice (what bursts run into)."""

    def __init__(self, limits: ModelLimits, now: float) -> None:
        rpm, tpm = limits.requests_per_minute, limits.tokens_per_minute
        self.limits = limits
        self.minute = (_Bucket(rpm, rpm / 60, rpm, now), _Bucket(tpm, tpm / 60, tpm, now))
        self.slice = (
            _Bucket(max(1.0, rpm / 60), rpm / 60, max(1.0, rpm / 60), now),
            _Bucket(max(1.0, tpm / 60), tpm / 60, max(1.0, tpm / 60), now),
        )

    def try_take(self, now: float, tokens: int) -> float:
        """Take one request and `tokens`; 0.0 when admitted, else seconds to wait."""
        buckets = (*self.minute, *self.slice)
        for b in buckets:
            b.refill(now)
        costs = (1.0, float(tokens), 1.0, float(tokens))
        wait = max(b.wait_for(c) for b, c in zip(buckets, costs))
        if wait > 0:
            return wait
        for b, c in zip(buckets, costs):
            b.level -= c
        return 0.0

    def headers(self, now: float) -> dict[str, str]:
        req, tok = self.minute
        req.refill(now)
        tok.refill(now)
        return {
            "x-ratelimit-limit-requests": str(int(req.capacity)),
            "x-ratelimit-limit-tokens": str(int(tok.capacity)),
            "x-ratelimit-remaining-requests": str(max(0, math.floor(req.level))),
            "x-ratelimit-remaining-tokens": str(max(0, math.floor(tok.level))),
            "x-ratelimit-reset-requests": go_duration((req.capacity - req.level) / req.rate),
            "x-ratelimit-reset-tokens": go_duration((tok.capacity - tok.level) / tok.rate),
        }
