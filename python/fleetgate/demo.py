"""The main job on embedded defaults: many callers share one quota, and together they get
exactly the allowance — no more, no less — waiting instead of failing."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from fleetgate import Limiter, Quota, RateLimited


@dataclass(frozen=True)
class DemoResult:
    seconds: float
    admitted_requests: int
    admitted_tokens: int
    request_allowance: float
    token_allowance: float


def run_limiter_demo(
    *, store: str | None = None, callers: int = 16, seconds: float = 3.0, echo: bool = True
) -> DemoResult:
    """`callers` threads call a model as fast as they can for `seconds`; every call first
    waits for room on a shared quota of 600 requests and 90,000 tokens per minute,
    reserves 150 tokens and settles with the 100 it "used"."""
    limiter = Limiter(store)
    quota = Quota("demo:gpt-4.1-mini", requests_per_minute=600, tokens_per_minute=90_000)
    counts = {"requests": 0, "tokens": 0}
    lock = threading.Lock()
    start = time.monotonic()
    stop_at = start + seconds

    def caller() -> None:
        while True:
            remaining = stop_at - time.monotonic()
            if remaining <= 0:
                return
            try:
                decision = limiter.acquire(quota, tokens=150, timeout=remaining)
            except RateLimited:  # the demo's time is up before there is room
                return
            assert decision.reservation is not None
            limiter.settle(decision.reservation, tokens=100)
            with lock:
                counts["requests"] += 1
                counts["tokens"] += 100

    threads = [threading.Thread(target=caller, name=f"caller-{i}") for i in range(callers)]
    for t in threads:
        t.start()
    if echo:
        print(f"{callers} callers share {quota!r} on the embedded store for {seconds:.0f}s")
        print(f"burst: {quota.request_capacity} requests, {quota.token_capacity} tokens\n")
        last = 0
        while any(t.is_alive() for t in threads):
            time.sleep(min(1.0, max(0.0, stop_at - time.monotonic())) or 0.05)
            with lock:
                now_count = counts["requests"]
            print(f"  t={time.monotonic() - start:4.1f}s  admitted {now_count:5d} requests (+{now_count - last})")
            last = now_count
    for t in threads:
        t.join()
    elapsed = time.monotonic() - start
    result = DemoResult(
        seconds=elapsed,
        admitted_requests=counts["requests"],
        admitted_tokens=counts["tokens"],
        request_allowance=600 / 60 * elapsed + (quota.request_capacity or 0),
        token_allowance=90_000 / 60 * elapsed + (quota.token_capacity or 0),
    )
    if echo:
        used = result.admitted_requests / result.request_allowance
        print(
            f"\nadmitted {result.admitted_requests} requests and {result.admitted_tokens} tokens in {elapsed:.2f}s"
            f"\nrequest allowance (rate x time + burst): {result.request_allowance:.0f}, {used:.1%} used, never over"
        )
    return result
