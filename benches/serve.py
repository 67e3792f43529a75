"""``fleetgate serve`` under load: the latency it adds over calling upstream directly, at
fixed request rates, with the Redis limiter and a dollar budget on, beside LiteLLM's proxy
with its Redis rate limits on.

One FakeOpenAI (its own process, limits far above the load) is upstream. ``fleetgate
serve`` runs in its own process (one uvicorn worker unless ``--workers``), with Redis
(from RedisRig, on loopback), the model's quota and a global budget on, and a key. A load
generator (this process, aiohttp, open loop: requests start on schedule whether or not
earlier ones have answered) sends the same small chat completion at each rate for
``--seconds``, straight to upstream, through the server and through LiteLLM's proxy (its
own virtualenv, ``.bench-venvs/litellm``, made on first use; one worker, the model's rpm
and tpm tracked in the same Redis, ``usage-based-routing-v2``), then again, rate after
rate. Reports per rate and target: the rate achieved, p50 and p99 latency, errors, and the
latency each proxy adds (its p50 and p99 less upstream's, in the same round); the highest
rate each holds with p99 added at most 5 ms; and each one's memory (RSS) after the run. A
proxy that falls below 80% of the offered rate is not offered higher rates.

    python benches/serve.py [--rates 100,250,500,1000,2000] [--seconds 10] [--rounds 2]
                            [--workers 1] [--no-litellm]

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
LITELLM = "litellm[proxy]==1.108.7"
LITELLM_VENV = Path(__file__).resolve().parent.parent / ".bench-venvs" / "litellm"


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
        with listening([sys.executable, "-m", "fleetgate.cli", "serve", "--config", str(config), "--port", str(port)],
                       {**os.environ, "OPENAI_API_KEY": "sk-bench"}, port) as pid:
            yield f"http://127.0.0.1:{port}/v1", pid


@contextlib.contextmanager
def litellm_proxy(upstream: str, redis_url: str) -> Iterator[tuple[str, int]]:
    """LiteLLM's proxy in its own virtualenv (made on first use), with the model's rpm and
    tpm tracked in Redis: its /v1 URL and process id."""
    litellm = LITELLM_VENV / "bin" / "litellm"
    if not litellm.exists():
        print(f"installing {LITELLM} into {LITELLM_VENV} (once)", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(LITELLM_VENV)], check=True)
        subprocess.run([str(LITELLM_VENV / "bin" / "pip"), "install", "-q", LITELLM], check=True)
    host, port = redis_url.split("//", 1)[1].split("/", 1)[0].rsplit(":", 1)
    own = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "litellm.yaml"
        config.write_text(
            f"model_list:\n  - model_name: {MODEL}\n    litellm_params:\n      model: openai/{MODEL}\n"
            f"      api_base: {upstream}\n      api_key: sk-bench\n      rpm: 100000000\n      tpm: 100000000000\n"
            f"router_settings:\n  routing_strategy: usage-based-routing-v2\n  redis_host: {host}\n"
            f"  redis_port: {port}\ngeneral_settings:\n  master_key: sk-litellm-bench\n")
        env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR"}
        with listening([str(litellm), "--config", str(config), "--host", "127.0.0.1", "--port", str(own),
                        "--num_workers", "1"], env, own) as pid:
            yield f"http://127.0.0.1:{own}/v1", pid


@contextlib.contextmanager
def listening(command: list[str], env: dict[str, str], port: int) -> Iterator[int]:
    """`command` running until it listens on `port`: its process id; stopped with SIGTERM after."""
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while True:
            with contextlib.suppress(OSError):
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"{command[0]} did not start listening on port {port}")
            time.sleep(0.1)
        yield proc.pid
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
    parser.add_argument("--rates", default="100,250,500,1000,2000")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--no-litellm", dest="litellm", action="store_false")
    args = parser.parse_args()
    rates = [int(r) for r in args.rates.split(",")]
    key = new_key()
    rig = RedisRig()
    try:
        redis_url = rig.start_standalone()
        with contextlib.ExitStack() as stack:
            upstream = stack.enter_context(fake_server())
            url, pid = stack.enter_context(served(upstream, redis_url, key, args.workers))
            targets = {"direct": (upstream, "sk-bench", 0), "serve": (url, key, pid)}
            if args.litellm:
                ll_url, ll_pid = stack.enter_context(litellm_proxy(upstream, redis_url))
                targets["litellm"] = (ll_url, "sk-litellm-bench", ll_pid)
            print(f"fleetgate serve: {args.workers} worker(s), Redis limiter and a global budget on"
                  + ("; LiteLLM proxy: 1 worker, rpm/tpm in Redis" if args.litellm else "")
                  + f"; {args.seconds:g} s per rate and target, {args.rounds} rounds, open loop", flush=True)
            proxies = [name for name in targets if name != "direct"]
            held: dict[str, list[int]] = {name: [] for name in proxies}
            saturated: set[str] = set()  # fell behind the offered rate: not offered more
            for rate in rates:
                added: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in proxies}
                for round_ in range(1, args.rounds + 1):
                    seen = {}
                    for name, (target, auth, _) in targets.items():
                        if name in saturated:
                            continue
                        latencies, errors, elapsed = asyncio.run(load(target, auth, rate, args.seconds))
                        seen[name] = (pct(latencies, 0.5), pct(latencies, 0.99))
                        achieved = len(latencies) / elapsed
                        print(f"  {rate:>5}/s round {round_} {name:<7} achieved {achieved:7.0f}/s  "
                              f"p50 {seen[name][0]:8.2f} ms  p99 {seen[name][1]:9.2f} ms  errors {errors}", flush=True)
                        if name != "direct" and achieved < 0.8 * rate:
                            saturated.add(name)
                            print(f"  {name} fell behind at {rate}/s: not offered more", flush=True)
                    for name in proxies:
                        if name in seen:
                            added[name][0].append(seen[name][0] - seen["direct"][0])
                            added[name][1].append(seen[name][1] - seen["direct"][1])
                for name in proxies:
                    if not added[name][0]:
                        continue
                    p50, p99 = statistics.median(added[name][0]), statistics.median(added[name][1])
                    if p99 <= TARGET_ADDED_P99_MS:
                        held[name].append(rate)
                    print(f"  {rate:>5}/s added by {name}: p50 {p50:.2f} ms, p99 {p99:.2f} ms (median over rounds)")
            for name in proxies:
                print(f"{name}: highest rate with p99 added <= {TARGET_ADDED_P99_MS:g} ms: "
                      f"{max(held[name]) if held[name] else 'none'}/s; RSS after the run "
                      f"{rss_mb(targets[name][2]):.0f} MB")
    finally:
        rig.stop()


if __name__ == "__main__":
    main()
