"""Latency the gateway adds to a call: the same chat completion against the same
FakeOpenAI, sent directly with the SDK and through the gateway (Redis limiter on), in one
run, interleaved so that drift hits both alike. Reports p50 / p99 of each and the added
latency at those percentiles per round, the median over rounds (a shared 2-core machine
drifts between rounds more than the gateway adds), and the added latency over every call
of the run.

    python benches/gateway_overhead.py [--calls 2000] [--rounds 5] [--store redis|embedded]
                                       [--endpoint chat|responses|chain]
"""

from __future__ import annotations

import argparse
import contextlib
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import openai

import fleetgate as fg
from fleetgate.testing import RedisRig

MODEL = "gpt-4.1-mini"
MSG = [{"role": "user", "content": "How do I reset my password?"}]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@contextlib.contextmanager
def fake_server() -> Iterator[str]:
    """FakeOpenAI in its own process, as upstream is: it must not share this process's GIL."""
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "fake.toml"
        config.write_text(f'[models."{MODEL}"]\nrequests_per_minute = 1000000000\ntokens_per_minute = 1000000000000\n')
        proc = subprocess.Popen([sys.executable, "-m", "fleetgate.cli", "fake-openai", "--port", "0",
                                 "--config", str(config)], stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout is not None
            match = re.search(r"(http://\S+/v1)", proc.stdout.readline())
            if not match:
                raise RuntimeError("the fake server did not start")
            yield match.group(1)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=10)


def one_call(client: openai.OpenAI, endpoint: str, chains: dict[int, tuple[str | None, int]]) -> None:
    """One call of `endpoint`: a chat completion, a Responses call (a chain's first turn),
    or one continuing the client's chain (`chains`: its last answer and turn; ten turns,
    then a new chain)."""
    if endpoint == "chat":
        client.chat.completions.create(model=MODEL, messages=MSG, max_tokens=32)
        return
    previous, turn = chains.get(id(client), (None, 0)) if endpoint == "chain" else (None, 0)
    answer = client.responses.create(model=MODEL, input=MSG[0]["content"], max_output_tokens=32,
                                     **({"previous_response_id": previous} if previous else {}))
    chains[id(client)] = (answer.id, turn + 1) if turn < 9 else (None, 0)


def measure(direct: openai.OpenAI, gated: openai.OpenAI, calls: int, endpoint: str = "chat",
            chain: dict[int, tuple[str | None, int]] | None = None) -> tuple[list[float], list[float]]:
    """`calls` of each client, alternating which goes first; milliseconds per call."""
    plain: list[float] = []
    through: list[float] = []
    chain = {} if chain is None else chain
    for i in range(calls):
        for client, sink in ((direct, plain), (gated, through)) if i % 2 else ((gated, through), (direct, plain)):
            start = time.perf_counter()
            one_call(client, endpoint, chain)
            sink.append((time.perf_counter() - start) * 1000)
    return plain, through


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=2000, help="calls of each client per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--store", choices=["redis", "embedded"], default="redis")
    parser.add_argument("--endpoint", choices=["chat", "responses", "chain"], default="chat",
                        help="chat completions, Responses first turns, or Responses calls continuing a chain")
    args = parser.parse_args()
    added: list[tuple[float, float]] = []
    every_plain: list[float] = []
    every_through: list[float] = []
    with RedisRig() as rig, fake_server() as base_url:
        url = rig.start_standalone() if args.store == "redis" else None
        gate = fg.Gateway(base_url=base_url, redis_url=url, failure_policy="fail_closed",
                          models={MODEL: fg.QuotaLimits(requests_per_minute=10**9, tokens_per_minute=10**12)},
                          per_user=fg.QuotaLimits(requests_per_minute=10**9))
        direct = openai.OpenAI(base_url=base_url, api_key="sk-fake", max_retries=0)
        gated = gate.openai(api_key="sk-fake", max_retries=0)
        with gate.scope(user="bench-user"):
            chain: dict[int, tuple[str | None, int]] = {}
            measure(direct, gated, 200, args.endpoint, chain)  # warm-up: connections, tokenizer, scripts
            print(f"{args.endpoint}, store: {args.store}; {args.rounds} rounds of {args.calls} calls each, 2 quotas per call (model + user)")
            for r in range(args.rounds):
                plain, through = measure(direct, gated, args.calls, args.endpoint, chain)
                p50d, p99d = percentile(plain, 0.5), percentile(plain, 0.99)
                p50g, p99g = percentile(through, 0.5), percentile(through, 0.99)
                added.append((p50g - p50d, p99g - p99d))
                every_plain += plain
                every_through += through
                print(f"  round {r + 1}: direct p50 {p50d:.3f} p99 {p99d:.3f} · gate p50 {p50g:.3f} p99 {p99g:.3f} · "
                      f"added p50 {p50g - p50d:.3f} p99 {p99g - p99d:.3f} ms")
        total = (args.rounds * args.calls) + 200
        assert gate.stats["settled_from_usage"] == total and gate.stats["refused"] == 0
    print(f"  median added:  p50 {statistics.median(a[0] for a in added):.3f} ms   "
          f"p99 {statistics.median(a[1] for a in added):.3f} ms   (target p99 added <= 0.3 ms)")
    whole = [percentile(every_through, q) - percentile(every_plain, q) for q in (0.5, 0.99)]
    print(f"  whole run:     p50 {whole[0]:.3f} ms   p99 {whole[1]:.3f} ms   (all {len(every_plain)} calls of each)")


if __name__ == "__main__":
    main()
