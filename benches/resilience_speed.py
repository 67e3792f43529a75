"""What resilience costs on the request path, from Python (2-core figures in the README):

- a guarded call: ``permit = breaker.allow()`` then ``breaker.record(permit, 200, None, elapsed)``
  on a closed breaker (target <= 1 us);
- deduplication of a unique request: its key from a 300-byte chat body, joining (as the
  leader), publishing the answer, finishing and leaving (target <= 2 us);

    python benches/resilience_speed.py [--calls 1000000]
"""

from __future__ import annotations

import argparse
import json
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


BODY = json.dumps({"model": "gpt-4.1-mini", "temperature": 0, "max_tokens": 256, "messages": [
    {"role": "system", "content": "You are a helpful support assistant for an online shop."},
    {"role": "user", "content": "Hello! I ordered a pair of shoes last week and they have not arrived yet. "
                                "Order number 10-4471. Can you check where they are?"}]}).encode()
ANSWER = b'{"id":"chatcmpl-1","object":"chat.completion","choices":[]}'


def unique_request(calls: int) -> None:
    flights = fg.Flights()
    join = flights.join
    bodies = [BODY.replace(b"10-4471", f"{i:07d}".encode()) for i in range(1_000)]
    for i in range(calls):
        flight, leader = join("/chat/completions", "org", bodies[i % 1_000])
        flight.publish_head(200, [])
        flight.publish_chunk(ANSWER)
        flight.finish()
        flight.leave()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=1_000_000)
    args = parser.parse_args()
    print(f"guarded call (allow + record, closed breaker): {per_call_ns(guarded, args.calls):.0f} ns  (target <= 1000 ns)")
    print(f"unique request through dedup (key + join + publish + finish + leave): "
          f"{per_call_ns(unique_request, args.calls // 4):.0f} ns  (target <= 2000 ns)")


if __name__ == "__main__":
    main()
