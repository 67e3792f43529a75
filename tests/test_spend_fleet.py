"""A fleet of 8 processes spending one $1.00 budget with the traffic of today's API: long
answers at the standard, Flex and Priority tiers (some Priority calls downgraded, some Flex
calls finding no capacity), long system prompts cached and written to the prompt cache on a
model that bills cache writes, stateful Responses chains (billed for the context OpenAI
holds) and background responses (billed when they end). What OpenAI billed (the fake's bill, not fleetgate's ledger) stays within the
budget plus one call's worst case, and the fleet uses at least 95% of it."""

from __future__ import annotations

import multiprocessing
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

import fleetgate as fg
from fleetgate.estimate import usage_counts
from fleetgate.prices import PriceTable
from fleetgate.testing.fake_openai import FakeConfig, FakeOpenAI, ModelLimits, TierBehaviour

DOLLARS = 1.00
PODS, THREADS = 8, 2
#: Stop after this many refusals in a row: the budget is spent for everyone.
GIVE_UP = 12
#: A bound on each thread, so a broken budget cannot run the test on forever.
MAX_CALLS, MAX_SECONDS = 400, 240.0
PRICES = """
batch_discount = 0.5

[models."gpt-4.1"]
input = 2.00
cached_input = 0.50
output = 8.00
priority = { input = 3.50, cached_input = 0.875, output = 14.00 }

[models."writer-1"]
input = 4.00
cached_input = 0.40
cache_write = 5.00
output = 20.00
"""
PREFIX = "Handbook section {n}. " * 220  # about 1,200 tokens: cached after its first call


#: The kinds of call in the mix, taken in turn.
KINDS = ("standard", "cached", "flex", "priority", "chain", "background")
#: Turns of a stateful chain before a thread starts another.
TURNS = 6


def _one(client: Any, kind: str, n: int, chain: list[str]) -> None:
    """One call of the mix; `chain` holds the thread's stateful chain (its last response)."""
    if kind == "chain":  # the context OpenAI holds grows with every turn
        if len(chain) >= TURNS:
            chain.clear()
        r = client.responses.create(model="gpt-4.1", input=f"Turn {n}: and then?", max_output_tokens=200,
                                    previous_response_id=chain[-1] if chain else None)
        chain.append(r.id)
    elif kind == "background":  # answered at once, billed when it ends
        client.responses.create(model="gpt-4.1", input=f"Report {n}, at length.", max_output_tokens=300,
                                background=True)
    elif kind == "cached":
        client.chat.completions.create(model="writer-1", max_tokens=60, messages=[
            {"role": "system", "content": PREFIX.format(n=n % 3)},
            {"role": "user", "content": f"Question {n}?"}])
    else:  # long answers, asked at a tier (Flex without capacity is served at standard)
        tier = {"flex": "flex", "priority": "priority"}.get(kind, "auto")
        client.chat.completions.create(model="gpt-4.1", max_tokens=400, service_tier=tier,
                                       messages=[{"role": "user", "content": f"Tell story {n} at length."}])


def _pod(base_url: str, redis_url: str, prices: str, team: str, pod: int, out: Any) -> None:
    # The fleet's budget is its team's, a team of this test alone (the Redis is shared).
    gate = fg.Gateway(base_url=base_url, redis_url=redis_url, prices={"file": prices},
                      budgets={"limits": [{"scope": "team", "name": team, "dollars": DOLLARS}]})
    client = gate.openai(api_key="sk-fake", max_retries=0)
    made = [0] * THREADS

    def spend(thread: int) -> None:
        refused, end = 0, time.monotonic() + MAX_SECONDS
        n, chain = pod * 10_000 + thread * 1_000, []
        while refused < GIVE_UP and made[thread] < MAX_CALLS and time.monotonic() < end:
            n += 1
            try:
                with fg.scope(team=team):
                    _one(client, KINDS[n % len(KINDS)], n, chain)
            except fg.BudgetExceeded:
                refused += 1
                time.sleep(0.02 * refused)  # others' holds settle meanwhile
                continue
            refused = 0
            made[thread] += 1

    threads = [threading.Thread(target=spend, args=(t,)) for t in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    end = time.monotonic() + MAX_SECONDS
    while gate.background.pending() and time.monotonic() < end:  # its background calls settled
        time.sleep(0.05)
    gate.close()
    out.put((sum(made), gate.stats["background_settled_usage"]))


def test_eight_pods_spend_one_budget_as_openai_bills_it(tmp_path: Path, redis_url: str) -> None:
    prices = tmp_path / "prices.toml"
    prices.write_text(PRICES)
    # Half the priority calls are served (and billed) at standard, a fifth of the Flex calls
    # find no capacity and are served at standard.
    with FakeOpenAI(FakeConfig(answer_words=400, prices_file=prices, seed=7,
                               tiers=TierBehaviour(priority_downgrade=0.5, flex_unavailable=0.2),
                               default_limits=ModelLimits(requests_per_minute=1_000_000,
                                                          tokens_per_minute=100_000_000))) as fake:
        ctx = multiprocessing.get_context("spawn")
        out = ctx.Queue()
        team = f"fleet-{uuid.uuid4().hex[:8]}"
        procs = [ctx.Process(target=_pod, args=(fake.base_url, redis_url, str(prices), team, pod, out))
                 for pod in range(PODS)]
        for p in procs:
            p.start()
        made, settled_later = map(sum, zip(*(out.get(timeout=MAX_SECONDS + 120) for _ in procs)))
        for p in procs:
            p.join(timeout=30)
        bill = fake.bill()
        billed = sum(c.dollars or 0.0 for c in bill)
    assert {c.tier for c in bill} == {"default", "flex", "priority"}
    assert any(c.usage.get("input_tokens", 0) > 800 for c in bill), "chains carried their context"
    assert any(usage_counts(c.usage).written for c in bill), "prompts were written to the prompt cache"
    assert any(usage_counts(c.usage).cached for c in bill), "and read from it"
    table = PriceTable.load(prices)
    worst = max(_worst(table, "gpt-4.1", 20, 400, "priority"), _worst(table, "writer-1", 1400, 60),
                _worst(table, "gpt-4.1", 200 * 2 * TURNS, 300))
    print(f"calls {made} ({settled_later} in the background), billed ${billed:.4f}, worst ${worst:.4f}")
    assert made > 0 and settled_later > 0, "background calls were made, and settled when they ended"
    assert billed <= DOLLARS + worst, f"OpenAI billed ${billed:.4f} of a ${DOLLARS:.2f} budget"
    assert billed >= 0.95 * DOLLARS, f"the fleet used only ${billed:.4f} of ${DOLLARS:.2f}"


def _worst(table: PriceTable, model: str, prompt: int, output: int, tier: str = "default") -> float:
    price = table.price(model)
    assert price is not None
    return price.worst(prompt, output, tier=tier)
