"""Service tiers end to end, through the real SDK against FakeOpenAI: budgets reserved at
the tier asked and settled at the tier that served (what the fake billed), Priority
downgrades, Flex's capacity refusals retried on the standard tier (or handed back, said
plainly), and the served tier in log records, spans and metrics."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import fleetgate as fg
from fleetgate.estimate import estimate_request
from fleetgate.path.call import Spent
from fleetgate.path.wire import UsageScanner, served_tier
from fleetgate.prices import PriceTable, price_tier
from fleetgate.testing.fake_openai import FakeConfig, FakeOpenAI, Fault, Latency, TierBehaviour
from fleetgate.tiers import FLEX_FALLBACK_HEADER
from tests.polling import until
from tests.scrape import by_label, scrape_wsgi

MODEL = "gpt-4.1"
MAX_OUTPUT = 1_000
ASK = [{"role": "user", "content": "Summarise the service tiers in one line."}]
#: gpt-4.1's standard rates, and Priority's (a premium); Flex is not listed: the Batch price.
PRICES = f"""
[models."{MODEL}"]
input = 2.00
cached_input = 0.50
output = 8.00
priority = {{ input = 3.50, cached_input = 0.875, output = 14.00 }}
"""


@pytest.fixture(scope="module")
def price_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("prices") / "prices.toml"
    path.write_text(PRICES)
    return path


@pytest.fixture(scope="module")
def prices(price_file: Path) -> PriceTable:
    return PriceTable.load(price_file)


def fake_with(price_file: Path, **behaviour: float) -> FakeOpenAI:
    """A fake that bills at `price_file`'s prices, its tiers behaving as `behaviour` says."""
    return FakeOpenAI(FakeConfig(tiers=TierBehaviour(**behaviour), prices_file=price_file))


@pytest.fixture
def fake(price_file: Path) -> Iterator[FakeOpenAI]:
    with fake_with(price_file) as running:
        yield running


def gateway(fake: FakeOpenAI, price_file: Path, feature: str, dollars: float = 100.0,
            redis_url: str | None = None, **settings: Any) -> fg.Gateway:
    """A gateway with one budget of `dollars` a day on `feature`, priced as the fake bills."""
    return fg.Gateway(base_url=fake.base_url, redis_url=redis_url, prices={"file": str(price_file)},
                      budgets={"limits": [{"scope": "feature", "name": feature, "dollars": dollars}]}, **settings)


def worst(prices: PriceTable, tier: str | None) -> float:
    """The most one ``ASK`` call can cost when it asks for `tier`."""
    body = {"model": MODEL, "messages": ASK, "max_tokens": MAX_OUTPUT}
    estimate = estimate_request("/chat/completions", body, MAX_OUTPUT)
    price = prices.price(MODEL)
    assert price is not None
    return price.worst(estimate.prompt_tokens, estimate.max_output_tokens, tier=price_tier(tier))


def spent(gate: fg.Gateway) -> tuple[float, float]:
    """The (spent, reserved) dollars of the gateway's one budget."""
    ((_, status),) = gate.budgets.statuses()
    return status.spent, status.reserved


def billed(fake: FakeOpenAI) -> float:
    return sum(c.dollars or 0.0 for c in fake.bill())


def feature() -> str:
    return f"tiers-{uuid.uuid4().hex[:8]}"


# -- the fake answers and bills the tier that served -------------------------------------------

def test_the_fake_answers_the_tier_that_served_and_bills_it(prices: PriceTable, price_file: Path) -> None:
    with fake_with(price_file) as fake:
        client = openai.OpenAI(base_url=fake.base_url, api_key="sk-fake", max_retries=0)
        asked = [None, "auto", "default", "flex", "priority", "fast"]
        served = [client.chat.completions.create(model=MODEL, messages=ASK, **({"service_tier": t} if t else {}))
                  .service_tier for t in asked]
        assert served == ["default", "default", "default", "flex", "priority", "priority"]
        answer = client.responses.create(model=MODEL, input="one line", service_tier="flex")
        assert answer.service_tier == "flex"
        assert [c.tier for c in fake.bill()] == served + ["flex"]
        for charge in fake.bill():
            assert charge.dollars == pytest.approx(prices.cost(MODEL, charge.usage, tier=charge.tier))
        flex, priority = fake.bill()[3], fake.bill()[4]
        assert flex.dollars == pytest.approx(prices.cost(MODEL, flex.usage) / 2), "Flex at the Batch price"
        assert priority.dollars > prices.cost(MODEL, priority.usage), "Priority at a premium"  # type: ignore[operator]
        with pytest.raises(openai.BadRequestError, match="service_tier"):
            client.chat.completions.create(model=MODEL, messages=ASK, service_tier="turbo")  # type: ignore[arg-type]


def test_the_fake_downgrades_priority_and_refuses_flex_as_openai_does(prices: PriceTable, price_file: Path) -> None:
    with fake_with(price_file, priority_downgrade=1.0, flex_unavailable=1.0) as fake:
        client = openai.OpenAI(base_url=fake.base_url, api_key="sk-fake", max_retries=0)
        downgraded = client.chat.completions.create(model=MODEL, messages=ASK, service_tier="priority")
        assert downgraded.service_tier == "default"
        with pytest.raises(openai.RateLimitError) as refused:
            client.chat.completions.create(model=MODEL, messages=ASK, service_tier="flex")
        assert refused.value.status_code == 429 and refused.value.code == "resource_unavailable"
        assert "Resource Unavailable" in str(refused.value)
        assert [c.tier for c in fake.bill()] == ["default"], "the downgrade billed at default, the refusal not at all"


# -- budgets: reserved at the tier asked, settled at the tier that served ------------------------

def test_a_budget_reserves_at_the_tier_asked(fake: FakeOpenAI, price_file: Path, prices: PriceTable) -> None:
    assert worst(prices, "flex") < worst(prices, None) < worst(prices, "priority")
    between = (worst(prices, None) + worst(prices, "priority")) / 2
    name = feature()
    gate = gateway(fake, price_file, name, dollars=between)
    client = gate.openai(api_key="sk-fake", max_retries=0)
    with gate.scope(feature=name):
        with pytest.raises(fg.BudgetExceeded):
            client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=MAX_OUTPUT, service_tier="fast")
        with pytest.raises(fg.BudgetExceeded):
            client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=MAX_OUTPUT, service_tier="priority")
        for tier in ("auto", "default", None):  # "auto" is reserved at the standard price
            extra = {"service_tier": tier} if tier else {}
            client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=MAX_OUTPUT, **extra)
    assert len(fake.bill()) == 3, "the Priority calls were never sent"


def test_a_flex_call_fits_where_a_standard_one_does_not_async(fake: FakeOpenAI, price_file: Path,
                                                              prices: PriceTable) -> None:
    name = feature()
    gate = gateway(fake, price_file, name, dollars=(worst(prices, "flex") + worst(prices, None)) / 2)
    client = gate.async_openai(api_key="sk-fake", max_retries=0)

    async def main() -> str | None:
        with gate.scope(feature=name):
            with pytest.raises(fg.BudgetExceeded):
                await client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=MAX_OUTPUT)
            answer = await client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=MAX_OUTPUT,
                                                          service_tier="flex")
            return answer.service_tier

    assert asyncio.run(main()) == "flex"
    until(lambda: spent(gate)[1] == 0)
    assert spent(gate)[0] == pytest.approx(billed(fake)), "settled at the Flex price the fake billed"


def test_spend_settles_at_the_tier_that_served_sync(prices: PriceTable, price_file: Path, redis_url: str) -> None:
    with fake_with(price_file, priority_downgrade=1.0) as fake:
        name = feature()
        gate = gateway(fake, price_file, name, redis_url=redis_url)
        client = gate.openai(api_key="sk-fake", max_retries=0)
        with gate.scope(feature=name):
            served = [client.chat.completions.create(model=MODEL, messages=ASK, service_tier=t).service_tier
                      for t in ("priority", "flex", "auto")]
            stream = client.chat.completions.create(model=MODEL, messages=ASK, service_tier="flex", stream=True,
                                                    stream_options={"include_usage": True})
            served.append([chunk.service_tier for chunk in stream][-1])
            with client.responses.stream(model=MODEL, input="one line", service_tier="priority") as events:
                served.append(events.get_final_response().service_tier)
        assert served == ["default", "flex", "default", "flex", "default"], "Priority was downgraded"
        assert [c.tier for c in fake.bill()] == served
        until(lambda: spent(gate)[1] == 0)
        assert spent(gate)[0] == pytest.approx(billed(fake)), "the budget spent what the fake billed"
        priced_as_asked = sum(prices.cost(MODEL, c.usage, tier="priority") or 0.0 for c in fake.bill())
        assert spent(gate)[0] < priced_as_asked


def test_spend_settles_at_the_tier_that_served_async(prices: PriceTable, price_file: Path, redis_url: str) -> None:
    with fake_with(price_file) as fake:
        name = feature()
        gate = gateway(fake, price_file, name, redis_url=redis_url)
        client = gate.async_openai(api_key="sk-fake", max_retries=0)

        async def main() -> list[str | None]:
            with gate.scope(feature=name):
                answers = await asyncio.gather(*(client.chat.completions.create(
                    model=MODEL, messages=ASK, service_tier=t) for t in ("priority", "flex", "default", "fast")))
                stream = await client.chat.completions.create(model=MODEL, messages=ASK, service_tier="priority",
                                                              stream=True, stream_options={"include_usage": True})
                tiers = [chunk.service_tier async for chunk in stream]
                return [a.service_tier for a in answers] + tiers[-1:]

        served = asyncio.run(main())
        assert served == ["priority", "flex", "default", "priority", "priority"]
        assert sorted(c.tier for c in fake.bill()) == sorted(t for t in served if t)
        until(lambda: spent(gate)[1] == 0)
        assert spent(gate)[0] == pytest.approx(billed(fake))


# -- Flex without capacity ---------------------------------------------------------------------

def test_flex_without_capacity_is_served_on_the_standard_tier_and_opens_no_breaker(prices: PriceTable,
                                                                                    price_file: Path) -> None:
    with fake_with(price_file, flex_unavailable=1.0) as fake:
        name = feature()
        gate = gateway(fake, price_file, name, breakers={"min_calls": 2, "window": 4, "jitter": 0.0},
                       modes={"auto": True})
        client = gate.openai(api_key="sk-fake", max_retries=0)
        with gate.scope(feature=name):
            for _ in range(6):
                raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=ASK, service_tier="flex")
                assert raw.headers[FLEX_FALLBACK_HEADER] == "default"
                assert raw.parse().service_tier == "default"
                spent_on = Spent.of(raw.http_response)
                assert spent_on is not None and spent_on.sent == 2, "the flex attempt, then the standard one"
                assert "paused" not in spent_on.waited and "retry" not in spent_on.waited
            stream = client.chat.completions.with_raw_response.create(
                model=MODEL, messages=ASK, service_tier="flex", stream=True, stream_options={"include_usage": True})
            assert stream.headers[FLEX_FALLBACK_HEADER] == "default"
            assert [chunk.service_tier for chunk in stream.parse()][-1] == "default"
            answer = client.responses.with_raw_response.create(model=MODEL, input="one line", service_tier="flex")
            assert answer.headers[FLEX_FALLBACK_HEADER] == "default" and answer.parse().service_tier == "default"
        breaker = gate.breaker_for("/chat/completions", MODEL)
        assert breaker is not None and breaker.state == "closed", "refusals of every flex attempt: no trip"
        health = gate.modes._window  # what the degradation modes judge this pod's upstream on
        assert health is not None and len(health.calls) == 8, "the standard attempts only, not Flex's refusals"
        assert fake.counters(MODEL).requests == 16
        assert [c.tier for c in fake.bill()] == ["default"] * 8, "the refusals were not billed"
        until(lambda: spent(gate)[1] == 0)
        assert spent(gate)[0] == pytest.approx(billed(fake)), "settled at the standard price"
        assert gate.stats["flex_unavailable"] == 8 and gate.stats["flex_fallback"] == 8
        assert gate.stats["upstream_rate_limited"] == 0


def test_the_standard_retry_of_a_flex_call_is_reserved_at_the_standard_price(prices: PriceTable,
                                                                             price_file: Path) -> None:
    with fake_with(price_file, flex_unavailable=1.0) as fake:
        name = feature()
        gate = gateway(fake, price_file, name, dollars=(worst(prices, "flex") + worst(prices, None)) / 2)
        client = gate.openai(api_key="sk-fake", max_retries=0)
        with gate.scope(feature=name), pytest.raises(fg.BudgetExceeded):
            client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=MAX_OUTPUT, service_tier="flex")
        assert fake.counters(MODEL).requests == 1, "the Flex attempt went; the standard one did not fit the budget"
        until(lambda: spent(gate) == (0.0, 0.0))


def test_with_the_fallback_off_flex_without_capacity_is_refused_plainly_async(prices: PriceTable,
                                                                              price_file: Path) -> None:
    with fake_with(price_file, flex_unavailable=1.0) as fake:
        name = feature()
        gate = gateway(fake, price_file, name, fallback={"flex_fallback": "none"},
                       breakers={"min_calls": 2, "window": 4, "jitter": 0.0})
        client = gate.async_openai(api_key="sk-fake")  # the SDK's own retries stay on: told not to retry

        async def main() -> list[openai.RateLimitError]:
            errors = []
            with gate.scope(feature=name):
                for _ in range(4):
                    with pytest.raises(openai.RateLimitError) as refused:
                        await client.chat.completions.create(model=MODEL, messages=ASK, service_tier="flex")
                    errors.append(refused.value)
                answer = await client.chat.completions.with_raw_response.create(model=MODEL, messages=ASK)
                spent_on = Spent.of(answer.http_response)
                assert spent_on is not None and "paused" not in spent_on.waited, "the model was not paused"
            return errors

        errors = asyncio.run(main())
        for error in errors:
            assert error.code == "resource_unavailable"
            assert error.response.headers[FLEX_FALLBACK_HEADER] == "none"
            assert 'flex_fallback = "default"' in str(error) and "not billed" in str(error)
        assert fake.counters(MODEL).requests == 5, "each refusal sent once: neither the gateway nor the SDK retried"
        assert gate.breaker_for("/chat/completions", MODEL).state == "closed"  # type: ignore[union-attr]
        assert [c.tier for c in fake.bill()] == ["default"]
        until(lambda: spent(gate)[1] == 0)
        assert spent(gate)[0] == pytest.approx(billed(fake)), "the refusals' holds were given back"


def test_a_flex_refusal_after_the_deadline_is_handed_back_not_retried(prices: PriceTable, price_file: Path) -> None:
    # Flex answers its refusal only after the call's deadline has passed: no time is left to
    # serve it on the standard tier.
    slow = FakeConfig(tiers=TierBehaviour(flex_unavailable=1.0), prices_file=price_file,
                      faults=[Fault(kind="latency", latency=Latency(ms=3000))])
    with FakeOpenAI(slow) as fake:
        gate = fg.Gateway(base_url=fake.base_url, prices={"file": str(price_file)})
        client = gate.openai(api_key="sk-fake")
        with gate.scope(deadline=1.5), pytest.raises(openai.RateLimitError) as refused:
            client.chat.completions.create(model=MODEL, messages=ASK, service_tier="flex")
        assert refused.value.code == "resource_unavailable"
        assert refused.value.response.headers[FLEX_FALLBACK_HEADER] == "none"
        assert "deadline left no time" in str(refused.value)
        assert fake.counters(MODEL).requests == 1 and fake.bill() == []


# -- records, spans, metrics -------------------------------------------------------------------

def test_the_served_tier_is_in_the_log_record_and_the_metrics(prices: PriceTable, price_file: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    with fake_with(price_file, priority_downgrade=1.0) as fake:
        gate = fg.Gateway(base_url=fake.base_url, prices={"file": str(price_file)})
        app = gate.metrics_app()

        def cost_by_tier() -> dict[str, float]:
            return by_label(scrape_wsgi(app), "fleetgate_cost_dollars_total", "service_tier", model=MODEL)

        before = cost_by_tier()
        client = gate.openai(api_key="sk-fake", max_retries=0)
        with caplog.at_level(logging.INFO, logger="fleetgate.requests"):
            for tier in ("flex", "priority"):
                client.chat.completions.create(model=MODEL, messages=ASK, service_tier=tier)
        records = [json.loads(r.getMessage()) for r in caplog.records if r.name == "fleetgate.requests"]
        assert [r["service_tier"] for r in records] == ["flex", "default"]
        after = cost_by_tier()
        flex, downgraded = fake.bill()
        assert after.get("flex", 0.0) - before.get("flex", 0.0) == pytest.approx(flex.dollars)
        assert after.get("default", 0.0) - before.get("default", 0.0) == pytest.approx(downgraded.dollars)
        assert set(after) <= {"default", "batch", "flex", "priority"}, "the label's values stay few"


def test_the_tiers_are_on_the_span(fake: FakeOpenAI) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    gate = fg.Gateway(base_url=fake.base_url, tracer_provider=provider)
    gate.openai(api_key="sk-fake", max_retries=0).chat.completions.create(model=MODEL, messages=ASK,
                                                                           service_tier="fast")
    (span,) = exporter.get_finished_spans()
    assert span.attributes is not None
    assert span.attributes["openai.request.service_tier"] == "fast"
    assert span.attributes["openai.response.service_tier"] == "priority"


# -- reading the served tier off the wire ------------------------------------------------------

def test_the_served_tier_is_read_off_the_wire_not_from_the_answer_text() -> None:
    answer = {"id": "chatcmpl-1", "choices": [{"message": {"content": '{"service_tier": "priority"}'}}],
              "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}, "service_tier": "flex"}
    assert served_tier(json.dumps(answer).encode()) == "flex"
    assert served_tier(json.dumps({**answer, "service_tier": None}).encode()) is None
    assert served_tier(b'{"usage": {}}') is None
    scanner = UsageScanner()
    scanner.feed(b'data: {"choices": [{"delta": {"content": "hi"}}], "service_tier": "default"}\n\n')
    assert scanner.tier == "default" and scanner.deltas == 1
    scanner.feed(b'data: {"type": "response.completed", "response": {"service_tier": "flex", '
                 b'"usage": {"input_tokens": 3, "output_tokens": 2, "total_tokens": 5}}}\n\n')
    assert scanner.tier == "flex" and scanner.usage == 5
