"""The exact answer cache through the gateway: repeats answered without an upstream call,
keys that change with the answer, namespaces that do not leak, TTL, the fleet's Redis,
streams replayed, and a spent budget served from the cache."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import openai
import pytest

import fleetgate as fg
from fleetgate.testing.fake_openai import FakeConfig, FakeOpenAI, Fault

MODEL = "gpt-4.1-mini"


def ask(text: str, **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": text}], "temperature": 0, **extra}


def cached(url: str | None, **cache: Any) -> dict[str, Any]:
    return {"base_url": url, "cache": {"enabled": True, **cache}}


@pytest.fixture(params=["memory", "redis"])
def store(request: pytest.FixtureRequest) -> str | None:
    return None if request.param == "memory" else request.getfixturevalue("redis_url")


@pytest.mark.fake_openai(config=FakeConfig())
def test_a_repeat_is_answered_from_the_cache(fake_openai: FakeOpenAI, store: str | None) -> None:
    gate = fg.Gateway(redis_url=store, **cached(fake_openai.base_url))
    client = gate.openai(api_key="sk-fake", max_retries=0)
    question = f"opening hours? {uuid.uuid4()}"
    first = client.chat.completions.with_raw_response.create(**ask(question))
    again = client.chat.completions.with_raw_response.create(**ask(question))
    assert fake_openai.counters(MODEL).requests == 1
    assert again.headers["x-fleetgate-cache"] == "hit" and "x-fleetgate-cache" not in first.headers
    assert again.parse().model_dump() == first.parse().model_dump()
    assert gate.stats["cache_hits"] == 1 and gate.stats["served_cache"] == 1


@pytest.mark.fake_openai(config=FakeConfig())
def test_the_key_holds_everything_that_changes_the_answer(fake_openai: FakeOpenAI) -> None:
    gate = fg.Gateway(**cached(fake_openai.base_url))
    client = gate.openai(api_key="sk-fake", max_retries=0)
    question = f"q {uuid.uuid4()}"
    for body in (ask(question), ask(question, max_tokens=5), ask(question, seed=1), ask(question + "?"),
                 {**ask(question), "model": "gpt-4.1-nano"}):
        client.chat.completions.create(**body)
    assert fake_openai.counters(MODEL).requests + fake_openai.counters("gpt-4.1-nano").requests == 5
    # Who asked and how it is delivered do not change the answer.
    client.chat.completions.create(**ask(question, user="someone", metadata={"a": "b"}, store=False))
    assert gate.stats["cache_hits"] == 1


@pytest.mark.fake_openai(config=FakeConfig())
def test_namespaces_keep_answers_apart(fake_openai: FakeOpenAI) -> None:
    gate = fg.Gateway(**cached(fake_openai.base_url, namespace="user"))
    question = f"my balance? {uuid.uuid4()}"
    for user in ("alice", "bob", "alice"):
        with gate.scope(user=user):
            gate.openai(api_key="sk-fake", max_retries=0).chat.completions.create(**ask(question))
    other_key = gate.openai(api_key="sk-other", max_retries=0)
    with gate.scope(user="alice"):
        other_key.chat.completions.create(**ask(question))
    assert fake_openai.counters(MODEL).requests == 3, "bob and another API key never see alice's answer"
    assert gate.stats["cache_hits"] == 1


@pytest.mark.fake_openai(config=FakeConfig())
def test_answers_expire_and_only_deterministic_requests_are_served(fake_openai: FakeOpenAI) -> None:
    gate = fg.Gateway(**cached(fake_openai.base_url, ttl_seconds=0.3))
    client = gate.openai(api_key="sk-fake", max_retries=0)
    question = f"q {uuid.uuid4()}"
    client.chat.completions.create(**ask(question))
    time.sleep(0.4)
    client.chat.completions.create(**ask(question))
    assert gate.stats["cache_hits"] == 0 and fake_openai.counters(MODEL).requests == 2
    warm = ask(question, temperature=0.7)
    client.chat.completions.create(**warm)
    client.chat.completions.create(**warm)
    assert gate.stats["cache_hits"] == 0, "temperature 0.7 asks for a fresh answer"


@pytest.mark.fake_openai(config=FakeConfig())
def test_another_pod_answers_from_the_fleets_cache(fake_openai: FakeOpenAI, store_url: str) -> None:
    pods = [fg.Gateway(redis_url=store_url, **cached(fake_openai.base_url)) for _ in range(2)]
    question = f"shared {uuid.uuid4()}"
    pods[0].openai(api_key="sk-fake", max_retries=0).chat.completions.create(**ask(question))
    answer = pods[1].openai(api_key="sk-fake", max_retries=0).chat.completions.with_raw_response.create(**ask(question))
    assert answer.headers["x-fleetgate-cache"] == "hit" and fake_openai.counters(MODEL).requests == 1


@pytest.mark.fake_openai(config=FakeConfig())
def test_a_stream_is_stored_when_it_ends_and_replayed_as_a_stream(fake_openai: FakeOpenAI, store: str | None) -> None:
    gate = fg.Gateway(redis_url=store, **cached(fake_openai.base_url))
    question = f"stream {uuid.uuid4()}"

    def text(chunks: Any) -> str:
        return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

    client = gate.openai(api_key="sk-fake", max_retries=0)
    first = text(client.chat.completions.create(**ask(question), stream=True))
    again = text(client.chat.completions.create(**ask(question), stream=True))
    assert first and again == first and fake_openai.counters(MODEL).requests == 1

    async def main() -> str:
        aclient = gate.async_openai(api_key="sk-fake", max_retries=0)
        return text([c async for c in await aclient.chat.completions.create(**ask(question), stream=True)])

    assert asyncio.run(main()) == first and fake_openai.counters(MODEL).requests == 1


@pytest.mark.fake_openai(config=FakeConfig())
def test_async_repeats_are_answered_from_the_cache(fake_openai: FakeOpenAI, store: str | None) -> None:
    gate = fg.Gateway(redis_url=store, **cached(fake_openai.base_url))
    question = f"async {uuid.uuid4()}"

    async def main() -> None:
        client = gate.async_openai(api_key="sk-fake", max_retries=0)
        await client.chat.completions.create(**ask(question))
        await client.chat.completions.create(**ask(question))

    asyncio.run(main())
    assert fake_openai.counters(MODEL).requests == 1 and gate.stats["cache_hits"] == 1


@pytest.mark.fake_openai(config=FakeConfig(faults=[Fault(kind="error", status=503, end=1_000)]))
def test_failures_from_upstream_are_not_stored(fake_openai: FakeOpenAI) -> None:
    gate = fg.Gateway(**cached(fake_openai.base_url), breakers={"enabled": False})
    client = gate.openai(api_key="sk-fake", max_retries=0)
    question = f"failing {uuid.uuid4()}"
    for _ in range(2):
        with pytest.raises(openai.InternalServerError):
            client.chat.completions.create(**ask(question))
    assert gate.stats["cache_stored"] == 0 and gate.stats["cache_hits"] == 0
    assert fake_openai.counters(MODEL).requests == 2, "the second call went upstream again"


@pytest.mark.fake_openai(config=FakeConfig(answer_words=400))
def test_a_spent_budget_serves_from_the_cache_only(fake_openai: FakeOpenAI) -> None:
    gate = fg.Gateway(base_url=fake_openai.base_url, cache={"enabled": True},
                      budgets={"limits": [{"dollars": 0.0012, "on_exhausted": "cache_only"}]})
    client = gate.openai(api_key="sk-fake", max_retries=0)
    warm = ask("a poem", temperature=0.9, max_tokens=600)  # not served from the cache while money lasts
    first = client.chat.completions.create(**warm)
    later = client.chat.completions.with_raw_response.create(**warm)
    assert later.headers["x-fleetgate-cache"] == "hit" and later.parse().id == first.id
    with pytest.raises(fg.BudgetExceeded):
        client.chat.completions.create(**ask("something never asked", max_tokens=600))
    assert fake_openai.counters(MODEL).requests == 1


def test_cache_only_needs_the_cache() -> None:
    with pytest.raises(fg.ConfigError, match=r"\[cache\] enabled = true"):
        fg.Gateway(budgets={"limits": [{"dollars": 1.0, "on_exhausted": "cache_only"}]})


def test_with_redis_down_calls_are_answered_without_the_cache_and_the_outage_is_said_once(
        fake_openai: FakeOpenAI, caplog: pytest.LogCaptureFixture) -> None:
    gate = fg.Gateway(base_url=fake_openai.base_url, redis_url="redis://:secret@127.0.0.1:1/0",
                      cache={"enabled": True})
    client = gate.openai(api_key="sk-fake", max_retries=0)
    for n in range(3):
        answer = client.chat.completions.with_raw_response.create(**ask("where is my parcel"))
        assert answer.status_code == 200 and "x-fleetgate-cache" not in answer.headers
        assert fake_openai.counters(MODEL).requests == n + 1
    said = [r for r in caplog.records if "answer cache's Redis" in r.getMessage()]
    assert len(said) == 1 and said[0].levelname == "WARNING", "the outage is said once, not per call"
    assert "secret" not in caplog.text and gate.stats["cache_errors"] >= 3
    gate.close()
