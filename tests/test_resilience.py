"""Circuit breakers and the fallback ladder, through the real SDK against FakeOpenAI
with injected faults."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import openai
import pytest

import fleetgate as fg
from fleetgate.testing.fake_openai import FakeConfig, FakeOpenAI, Fault, Latency

MSG = [{"role": "user", "content": "How do I reset my password?"}]
PRIMARY, CHEAP = "gpt-4.1", "gpt-4.1-mini"
BREAKER = {"min_calls": 4, "window": 10, "open_seconds": 30.0, "jitter": 0.0, "half_open_probes": 3}


def gateway(fake: FakeOpenAI, breakers: dict[str, Any] = BREAKER, **fallback: Any) -> fg.Gateway:
    return fg.Gateway(base_url=fake.base_url, breakers=breakers, fallback=fallback)


def tier(raw: Any) -> str:
    return str(raw.headers.get("x-fleetgate-tier"))


@pytest.mark.fake_openai(config=FakeConfig(faults=[Fault(kind="error", status=500, model=PRIMARY)]))
def test_a_5xx_burst_opens_the_breaker_and_the_cheaper_model_serves(fake_openai: FakeOpenAI) -> None:
    gate = gateway(fake_openai, models={PRIMARY: CHEAP})
    client = gate.openai(api_key="sk-fake", max_retries=0)
    for _ in range(4):
        with pytest.raises(openai.InternalServerError):
            client.chat.completions.create(model=PRIMARY, messages=MSG)
    served = []
    for _ in range(6):
        raw = client.chat.completions.with_raw_response.create(model=PRIMARY, messages=MSG)
        served.append(tier(raw))
        assert raw.parse().model == CHEAP
    assert fake_openai.counters(PRIMARY).requests == 4, "the breaker opened at min_calls failures"
    assert served == ["fallback_model"] * 6
    assert gate.breaker_for("/chat/completions", PRIMARY).state == "open"  # type: ignore[union-attr]
    assert gate.stats["served_fallback_model"] == 6 and gate.stats["breaker_open"] == 1


@pytest.mark.fake_openai(config=FakeConfig(faults=[Fault(kind="error", status=503)]))
def test_when_every_model_fails_the_static_answer_serves_streams_too(fake_openai: FakeOpenAI) -> None:
    gate = gateway(fake_openai, models={PRIMARY: CHEAP}, static_answer="We are busy; please try again.")
    client = gate.openai(api_key="sk-fake", max_retries=0)
    for model in (PRIMARY, CHEAP):
        for _ in range(4):
            with pytest.raises(openai.InternalServerError):
                client.chat.completions.create(model=model, messages=MSG)
    raw = client.chat.completions.with_raw_response.create(model=PRIMARY, messages=MSG)
    assert tier(raw) == "static" and raw.parse().choices[0].message.content == "We are busy; please try again."
    stream = client.chat.completions.create(model=PRIMARY, messages=MSG, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "We are busy; please try again."
    # Breakers are per endpoint and model: /responses is still closed until isolated.
    for model in (PRIMARY, CHEAP):
        gate.breaker_for("/responses", model).isolate()  # type: ignore[union-attr]
    reply = client.responses.create(model=PRIMARY, input="hi")
    assert reply.output_text == "We are busy; please try again."
    assert fake_openai.counters(PRIMARY).requests == 4 and fake_openai.counters(CHEAP).requests == 4


@pytest.mark.fake_openai(config=FakeConfig(faults=[Fault(kind="error", status=500)]))
def test_deferred_requests_are_on_disk_in_batch_format(fake_openai: FakeOpenAI, tmp_path: Path) -> None:
    queue = tmp_path / "later.jsonl"
    gate = gateway(fake_openai, defer_to=queue)
    client = gate.openai(api_key="sk-fake", max_retries=0)
    for _ in range(4):
        with pytest.raises(openai.InternalServerError):
            client.chat.completions.create(model=PRIMARY, messages=MSG, max_tokens=20)
    with pytest.raises(openai.InternalServerError) as deferred:
        client.chat.completions.create(model=PRIMARY, messages=MSG, max_tokens=20)
    assert deferred.value.code == "fleetgate_deferred"
    custom_id = deferred.value.response.headers["x-fleetgate-deferred-id"]
    [line] = [json.loads(x) for x in queue.read_text().splitlines()]
    assert line == {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
                    "body": {"messages": MSG, "model": PRIMARY, "max_tokens": 20}}
    assert gate.stats["served_deferred"] == 1


@pytest.mark.fake_openai(config=FakeConfig(faults=[Fault(kind="insufficient_quota", model=PRIMARY)]))
def test_insufficient_quota_isolates_until_reset(fake_openai: FakeOpenAI) -> None:
    gate = gateway(fake_openai, {**BREAKER, "open_seconds": 0.5})
    client = gate.openai(api_key="sk-fake", max_retries=0)
    with pytest.raises(openai.RateLimitError) as first:
        client.chat.completions.create(model=PRIMARY, messages=MSG)
    assert first.value.code == "insufficient_quota"
    breaker = gate.breaker_for("/chat/completions", PRIMARY)
    assert breaker is not None and breaker.state == "isolated"
    time.sleep(0.6)  # longer than an open period: isolation does not end by itself
    with pytest.raises(openai.InternalServerError) as refused:
        client.chat.completions.create(model=PRIMARY, messages=MSG)
    assert refused.value.code == "fleetgate_circuit_open" and "reset" in refused.value.message
    assert fake_openai.counters(PRIMARY).requests == 1
    breaker.reset()
    assert breaker.state == "closed"


@pytest.mark.fake_openai(config=FakeConfig(faults=[Fault(kind="error", status=400, model=PRIMARY)]))
def test_client_errors_and_cancellations_never_open_the_circuit(fake_openai: FakeOpenAI) -> None:
    gate = gateway(fake_openai)
    client = gate.openai(api_key="sk-fake", max_retries=0)
    for _ in range(12):
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(model=PRIMARY, messages=MSG)
    assert gate.breaker_for("/chat/completions", PRIMARY).state == "closed"  # type: ignore[union-attr]


@pytest.mark.fake_openai(config=FakeConfig(faults=[
    Fault(kind="error", status=500, model=PRIMARY, end=1.0),
    Fault(kind="latency", model=PRIMARY, start=1.0, latency=Latency(ms=300)),
]))
def test_half_open_lets_exactly_the_probes_through_under_1000_callers(fake_openai: FakeOpenAI) -> None:
    gate = gateway(fake_openai, {**BREAKER, "open_seconds": 0.5}, static_answer="busy")
    client = gate.async_openai(api_key="sk-fake", max_retries=0)

    async def main() -> list[str]:
        for _ in range(4):
            with pytest.raises(openai.InternalServerError):
                await client.chat.completions.create(model=PRIMARY, messages=MSG)
        assert fake_openai.uptime() < 1.0, "the failures must land inside the fault window"
        await asyncio.sleep(max(0.0, 1.05 - fake_openai.uptime()))  # past the faults and the open period
        calls = [client.chat.completions.with_raw_response.create(model=PRIMARY, messages=MSG) for _ in range(1_000)]
        return [tier(raw) for raw in await asyncio.gather(*calls)]

    tiers = asyncio.run(main())
    assert tiers.count("primary") == 3 and tiers.count("static") == 997
    assert fake_openai.counters(PRIMARY).requests == 4 + 3
    assert gate.breaker_for("/chat/completions", PRIMARY).state == "closed"  # type: ignore[union-attr]


def test_breakers_are_shared_through_redis(redis_url: str) -> None:
    """Two pods (two limiters on one Redis): an open breaker in one is honoured by the other,
    and only one pod probes a half-open round."""
    options: dict[str, Any] = {"min_calls": 2, "window": 4, "open_base": 0.3, "jitter": 0.0, "half_open_probes": 1}
    name = f"/chat/completions:shared-{time.monotonic_ns()}"
    a = fg.Breakers(fg.Limiter(redis_url), **options).get(name)
    pod_b = fg.Breakers(fg.Limiter(redis_url), **options)
    b = pod_b.get(name)
    assert pod_b.shared
    for _ in range(2):
        a.record(a.allow(), 503)
    assert a.state == "open"
    deadline = time.monotonic() + 5
    while b.state != "open" and time.monotonic() < deadline:
        time.sleep(0.01)  # the publication is written in the background
        pod_b.sync_now()
    assert b.state == "open"
    with pytest.raises(fg.CircuitOpen) as refused:
        b.allow()
    assert refused.value.reason == "open" and refused.value.breaker == name
    time.sleep(0.35)
    probe = a.allow()  # pod A holds the half-open round
    with pytest.raises(fg.CircuitOpen) as herd:
        b.allow()
    assert herd.value.reason == "probes_out"
    a.record(probe, 200)
    assert a.state == "closed"


def test_a_second_process_sees_the_open_state_within_a_second(redis_url: str, tmp_path: Path) -> None:
    name = f"/chat/completions:process-{time.monotonic_ns()}"
    script = tmp_path / "watch.py"
    script.write_text(
        "import sys, time, fleetgate as fg\n"
        f"b = fg.Breakers(fg.Limiter({redis_url!r})).get({name!r})\n"
        "print('ready', flush=True)\n"
        "sys.stdin.readline()\n"           # the other process has tripped the breaker
        "time.sleep(1.0)\n"                # honoured within one second, by its own polling
        "print(b.state, flush=True)\n"
    )
    watcher = subprocess.Popen([sys.executable, str(script)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert watcher.stdout is not None and watcher.stdin is not None
        assert watcher.stdout.readline().strip() == "ready"
        breaker = fg.Breakers(fg.Limiter(redis_url), min_calls=2, window=4, open_base=30.0).get(name)
        for _ in range(2):
            breaker.record(breaker.allow(), None)  # connection errors
        assert breaker.state == "open"
        watcher.stdin.write("go\n")
        watcher.stdin.flush()
        assert watcher.stdout.readline().strip() == "open"
    finally:
        watcher.kill()
        watcher.wait()


def test_breaker_options_are_validated() -> None:
    with pytest.raises(fg.ConfigError, match="half_open_probes"):
        fg.Breakers(half_open_probes=0)
    with pytest.raises(fg.ConfigError, match="failure_rate"):
        fg.Breakers(failure_rate=1.5)
    with pytest.raises(fg.ConfigError, match="open_base"):
        fg.Breakers(open_base=0)


def test_transitions_reach_the_callback() -> None:
    seen: list[tuple[Any, ...]] = []
    breaker = fg.Breakers(min_calls=2, window=2, on_transition=lambda *event: seen.append(event)).get("b")
    breaker.record(breaker.allow(), 500)
    breaker.record(breaker.allow(), 500)
    breaker.isolate()
    breaker.reset()
    assert [(e[1], e[2], e[3]) for e in seen] == [
        ("closed", "open", "failure rate"), ("open", "isolated", "isolated by hand"), ("isolated", "closed", "reset by hand")]
