"""The request path as a stack of layers, and the contracts between them, through the real
SDK against FakeOpenAI: the order of the layers, the generated sync twin, a breaker permit
given back whatever refuses the call below it, one request identity for the cache and
deduplication, one health verdict for breakers and modes, and the record layer as the one
writer of ``x-fleetgate-*`` headers."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import openai
import pytest

import fleetgate as fg
from fleetgate.config import ModeTrigger
from fleetgate.path import AsyncGateTransport, GateTransport
from fleetgate.testing.fake_openai import FakeConfig, FakeOpenAI, Fault, Latency
from tests.polling import until

ROOT = Path(__file__).resolve().parent.parent
MODEL = "gpt-4.1-mini"
MSG = [{"role": "user", "content": "How do I reset my password?"}]
#: The order of the path, as ../shared/DESIGN.md and the README draw it.
ORDER = ["record", "shape", "route", "modes", "cache", "dedup", "fallback", "budget", "lanes", "retry", "breaker",
         "limit", "upstream"]


def names(transport: GateTransport | AsyncGateTransport) -> list[str]:
    return [layer.name for layer in transport.layers]


def test_the_path_is_the_configs_steps_in_the_designs_order(tmp_path: Path) -> None:
    plain = fg.Gateway()
    assert names(plain.transport()) == ["record", "shape", "modes", "dedup", "fallback", "retry", "breaker",
                                        "limit", "upstream"]
    everything = fg.Gateway(
        presets={"short": {"max_output_tokens": 100}}, model_override="gpt-4.1-nano", cache={"enabled": True},
        budgets={"limits": [{"scope": "global", "dollars": 10.0}]}, lanes={"concurrency": 4})
    for transport in (everything.transport(), everything.async_transport()):
        assert names(transport) == ORDER
    assert names(fg.Gateway(breakers={"enabled": False}, dedup={"enabled": False},
                            server_context={"enabled": False}).transport()) == [
        "record", "modes", "fallback", "retry", "limit", "upstream"]
    for gate in (plain, everything):
        gate.close()


def test_the_sync_path_is_generated_from_the_async_one() -> None:
    done = subprocess.run([sys.executable, "scripts/unasync.py", "--check"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    source = (ROOT / "python/fleetgate/path/_async/breaker.py").read_text()
    generated = (ROOT / "python/fleetgate/path/_sync/breaker.py").read_text()
    assert "async def handle" in source and "await next(call)" in source
    assert "\n    def handle" in generated and "await" not in generated


def test_layers_talk_through_the_call_not_through_headers() -> None:
    # The layers mark the call; the record layer alone writes the marks as x-fleetgate-*
    # headers, and no layer reads one. (The answers fleetgate makes itself, a refusal, a
    # cache hit, a static answer, carry what they are from the start.)
    fleetgate_header = r"(\"x-fleetgate[^\"]*\"|[A-Z_]*HEADER)"
    writes = re.compile(rf"headers\[{fleetgate_header}\]\s*=|headers\.(setdefault|update)\(")
    reads = re.compile(rf"headers(\.get\(|\[){fleetgate_header}")
    for path in sorted((ROOT / "python/fleetgate/path/_async").glob("*.py")):
        text, where = path.read_text(), path.relative_to(ROOT)
        if path.name == "record.py":
            assert writes.search(text), "the record layer writes the marks"
            continue
        if path.name == "holders.py":  # not a layer: the requests outside the path, sent
            continue  # where the caller's x-fleetgate-model names, their answers naming where
        assert not writes.search(text), f"{where} writes an x-fleetgate header"
        assert not reads.search(text), f"{where} reads an x-fleetgate header"
    for reader in ("dedup.py", "router/__init__.py"):  # they ask the call how it was served
        assert "x-fleetgate-tier" not in (ROOT / "python/fleetgate" / reader).read_text()


@pytest.mark.parametrize("asyncio_client", [False, True], ids=["sync", "async"])
def test_a_call_refused_below_the_breaker_gives_its_probe_back(fake_openai: FakeOpenAI, asyncio_client: bool) -> None:
    # One probe per half-open round. A call the limiter can never admit (its cost is over
    # the bucket) holds that probe's permit when the limiter refuses it: the permit must go
    # back, or the breaker stays half-open with its probe held until probe_max_wait.
    gate = fg.Gateway(base_url=fake_openai.base_url,
                      breakers={"min_calls": 2, "window": 4, "open_seconds": 0.05, "jitter": 0.0,
                                "half_open_probes": 1, "probe_max_wait_seconds": 600.0},
                      models={MODEL: fg.QuotaLimits(requests_per_minute=6_000, tokens_per_minute=60_000)})
    breaker = gate.breaker_for("/chat/completions", MODEL)
    assert breaker is not None
    for _ in range(2):
        breaker.record(breaker.allow(), 500)
    assert breaker.state == "open"
    time.sleep(0.1)  # past the open period: the next call is the round's one probe

    async def both() -> tuple[Any, Any]:
        client = gate.async_openai(api_key="sk-fake", max_retries=0)
        with pytest.raises(fg.ConfigError) as refused:
            await client.chat.completions.create(model=MODEL, messages=MSG, max_tokens=50_000)
        return refused, await client.chat.completions.create(model=MODEL, messages=MSG, max_tokens=20)

    if asyncio_client:
        refused, answer = asyncio.run(both())
    else:
        client = gate.openai(api_key="sk-fake", max_retries=0)
        with pytest.raises(fg.ConfigError) as refused:
            client.chat.completions.create(model=MODEL, messages=MSG, max_tokens=50_000)
        answer = client.chat.completions.create(model=MODEL, messages=MSG, max_tokens=20)
    assert "can never be admitted" in str(refused.value)
    assert answer.choices[0].message.content, "the probe went to the next call"
    assert breaker.state == "closed"
    gate.close()


@pytest.mark.fake_openai(config=FakeConfig(faults=[Fault(kind="latency", latency=Latency(kind="fixed", ms=400))]))
def test_the_cache_and_deduplication_know_a_request_by_one_identity(fake_openai: FakeOpenAI) -> None:
    # Fields that do not change the answer (who asked, metadata) are left out of the one
    # identity: identical requests in flight together collapse, and a later one is a hit.
    gate = fg.Gateway(base_url=fake_openai.base_url, cache={"enabled": True})
    client = gate.async_openai(api_key="sk-fake", max_retries=0)

    async def ask(n: int) -> Any:
        return await client.chat.completions.with_raw_response.create(
            model=MODEL, messages=MSG, temperature=0, user=f"caller-{n}", metadata={"ticket": str(n)})

    async def together() -> list[Any]:
        return await asyncio.gather(*(ask(n) for n in range(3)))

    answers = asyncio.run(together())
    assert fake_openai.counters(MODEL).requests == 1
    assert sorted(a.headers["x-fleetgate-dedup"] for a in answers) == ["follower", "follower", "leader"]
    later = asyncio.run(ask(9))
    assert later.headers["x-fleetgate-cache"] == "hit" and fake_openai.counters(MODEL).requests == 1
    assert gate.stats["served_primary"] == 1 and gate.stats["served_cache"] == 1
    gate.close()


@pytest.mark.fake_openai(config=FakeConfig(faults=[Fault(kind="error", status=408, model=MODEL)]))
def test_breakers_and_modes_judge_upstream_health_alike(fake_openai: FakeOpenAI) -> None:
    # A 408 is a failure to the breakers' classify; the modes count by the same verdict.
    gate = fg.Gateway(base_url=fake_openai.base_url, breakers={"min_calls": 4, "window": 10, "open_seconds": 60.0},
                      modes={"auto": True, "window_seconds": 30.0, "min_requests": 4, "evaluate_every_seconds": 0.05,
                             "enter": {"reduced": ModeTrigger(error_rate=0.5)}})
    client = gate.openai(api_key="sk-fake", max_retries=0)
    for _ in range(4):
        with pytest.raises(openai.APIStatusError) as failed:
            client.chat.completions.create(model=MODEL, messages=MSG)
        assert failed.value.status_code == 408
    breaker = gate.breaker_for("/chat/completions", MODEL)
    assert breaker is not None and breaker.state == "open"
    until(lambda: gate.modes.current.mode == "reduced")
    assert fg.health(408) == fg.health(None) == fg.health(503) == "failure"
    assert fg.health(429, "rate_limit_exceeded") == "rate_limited" and fg.health(400) == "neutral"
    gate.close()


def drawn(text: str, after: str) -> list[str]:
    """The steps of the first path drawn (a code block of ``step  what it does`` lines)
    after `after` in `text`."""
    block = text[text.index(after):].split("```", 2)[1]
    return [line.split()[0] for line in block.splitlines() if re.match(r"^   ?[a-z]+ {2,}", line)
            or re.match(r"^[a-z]+ {2,}\S", line)]


@pytest.mark.parametrize("asyncio_client", [False, True], ids=["sync", "async"])
def test_an_answer_tells_where_its_time_went_and_what_it_counted(fake_openai: FakeOpenAI,
                                                                  asyncio_client: bool) -> None:
    from fleetgate.path.call import Spent

    gate = fg.Gateway(base_url=fake_openai.base_url, models={MODEL: fg.QuotaLimits(requests_per_minute=10_000)})
    if asyncio_client:
        async def one() -> Any:
            return await gate.async_openai(api_key="sk-test").chat.completions.with_raw_response.create(
                model=MODEL, messages=MSG, max_tokens=8)
        answer = asyncio.run(one())
    else:
        answer = gate.openai(api_key="sk-test").chat.completions.with_raw_response.create(
            model=MODEL, messages=MSG, max_tokens=8)
    spent = Spent.of(answer.http_response)
    assert isinstance(spent, Spent) and spent.sent == 1
    # What OpenAI counts against tokens per minute: the prompt's estimate plus max_tokens.
    assert spent.quota_tokens > 8
    assert set(spent.waited) == {"quota"}, "asked the limiter, and nothing else to wait for"
    assert spent.upstream > 0.0 and spent.seconds >= spent.upstream + spent.waited["quota"]


def test_an_answer_tells_how_long_it_waited_for_a_lane(fake_openai: FakeOpenAI) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from fleetgate.path.call import Spent

    gate = fg.Gateway(base_url=fake_openai.base_url, lanes={"concurrency": 1})
    client = gate.openai(api_key="sk-test")
    lanes = gate.lanes_for(MODEL)
    assert lanes is not None
    stream = client.chat.completions.create(model=MODEL, messages=MSG, max_tokens=8, stream=True)  # holds the slot
    with ThreadPoolExecutor(1) as pool:
        second = pool.submit(client.chat.completions.with_raw_response.create, model=MODEL, messages=MSG,
                             max_tokens=8)
        until(lambda: lanes.queued(int(fg.Priority.INTERACTIVE)) == 1)
        queued_by = time.perf_counter()
        time.sleep(0.2)  # the slot stays held at least this long, however slow the machine
        held_until = time.perf_counter()
        list(stream)  # read to its end: the slot is given back
        spent = Spent.of(second.result(timeout=60).http_response)
    assert spent.waited["lane"] >= held_until - queued_by
    assert spent.seconds >= spent.upstream + spent.waited["lane"] and spent.sent == 1


def test_the_readme_and_the_design_draw_the_path_in_the_codes_order() -> None:
    assert drawn((ROOT / "README.md").read_text(), "### The request path") == ORDER
    assert drawn((ROOT.parent / "shared" / "DESIGN.md").read_text(), "## The path of one request") == ORDER
