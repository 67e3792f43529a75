"""``fleetgate serve`` under load: the latency it adds over calling upstream directly, at
fixed request rates, with the Redis limiter and a dollar budget on.

One FakeOpenAI (its own process, limits far above the load) is upstream. ``fleetgate
serve`` runs in its own process (one uvicorn worker unless ``--workers``), with Redis
(from RedisRig, on loopback), the model's quota and a global budget on, and a key. A load
generator (this process, aiohttp, open loop: requests start on schedule whether or not
earlier ones have answered) sends the same small chat completion at each rate for
``--seconds``, first straight to upstream, then through the server, then again, rate
after rate. Reports per rate and target: the rate achieved, p50 and p99 latency, errors,
and the latency the server adds (its p50 and p99 less upstream's, in the same round); the
highest rate held with p99 added at most 5 ms; and the server's memory (RSS) after the run.

    python benches/serve.py [--rates 100,500,1000,2000] [--seconds 10] [--rounds 2] [--workers 1]

On a 2-core machine the load generator, the server, Redis and upstream share the cores:
the rates past what the cores can carry show queueing, not the server's own cost.
Loopback only (127.0.0.1).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp

from fleetgate.serve.keys import key_hash, new_key
from fleetgate.testing import RedisRig
from gateway_overhead import fake_server  # benches/, beside this script

MODEL = "gpt-4.1-mini"
BODY = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "How do I reset my password?"}],
                   "max_tokens": 16}).encode()
TARGET_ADDED_P99_MS = 5.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def served(upstream: str, redis_url: str, key: str, workers: int) -> Iterator[tuple[str, int]]:
    """`fleetgate serve` with the limiter and a budget on: its /v1 URL and process id."""
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "serve.toml"
        config.write_text(
            f'base_url = "{upstream}"\nredis_url = "{redis_url}"\n'
            f'[models."{MODEL}"]\nrequests_per_minute = 100000000\ntokens_per_minute = 100000000000\n'
            "[[budgets.limits]]\nscope = \"global\"\ndollars = 1000000\n"
            f'[serve]\nworkers = {workers}\n[[serve.keys]]\nname = "bench"\nhash = "{key_hash(key)}"\n')
        proc = subprocess.Popen([sys.executable, "-m", "fleetgate.cli", "serve", "--config", str(config),
                                 "--port", str(port)], env={**os.environ, "OPENAI_API_KEY": "sk-bench"})
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                with contextlib.suppress(OSError):
                    with socket.create_connection(("127.0.0.1", port), timeout=1):
                        break
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("fleetgate serve did not start")
                time.sleep(0.1)
            yield f"{url}/v1", proc.pid
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)


def rss_mb(pid: int) -> float:
    """Resident memory of `pid` and its children (uvicorn's workers), in MB."""
    total = 0
    for p in [pid, *_children(pid)]:
        with contextlib.suppress(OSError):
            status = Path(f"/proc/{p}/status").read_text()
            total += int(re.search(r"VmRSS:\s+(\d+)", status).group(1))  # type: ignore[union-attr]
    return total / 1024


def _children(pid: int) -> list[int]:
    with contextlib.suppress(OSError):
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    return []


async def load(url: str, key: str, rate: int, seconds: float) -> tuple[list[float], int, float]:
    """Open-loop load: `rate` calls a second for `seconds`. Latencies (ms), errors, elapsed."""
    latencies: list[float] = []
    errors = 0
    headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    async with aiohttp.ClientSession(connector=connector) as session:
        async def one() -> None:
            nonlocal errors
            started = time.perf_counter()
            try:
                async with session.post(f"{url}/chat/completions", data=BODY, headers=headers) as response:
                    await response.read()
                    if response.status != 200:
                        errors += 1
                        return
            except aiohttp.ClientError:
                errors += 1
                return
            latencies.append((time.perf_counter() - started) * 1000)

        for _ in range(20):  # warm the connections
            await one()
        latencies.clear()
        tasks = []
        start = time.perf_counter()
        for i in range(int(rate * seconds)):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one()))
        await asyncio.gather(*tasks)
        return latencies, errors, time.perf_counter() - start


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=1000)[int(q * 1000) - 1] if len(values) > 1 else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", default="100,500,1000,2000")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    rates = [int(r) for r in args.rates.split(",")]
    key = new_key()
    rig = RedisRig()
    try:
        redis_url = rig.start_standalone()
        with fake_server() as upstream, served(upstream, redis_url, key, args.workers) as (url, pid):
            print(f"fleetgate serve: {args.workers} worker(s), Redis limiter and a global budget on; "
                  f"{args.seconds:g} s per rate and target, {args.rounds} rounds, open loop")
            held: dict[int, bool] = {}
            for rate in rates:
                added50, added99 = [], []
                for round_ in range(1, args.rounds + 1):
                    seen = {}
                    for name, target, auth in (("direct", upstream, "sk-bench"), ("serve", url, key)):
                        latencies, errors, elapsed = asyncio.run(load(target, auth, rate, args.seconds))
                        seen[name] = (pct(latencies, 0.5), pct(latencies, 0.99))
                        print(f"  {rate:>5}/s round {round_} {name:<6} achieved {len(latencies) / elapsed:7.0f}/s  "
                              f"p50 {seen[name][0]:7.2f} ms  p99 {seen[name][1]:8.2f} ms  errors {errors}")
                    added50.append(seen["serve"][0] - seen["direct"][0])
                    added99.append(seen["serve"][1] - seen["direct"][1])
                median99 = statistics.median(added99)
                held[rate] = median99 <= TARGET_ADDED_P99_MS
                print(f"  {rate:>5}/s added by fleetgate serve: p50 {statistics.median(added50):.2f} ms, "
                      f"p99 {median99:.2f} ms (median over rounds)")
            passing = [r for r in rates if held[r]]
            print(f"highest rate with p99 added <= {TARGET_ADDED_P99_MS:g} ms: "
                  f"{max(passing) if passing else 'none'}/s; server RSS after the run: {rss_mb(pid):.0f} MB")
    finally:
        rig.stop()


if __name__ == "__main__":
    main()
