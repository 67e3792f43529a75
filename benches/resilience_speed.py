"""What resilience costs on the request path, from Python (2-core figures in the README):

- a guarded call: ``permit = breaker.allow()`` then ``breaker.record(permit, 200, None, elapsed)``
  on a closed breaker (target <= 1 us);

    python benches/resilience_speed.py [--calls 1000000]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import fleetgate as fg


def per_call_ns(run: Callable[[int], None], calls: int) -> float:
    best = float("inf")
    for _ in range(5):  # best of five: the machine is shared
        start = time.perf_counter_ns()
        run(calls)
        best = min(best, (time.perf_counter_ns() - start) / calls)
    return best


def guarded(calls: int) -> None:
    breaker = fg.Breakers().get("/chat/completions:gpt-4.1-mini")
    allow, record = breaker.allow, breaker.record
    for _ in range(calls):
        record(allow(), 200, None, 0.05)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=1_000_000)
    args = parser.parse_args()
    print(f"guarded call (allow + record, closed breaker): {per_call_ns(guarded, args.calls):.0f} ns  (target <= 1000 ns)")


if __name__ == "__main__":
    main()
