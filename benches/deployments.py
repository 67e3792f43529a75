"""Deployments (``[deployments]``): one model served by several upstreams.

Throughput: 4 worker processes (spawn), each with its own Gateway on one shared Redis,
send chat completions from N threads each (sync SDK, ``max_retries=0``) for a fixed time
to one model served by three deployments, each a FakeOpenAI enforcing its own limits
(600 / 300 / 100 RPM; tokens per minute 1,000 per request allowed, so requests bind, not
tokens: a call here is about 50 tokens), the gateway configured with the same limits and
one priority, weights 6/3/1 and then weights 1/1/1. Then the same workload against one
deployment of 1,000 RPM (the sum) on one FakeOpenAI, for comparison. Reports the calls
each deployment served, throughput as a share of what the limits allow (upstream's
bucket starts full: rate x elapsed + one second's burst per deployment), upstream's 429s
per deployment and as a share of its requests, and the calls the gateway refused
(RateLimitError seen by callers). Throughput is counted twice: upstream's admitted
requests at the end of the window (load still on), and every call callers got an answer
to over the whole run (including the tail, when threads stop one by one).

Overhead: in one process, the latency the gateway adds (Redis limiter on) with three
deployments, with one, and with none (plain ``base_url``): the same chat completion sent
directly with the SDK and through each gateway, interleaved in rounds against FakeOpenAIs
with limits far above the load (in their own process, as upstream is). By default every
deployment is served by the direct client's upstream, so the figure is the gateway's own;
``--upstreams three`` gives each its own (on 2 cores, the three upstream processes' own
contention then shows in the p99). Reports the added p50 / p99 per configuration and
round, and the median over rounds.

    python benches/deployments.py [--part throughput|overhead|both] [--seconds 40]
                                  [--workers 4] [--threads 8] [--weights 631,111] [--deadline S]
                                  [--calls 2000] [--rounds 5] [--upstreams one|three]

Loopback only (127.0.0.1): Redis from RedisRig, FakeOpenAI servers.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import multiprocessing
import os
import statistics
import sys
import threading
import time
from typing import Any

import openai

import fleetgate as fg
from fleetgate.testing import RedisRig
from fleetgate.testing.fake_openai import FakeConfig, FakeOpenAI, ModelLimits
from gateway_overhead import fake_server, percentile  # benches/, beside this script

MODEL = "gpt-4.1-mini"
MSG = [{"role": "user", "content": "How do I reset my password?"}]
#: The three deployments' requests per minute (and tokens per minute: this many per request).
LIMITS = {"east": 600, "west": 300, "north": 100}
TOKENS_PER_REQUEST_ALLOWED = 1_000
BIG = 10**9


# ---------------------------------------------------------------------------- throughput


def worker(spec: list[dict[str, Any]], redis_url: str, threads: int, seconds: float, grace: float,
           deadline: float | None, start_at: Any, go: Any, ready: Any, results: Any) -> None:
    """One pod: its own Gateway, `threads` callers from `start_at` until `start_at + seconds`;
    what was answered by then is reported `grace` seconds later, and callers still waiting
    for an answer are counted and left (the process exits under them)."""
    extra: dict[str, Any] = {} if deadline is None else {"default_deadline_seconds": deadline}
    gate = fg.Gateway(deployments={MODEL: [fg.ModelDeployment(**s) for s in spec]}, redis_url=redis_url,
                      failure_policy="fail_closed", **extra)
    client = gate.openai(api_key="sk-fake", max_retries=0)
    ready.put(1)
    go.wait()
    begin = start_at.value
    end = begin + seconds
    while time.monotonic() < begin:
        time.sleep(0.001)
    lock = threading.Lock()
    served: collections.Counter[str] = collections.Counter()
    refused: collections.Counter[str] = collections.Counter()
    errors: collections.Counter[str] = collections.Counter()
    latencies: dict[str, list[float]] = collections.defaultdict(list)
    waiting = [0]

    def caller() -> None:
        while time.monotonic() < end:
            started = time.monotonic()
            with lock:
                waiting[0] += 1
            try:
                raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=MSG, max_tokens=32)
                done = time.monotonic()
                where = raw.headers.get("x-fleetgate-upstream", "?")
                with lock:
                    if done <= end:
                        served[where] += 1
                        latencies[where].append(done - started)
            except openai.RateLimitError as e:
                # Upstream's 429 passed through names its deployment; the gateway's own does not.
                with lock:
                    refused[e.response.headers.get("x-fleetgate-upstream", "gateway")] += 1
            except openai.APIError as e:
                with lock:
                    errors[f"{type(e).__name__}: {str(e)[:80]}"] += 1
            with lock:
                waiting[0] -= 1

    for _ in range(threads):
        threading.Thread(target=caller, daemon=True).start()
    time.sleep(max(0.0, end - time.monotonic()))
    with lock:
        at_end = waiting[0]
    time.sleep(grace)
    stats = gate.stats.snapshot()
    with lock:
        results.put({"served": dict(served), "refused": dict(refused), "errors": dict(errors),
                     "latencies": dict(latencies), "waiting_at_end": at_end, "waiting_after_grace": waiting[0],
                     "spilled": stats.get("deployment_spilled", 0)})
    results.close()
    results.join_thread()
    os._exit(0)  # callers may still be waiting on a quota: leave them


def fake_for(rpm: int) -> FakeConfig:
    return FakeConfig(answer_words=8, models={MODEL: ModelLimits(
        requests_per_minute=rpm, tokens_per_minute=rpm * TOKENS_PER_REQUEST_ALLOWED)})


def throughput(label: str, limits: dict[str, int], weights: dict[str, float], redis_url: str,
               args: argparse.Namespace) -> dict[str, float]:
    """One configuration: fresh fakes (full buckets), fresh Redis db; prints and returns figures."""
    ctx = multiprocessing.get_context("spawn")
    with contextlib.ExitStack() as stack:
        fakes = {name: stack.enter_context(FakeOpenAI(fake_for(rpm))) for name, rpm in limits.items()}
        spec = [dict(name=name, base_url=fakes[name].base_url, requests_per_minute=rpm,
                     tokens_per_minute=rpm * TOKENS_PER_REQUEST_ALLOWED, priority=0, weight=weights[name])
                for name, rpm in limits.items()]
        start_at, go, ready, results = ctx.Value("d", 0.0), ctx.Event(), ctx.Queue(), ctx.Queue()
        procs = [ctx.Process(target=worker, args=(spec, redis_url, args.threads, args.seconds, args.grace,
                                                  args.deadline, start_at, go, ready, results)) for _ in range(args.workers)]
        for p in procs:
            p.start()
        for _ in procs:
            ready.get(timeout=120)
        begin = start_at.value = time.monotonic() + 0.5
        go.set()
        # Upstream's admitted requests every `--sample` seconds while the load is on.
        timeline: list[dict[str, int]] = []
        marks = [begin + k * args.sample for k in range(1, int(args.seconds // args.sample) + 1)]
        if not marks or marks[-1] < begin + args.seconds:
            marks.append(begin + args.seconds)
        for mark in marks:
            time.sleep(max(0.0, mark - time.monotonic()))
            timeline.append({n: (c := f.counters(MODEL)).requests - c.rate_limited for n, f in fakes.items()})
        window = min(args.seconds, marks[-1] - begin)
        out = [results.get(timeout=300) for _ in procs]
        for p in procs:
            p.join(timeout=60)
        counters = {n: f.counters(MODEL) for n, f in fakes.items()}
        # Where the callers still waiting at the end were waiting: what each served after it.
        tail = {n: c.requests - c.rate_limited - timeline[-1][n] for n, c in counters.items()}

    served: collections.Counter[str] = collections.Counter()
    refused: collections.Counter[str] = collections.Counter()
    errors: collections.Counter[str] = collections.Counter()
    latencies: dict[str, list[float]] = collections.defaultdict(list)
    for r in out:
        served.update(r["served"])
        refused.update(r["refused"])
        errors.update(r["errors"])
        for where, xs in r["latencies"].items():
            latencies[where] += xs
    spilled = sum(r["spilled"] for r in out)

    def allowance(rpm: int, seconds: float) -> float:
        return rpm / 60 * seconds + rpm / 60  # upstream's bucket starts with one second's burst

    def lat(xs: list[float]) -> str:
        return f"p50 {percentile(xs, 0.5):5.2f} s p99 {percentile(xs, 0.99):5.2f} s" if xs else "-"

    at_end = timeline[-1]
    in_window = sum(at_end.values())
    allowed = sum(allowance(rpm, window) for rpm in limits.values())
    answered = sum(served.values())
    # After the first sample: the steady rate, without the first second's burst.
    first = sum(timeline[0].values()) if len(timeline) > 1 else 0
    steady_for = window - args.sample if len(timeline) > 1 else window
    steady = (in_window - first) / (sum(limits.values()) / 60 * steady_for)
    requests = sum(c.requests for c in counters.values())
    limited = sum(c.rate_limited for c in counters.values())
    print(f"{label}  (priority 0; weights {', '.join(f'{n} {weights[n]:g}' for n in limits)})")
    for name, rpm in limits.items():
        c = counters[name]
        print(f"  {name:>6} {rpm:>5} RPM: answered {served.get(name, 0):>5}, upstream admitted {at_end[name]:>5} = "
              f"{at_end[name] / allowance(rpm, window):6.1%} of its allowance; 429s {c.rate_limited:>3} of {c.requests:>5} "
              f"({c.rate_limited / max(1, c.requests):.2%}); caller latency {lat(latencies.get(name, []))}")
    step = [f"{sum(t.values()) - sum(p.values()):>4}" for p, t in zip([{n: 0 for n in limits}, *timeline], timeline)]
    print(f"  admitted upstream per {args.sample:g} s: {' '.join(step)}   "
          f"(the limits allow {sum(limits.values()) / 60 * args.sample:.0f}; the first also one second's burst)")
    if len(limits) > 1:
        for name in limits:
            prev = [0, *[t[name] for t in timeline]]
            print(f"    {name:>6}: {' '.join(f'{b - a:>4}' for a, b in zip(prev, prev[1:]))}   "
                  f"(allows {limits[name] / 60 * args.sample:.0f})")
    print(f"  throughput: {in_window} admitted upstream in {window:.1f} s of {allowed:.0f} allowed = "
          f"{in_window / allowed:.1%}   (target >= 97%; the gateway's 1% headroom caps it at 99%)")
    print(f"              {answered} answered to callers in the window = {answered / allowed:.1%}; "
          f"after the first {args.sample:g} s: {steady:.1%} of the rate")
    print(f"  upstream 429s: {limited} of {requests} requests = {limited / max(1, requests):.3%}   (target <= 0.1%)")
    gateway_refused = refused.pop("gateway", 0)
    print(f"  refused by the gateway (RateLimitError, no upstream): {gateway_refused}; upstream 429s reaching callers: "
          f"{sum(refused.values())}; other errors: {sum(errors.values())}; spills: {spilled}")
    for reason, n in errors.most_common(3):
        print(f"    error: {n} x {reason}")
    everything = [x for xs in latencies.values() for x in xs]
    waiting = sum(r["waiting_at_end"] for r in out)
    still = sum(r["waiting_after_grace"] for r in out)
    print(f"  caller latency: {lat(everything)}, max {max(everything, default=0):.2f} s; callers waiting at the end: "
          f"{waiting} of {args.workers * args.threads}, {args.grace:g} s later: {still}; served in those "
          f"{args.grace:g} s: {', '.join(f'{n} {k}' for n, k in tail.items())}")
    print()
    return {"window": in_window / allowed, "steady": steady, "429": limited / max(1, requests),
            "p50": percentile(everything, 0.5) if everything else 0.0}


def run_throughput(args: argparse.Namespace) -> None:
    deadline = "the gateway's default" if args.deadline is None else f"{args.deadline:g} s"
    print(f"throughput: {args.workers} processes x {args.threads} threads, {args.seconds:g} s each configuration, "
          f"one Redis; tokens per minute {TOKENS_PER_REQUEST_ALLOWED:,} x RPM (requests bind); deadline {deadline}\n")
    summary: list[tuple[str, dict[str, float]]] = []
    with RedisRig() as rig:
        base = rig.start_standalone().rsplit("/", 1)[0]
        for db, w in enumerate(args.weights.split(","), start=1):
            weights = dict(zip(LIMITS, (float(x) for x in w))) if len(w) == len(LIMITS) else None
            if weights is None:
                raise SystemExit(f"--weights {w!r}: one digit per deployment ({len(LIMITS)})")
            label = f"three deployments, weights {'/'.join(w)}"
            summary.append((label, throughput(label, LIMITS, weights, f"{base}/{db}", args)))
        single = {"one": sum(LIMITS.values())}
        label = f"one deployment of {single['one']} RPM"
        summary.append((label, throughput(label, single, {"one": 1.0}, f"{base}/9", args)))
    print("summary: throughput (share of the allowance) / after the first sample (share of the rate) / upstream 429s / "
          "caller p50")
    for label, s in summary:
        print(f"  {label:<34} {s['window']:6.1%}  {s['steady']:6.1%}  {s['429']:.3%}  {s['p50']:.2f} s")
    print()


# ---------------------------------------------------------------------------- overhead


def one_call(client: openai.OpenAI) -> None:
    client.chat.completions.create(model=MODEL, messages=MSG, max_tokens=32)


def measure(direct: openai.OpenAI, gated: openai.OpenAI, calls: int) -> tuple[list[float], list[float]]:
    """`calls` of each client, alternating which goes first; milliseconds per call."""
    plain: list[float] = []
    through: list[float] = []
    for i in range(calls):
        for client, sink in ((direct, plain), (gated, through)) if i % 2 else ((gated, through), (direct, plain)):
            start = time.perf_counter()
            one_call(client)
            sink.append((time.perf_counter() - start) * 1000)
    return plain, through


def run_overhead(args: argparse.Namespace) -> None:
    big = fg.QuotaLimits(requests_per_minute=BIG, tokens_per_minute=BIG * 1000)
    with RedisRig() as rig, contextlib.ExitStack() as stack:
        url = rig.start_standalone()
        # One upstream for every deployment (default): the direct client's, so the added
        # latency is the gateway's alone; three: one each, as in production, which on a
        # small machine adds the upstreams' own contention to the figure.
        urls = [stack.enter_context(fake_server()) for _ in range(3 if args.upstreams == "three" else 1)] * (
            1 if args.upstreams == "three" else 3)
        gates = {
            "no deployments": fg.Gateway(base_url=urls[0], redis_url=url, failure_policy="fail_closed",
                                         models={MODEL: big}),
            "one deployment": fg.Gateway(redis_url=url, failure_policy="fail_closed", deployments={MODEL: [
                fg.ModelDeployment(name="solo", base_url=urls[0], requests_per_minute=BIG,
                                   tokens_per_minute=BIG * 1000)]}),
            "three deployments": fg.Gateway(redis_url=url, failure_policy="fail_closed", deployments={MODEL: [
                fg.ModelDeployment(name=f"d{i}", base_url=u, requests_per_minute=BIG, tokens_per_minute=BIG * 1000,
                                   weight=w) for i, (u, w) in enumerate(zip(urls, (6, 3, 1)))]}),
        }
        direct = openai.OpenAI(base_url=urls[0], api_key="sk-fake", max_retries=0)
        clients = {name: g.openai(api_key="sk-fake", max_retries=0) for name, g in gates.items()}
        for gated in clients.values():
            measure(direct, gated, 200)  # warm-up: connections, tokenizer, scripts
        print(f"overhead: chat completions, Redis limiter on, 1 quota per call; {args.rounds} rounds of "
              f"{args.calls} calls of each client per configuration, configurations interleaved")
        added: dict[str, list[tuple[float, float]]] = {name: [] for name in gates}
        names = list(gates)
        for r in range(args.rounds):
            for name in names[r % len(names):] + names[:r % len(names)]:  # rotate who goes first
                plain, through = measure(direct, clients[name], args.calls)
                p50d, p99d = percentile(plain, 0.5), percentile(plain, 0.99)
                p50g, p99g = percentile(through, 0.5), percentile(through, 0.99)
                added[name].append((p50g - p50d, p99g - p99d))
                print(f"  round {r + 1} {name:<18} direct p50 {p50d:.3f} p99 {p99d:.3f} · gate p50 {p50g:.3f} "
                      f"p99 {p99g:.3f} · added p50 {p50g - p50d:.3f} p99 {p99g - p99d:.3f} ms")
        for name, g in gates.items():
            assert g.stats["refused"] == 0, f"{name}: the gateway refused calls with limits far above the load"
            g.close()
    print("  median added over rounds:")
    for name in names:
        print(f"    {name:<18} p50 {statistics.median(a[0] for a in added[name]):.3f} ms   "
              f"p99 {statistics.median(a[1] for a in added[name]):.3f} ms")
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["throughput", "overhead", "both"], default="both")
    parser.add_argument("--seconds", type=float, default=40.0, help="load time per throughput configuration")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--threads", type=int, default=8, help="callers per worker process")
    parser.add_argument("--weights", default="631,111",
                        help="comma-separated weight sets, one digit per deployment (east, west, north)")
    parser.add_argument("--grace", type=float, default=3.0,
                        help="seconds after the load ends before callers still waiting are counted and left")
    parser.add_argument("--deadline", type=float, default=None,
                        help="the gateway's default_deadline_seconds (default: its own, 60 s)")
    parser.add_argument("--sample", type=float, default=10.0, help="seconds between upstream counter samples")
    parser.add_argument("--calls", type=int, default=2000, help="overhead: calls of each client per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--upstreams", choices=["one", "three"], default="one",
                        help="overhead: the three deployments on the direct client's upstream, or one each")
    args = parser.parse_args()
    if args.part in ("throughput", "both"):
        run_throughput(args)
    if args.part in ("overhead", "both"):
        run_overhead(args)


if __name__ == "__main__":
    main()
