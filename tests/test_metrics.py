"""Prometheus metrics: every family checked against the requests made, in one process and
scraped from ``fleetgate metrics serve`` while several worker processes serve traffic."""

from __future__ import annotations

import asyncio
import multiprocessing
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

import fleetgate as fg
from fleetgate.testing.fake_openai import FakeConfig, FakeOpenAI, Fault, Latency, ModelLimits
from tests.scrape import Samples, parse, scrape_wsgi, total

MODEL = "gpt-4.1-mini"
def delta(after: Samples, before: Samples) -> Samples:
    return {k: v - before.get(k, 0.0) for k, v in after.items() if v != before.get(k, 0.0)}


def messages(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


@pytest.mark.fake_openai(config=FakeConfig(faults=[Fault(kind="error", model="gpt-4.1", status=503)]))
def test_families_match_the_requests_made(fake_openai: FakeOpenAI) -> None:
    gate = fg.Gateway(base_url=fake_openai.base_url, breakers={"min_calls": 2, "window": 2},
                      metrics={"features": ["search"]}, cache={"enabled": True},
                      models={MODEL: {"requests_per_minute": 10_000, "tokens_per_minute": 10_000_000}},
                      lanes={"concurrency": 4},
                      budgets={"unpriced": "allow", "limits": [{"name": "capped", "scope": "feature", "dollars": 1e-9},
                                                               {"dollars": 5.0}]})
    client = gate.openai(api_key="sk-test", max_retries=0)
    app = gate.metrics_app()
    before = scrape_wsgi(app)

    usages = []
    with gate.scope(feature="search"):
        for i in range(3):
            usages.append(client.chat.completions.create(model=MODEL, temperature=0, messages=messages(f"q{i}")).usage)
        client.chat.completions.create(model=MODEL, temperature=0, messages=messages("q0"))  # exact cache hit
        stream = client.chat.completions.create(model=MODEL, messages=messages("streamed"), stream=True,
                                                stream_options={"include_usage": True})
        usages += [chunk.usage for chunk in stream if chunk.usage is not None]
    with gate.scope(feature="not-configured"):
        usages.append(client.chat.completions.create(model=MODEL, messages=messages("other feature")).usage)
    usages.append(client.chat.completions.create(model="house-model-7", messages=messages("unknown model")).usage)
    for _ in range(2):
        with pytest.raises(openai.InternalServerError):
            client.chat.completions.create(model="gpt-4.1", messages=messages("upstream error"))
    with pytest.raises(fg.CircuitOpen):  # two failures of two calls: the circuit opened
        client.chat.completions.create(model="gpt-4.1", messages=messages("after the trip"))
    with gate.scope(feature="capped"), pytest.raises(fg.BudgetExceeded):
        client.chat.completions.create(model=MODEL, messages=messages("over budget"))
    gate.close()

    d = delta(scrape_wsgi(app), before)
    req = "fleetgate_requests_total"
    assert total(d, req) == 11
    assert total(d, req, feature="search", outcome="ok", model=MODEL) == 5
    assert total(d, req, feature="search", tier="cache") == 1
    assert total(d, req, feature="other") == 1, "an unconfigured feature is bounded to 'other'"
    assert total(d, req, feature="none", model="other") == 1, "an unknown model is bounded to 'other'"
    assert total(d, req, model="gpt-4.1", outcome="error") == 2
    assert total(d, req, outcome="refused") == 2
    assert total(d, "fleetgate_refusals_total", reason="circuit_open") == 1
    assert total(d, "fleetgate_refusals_total", reason="budget_exceeded") == 1

    assert len(usages) == 6
    prompt = sum(u.prompt_tokens for u in usages if u is not None)
    output = sum(u.completion_tokens for u in usages if u is not None)
    assert total(d, "fleetgate_tokens_total", kind="input") + total(d, "fleetgate_tokens_total",
                                                                    kind="cached_input") == prompt
    assert total(d, "fleetgate_tokens_total", kind="output") == output
    assert total(d, "fleetgate_tokens_total", feature="search", kind="output") == sum(
        u.completion_tokens for u in usages[:4] if u is not None)
    cost = sum(gate.prices.cost(MODEL, u.model_dump()) or 0.0 for u in usages[:5] if u is not None)
    assert total(d, "fleetgate_cost_dollars_total", model=MODEL) == pytest.approx(cost)
    assert total(d, "fleetgate_cost_dollars_total", model="other") == 0, "an unpriced model costs nothing known"

    assert total(d, "fleetgate_cache_hits_total", layer="exact") == 1
    assert total(d, "fleetgate_cache_misses_total") == 3  # the deterministic requests looked up; the rest are not
    assert total(d, "fleetgate_breaker_transitions_total", breaker="/chat/completions:gpt-4.1", to="open") == 1
    assert d[("fleetgate_breaker_state", frozenset({("breaker", "/chat/completions:gpt-4.1")}))] == 2
    sent = 8  # answered by upstream: 3 + stream + other feature + unknown model + 2 errors
    assert total(d, "fleetgate_gateway_overhead_seconds_count", endpoint="/chat/completions") == sent
    overhead = total(d, "fleetgate_gateway_overhead_seconds_sum", endpoint="/chat/completions")
    assert 0 < overhead < total(d, "fleetgate_request_duration_seconds_sum"), "the gateway's share of the time, not all"
    assert total(d, "fleetgate_request_duration_seconds_count") == 11
    assert total(d, "fleetgate_limiter_wait_seconds_count", model=MODEL) == 5  # the model with a quota
    assert total(d, "fleetgate_limiter_wait_seconds_count") == 5, "a model without quota never waits for one"
    assert total(d, "fleetgate_queue_wait_seconds_count", lane="interactive") == sent + 1  # + the one the circuit refused
    budget = frozenset({("budget", "global:day")})
    after = scrape_wsgi(app)
    spent = cost  # every priced call that was answered
    assert after[("fleetgate_budget_limit_dollars", budget)] == 5.0
    assert after[("fleetgate_budget_spent_dollars", budget)] == pytest.approx(spent, abs=1e-8)
    assert after[("fleetgate_budget_remaining_dollars", budget)] == pytest.approx(5.0 - spent, abs=1e-8)
    assert ("fleetgate_budget_limit_dollars", frozenset({("budget", "feature:capped:day")})) in after


@pytest.mark.fake_openai(config=FakeConfig(faults=[Fault(kind="latency", model="gpt-4.1-nano",
                                                         latency=Latency(ms=5_000))]))
def test_async_calls_and_cancellations_are_counted(fake_openai: FakeOpenAI) -> None:
    gate = fg.Gateway(base_url=fake_openai.base_url)
    app = gate.metrics_app("asgi")
    before = asyncio.run(_scrape_asgi(app))

    async def main() -> None:
        client = gate.async_openai(api_key="sk-test", max_retries=0)
        await client.chat.completions.create(model=MODEL, messages=messages("async"))
        task = asyncio.create_task(client.chat.completions.create(model="gpt-4.1-nano", messages=messages("slow")))
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    d = delta(asyncio.run(_scrape_asgi(app)), before)
    assert total(d, "fleetgate_requests_total", outcome="ok") == 1
    assert total(d, "fleetgate_requests_total", outcome="cancelled") == 1


async def _scrape_asgi(app: Any) -> Samples:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app({"type": "http", "method": "GET", "path": "/metrics", "query_string": b"", "headers": []},
              receive, send)
    assert sent[0]["status"] == 200
    return parse(b"".join(m.get("body", b"") for m in sent[1:]).decode())


def test_semantic_hits_and_near_misses_by_guard(fake_openai: FakeOpenAI) -> None:
    from fleetgate.cache import LocalEmbedder

    gate = fg.Gateway(base_url=fake_openai.base_url, embedder=LocalEmbedder(),
                      cache={"enabled": True, "semantic": {"enabled": True}})
    client = gate.openai(api_key="sk-test")
    app = gate.metrics_app()
    before = scrape_wsgi(app)
    with gate.scope(user="u-1"):
        client.chat.completions.create(model=MODEL, temperature=0, messages=messages("Is ibuprofen safe for children?"))
        assert gate.cache.semantic is not None
        gate.cache.semantic.flush()
        served = client.chat.completions.with_raw_response.create(
            model=MODEL, temperature=0, messages=messages("Is ibuprofen safe for children? Thanks"))
        assert served.headers.get("x-fleetgate-cache") == "semantic"
        refused = client.chat.completions.with_raw_response.create(
            model=MODEL, temperature=0, messages=messages("Is ibuprofen not safe for children?"))
        assert refused.headers.get("x-fleetgate-cache") is None
    gate.close()
    d = delta(scrape_wsgi(app), before)
    assert total(d, "fleetgate_cache_hits_total", layer="semantic") == 1
    assert total(d, "fleetgate_cache_near_misses_total", guard="negation") >= 1
    assert total(d, "fleetgate_cache_misses_total") == 2


@pytest.mark.fake_openai(config=FakeConfig(faults=[Fault(kind="wrong_schema")]))
def test_structured_outputs_and_quality_signals_are_counted(fake_openai: FakeOpenAI) -> None:
    from pydantic import BaseModel

    class Ticket(BaseModel):
        title: str
        priority: int

    gate = fg.Gateway(base_url=fake_openai.base_url, metrics={"features": ["triage"]})
    client = gate.openai(api_key="sk-test")
    app = gate.metrics_app()
    before = scrape_wsgi(app)
    with gate.scope(feature="triage"):
        with pytest.raises(fg.StructuredOutputError):
            gate.complete("File a ticket: the printer is on fire", Ticket, model=MODEL, retries=1, client=client)
        fake_openai.set_faults([])
        gate.complete("File a ticket: the printer is on fire", Ticket, model=MODEL, client=client)
        gate.record_quality(False)
    gate.record_quality(True, feature="triage")
    seen = delta(scrape_wsgi(app), before)
    assert total(seen, "fleetgate_structured_outputs_total", model=MODEL, outcome="invalid") == 2
    assert total(seen, "fleetgate_structured_outputs_total", model=MODEL, outcome="valid") == 1
    assert total(seen, "fleetgate_quality_signals_total", feature="triage", signal="bad") == 3
    assert total(seen, "fleetgate_quality_signals_total", feature="triage", signal="good") == 2


def test_disabled_metrics_record_nothing(fake_openai: FakeOpenAI) -> None:
    gate = fg.Gateway(base_url=fake_openai.base_url, metrics={"enabled": False})
    assert gate.metrics is None
    app = gate.metrics_app()
    before = scrape_wsgi(app)
    gate.openai(api_key="sk-test").chat.completions.create(model=MODEL, messages=messages("quiet"))
    assert total(delta(scrape_wsgi(app), before), "fleetgate_requests_total") == 0


def test_no_created_series_and_the_applications_own_metrics_unchanged(fake_openai: FakeOpenAI) -> None:
    from prometheus_client import REGISTRY, generate_latest
    from prometheus_client import Counter as AppCounter
    from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

    gate = fg.Gateway(base_url=fake_openai.base_url, lanes={"concurrency": 2},
                      models={MODEL: {"requests_per_minute": 10_000}})
    gate.openai(api_key="sk-test").chat.completions.create(model=MODEL, messages=messages("created?"))
    mine = AppCounter("app_orders", "The application's own counter", registry=None)
    mine.inc()
    pages = {
        "metrics_app": b"".join(gate.metrics_app()({"REQUEST_METHOD": "GET", "PATH_INFO": "/metrics",
                                                    "QUERY_STRING": ""}, lambda s, h: None)).decode(),
        "the application's registry": generate_latest(REGISTRY).decode(),
        "OpenMetrics": generate_openmetrics(REGISTRY).decode(),
    }
    for where, text in pages.items():
        series = [line.split("{")[0].split(" ")[0] for line in text.splitlines() if line.startswith("fleetgate_")]
        assert "fleetgate_requests_total" in series and "fleetgate_queue_wait_seconds_count" in series, where
        assert not [name for name in series if name.endswith("_created")], where
    assert any(s.name == "app_orders_created" for family in mine.collect() for s in family.samples), \
        "the application's own counters keep their created series"


def test_dashboard_shows_only_metrics_that_exist(fake_openai: FakeOpenAI) -> None:
    import json
    import re

    gate = fg.Gateway(base_url=fake_openai.base_url, budgets={"limits": [{"dollars": 1.0}]})
    with gate.scope(feature="x"):
        gate.openai(api_key="sk-test").chat.completions.create(model=MODEL, messages=messages("seen"))
    exposed = {family.name for family in text_string_to_metric_families(
        b"".join(gate.metrics_app()({"REQUEST_METHOD": "GET", "PATH_INFO": "/metrics", "QUERY_STRING": ""},
                                    lambda s, h: None)).decode())}
    dashboard = json.loads((Path(__file__).parents[1] / "dashboards" / "fleetgate.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {re.sub(r"_(total|bucket|count|sum)$", "", name) for e in exprs for name in re.findall(r"fleetgate_\w+", e)}
    assert used and used <= exposed, used - exposed
    assert exposed == used, "every family has a panel"


# -- several processes ------------------------------------------------------------------------


def _worker(base_url: str, n: int, feature: str, ready: Any, leave: Any, out: Any) -> None:
    import fleetgate as fleet

    gate = fleet.Gateway(base_url=base_url, metrics={"features": ["search", "reports"]}, lanes={"concurrency": 2})
    client = gate.openai(api_key="sk-test", max_retries=0)
    tokens = 0
    with gate.scope(feature=feature):
        for i in range(n):
            answer = client.chat.completions.create(model=MODEL, messages=messages(f"{feature} {i}"))
            assert answer.usage is not None
            tokens += answer.usage.total_tokens
            if i == n // 2:
                ready.release()  # half way: the parent scrapes while the others still send
    out.put(tokens)
    leave.wait(30)


@pytest.fixture
def multiproc_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    directory = tmp_path / "prom"
    directory.mkdir()
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(directory))  # for the processes started below
    yield directory


@pytest.mark.fake_openai(config=FakeConfig(models={MODEL: ModelLimits(requests_per_minute=100_000, tokens_per_minute=100_000_000)}))
def test_scrape_sums_every_worker_process(fake_openai: FakeOpenAI, multiproc_dir: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    ready, leave, out = ctx.Semaphore(0), ctx.Event(), ctx.Queue()
    plan = [("search", 40), ("search", 30), ("reports", 20)]
    workers = [ctx.Process(target=_worker, args=(fake_openai.base_url, n, feature, ready, leave, out))
               for feature, n in plan]
    for w in workers:
        w.start()
    server = subprocess.Popen([sys.executable, "-m", "fleetgate.cli", "metrics", "serve", "--host", "127.0.0.1",
                               "--port", "0", "--dir", str(multiproc_dir)], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        url = server.stdout.readline().split(" at ")[1].split(" ")[0]
        for _ in workers:
            assert ready.acquire(timeout=60)
        mid = parse(urllib.request.urlopen(url, timeout=10).read().decode())
        tokens = sum(out.get(timeout=60) for _ in workers)
        final = parse(urllib.request.urlopen(url, timeout=10).read().decode())
        alive = [w.is_alive() for w in workers]
    finally:
        leave.set()
        for w in workers:
            w.join(30)
        server.terminate()
        server.wait(10)
    assert all(alive), "scraped while every worker was still running"
    req = "fleetgate_requests_total"
    assert sum(n // 2 + 1 for _, n in plan) <= total(mid, req) <= total(final, req)
    assert total(final, req) == 90
    assert total(final, req, feature="search", outcome="ok", model=MODEL) == 70
    assert total(final, req, feature="reports", outcome="ok") == 20
    assert total(final, "fleetgate_tokens_total", model=MODEL) == tokens
    assert total(final, "fleetgate_gateway_overhead_seconds_count") == 90
    assert total(final, "fleetgate_queue_wait_seconds_count", model=MODEL) == 90
    assert total(final, "fleetgate_queue_depth", model=MODEL) == 0, "nothing waits any more"
    assert fake_openai.counters(MODEL).requests == 90


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))


def test_a_scrape_while_redis_is_down_answers_without_the_budgets(caplog: Any) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        dead = f"redis://127.0.0.1:{s.getsockname()[1]}/0"
    gate = fg.Gateway(redis_url=dead, budgets={"limits": [{"dollars": 5.0}]})
    app = gate.metrics_app()
    for _ in range(3):
        found = scrape_wsgi(app)
        assert not any(name.startswith("fleetgate_budget_") for name, _ in found)
    outage = [r for r in caplog.records if r.name == "fleetgate" and "budgets' Redis" in r.getMessage()]
    assert len(outage) == 1, "said once"
