"""What a dollar budget costs on the request path, from Python: reserving a call's worst
case on two budgets (global and feature) and settling it, on the embedded ledger and
through Redis (one round trip to reserve; settling runs in the background in the gateway,
so only `reserve` is on the caller's path there).

    python benches/budget_speed.py [--calls 20000] [--redis redis://127.0.0.1:6379/0]

Without --redis a Redis server is started on a free loopback port and stopped after.
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid

import fleetgate as fg
from fleetgate.testing import RedisRig


def budgets(tag: str) -> list[fg.Budget]:
    return [fg.Budget(f"global-{tag}:day", 1e6), fg.Budget(f"feature:{tag}:day", 1e6)]


def embedded(calls: int) -> float:
    """ns per reserve + settle, best of five."""
    ledger, held = fg.Ledger(), budgets(uuid.uuid4().hex[:8])
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter_ns()
        for _ in range(calls):
            ledger.settle(ledger.reserve(held, 0.002), 0.0015, model="gpt-4.1-mini", feature="f")
        best = min(best, (time.perf_counter_ns() - start) / calls)
    return best


def shared(url: str, calls: int) -> tuple[float, float]:
    """p50 and p99 (ms) of one reserve through Redis; settled in the background as the gateway does."""
    ledger, held = fg.Ledger(fg.Limiter(url)), budgets(uuid.uuid4().hex[:8])
    for _ in range(200):  # connect, load scripts
        ledger.settle(ledger.reserve(held, 0.002), 0.0015)
    took = []
    for _ in range(calls):
        start = time.perf_counter_ns()
        reservation = ledger.reserve(held, 0.002)
        took.append((time.perf_counter_ns() - start) / 1e6)
        ledger.settle(reservation, 0.0015)
    took.sort()
    return statistics.median(took), took[int(len(took) * 0.99)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--redis", help="a Redis to use (default: start one on loopback)")
    args = parser.parse_args()
    print(f"embedded ledger, reserve + settle on 2 budgets: {embedded(args.calls * 5) / 1000:.2f} us")
    if args.redis:
        p50, p99 = shared(args.redis, args.calls)
    else:
        with RedisRig() as rig:
            p50, p99 = shared(rig.start_standalone(), args.calls)
    print(f"Redis ledger, reserve on 2 budgets: p50 {p50:.3f} ms, p99 {p99:.3f} ms")


if __name__ == "__main__":
    main()
