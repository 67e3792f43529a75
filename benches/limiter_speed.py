"""Decision throughput: fleetgate against the `limits` package on the same Redis, against
the pipelined ceiling of our own script (redis-benchmark), and on the embedded store
against a minimal pure-Python token bucket.

    python benches/limiter_speed.py [--seconds 3]

Every figure is decisions per second over a fixed wall-clock interval on this machine;
run it on a quiet machine and read the ratios, not only the absolute numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import subprocess
import threading
import time
import uuid
from collections.abc import Awaitable, Callable

import limits
import limits.aio.storage
import limits.aio.strategies
import limits.storage
import limits.strategies
import redis

import fleetgate as fg
from fleetgate.testing import RedisRig

HUGE = 10**12  # limits nobody reaches: every decision is a full admission check


def threaded(fn: Callable[[], object], callers: int, seconds: float) -> float:
    counts = [0] * callers
    stop = threading.Event()

    def run(i: int) -> None:
        n = 0
        while not stop.is_set():
            fn()
            n += 1
        counts[i] = n

    threads = [threading.Thread(target=run, args=(i,)) for i in range(callers)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    return sum(counts) / (time.perf_counter() - start)


def single(fn: Callable[[], object], seconds: float) -> float:
    n, start = 0, time.perf_counter()
    deadline = start + seconds
    while True:
        for _ in range(256):
            fn()
        n += 256
        if time.perf_counter() >= deadline:
            return n / (time.perf_counter() - start)


def concurrent(make: Callable[[], Awaitable[object]], callers: int, seconds: float) -> float:
    async def main() -> float:
        stop_at = time.perf_counter() + seconds
        counts = [0] * callers

        async def run(i: int) -> None:
            while time.perf_counter() < stop_at:
                await make()
                counts[i] += 1

        start = time.perf_counter()
        await asyncio.gather(*(run(i) for i in range(callers)))
        return sum(counts) / (time.perf_counter() - start)

    return asyncio.run(main())


class PerLoop:
    """An async client per event loop: `limits`' async storage binds its connections to
    the loop that first used it, and each measurement runs in a fresh loop."""

    def __init__(self, make: Callable[[], limits.aio.strategies.SlidingWindowCounterRateLimiter]) -> None:
        self.make = make
        self.by_loop: dict[int, limits.aio.strategies.SlidingWindowCounterRateLimiter] = {}

    def get(self) -> limits.aio.strategies.SlidingWindowCounterRateLimiter:
        key = id(asyncio.get_running_loop())
        if key not in self.by_loop:
            self.by_loop[key] = self.make()
        return self.by_loop[key]


class PureBucket:
    """The minimal pure-Python token bucket: a lock, a clock read, a few float operations."""

    def __init__(self, rate: float, capacity: float) -> None:
        self.rate, self.capacity, self.level = rate, capacity, capacity
        self.stamp = time.monotonic()
        self.lock = threading.Lock()

    def try_acquire(self, cost: float = 1.0) -> bool:
        with self.lock:
            now = time.monotonic()
            level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
            self.stamp = now
            if level >= cost:
                self.level = level - cost
                return True
            self.level = level
            return False


def pipelined_ceiling(port: int, seconds: float) -> float:
    """redis-benchmark running acquire-n.lua (one token bucket quota) pipelined, 64 clients."""
    from pathlib import Path

    source = (Path(__file__).resolve().parent.parent / "lua" / "acquire-n.lua").read_text()
    sha = redis.Redis(port=port).script_load(source)
    requests = int(60_000 * seconds)
    out = subprocess.run(
        ["redis-benchmark", "-h", "127.0.0.1", "-p", str(port), "-c", "64", "-P", "16", "-n", str(requests), "-q",
         "evalsha", sha, "1", "fg:{ceiling}:tb", "1", "0", "1", "tb", str(HUGE), str(HUGE // 60), "0", "0"],
        capture_output=True, text=True, check=True, timeout=600,
    ).stdout
    match = re.search(r"([\d.]+) requests per second", out.replace("\r", "\n"))
    if not match:
        raise RuntimeError(f"unexpected redis-benchmark output: {out!r}")
    return float(match.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    s = args.seconds
    rows: list[tuple[str, float]] = []

    def row(label: str, value: float) -> float:
        rows.append((label, value))
        print(f"  {label:<58} {value:>12,.0f} /s", flush=True)
        return value

    print("embedded store, one thread, through the Python API")
    limiter = fg.Limiter()
    quota = fg.Quota("embedded", requests_per_minute=HUGE)
    pure = PureBucket(HUGE / 60, HUGE / 60)
    py_rate = row("pure-Python token bucket (lock + clock + floats)", single(pure.try_acquire, s))
    fg_rate = row("fleetgate Limiter().try_acquire (token bucket)", single(lambda: limiter.try_acquire(quota), s))
    print(f"  -> fleetgate / pure Python: {fg_rate / py_rate:.2f}x (target >= 2x)\n")

    with RedisRig() as rig:
        url = rig.start_standalone()
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        print(f"shared store: one standalone Redis on loopback ({url})")
        name = f"speed-{uuid.uuid4().hex[:6]}"
        shared = fg.Limiter(url, failure_policy="fail_closed", timeout=2.0)
        tb = fg.Quota(f"{name}-tb", requests_per_minute=HUGE)
        sw = fg.Quota(f"{name}-sw", requests_per_minute=HUGE, algorithm="sliding_window")
        item = limits.RateLimitItemPerMinute(2**31)
        sync_limits = limits.strategies.SlidingWindowCounterRateLimiter(limits.storage.RedisStorage(url))
        async_limits = PerLoop(
            lambda: limits.aio.strategies.SlidingWindowCounterRateLimiter(limits.aio.storage.RedisStorage("async+" + url))
        )

        results: dict[str, float] = {}
        for callers in (1, 64):
            print(f" {callers} concurrent caller(s)")
            results[f"fg-sync-{callers}"] = row(
                "fleetgate sync, token bucket (threads)", threaded(lambda: shared.try_acquire(tb), callers, s))
            results[f"fg-sync-sw-{callers}"] = row(
                "fleetgate sync, sliding window (threads)", threaded(lambda: shared.try_acquire(sw), callers, s))
            results[f"fg-async-{callers}"] = row(
                "fleetgate async, token bucket (asyncio tasks)", concurrent(lambda: shared.try_acquire_async(tb), callers, s))
            results[f"fg-async-sw-{callers}"] = row(
                "fleetgate async, sliding window (asyncio tasks)", concurrent(lambda: shared.try_acquire_async(sw), callers, s))
            results[f"limits-sync-{callers}"] = row(
                "limits sync, sliding window counter (threads)", threaded(lambda: sync_limits.hit(item, name), callers, s))
            results[f"limits-async-{callers}"] = row(
                "limits async, sliding window counter (asyncio tasks)",
                concurrent(lambda: async_limits.get().hit(item, name), callers, s))
        ceiling = row("redis-benchmark: acquire-n.lua pipelined (-c 64 -P 16)", pipelined_ceiling(port, s))

    best64 = max(results["fg-sync-64"], results["fg-async-64"])
    best64_sw = max(results["fg-sync-sw-64"], results["fg-async-sw-64"])
    print("\nat 64 concurrent callers:")
    print(f"  fleetgate (best of sync/async, token bucket) / limits async: {best64 / results['limits-async-64']:.1f}x (target >= 8x)")
    print(f"  fleetgate (best of sync/async, sliding window) / limits async: {best64_sw / results['limits-async-64']:.1f}x")
    print(f"  fleetgate / pipelined ceiling: {best64 / ceiling:.0%} (target >= 50%)")


if __name__ == "__main__":
    main()
