"""Latency the gateway adds to a call: the same chat completion against the same
FakeOpenAI, sent directly with the SDK and through the gateway (Redis limiter on), in one
run, interleaved so that drift hits both alike. Reports p50 / p99 of each and the added
latency at those percentiles.

    python benches/gateway_overhead.py [--calls 3000] [--store redis|embedded]
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--store", choices=["redis", "embedded"], default="redis")
    args = parser.parse_args()
    with RedisRig() as rig, fake_server() as base_url:
        url = rig.start_standalone() if args.store == "redis" else None
        gate = fg.Gateway(base_url=base_url, redis_url=url, failure_policy="fail_closed",
                          models={MODEL: fg.QuotaLimits(requests_per_minute=10**9, tokens_per_minute=10**12)},
                          per_user=fg.QuotaLimits(requests_per_minute=10**9))
        direct = openai.OpenAI(base_url=base_url, api_key="sk-fake", max_retries=0)
        gated = gate.openai(api_key="sk-fake", max_retries=0)
        plain: list[float] = []
        through: list[float] = []
        with gate.scope(user="bench-user"):
            for i in range(args.calls + 200):
                for client, sink in ((direct, plain), (gated, through)) if i % 2 else ((gated, through), (direct, plain)):
                    start = time.perf_counter()
                    client.chat.completions.create(model=MODEL, messages=MSG, max_tokens=32)
                    if i >= 200:  # warm-up: connections, tokenizer, scripts
                        sink.append((time.perf_counter() - start) * 1000)
        assert gate.stats["settled_from_usage"] == args.calls + 200 and gate.stats["refused"] == 0
    p50d, p99d = percentile(plain, 0.5), percentile(plain, 0.99)
    p50g, p99g = percentile(through, 0.5), percentile(through, 0.99)
    print(f"store: {args.store}; {args.calls} calls each, 2 quotas per call (model + user)")
    print(f"  direct SDK:    p50 {p50d:.3f} ms   p99 {p99d:.3f} ms   mean {statistics.fmean(plain):.3f} ms")
    print(f"  through gate:  p50 {p50g:.3f} ms   p99 {p99g:.3f} ms   mean {statistics.fmean(through):.3f} ms")
    print(f"  added:         p50 {p50g - p50d:.3f} ms   p99 {p99g - p99d:.3f} ms   (target p99 added <= 0.3 ms)")


if __name__ == "__main__":
    main()
