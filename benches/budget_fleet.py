"""A fleet spending one budget: N processes × C calls in flight through their gateways,
against a dollar budget shared through Redis (a local cluster by default), FakeOpenAI
answering long completions. Prints what upstream's usage says was spent against the
budget, and how many calls were refused.

    python benches/budget_fleet.py [--pods 8] [--in-flight 32] [--calls 64] [--dollars 1.0] [--standalone]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import uuid
from typing import Any

import fleetgate as fg
from fleetgate.testing import RedisRig
from fleetgate.testing.fake_openai import FakeConfig, FakeOpenAI, ModelLimits

MODEL, MAX_OUTPUT = "gpt-4.1", 600
ASK = [{"role": "user", "content": "Write a long story about budgets."}]


def pod(base_url: str, redis_url: str, team: str, dollars: float, calls: int, in_flight: int,
        out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    gate = fg.Gateway(base_url=base_url, redis_url=redis_url,
                      budgets={"limits": [{"scope": "team", "name": team, "dollars": dollars}]})
    client = gate.async_openai(api_key="sk-fake", max_retries=0)

    async def one(gap: asyncio.Semaphore) -> tuple[float, int]:
        async with gap:
            try:
                r = await client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=MAX_OUTPUT)
            except fg.BudgetExceeded:
                return 0.0, 1
            return gate.prices.cost(MODEL, r.usage.model_dump()) or 0.0, 0

    async def main() -> tuple[float, int]:
        gap = asyncio.Semaphore(in_flight)
        with fg.scope(team=team):
            done = await asyncio.gather(*(one(gap) for _ in range(calls)))
        return sum(d for d, _ in done), sum(r for _, r in done)

    out.put(asyncio.run(main()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pods", type=int, default=8)
    parser.add_argument("--in-flight", type=int, default=32)
    parser.add_argument("--calls", type=int, default=64, help="calls per pod")
    parser.add_argument("--dollars", type=float, default=1.0)
    parser.add_argument("--standalone", action="store_true", help="a standalone Redis instead of a cluster")
    args = parser.parse_args()
    config = FakeConfig(answer_words=400, default_limits=ModelLimits(requests_per_minute=1_000_000,
                                                                     tokens_per_minute=100_000_000))
    price = fg.Gateway().prices.price(MODEL)
    assert price is not None
    with RedisRig() as rig, FakeOpenAI(config) as fake:
        url = rig.start_standalone() if args.standalone else rig.start_cluster()
        team = f"bench-{uuid.uuid4().hex[:8]}"
        ctx = multiprocessing.get_context("spawn")
        out: Any = ctx.Queue()
        procs = [ctx.Process(target=pod, args=(fake.base_url, url, team, args.dollars, args.calls, args.in_flight, out))
                 for _ in range(args.pods)]
        for p in procs:
            p.start()
        results = [out.get(timeout=300) for _ in procs]
        for p in procs:
            p.join(timeout=30)
        spent, refused = sum(s for s, _ in results), sum(r for _, r in results)
        worst = price.dollars(20, MAX_OUTPUT)
        print(f"{args.pods} pods x {args.in_flight} in flight, {args.pods * args.calls} calls, "
              f"${args.dollars:.2f} budget on a {'standalone Redis' if args.standalone else 'Redis Cluster'}")
        print(f"  spent ${spent:.4f} ({spent / args.dollars:.1%} of the budget; over by at most one call's "
              f"worst case ${worst:.4f} allowed: {'yes' if spent <= args.dollars + worst else 'NO'})")
        print(f"  served {fake.counters(MODEL).requests}, refused {refused}")


if __name__ == "__main__":
    main()
