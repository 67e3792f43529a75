"""Dollar budgets through the gateway, against FakeOpenAI and real Redis: never over across
processes, each action when a budget is spent, alerts once per fleet, prices as data."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import multiprocessing
import signal
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from click.testing import CliRunner

import fleetgate as fg
from fleetgate._core import Limiter
from fleetgate.budget import Budgets
from fleetgate.cli import main as cli
from fleetgate.config import BudgetLimit, BudgetSettings, PriceSettings
from fleetgate.estimate import Estimate
from fleetgate.stats import GatewayStats
from fleetgate.prices import PriceTable
from fleetgate.scope import Scope
from fleetgate.testing import RedisNode, RedisRig
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
    heard: list[tuple[str, float, float, float]] = []
    team = f"t-{uuid.uuid4().hex[:8]}"
    pods = [fg.Gateway(base_url=fake_openai.base_url, redis_url=redis_url,
                       budgets=budget(0.02, scope="team", name=team),
                       on_budget_alert=lambda b, threshold, spent, limit, _: heard.append((b, threshold, spent, limit)))
            for _ in range(2)]
    clients = [pod.openai(api_key="sk-fake", max_retries=0) for pod in pods]
    refused = False
    with fg.scope(team=team):
        for i in range(12):
            try:
                clients[i % 2].chat.completions.create(model=MODEL, messages=ASK, max_tokens=MAX_OUTPUT)
            except fg.BudgetExceeded:
                refused = True
                break
    assert refused, "the budget ran out"
    wait_for(lambda: {0.5, 0.75} <= {t for _, t, _, _ in heard})
    thresholds = [t for _, t, _, _ in heard]
    assert len(thresholds) == len(set(thresholds)), f"an alert fired twice: {heard}"
    assert {b for b, *_ in heard} == {f"team:{team}:day"}
    for _, threshold, spent, limit in heard:
        assert spent >= threshold * limit, f"an alert fires on what was spent, not on a refusal: {heard}"
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


# -- the store down or slow: failure_policy ----------------------------------------------------

CALL = Estimate("/chat/completions", MODEL, 50, 50, MAX_OUTPUT, False)


@pytest.fixture
def own_redis(redis_rig: RedisRig) -> Iterator[tuple[str, RedisNode]]:
    """A Redis of this test's own, to stop, pause and start again."""
    url = redis_rig.start_standalone()
    node = redis_rig.nodes[-1]
    yield url, node
    if node.alive:
        assert node.process is not None
        node.process.send_signal(signal.SIGCONT)
        node.process.terminate()
        node.process.wait(timeout=10)


@pytest.fixture
def silent_url() -> Iterator[str]:
    """A loopback port that accepts connections and never answers (a Redis stuck hard)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        yield f"redis://127.0.0.1:{listener.getsockname()[1]}/0"


def dead_url() -> str:
    """A loopback port nothing listens on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return f"redis://127.0.0.1:{s.getsockname()[1]}/0"


def budgets_on(url: str, *, policy: str = "fail_open", share: float = 0.5, dollars: float = 0.02,
               limiter: Limiter | None = None, **settings: Any) -> tuple[Budgets, GatewayStats]:
    """One gateway's budgets: a global `dollars` a day on the Redis at `url`."""
    stats = GatewayStats()
    rules = BudgetSettings(limits=[BudgetLimit(dollars=dollars)], **settings)
    return Budgets(rules, PriceTable.from_settings(PriceSettings()), limiter or Limiter(url, failure_policy=policy),
                   stats.count, failure_policy=policy, local_share=share), stats


def outage_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "fleetgate" and r.levelno >= logging.WARNING]


def test_fail_open_holds_calls_on_the_pods_share_while_redis_is_down(own_redis: tuple[str, RedisNode],
                                                                      redis_rig: RedisRig,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    url, node = own_redis
    budgets, stats = budgets_on(url, share=0.5, dollars=0.02)  # $0.01 for this pod alone
    worst = budgets.worst_case(CALL)[1]
    fits = int(0.01 / worst)
    first = budgets.reserve(CALL, Scope())
    assert first is not None and not first.local
    budgets.spend(first, worst / 2, 50, 100)
    today = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")
    wait_for(lambda: bool(budgets.ledger.report([today])))  # settled and recorded before the outage
    assert node.process is not None
    node.process.kill()
    node.process.wait(timeout=10)
    caplog.set_level(logging.INFO, logger="fleetgate")

    held = [budgets.reserve(CALL, Scope()) for _ in range(fits)]
    assert all(h is not None and h.local for h in held), "held on this pod's share"
    with pytest.raises(fg.BudgetExceeded) as refused:
        budgets.reserve(CALL, Scope())
    assert refused.value.budget == "global:day" and "this pod's share" in str(refused.value)
    assert stats["budget_fail_open"] == fits
    warnings = outage_records(caplog)
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    said = warnings[0].getMessage()
    assert url in said and "share (0.5) of each budget" in said and warnings[0].exc_info is None
    # Holds on the share settle and give back as any other.
    budgets.spend(held[0], worst / 2, 50, 100)
    budgets.release(held[1])
    again = budgets.reserve(CALL, Scope())
    assert again is not None and again.local, "the released hold made room on the share"
    budgets.release(again)

    redis_rig.restart(node)
    end = time.monotonic() + 30
    while True:  # asked again once its recheck interval passes
        hold = budgets.reserve(CALL, Scope())
        assert hold is not None
        budgets.release(hold)
        if not hold.local:
            break
        assert time.monotonic() < end, "the budgets never asked Redis again"
        time.sleep(0.01)
    back = [r for r in caplog.records if r.name == "fleetgate" and "answers again" in r.getMessage()]
    assert len(back) == 1 and back[0].levelno == logging.INFO
    assert len(outage_records(caplog)) == 1, "one warning for the whole outage"


def test_fail_closed_refuses_naming_the_store(caplog: pytest.LogCaptureFixture) -> None:
    url = dead_url()
    budgets, stats = budgets_on(url, policy="fail_closed")
    for _ in range(3):
        with pytest.raises(fg.StoreUnavailable) as refused:
            budgets.reserve(CALL, Scope())
        message = str(refused.value)
        assert url in message and 'failure_policy = "fail_closed"' in message
        assert "fail_open" not in message, "it does not advise another policy"
    assert stats["budget_fail_open"] == 0
    assert len(outage_records(caplog)) == 1


def test_a_redis_that_never_answers_counts_as_down_after_the_store_timeout(silent_url: str,
                                                                            caplog: pytest.LogCaptureFixture) -> None:
    # The store's own timeouts alone would keep each call waiting for minutes.
    stuck = Limiter(silent_url, timeout=30.0, connect_timeout=30.0)
    budgets, stats = budgets_on(silent_url, limiter=stuck, store_timeout_seconds=0.2)
    hold = budgets.reserve(CALL, Scope())
    assert hold is not None and hold.local
    assert stats["budget_fail_open"] == 1
    [warning] = outage_records(caplog)
    assert "no answer within 0.200s" in warning.getMessage()


def test_a_paused_redis_counts_as_down_and_keeps_no_hold(own_redis: tuple[str, RedisNode]) -> None:
    url, node = own_redis
    budgets, stats = budgets_on(url, limiter=Limiter(url, timeout=30.0), store_timeout_seconds=0.2, dollars=0.01)
    budgets.release(budgets.reserve(CALL, Scope()))  # connected
    assert node.process is not None
    node.process.send_signal(signal.SIGSTOP)
    try:
        hold = asyncio.run(budgets.reserve_async(CALL, Scope()))
    finally:
        node.process.send_signal(signal.SIGCONT)
    assert hold is not None and hold.local and stats["budget_fail_open"] == 1
    [budget] = budgets.named()
    wait_for(lambda: budgets.ledger.status(budget).reserved == 0)  # the late hold was given back


def test_async_reservations_follow_the_failure_policy(caplog: pytest.LogCaptureFixture) -> None:
    url = dead_url()
    fail_open, opened = budgets_on(url)
    fail_closed, _ = budgets_on(url, policy="fail_closed")

    async def main() -> None:
        hold = await fail_open.reserve_async(CALL, Scope())
        assert hold is not None and hold.local
        fail_open.spend(hold, None, 50, 10)
        with pytest.raises(fg.StoreUnavailable):
            await fail_closed.reserve_async(CALL, Scope())

    asyncio.run(main())
    assert opened["budget_fail_open"] == 1 and opened["budget_settled_from_estimate"] == 1


def test_reserve_says_none_without_budgets_and_refuses_unpriced_models() -> None:
    budgets, stats = budgets_on(dead_url(), dollars=1.0)
    assert Budgets(BudgetSettings(), PriceTable.from_settings(PriceSettings()), Limiter(), stats.count).reserve(
        CALL, Scope()) is None
    unpriced = Estimate("/chat/completions", "my-model", 10, 40, 10, False)
    with pytest.raises(fg.ConfigError, match="no price"):
        budgets.reserve(unpriced, Scope())
    allowing, counts = budgets_on(dead_url(), unpriced="allow")
    assert allowing.reserve(unpriced, Scope()) is None and counts["budget_unpriced"] == 1


def test_when_refused_follows_on_exhausted() -> None:
    stats = GatewayStats()
    rules = BudgetSettings(limits=[BudgetLimit(scope="feature", name="q", dollars=0.001, on_exhausted="queue"),
                                   BudgetLimit(scope="feature", name="c", dollars=0.001, on_exhausted="cheaper"),
                                   BudgetLimit(scope="feature", name="r", dollars=0.001)])
    budgets = Budgets(rules, PriceTable.from_settings(PriceSettings()), Limiter(), stats.count)
    refusals = {}
    for feature in ("q", "c", "r"):
        with pytest.raises(fg.BudgetExceeded) as refused:
            budgets.reserve(CALL, Scope(feature=feature))
        refusals[feature] = refused.value
    resets_in = refusals["q"].resets_at - time.time()
    action, wait = budgets.when_refused(refusals["q"], resets_in + 60)
    assert action == "queue" and 0 < wait <= resets_in + 1 and stats["budget_queued"] == 1
    assert budgets.when_refused(refusals["q"], 1.0) == ("refuse", 0.0), "the next period comes after the deadline"
    assert budgets.when_refused(refusals["c"], 1.0) == ("cheaper", 0.0)
    assert budgets.when_refused(refusals["r"], 1.0) == ("refuse", 0.0)


@pytest.mark.fake_openai(config=LONG)
def test_gateway_calls_go_through_on_the_pods_share_while_redis_is_down(fake_openai: FakeOpenAI) -> None:
    """Through the SDK: a budget with Redis down no longer refuses every call under
    fail_open (the default)."""
    gate = fg.Gateway(base_url=fake_openai.base_url, redis_url=dead_url(), budgets=budget(1.0), local_share=0.5)
    client = gate.openai(api_key="sk-fake", max_retries=0)
    for _ in range(3):
        client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=MAX_OUTPUT)

    async def from_asyncio() -> None:
        await gate.async_openai(api_key="sk-fake", max_retries=0).chat.completions.create(
            model=MODEL, messages=ASK, max_tokens=MAX_OUTPUT)

    asyncio.run(from_asyncio())
    assert gate.stats["budget_fail_open"] == 4 and gate.stats["refused"] == 0
    closed = fg.Gateway(base_url=fake_openai.base_url, redis_url=dead_url(), budgets=budget(1.0),
                        failure_policy="fail_closed")
    with pytest.raises(fg.StoreUnavailable, match="budgets' Redis"):
        closed.openai(api_key="sk-fake", max_retries=0).chat.completions.create(model=MODEL, messages=ASK)
    assert closed.stats["refused"] == 1 and fake_openai.counters(MODEL).requests == 4, "a refused call is not sent"
