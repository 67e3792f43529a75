"""Dollar budgets through the gateway, against FakeOpenAI and real Redis: never over across
processes, each action when a budget is spent, alerts once per fleet, prices as data."""

from __future__ import annotations

import asyncio
import datetime as dt
import multiprocessing
import threading
import time
import uuid
from typing import Any

import openai
import pytest
from click.testing import CliRunner

import fleetgate as fg
from fleetgate.cli import main as cli
from fleetgate.prices import PriceTable
from fleetgate.testing.fake_openai import FakeConfig, FakeOpenAI, ModelLimits

MODEL, CHEAP = "gpt-4.1", "gpt-4.1-mini"
#: Long answers, so a call costs close to its worst case ($0.0048 at most here).
LONG = FakeConfig(answer_words=400, default_limits=ModelLimits(requests_per_minute=1_000_000,
                                                               tokens_per_minute=100_000_000))
MAX_OUTPUT = 600
ASK = [{"role": "user", "content": "Write a long story about budgets."}]


def worst_case() -> float:
    price = PriceTable.load(fg.__path__[0] + "/prices.toml").price(MODEL)
    assert price is not None
    return price.dollars(50, MAX_OUTPUT)


def budget(dollars: float, **rule: Any) -> dict[str, Any]:
    return {"limits": [{"dollars": dollars, **rule}]}


def spend_async(base_url: str, redis_url: str | None, calls: int, concurrency: int, budgets: dict[str, Any]) -> float:
    """Send `calls` requests, `concurrency` at a time; the dollars upstream's usage says were spent."""
    gate = fg.Gateway(base_url=base_url, redis_url=redis_url, budgets=budgets)
    client = gate.async_openai(api_key="sk-fake", max_retries=0)
    prices = gate.prices

    async def one(gap: asyncio.Semaphore) -> float:
        async with gap:
            try:
                r = await client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=MAX_OUTPUT)
            except fg.BudgetExceeded:
                return 0.0
            return prices.cost(MODEL, r.usage.model_dump()) or 0.0

    async def main() -> float:
        gap = asyncio.Semaphore(concurrency)
        return sum(await asyncio.gather(*(one(gap) for _ in range(calls))))

    return asyncio.run(main())


def wait_for(condition: Any, seconds: float = 10.0) -> None:
    """Until `condition()` holds (background settlement), failing after `seconds`."""
    end = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > end:
            pytest.fail("the background settlement never happened")
        time.sleep(0.01)


@pytest.mark.fake_openai(config=LONG)
def test_eight_processes_never_overspend_a_fleet_budget_on_the_cluster(fake_openai: FakeOpenAI,
                                                                         cluster_url: str) -> None:
    """8 pods × 32 calls in flight, $1.00 a day for their team, on the Redis Cluster."""
    team = f"fleet-{uuid.uuid4().hex[:8]}"
    budgets = {"limits": [{"scope": "team", "name": team, "dollars": 1.00}]}
    ctx = multiprocessing.get_context("spawn")
    out: multiprocessing.Queue = ctx.Queue()
    procs = [ctx.Process(target=_pod_in_team, args=(fake_openai.base_url, cluster_url, budgets, team, out))
             for _ in range(8)]
    for p in procs:
        p.start()
    spent = sum(out.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=30)
    assert spent <= 1.00 + worst_case(), f"spent ${spent:.4f} of a $1.00 budget"
    assert spent > 0.5, "the pods spent the budget (512 calls could cost $2.40)"


def _pod_in_team(base_url: str, redis_url: str, budgets: dict[str, Any], team: str, out: multiprocessing.Queue) -> None:
    with fg.scope(team=team):
        out.put(spend_async(base_url, redis_url, 64, 32, budgets))


@pytest.mark.fake_openai(config=LONG)
def test_threads_never_overspend_an_embedded_budget(fake_openai: FakeOpenAI) -> None:
    gate = fg.Gateway(base_url=fake_openai.base_url, budgets=budget(0.25))
    client = gate.openai(api_key="sk-fake", max_retries=0)
    spent: list[float] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(8):
            try:
                r = client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=MAX_OUTPUT)
            except fg.BudgetExceeded:
                continue
            with lock:
                spent.append(gate.prices.cost(MODEL, r.usage.model_dump()) or 0.0)

    threads = [threading.Thread(target=worker) for _ in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert 0.1 < sum(spent) <= 0.25 + worst_case()
    assert gate.stats["budget_refused"] > 0


@pytest.mark.fake_openai(config=LONG)
def test_a_spent_budget_refuses_with_budget_exceeded(fake_openai: FakeOpenAI, redis_url: str) -> None:
    feature = f"f-{uuid.uuid4().hex[:8]}"
    gate = fg.Gateway(base_url=fake_openai.base_url, redis_url=redis_url,
                      budgets=budget(0.004, scope="feature", name=feature))
    client = gate.openai(api_key="sk-fake", max_retries=0)
    with gate.scope(feature=feature):
        client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=300)  # about $0.0025
        before = fake_openai.counters(MODEL).requests
        with pytest.raises(fg.BudgetExceeded) as refused:
            client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=300)
    error = refused.value
    assert isinstance(error, openai.RateLimitError), "existing except clauses for the SDK's errors still work"
    assert error.budget == f"feature:{feature}:day" and error.limit == pytest.approx(0.004)
    tomorrow = dt.datetime.now(dt.UTC).date() + dt.timedelta(days=1)
    assert error.resets_at == dt.datetime.combine(tomorrow, dt.time(), dt.UTC).timestamp()
    assert 0 < error.retry_after <= 86_400
    assert fake_openai.counters(MODEL).requests == before, "a refused call is never sent"
    with gate.scope(feature="another"):
        client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=300)  # other features are not held


@pytest.mark.fake_openai(config=LONG)
def test_a_spent_budget_steps_down_to_the_cheaper_model(fake_openai: FakeOpenAI) -> None:
    gate = fg.Gateway(base_url=fake_openai.base_url, budgets=budget(0.004, on_exhausted="cheaper"),
                      fallback={"models": {MODEL: CHEAP}})
    client = gate.openai(api_key="sk-fake", max_retries=0)
    first = client.chat.completions.with_raw_response.create(model=MODEL, messages=ASK, max_tokens=300)
    second = client.chat.completions.with_raw_response.create(model=MODEL, messages=ASK, max_tokens=300)
    assert first.parse().model == MODEL and first.headers["x-fleetgate-tier"] == "primary"
    assert second.parse().model == CHEAP and second.headers["x-fleetgate-tier"] == "fallback_model"
    # When even the cheaper model does not fit, the refusal says so.
    for _ in range(10):
        try:
            client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=300)
        except fg.BudgetExceeded as e:
            assert e.budget == "global:day"
            break
    else:
        pytest.fail("the budget never ran out")


@pytest.mark.fake_openai(config=LONG)
def test_a_spent_budget_queues_until_the_next_period(fake_openai: FakeOpenAI, redis_url: str) -> None:
    gate = fg.Gateway(base_url=fake_openai.base_url, redis_url=redis_url,
                      budgets=budget(0.004, scope="user", on_exhausted="queue"))
    # This gateway's clock: half a second before midnight UTC.
    midnight = dt.datetime.combine(dt.datetime.now(dt.UTC).date() + dt.timedelta(days=1), dt.time(), dt.UTC)
    offset = midnight.timestamp() - 0.5 - time.time()
    gate.budgets.clock = lambda: time.time() + offset
    client = gate.openai(api_key="sk-fake", max_retries=0)
    user = f"u-{uuid.uuid4().hex[:8]}"
    with gate.scope(user=user, deadline=5):
        client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=300)
        client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=300)  # waits for the new day
    assert gate.stats["budget_queued"] == 1
    assert fake_openai.counters(MODEL).requests == 2
    # A deadline that ends before the period does: refused at once, not sent.
    gate.budgets.clock = lambda: time.time() + offset - 3_600
    other = f"u-{uuid.uuid4().hex[:8]}"
    with gate.scope(user=other, deadline=5):
        client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=300)
        with pytest.raises(fg.BudgetExceeded):
            client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=300)


@pytest.mark.fake_openai(config=LONG)
def test_alerts_fire_once_per_budget_across_pods(fake_openai: FakeOpenAI, redis_url: str) -> None:
    heard: list[tuple[str, float]] = []
    team = f"t-{uuid.uuid4().hex[:8]}"
    pods = [fg.Gateway(base_url=fake_openai.base_url, redis_url=redis_url,
                       budgets=budget(0.02, scope="team", name=team),
                       on_budget_alert=lambda b, threshold, *_: heard.append((b, threshold))) for _ in range(2)]
    clients = [pod.openai(api_key="sk-fake", max_retries=0) for pod in pods]
    with fg.scope(team=team):
        for i in range(12):
            try:
                clients[i % 2].chat.completions.create(model=MODEL, messages=ASK, max_tokens=MAX_OUTPUT)
            except fg.BudgetExceeded:
                break
    wait_for(lambda: {0.5, 0.75, 1.0} <= {t for _, t in heard})
    thresholds = [t for _, t in heard]
    assert len(thresholds) == len(set(thresholds)), f"an alert fired twice: {heard}"
    assert {b for b, _ in heard} == {f"team:{team}:day"}
    assert sum(pod.stats["budget_alerts"] for pod in pods) == len(heard)


def test_a_model_without_a_price_is_refused_under_a_budget(fake_openai: FakeOpenAI) -> None:
    gate = fg.Gateway(base_url=fake_openai.base_url, budgets=budget(1.0))
    with pytest.raises(fg.ConfigError, match=r'no price.*\[prices.models."my-model"\]'):
        gate.openai(api_key="sk-fake", max_retries=0).chat.completions.create(model="my-model", messages=ASK)
    priced = fg.Gateway(base_url=fake_openai.base_url, budgets=budget(1.0),
                        prices={"models": {"my-model": {"input": 1.0, "output": 2.0}}})
    priced.openai(api_key="sk-fake", max_retries=0).chat.completions.create(model="my-model", messages=ASK)


def test_bad_price_files_name_the_model_and_field(tmp_path: Any) -> None:
    bad = tmp_path / "prices.toml"
    bad.write_text('[models."gpt-x"]\ninput = "cheap"\noutput = 1.0\n[models."gpt-y"]\noutput = -1\n')
    with pytest.raises(fg.ConfigError) as caught:
        fg.Gateway(prices={"file": str(bad)})
    message = str(caught.value)
    assert 'model "gpt-x", field "input"' in message and 'model "gpt-y", field "input": Field required' in message
    assert 'model "gpt-y", field "output"' in message
    bad.write_text("[models\n")
    with pytest.raises(fg.ConfigError, match="not valid TOML"):
        PriceTable.load(bad)


def test_costs_are_reported_by_feature_and_model(fake_openai: FakeOpenAI, redis_url: str) -> None:
    gate = fg.Gateway(base_url=fake_openai.base_url, redis_url=redis_url, budgets={"record_spend": True})
    client = gate.openai(api_key="sk-fake", max_retries=0)
    features = [f"report-{uuid.uuid4().hex[:8]}" for _ in range(2)]
    for i, feature in enumerate(features):
        with gate.scope(feature=feature, user="u-1"):
            for _ in range(i + 1):
                client.chat.completions.create(model=CHEAP, messages=ASK)
    wait_for(lambda: len(dict(gate.costs(by="feature")).keys() & set(features)) == 2)
    by_feature = dict(gate.costs(by="feature"))
    assert by_feature[features[1]] == pytest.approx(2 * by_feature[features[0]])
    result = CliRunner().invoke(cli, ["costs", "--redis", redis_url, "--by", "feature"])
    assert result.exit_code == 0, result.output
    assert features[0] in result.output and features[1] in result.output and "total" in result.output
    no_redis = CliRunner().invoke(cli, ["costs"], env={"FLEETGATE_REDIS_URL": None})
    assert no_redis.exit_code == 2 and "--redis" in no_redis.output
