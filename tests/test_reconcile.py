"""Reconciling the fleet's ledger with OpenAI's Costs and Usage APIs: traffic through a
gateway (sync and async SDK clients) against FakeOpenAI and a Redis of the test's own,
compared with what the fake billed, per day and model, through `gate.reconcile` and
`fleetgate costs reconcile`."""

from __future__ import annotations

import asyncio
import datetime as dt
import signal
from collections.abc import Iterator
from typing import Any

import httpx2
import openai
import pytest
from click.testing import CliRunner

import fleetgate as fg
from fleetgate.budget.reconcile import ReconcileError, ReconciliationRow, snapshot_of
from fleetgate.cli import main as cli
from fleetgate.testing import RedisRig
from fleetgate.testing.fake_openai import FakeOpenAI
from tests.polling import until

DAY = 86_400
PROJECT = "proj_fleet"
ADMIN_KEY = "sk-admin-test"
ASK = [{"role": "user", "content": "How do I reset my password?"}]


@pytest.fixture
def ledger_url(redis_rig: RedisRig) -> Iterator[str]:
    """A Redis of this test's own: its ledger holds this test's spend alone."""
    url = redis_rig.start_standalone()
    node = redis_rig.nodes[-1]
    yield url
    if node.alive and node.process is not None:
        node.process.send_signal(signal.SIGCONT)
        node.process.terminate()
        node.process.wait(timeout=10)


def today() -> dt.date:
    return dt.datetime.now(dt.UTC).date()


def noon(days_ago: int) -> float:
    """Unix seconds at noon (UTC) `days_ago` days back."""
    day = today() - dt.timedelta(days=days_ago)
    return dt.datetime.combine(day, dt.time(12), dt.UTC).timestamp()


@pytest.fixture
def gate(fake_openai: FakeOpenAI, ledger_url: str) -> Iterator[fg.Gateway]:
    """A gateway of the fleet's project, with a daily budget, on the test's own ledger."""
    with fg.Gateway(base_url=fake_openai.base_url, redis_url=ledger_url, openai_project=PROJECT,
                    budgets={"limits": [{"scope": "global", "dollars": 100.0}], "record_spend": True}) as gateway:
        yield gateway


def admin(fake: FakeOpenAI, key: str = ADMIN_KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=fake.base_url, admin_api_key=key, max_retries=0)


def on_day(gate: fg.Gateway, fake: FakeOpenAI, days_ago: int) -> None:
    """Date the ledger's and the bill's spend `days_ago` days back from now on."""
    gate.budgets.clock = lambda: noon(days_ago)
    fake.set_bill_clock(lambda: noon(days_ago))


def traffic(gate: fg.Gateway) -> None:
    """Chat, responses and embeddings through the gateway's sync client, and chat through its
    async one."""
    client = gate.openai(api_key="sk-fake", max_retries=0)
    client.chat.completions.create(model="gpt-4.1-mini", messages=ASK)
    client.responses.create(model="gpt-4.1", input="Summarise the refund policy.")
    client.embeddings.create(model="text-embedding-3-small", input="refund policy")

    async def async_calls() -> None:
        aclient = gate.async_openai(api_key="sk-fake", max_retries=0)
        await asyncio.gather(*(aclient.chat.completions.create(model="gpt-4.1-mini", messages=ASK) for _ in range(3)))

    asyncio.run(async_calls())


def billed(fake: FakeOpenAI, project: str = PROJECT) -> dict[tuple[str, str], float]:
    """What the fake billed `project`, per (UTC day, model)."""
    found: dict[tuple[str, str], float] = {}
    for c in fake.bill():
        if c.project == project:
            key = (dt.datetime.fromtimestamp(c.at, dt.UTC).date().isoformat(), c.model)
            found[key] = found.get(key, 0.0) + (c.dollars or 0.0)
    return found


def settled(gate: fg.Gateway, fake: FakeOpenAI, since: dt.date) -> None:
    """Wait for the ledger to record (in the background) what the gateway's calls were billed."""
    total = sum(billed(fake).values())
    until(lambda: sum(d for _, d in gate.costs(since, today(), by="day")) == pytest.approx(total))


def run_cli(fake: FakeOpenAI, url: str, *args: str, admin_key: str | None = ADMIN_KEY) -> Any:
    env = {"FLEETGATE_BASE_URL": fake.base_url, "FLEETGATE_OPENAI_PROJECT": PROJECT, "OPENAI_ADMIN_KEY": admin_key,
           "FLEETGATE_REDIS_URL": None}
    return CliRunner().invoke(cli, ["costs", "reconcile", "--redis", url, *args], env=env)


def test_spend_through_the_gateway_reconciles_with_what_openai_billed(fake_openai: FakeOpenAI, ledger_url: str,
                                                                        gate: fg.Gateway) -> None:
    on_day(gate, fake_openai, 2)
    traffic(gate)
    on_day(gate, fake_openai, 0)
    traffic(gate)
    around = openai.OpenAI(base_url=fake_openai.base_url, api_key="sk-fake", project="proj_other", max_retries=0)
    around.chat.completions.create(model="gpt-4.1-mini", messages=ASK)  # another project's spend: not this fleet's
    since = today() - dt.timedelta(days=2)
    settled(gate, fake_openai, since)

    report = gate.reconcile(since, today(), client=admin(fake_openai))

    assert report.ok, report.table()
    expected = billed(fake_openai)
    assert {(r.day, r.model) for r in report.rows} == set(expected)
    assert len(expected) == 6, "three models on each of two days"
    for row in report.rows:
        assert row.project == PROJECT
        assert row.openai == pytest.approx(expected[(row.day, row.model)])
        assert row.ledger == pytest.approx(row.openai) and abs(row.share) < 1e-6
    requests = {(r.day, r.model): r.openai_requests for r in report.rows}
    assert requests[(today().isoformat(), "gpt-4.1-mini")] == 4 and requests[(since.isoformat(), "gpt-4.1")] == 1
    assert report.ledger == pytest.approx(sum(expected.values()))

    result = run_cli(fake_openai, ledger_url, "--since", since.isoformat(), "--until", today().isoformat())
    assert result.exit_code == 0, result.output
    assert "the ledger matches OpenAI within 1.00%" in result.output
    assert PROJECT in result.output and "text-embedding-3-small" in result.output and "!" not in result.output
    other = run_cli(fake_openai, ledger_url, "--since", since.isoformat(), "--until", today().isoformat(),
                    "--project", "proj_other")
    assert other.exit_code == 1, "the fleet's ledger is not proj_other's bill"
    assert "proj_other" in other.output and PROJECT not in other.output


def test_spend_around_the_gateway_shows_on_its_day_and_fails_the_command(fake_openai: FakeOpenAI, ledger_url: str,
                                                                           gate: fg.Gateway) -> None:
    client = gate.openai(api_key="sk-fake", max_retries=0)
    on_day(gate, fake_openai, 3)
    client.chat.completions.create(model="gpt-4.1-mini", messages=ASK)
    around = openai.OpenAI(base_url=fake_openai.base_url, api_key="sk-fake", project=PROJECT, max_retries=0)
    missed = around.chat.completions.create(model="gpt-4.1-mini", messages=ASK)  # same project, not through the gate
    on_day(gate, fake_openai, 1)
    client.chat.completions.create(model="gpt-4.1-mini", messages=ASK)
    since = today() - dt.timedelta(days=3)
    expected = billed(fake_openai)
    assert missed.usage is not None
    missed_dollars = gate.prices.cost("gpt-4.1-mini", missed.usage.model_dump())
    assert missed_dollars is not None and missed_dollars > 0
    until(lambda: sum(d for _, d in gate.costs(since, today(), by="day"))
          == pytest.approx(sum(expected.values()) - missed_dollars))

    report = gate.reconcile(since, client=admin(fake_openai))  # until: yesterday

    assert report.until == today() - dt.timedelta(days=1)
    assert not report.ok
    (row,) = report.differing()
    assert (row.day, row.model) == ((today() - dt.timedelta(days=3)).isoformat(), "gpt-4.1-mini")
    assert row.difference == pytest.approx(missed_dollars)
    assert row.openai == pytest.approx(expected[(row.day, row.model)]) and row.openai_requests == 2
    assert 0 < row.share < 1
    (same,) = [r for r in report.rows if r is not row]
    assert same.day == (today() - dt.timedelta(days=1)).isoformat() and same.difference == pytest.approx(0)

    result = run_cli(fake_openai, ledger_url, "--since", since.isoformat())
    assert result.exit_code == 1, result.output
    assert "1 of 2 rows differ by more than 1.00%" in result.output
    assert [line for line in result.output.splitlines() if line.rstrip().endswith("!")] == [
        line for line in result.output.splitlines() if line.startswith(row.day)]
    loose = run_cli(fake_openai, ledger_url, "--since", since.isoformat(), "--tolerance", "0.99")
    assert loose.exit_code == 0, loose.output


def test_a_long_range_is_read_across_every_page(fake_openai: FakeOpenAI, gate: fg.Gateway) -> None:
    client = gate.openai(api_key="sk-fake", max_retries=0)
    days_ago = [75, 40, 33, 5, 0]
    for back in days_ago:
        on_day(gate, fake_openai, back)
        client.chat.completions.create(model="gpt-4.1-mini", messages=ASK)
    since = today() - dt.timedelta(days=75)
    settled(gate, fake_openai, since)

    report = gate.reconcile(since, today(), client=admin(fake_openai))

    assert report.ok, report.table()
    assert [r.day for r in report.rows] == [(today() - dt.timedelta(days=b)).isoformat() for b in days_ago]
    assert all(r.openai > 0 and r.openai_requests == 1 for r in report.rows), "76 daily buckets come in 3 pages"


def test_reading_openai_needs_an_admin_key(fake_openai: FakeOpenAI, ledger_url: str, gate: fg.Gateway) -> None:
    with pytest.raises(ReconcileError, match="admin key"):
        gate.reconcile(today(), client=admin(fake_openai, key="sk-proj-abc"))
    result = run_cli(fake_openai, ledger_url, "--since", today().isoformat(), admin_key=None)
    assert result.exit_code == 1 and "OPENAI_ADMIN_KEY" in result.output
    assert "sk-proj" not in result.output
    project_key = run_cli(fake_openai, ledger_url, "--since", today().isoformat(), admin_key="sk-proj-abc")
    assert project_key.exit_code == 1 and "admin key" in project_key.output
    assert "sk-proj-abc" not in project_key.output
    with fg.Gateway(base_url=fake_openai.base_url, budgets={"timezone": "Europe/Berlin", "record_spend": True}) as berlin:
        with pytest.raises(fg.ConfigError, match='timezone = "UTC"'):
            berlin.reconcile(today(), client=admin(fake_openai))


def test_a_refusal_quoting_the_key_is_said_without_it(gate: fg.Gateway) -> None:
    """OpenAI quotes a wrong key in its 401 (masked or not): the error passes on neither."""
    key = "sk-admin-Zq81kT0wPk3"

    def refuse(request: httpx2.Request) -> httpx2.Response:
        message = f"Incorrect API key provided: {key}. You can find your API key at https://platform.openai.com."
        return httpx2.Response(401, json={"error": {"message": message, "type": "invalid_request_error",
                                                    "param": None, "code": "invalid_api_key"}})

    client = openai.OpenAI(base_url="https://openai.invalid/v1", admin_api_key=key, max_retries=0,
                           http_client=openai.DefaultHttpx2Client(transport=httpx2.MockTransport(refuse)))
    with pytest.raises(ReconcileError) as raised:
        gate.reconcile(today(), client=client)
    said = str(raised.value)
    assert "401" in said and "Incorrect API key provided: sk-…" in said and "OPENAI_ADMIN_KEY" in said
    assert "Zq81kT0wPk3" not in said


def test_rows_meet_across_snapshot_names_and_share_the_difference() -> None:
    assert snapshot_of("gpt-4.1-mini-2025-04-14") == "gpt-4.1-mini"
    assert snapshot_of("gpt-4.1-mini") == "gpt-4.1-mini" and snapshot_of("o3-mini") == "o3-mini"
    assert ReconciliationRow("2026-11-02", PROJECT, "gpt-4.1", ledger=0.0, openai=2.0).share == 1.0
    assert ReconciliationRow("2026-11-02", PROJECT, "gpt-4.1", ledger=2.0, openai=0.0).share == -1.0
    assert ReconciliationRow("2026-11-02", PROJECT, "gpt-4.1", ledger=0.0, openai=0.0).share == 0.0
    assert ReconciliationRow("2026-11-02", PROJECT, "gpt-4.1", ledger=3.0, openai=4.0).share == pytest.approx(0.25)


def test_fleetgate_costs_still_reports_the_ledger(fake_openai: FakeOpenAI, ledger_url: str, gate: fg.Gateway) -> None:
    gate.openai(api_key="sk-fake", max_retries=0).chat.completions.create(model="gpt-4.1-mini", messages=ASK)
    settled(gate, fake_openai, today())
    result = CliRunner().invoke(cli, ["costs", "--redis", ledger_url, "--by", "model"])
    assert result.exit_code == 0, result.output
    assert "gpt-4.1-mini" in result.output and "total" in result.output
