"""``fleetgate demo``: the main job on embedded defaults, with nothing to set up.

It starts a local FakeOpenAI with realistic limits and faults (per-model RPM/TPM in
one-second slices, lognormal latency, a few 5xx), writes a workload of chat and responses
calls of mixed sizes, and runs it through the gateway with ``fleetgate run``'s machinery.
With ``--redis URL --workers N``, N processes share the quota through Redis. Then a few
support questions, their paraphrases and near-miss traps go through the semantic cache,
and two canary rollouts run: one promoted step by step, one rolled back.
"""

from __future__ import annotations

import json
import multiprocessing
from concurrent.futures import ThreadPoolExecutor
import random
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import openai

from fleetgate.cache.embedders import LocalEmbedder
from fleetgate.config import QuotaLimits
from fleetgate.errors import ConfigError
from fleetgate.gateway import Gateway
from fleetgate.run import RunSummary, run_file
from fleetgate.summary import allowed_in
from fleetgate.testing.fake_openai import FakeConfig, FakeOpenAI, Fault, Latency, ModelLimits

__all__ = ["DEMO_LIMITS", "ROLLOUT_UPSTREAM", "SEMANTIC_QUESTIONS", "UPSTREAM_LIMITS", "rollout_episode", "run_demo",
           "semantic_episode", "upstream_line",
           "write_workload"]

MODEL = "gpt-4.1-mini"
#: The model the fake upstream fails a quarter of the time (a canary that must roll back).
FLAKY_MODEL = "gpt-4.1-nano"
#: What the fake upstream enforces.
DEMO_LIMITS = ModelLimits(requests_per_minute=1_200, tokens_per_minute=200_000)
#: What the gateway is told: a little headroom, since no client can count exactly as
#: OpenAI does (it estimates from characters).
GATEWAY_LIMITS = QuotaLimits(requests_per_minute=1_140, tokens_per_minute=190_000)
#: The upstream's limits as a quota: what the summary measures the run's use against (the
#: fake enforces them in one-second slices: a one-second burst).
UPSTREAM_LIMITS = QuotaLimits(requests_per_minute=DEMO_LIMITS.requests_per_minute,
                              tokens_per_minute=DEMO_LIMITS.tokens_per_minute)
#: The rollouts' upstream: room for the episode's pace, answers in 30 ms, and the cheaper
#: model failing a quarter of the time, so that the gates judge the configurations alone.
ROLLOUT_UPSTREAM = FakeConfig(
    default_limits=ModelLimits(requests_per_minute=100_000, tokens_per_minute=50_000_000),
    faults=[Fault(kind="latency", latency=Latency(ms=30)),
            Fault(kind="error", model=FLAKY_MODEL, status=503, probability=0.25)],
)


def write_workload(path: Path, requests: int, seed: int = 1, prefix: str = "demo") -> None:
    """Chat and responses calls with prompts of 5 to 400 words and maximum outputs of 16
    to 256 tokens, with custom_ids ``<prefix>-<n>``."""
    rng = random.Random(seed)
    words = "fleet quota token request answer model budget cache pod minute limit".split()
    with path.open("w") as out:
        for i in range(requests):
            prompt = " ".join(rng.choice(words) for _ in range(rng.choice([5, 20, 60, 150, 400])))
            max_out = rng.choice([16, 64, 128, 256])
            if i % 3:
                body: dict[str, Any] = {"model": MODEL, "messages": [{"role": "user", "content": prompt}],
                                        "max_tokens": max_out}
                url = "/v1/chat/completions"
            else:
                body = {"model": MODEL, "input": prompt, "max_output_tokens": max_out}
                url = "/v1/responses"
            out.write(json.dumps({"custom_id": f"{prefix}-{i}", "method": "POST", "url": url, "body": body}) + "\n")


#: Asked in this order: a question, then paraphrases (served by meaning) and traps (sent upstream).
SEMANTIC_QUESTIONS = [
    "How do I reset my password?",
    "how can I reset my password",
    "How do I not reset my password?",
    "What is your refund policy for damaged items?",
    "what's the refund policy for damaged items",
    "What is your refund policy for undamaged items?",
    "Can I change my delivery address after ordering?",
    "can I change the delivery address after I ordered",
    "Can I change my delivery address 2 days after ordering?",
    "Do you ship to Canada?",
    "do you ship to canada",
    "Do you ship to Australia?",
]


def semantic_episode(base_url: str, echo: bool = True) -> list[tuple[str, str]]:
    """Send `SEMANTIC_QUESTIONS` through a gateway with the semantic cache on; returns, per
    question, what served it: "upstream", "semantic" or "upstream (<guard> guard)"."""
    embedder = LocalEmbedder()
    embedder.embed(["warm up"])  # load the model before timing anything
    gate = Gateway(base_url=base_url, embedder=embedder, cache={"enabled": True, "semantic": {"enabled": True}})
    assert gate.cache.semantic is not None
    client = gate.openai(api_key="sk-fleetgate-demo", max_retries=2)
    served = []
    with gate.scope(user="demo-user"):
        for question in SEMANTIC_QUESTIONS:
            before = gate.stats.snapshot()
            answer = client.chat.completions.with_raw_response.create(
                model=MODEL, temperature=0, max_tokens=64, messages=[{"role": "user", "content": question}])
            guards = [k.removeprefix("semantic_guarded_") for k, v in gate.stats.snapshot().items()
                      if k.startswith("semantic_guarded_") and v > before.get(k, 0)]
            how = answer.headers.get("x-fleetgate-cache") or "upstream"
            if how == "upstream" and guards:
                how = f"upstream ({', '.join(guards)} guard)"
            elif how == "semantic":
                how = f"semantic (similarity {answer.headers['x-fleetgate-similarity']})"
            served.append((question, how))
            if echo:
                print(f"  {question!r:<62} → {how}")
            gate.cache.semantic.flush()  # indexed before the next question
    gate.close()
    return served


def rollout_episode(base_url: str, echo: bool = True) -> list[str]:
    """Two canaries for the "support" feature, each taking traffic from 200 users in rounds:
    v2 (a temperature change) is healthy and promoted step by step; v3 (a cheaper model the
    fake upstream fails a quarter of the time) is rolled back. Returns the decisions."""
    steps = [0.1, 0.25, 0.5, 1.0]
    # Defaults on, breakers included: the flaky canary's breaker may open before its error
    # rate is clearly over, and rolls it back as surely. Latency is allowed to double: both
    # sides answer in 30 ms, and on a busy machine a hundred calls' p95 is scheduling noise.
    gates = {"early_requests": 50, "min_requests": 100, "max_p95_increase": 1.0}
    gate = Gateway(base_url=base_url, routing={"rollouts": {
        "support-v2": {"feature": "support", "canary": {"temperature": 0.3, "version": "v2"}, "steps": steps, **gates},
        "search-v3": {"feature": "search", "canary": {"model": FLAKY_MODEL, "version": "v3"}, "steps": steps, **gates},
    }})
    rollouts = gate.router.rollouts
    client = gate.openai(api_key="sk-fleetgate-demo", max_retries=0)
    decisions: list[str] = []
    seen = {name: rollouts.state(name) for name in rollouts.rules}

    def ask(user: int, feature: str) -> None:
        with gate.scope(user=f"user-{user}", feature=feature):
            try:
                client.chat.completions.create(model=MODEL, max_tokens=256,
                                               messages=[{"role": "user", "content": "Where is my order?"}])
            except openai.APIStatusError:
                pass  # the flaky canary's failures: its gates count them

    for _ in range(20):
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(ask, [u for u in range(200) for _ in (0, 1)], ["support", "search"] * 200))
        rollouts.sync()
        for name in rollouts.rules:
            state = rollouts.state(name)
            if state.version != seen[name].version:
                verb = {"rolled_back": "rolled back", "promoted": "promoted to 100%"}.get(state.status, "promoted")
                line = (f"{name}: {rollouts.share(name, seen[name]):.0%} → {rollouts.share(name, state):.0%} "
                        f"({verb}): {state.reason}")
                decisions.append(line)
                if echo:
                    print(f"  {line}")
                seen[name] = state
        if all(s.status in ("promoted", "rolled_back") for s in seen.values()):
            break
    gate.close()
    return decisions


def _worker(base_url: str, redis_url: str | None, src: str, out: str, queue: Any) -> None:
    gate = Gateway(base_url=base_url, redis_url=redis_url, models={MODEL: GATEWAY_LIMITS})
    queue.put(run_file(src, out, gateway=gate, concurrency=32, progress=False, api_key="sk-fleetgate-demo"))


def upstream_line(upstream: dict[str, Any], seconds: float) -> str:
    """What the fake upstream counted, as a share of what its limits allow in `seconds`
    (a one-second burst included, as :func:`fleetgate.run.allowed_in` counts)."""
    requests = upstream["requests"] / allowed_in(DEMO_LIMITS.requests_per_minute, seconds, UPSTREAM_LIMITS)
    tokens = upstream["tokens_admitted"] / allowed_in(DEMO_LIMITS.tokens_per_minute, seconds, UPSTREAM_LIMITS)
    return (f"upstream counted {upstream['requests']} requests ({requests:.1%} of its limit) and "
            f"{upstream['tokens_admitted']:,} tokens ({tokens:.1%}), refused {upstream['rate_limited']} with 429")


def run_demo(*, requests: int = 240, redis_url: str | None = None, workers: int = 1, echo: bool = True) -> tuple[RunSummary, dict[str, Any]]:
    """Run the demo; returns the summary and what the fake upstream counted."""
    config = FakeConfig(
        models={MODEL: DEMO_LIMITS},
        faults=[Fault(kind="latency", latency=Latency(kind="lognormal", ms=120, spread=0.4)),
                Fault(kind="error", status=503, probability=0.01)],
    )
    with FakeOpenAI(config) as fake, tempfile.TemporaryDirectory(prefix="fleetgate-demo-") as tmp:
        if echo:
            print(f"fake OpenAI at {fake.base_url}: {MODEL} limited to {DEMO_LIMITS.requests_per_minute} requests "
                  f"and {DEMO_LIMITS.tokens_per_minute:,} tokens per minute, lognormal latency, 1% 503s")
            print(f"{requests} requests of mixed sizes, {workers} worker(s), "
                  f"{'quota shared through ' + redis_url if redis_url else 'embedded limiter'}\n")
        shards = []
        for w in range(workers):
            src = Path(tmp) / f"in-{w}.jsonl"
            write_workload(src, requests // workers + (w < requests % workers), seed=w + 1, prefix=f"w{w}-demo")
            shards.append((str(src), str(Path(tmp) / f"out-{w}.jsonl")))
        if workers == 1:
            gate = Gateway(base_url=fake.base_url, redis_url=redis_url, models={MODEL: GATEWAY_LIMITS})
            summary = run_file(shards[0][0], shards[0][1], gateway=gate, concurrency=32, progress=echo,
                               api_key="sk-fleetgate-demo")
        else:
            ctx = multiprocessing.get_context("spawn")
            queue = ctx.Queue()
            procs = [ctx.Process(target=_worker, args=(fake.base_url, redis_url, s, o, queue)) for s, o in shards]
            for p in procs:
                p.start()
            summary = RunSummary.merge([queue.get(timeout=600) for _ in procs])
            for p in procs:
                p.join()
        upstream = asdict(fake.counters(MODEL))
        episode: list[tuple[str, str]] | str = []
        decisions: list[str] = []
        if echo:
            try:
                episode = semantic_episode(fake.base_url, echo=False)
            except ConfigError as e:
                episode = f"(not shown: {e})"
            with FakeOpenAI(ROLLOUT_UPSTREAM) as rollout_fake:
                decisions = rollout_episode(rollout_fake.base_url, echo=False)
    if echo:
        print()
        print(summary.render({MODEL: UPSTREAM_LIMITS}))
        print(upstream_line(upstream, summary.elapsed))
        print("\nthe semantic cache (all-MiniLM-L6-v2, threshold 0.90): paraphrases served, traps sent upstream")
        for question, how in episode if isinstance(episode, list) else [(episode, "")]:
            print(f"  {question!r:<62} → {how}" if how else f"  {question}")
        print("\ncanary rollouts (200 users a round, an upstream answering in 30 ms; gates: errors ≤ 1.5× baseline, "
              "p95 ≤ +20%, cost ≤ +10%)")
        for line in decisions:
            print(f"  {line}")
    return summary, upstream
