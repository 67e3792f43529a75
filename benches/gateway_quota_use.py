"""Quota use: 4 worker processes share 600 RPM / 100,000 TPM through Redis, against a
FakeOpenAI enforcing the same limits, with a workload of mixed sizes. Then the same
workload from 4 processes of plain SDK clients relying on the SDK's own retries.

Reports throughput against what the limits allow (the binding one of requests and
tokens, as upstream counts them) and the share of requests refused upstream.

    python benches/gateway_quota_use.py [--requests 2000] [--workers 4]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import tempfile
import time
from pathlib import Path
from typing import Any

import openai

import fleetgate as fg
from fleetgate.demo import write_workload
from fleetgate.run import run_file
from fleetgate.testing import RedisRig
from fleetgate.testing.fake_openai import FakeConfig, FakeOpenAI, ModelLimits

MODEL = "gpt-4.1-mini"
RPM, TPM = 600, 100_000


def gated_worker(base_url: str, redis_url: str, src: str, out: str, queue: Any) -> None:
    gate = fg.Gateway(base_url=base_url, redis_url=redis_url, failure_policy="fail_closed",
                      models={MODEL: fg.QuotaLimits(requests_per_minute=RPM, tokens_per_minute=TPM)})
    summary = run_file(src, out, gateway=gate, concurrency=32, progress=False, api_key="sk-bench")
    reasons: dict[str, int] = {}
    for line in Path(out).read_text().splitlines():
        record = json.loads(line)
        response = record["response"]
        if response is None or response["status_code"] != 200:
            error = (response or {}).get("body", {}).get("error") or record.get("error") or {}
            key = f"{(response or {}).get('status_code')} {error.get('code')}: {str(error.get('message'))[:90]}"
            reasons[key] = reasons.get(key, 0) + 1
    queue.put({"ok": summary.succeeded, "failed": summary.failed, "reasons": reasons})


def plain_worker(base_url: str, src: str, queue: Any) -> None:
    lines = [json.loads(x) for x in Path(src).read_text().splitlines()]

    async def main() -> dict[str, int]:
        client = openai.AsyncOpenAI(base_url=base_url, api_key="sk-bench")  # max_retries=2, the default
        pending = asyncio.Queue[dict[str, Any]]()
        for line in lines:
            pending.put_nowait(line)
        counts = {"ok": 0, "failed": 0}

        async def worker() -> None:
            while not pending.empty():
                line = pending.get_nowait()
                try:
                    await client.post(line["url"].removeprefix("/v1"), body=line["body"], cast_to=object)
                    counts["ok"] += 1
                except openai.APIError:
                    counts["failed"] += 1

        await asyncio.gather(*(worker() for _ in range(32)))
        return counts

    queue.put(asyncio.run(main()))


def measure(label: str, fake: FakeOpenAI, procs: list[Any], queue: Any) -> None:
    start = time.monotonic()
    for p in procs:
        p.start()
    results = [queue.get(timeout=3600) for _ in procs]
    for p in procs:
        p.join()
    elapsed = time.monotonic() - start
    up = fake.counters(MODEL)
    ok = sum(r["ok"] for r in results)
    failed = sum(r["failed"] for r in results)
    admitted = up.requests - up.rate_limited
    tokens_per_request = up.tokens_admitted / max(1, admitted)
    allowed_per_minute = min(RPM, TPM / tokens_per_request)
    rate = ok / elapsed * 60
    print(f"{label}:")
    print(f"  {ok} ok, {failed} failed in {elapsed:.1f} s: {rate:.0f} requests/min")
    print(f"  the limits allow {allowed_per_minute:.0f}/min at {tokens_per_request:.0f} upstream tokens per request: "
          f"{rate / allowed_per_minute:.1%} used")
    print(f"  upstream: {up.requests} requests, {up.rate_limited} refused with 429 "
          f"({up.rate_limited / max(1, up.requests):.2%})")
    reasons: dict[str, int] = {}
    for r in results:
        for k, v in r.get("reasons", {}).items():
            reasons[k] = reasons.get(k, 0) + v
    for reason, n in sorted(reasons.items(), key=lambda kv: -kv[1])[:3]:
        print(f"  failed: {n} x {reason}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args()
    ctx = multiprocessing.get_context("spawn")
    with RedisRig() as rig, tempfile.TemporaryDirectory() as tmp:
        redis_url = rig.start_standalone()
        shards = []
        for w in range(args.workers):
            src = Path(tmp) / f"in-{w}.jsonl"
            write_workload(src, args.requests // args.workers, seed=w + 1, prefix=f"w{w}")
            shards.append(str(src))
        limits = FakeConfig(models={MODEL: ModelLimits(requests_per_minute=RPM, tokens_per_minute=TPM)})
        print(f"{args.workers} processes, {args.requests} requests, {RPM} RPM / {TPM:,} TPM\n")
        with FakeOpenAI(limits) as fake:
            queue = ctx.Queue()
            procs = [ctx.Process(target=gated_worker, args=(fake.base_url, redis_url, s, s + ".out", queue))
                     for s in shards]
            measure("through fleetgate (quota shared in Redis)", fake, procs, queue)
        with FakeOpenAI(limits) as fake:
            queue = ctx.Queue()
            procs = [ctx.Process(target=plain_worker, args=(fake.base_url, s, queue)) for s in shards]
            measure("plain SDK clients (built-in retries)", fake, procs, queue)


if __name__ == "__main__":
    main()
