"""What the prompt tools cost per request, from Python:

- `Compressor.compress` on realistic system prompts with filler (support, legal, finance,
  medical, code with a fence, {placeholders}; 60-100 tokens each) and on a long one
  (~2,800 tokens, no sentence repeated): uncached (every call compresses and counts tokens twice) and cached
  (the memoised answer, as for a system prompt sent on every request);
- `compress_body` on a chat body whose system prompt is cached;
- `LayoutTracker.observe` on chat bodies with a ~1,500-token system prompt and a changing
  user message: while the 32-prompt sample fills (each call flattens the body) and once
  full (most calls only count the request);
- `LayoutTracker.report` for one template of 32 sampled prompts, short and ~50k characters.

    python benches/prompt_compress.py [--calls 2000]

No assertions: it prints microseconds per call (best of five runs; the machine is shared).
"""

from __future__ import annotations

import argparse
import re
import time
from collections.abc import Callable

from fleetgate._core import count_tokens
from fleetgate.prompts import Compressor, LayoutTracker, compress_body

MODEL = "gpt-4.1-mini"

PROMPTS = [
    "You are the support assistant for Acme Corp. Please note that you must never promise a refund above $500 "
    "without approval from a Team Lead. In order to verify a customer, kindly ask for the order number (format "
    "AC-123456) and the email on the account. It is important to note that orders ship from our warehouse in New "
    "York within 2 business days. Make sure to answer in the customer's language at all times.",
    "You are a contract review assistant for Baker & Lowe LLP. I would like you to flag every clause that deviates "
    "from the firm's standard terms. In the event that a termination clause gives less than 30 days' notice, mark "
    "it as HIGH risk. Due to the fact that drafts change often, always cite the clause number, e.g. Section 12.3(b).",
    "You are FinBot, an assistant for Northwind Bank. Please note that the savings rate is 3.5% APY and the "
    "overdraft fee is $35 per item. It should be noted that transfers above $10,000 require a second approval. "
    "Never quote exchange rates; point customers to https://northwind.example/rates instead. Basically, round "
    "amounts to 2 decimal places.",
    "You are a clinical information assistant reviewed by Dr. Ana Müller. Please note that adults must not exceed "
    "4,000 mg of paracetamol in 24 hours. It is important to note that you cannot diagnose conditions. Kindly "
    "remind users that this information does not replace a doctor's advice.",
    "You are a senior Python reviewer. Please make sure that every function has type hints.\n```python\n"
    "def add(a: int, b: int) -> int:\n    return a + b\n```\nIn order to keep reviews short, limit yourself to 5 "
    "comments per file. Feel free to reference PEP 8.",
    "You are {assistant_name}, helping {{customer.first_name}} with booking {booking_id}. Please note that "
    "check-in opens at 15:00. I would like you to confirm the dates {check_in} to {check_out} before making any "
    "change. Please do not change bookings within 48 hours of arrival.",
]
# ~2,800 tokens with no sentence repeated: each sentence of the six gets a distinct reference.
LONG = "\n\n".join(re.sub(r"\.(?= |$)", f" (ref {i}-{j}).", p) for i in range(7) for j, p in enumerate(PROMPTS))
RULES = "\n".join(
    f"Rule {i}: when a customer asks about order problems, check the order status, confirm the purchase date "
    f"and explain the next step in plain language." for i in range(1, 56))


def per_call_us(run: Callable[[int], None], calls: int) -> float:
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter_ns()
        run(calls)
        best = min(best, (time.perf_counter_ns() - start) / calls)
    return best / 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=2000)
    calls = parser.parse_args().calls

    short_tokens = sum(count_tokens(MODEL, p) for p in PROMPTS) // len(PROMPTS)
    print(f"compress: {len(PROMPTS)} prompts of ~{short_tokens} tokens, a long one of {count_tokens(MODEL, LONG):,}")

    uncached = Compressor(MODEL, cache_size=0)
    cached = Compressor(MODEL)

    def run_uncached(n: int) -> None:
        for i in range(n):
            uncached.compress(PROMPTS[i % len(PROMPTS)])

    def run_cached(n: int) -> None:
        for i in range(n):
            cached.compress(PROMPTS[i % len(PROMPTS)])

    def run_long_uncached(n: int) -> None:
        for _ in range(n):
            uncached.compress(LONG)

    def run_long_cached(n: int) -> None:
        for _ in range(n):
            cached.compress(LONG)

    body = {"model": MODEL, "messages": [{"role": "system", "content": PROMPTS[0]},
                                         {"role": "user", "content": "Where is my parcel? Order AC-100200."}]}

    def run_body(n: int) -> None:
        for _ in range(n):
            compress_body(cached, "/chat/completions", body)

    saved = sum(cached.compress(p).saved for p in PROMPTS)
    before = sum(cached.compress(p).tokens_before for p in PROMPTS)
    print(f"  tokens saved on the short prompts: {saved} of {before} ({saved / before:.1%}); "
          f"long: {cached.compress(LONG).saved:,} of {cached.compress(LONG).tokens_before:,}")
    print(f"  compress, short, uncached   {per_call_us(run_uncached, calls):9.1f} us/call")
    print(f"  compress, short, cached     {per_call_us(run_cached, calls * 10):9.2f} us/call")
    print(f"  compress, long, uncached    {per_call_us(run_long_uncached, max(1, calls // 20)):9.1f} us/call")
    print(f"  compress, long, cached      {per_call_us(run_long_cached, calls * 10):9.2f} us/call")
    print(f"  compress_body (cached)      {per_call_us(run_body, calls * 10):9.2f} us/call")

    bodies = [{"model": MODEL, "messages": [{"role": "system", "content": RULES},
                                            {"role": "user", "content": f"Question number {i}: where is order {i}?"}]}
              for i in range(1000)]
    print(f"observe: chat bodies with a {count_tokens(MODEL, RULES):,}-token system prompt, 32 samples per template")

    def run_filling(n: int) -> None:
        for i in range(n):
            if i % 32 == 0:
                tracker = LayoutTracker(32, MODEL, seed=1)
            tracker.observe("support", "/chat/completions", bodies[i % 1000])

    steady = LayoutTracker(32, MODEL, seed=1)
    for i in range(10_000):
        steady.observe("support", "/chat/completions", bodies[i % 1000])

    def run_steady(n: int) -> None:
        for i in range(n):
            steady.observe("support", "/chat/completions", bodies[i % 1000])

    print(f"  observe, sample filling     {per_call_us(run_filling, calls):9.2f} us/call")
    print(f"  observe, sample full        {per_call_us(run_steady, calls * 10):9.2f} us/call (after 10,000+ requests)")

    big_rules = "\n".join([RULES] * 7)
    big = LayoutTracker(32, MODEL, seed=1)
    for i in range(32):
        big.observe("big", "/chat/completions", {"messages": [
            {"role": "user", "content": f"Question {i}: where is order {i}?"}, {"role": "system", "content": big_rules}]})
    chars = len(big._templates["big"].samples[0])

    def run_report(n: int) -> None:
        for _ in range(n):
            steady.report()

    def run_big_report(n: int) -> None:
        for _ in range(n):
            big.report()

    print(f"  report, 32 prompts of ~{len(steady._templates['support'].samples[0]):,} chars "
          f"{per_call_us(run_report, 20) / 1000:9.2f} ms/call")
    print(f"  report, 32 prompts of ~{chars:,} chars (dynamic first) "
          f"{per_call_us(run_big_report, 3) / 1000:9.2f} ms/call")


if __name__ == "__main__":
    main()
