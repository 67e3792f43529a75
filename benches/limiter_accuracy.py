"""Accuracy of the fleet-wide token bucket: 4 processes x 16 concurrent callers share one
quota on a Redis Cluster for 30 s (or --seconds). Every caller waits for room with
`acquire` and counts its admissions. Reports admitted against the allowance
(rate x time + burst): admitted must never exceed it and should reach at least 99% of it.

    python benches/limiter_accuracy.py [--seconds 30] [--processes 4] [--callers 16]
"""

from __future__ import annotations

import argparse
import multiprocessing
import threading
import time
import uuid

import fleetgate as fg
from fleetgate.testing import RedisRig

RPM = 60_000  # 1,000 requests/s, burst 1,000 (one second's share)
TPM = 6_000_000  # 100,000 tokens/s; each request reserves 100: both dimensions bind
TOKENS = 100


def worker(url: str, name: str, start_at: float, seconds: float, callers: int, out: multiprocessing.Queue) -> None:
    limiter = fg.Limiter(url, failure_policy="fail_closed", timeout=1.0)
    quota = fg.Quota(name, requests_per_minute=RPM, tokens_per_minute=TPM)
    counts = [0] * callers
    finished = [0.0] * callers
    errors: list[str] = []

    def caller(i: int) -> None:
        time.sleep(max(0.0, start_at - time.time()))
        stop_at = start_at + seconds
        while (left := stop_at - time.time()) > 0:
            try:
                limiter.acquire(quota, tokens=TOKENS, timeout=left)
            except fg.RateLimited:
                break
            except fg.FleetgateError as e:
                errors.append(repr(e))
                break
            counts[i] += 1
        finished[i] = time.time()

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(callers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out.put((sum(counts), max(finished), errors, limiter.store_errors))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--callers", type=int, default=16)
    parser.add_argument("--store", help="a store URL to use instead of a fresh local cluster")
    args = parser.parse_args()

    with RedisRig() as rig:
        url = args.store or rig.start_cluster()
        name = f"accuracy-{uuid.uuid4().hex[:8]}"
        quota = fg.Quota(name, requests_per_minute=RPM, tokens_per_minute=TPM)
        ctx = multiprocessing.get_context("spawn")
        out: multiprocessing.Queue = ctx.Queue()
        start_at = time.time() + 3.0  # every process starts deciding at the same instant
        procs = [
            ctx.Process(target=worker, args=(url, name, start_at, args.seconds, args.callers, out))
            for _ in range(args.processes)
        ]
        for p in procs:
            p.start()
        results = [out.get(timeout=args.seconds + 120) for _ in procs]
        for p in procs:
            p.join()

    admitted = sum(r[0] for r in results)
    elapsed = max(r[1] for r in results) - start_at
    errors = [e for r in results for e in r[2]]
    burst_r = quota.request_capacity or 0
    burst_t = quota.token_capacity or 0
    allowance = min(RPM / 60 * elapsed + burst_r, (TPM / 60 * elapsed + burst_t) / TOKENS)
    share = admitted / allowance
    print(f"store: {url}")
    print(f"{args.processes} processes x {args.callers} callers, {elapsed:.2f} s, quota {quota!r}")
    print(f"admitted {admitted} requests; allowance (rate x time + burst) {allowance:.0f}: {share:.3%}")
    print(f"store errors: {sum(r[3] for r in results)}; caller errors: {len(errors)} {errors[:3]}")
    verdict = "PASS" if admitted <= allowance and share >= 0.99 and not errors else "FAIL"
    print(f"{verdict}: never over the allowance, and at least 99% of it used")
    if verdict != "PASS":
        raise SystemExit(1)


if __name__ == "__main__":
    main()
