"""Priority lanes under 2x overload: what each lane's callers see.

FakeOpenAI answers in 50 ms; the gateway lets 4 calls of the model in flight (capacity
about 80 calls/s); callers arrive at twice that for --seconds, one in ten realtime, the
rest interactive and batch alike; batch calls have a 2 s deadline, the others 30 s.
Reports per lane: calls served, refused (deadline passed before a slot), and latency.

    python benches/lanes_overload.py [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time

import openai

import fleetgate as fg
from fleetgate.testing.fake_openai import FakeConfig, FakeOpenAI, Fault, Latency

MODEL = "gpt-4.1-mini"
MSG = [{"role": "user", "content": "Where is my order?"}]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def run(seconds: float, rate: float) -> dict[str, tuple[list[float], int]]:
    with FakeOpenAI(FakeConfig(faults=[Fault(kind="latency", latency=Latency(ms=50))])) as fake:
        gate = fg.Gateway(base_url=fake.base_url, lanes={"concurrency": 4, "queue_limit": 10_000})
        client = gate.async_openai(api_key="sk-fake", max_retries=0)
        results: dict[str, tuple[list[float], int]] = {p.name: ([], 0) for p in fg.Priority}
        rng = random.Random(7)

        async def one(priority: fg.Priority) -> None:
            start = time.perf_counter()
            async with gate.scope(priority=priority, deadline=2.0 if priority is fg.Priority.BATCH else 30.0):
                try:
                    await client.chat.completions.create(model=MODEL, messages=MSG, max_tokens=8)
                except openai.APIStatusError:
                    latencies, refused = results[priority.name]
                    results[priority.name] = (latencies, refused + 1)
                    return
            results[priority.name][0].append((time.perf_counter() - start) * 1000)

        tasks = []
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            draw = rng.random()
            priority = (fg.Priority.REALTIME if draw < 0.1 else
                        fg.Priority.INTERACTIVE if draw < 0.55 else fg.Priority.BATCH)
            tasks.append(asyncio.ensure_future(one(priority)))
            await asyncio.sleep(rng.expovariate(rate))
        await asyncio.gather(*tasks)
        return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    results = asyncio.run(run(args.seconds, rate=160.0))
    print(f"2x overload for {args.seconds:.0f} s (capacity ~80 calls/s, offered ~160/s), 50 ms upstream")
    for lane, (latencies, refused) in results.items():
        print(f"  {lane:<11} served {len(latencies):>5}  refused {refused:>5}  "
              f"p50 {pct(latencies, 0.5):8.1f} ms  p99 {pct(latencies, 0.99):8.1f} ms")


if __name__ == "__main__":
    main()
