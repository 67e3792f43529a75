"""No raw user id (nor a team or feature named sensitive), prompt, API key or Redis password
in anything the gateway lets out: log records of every logger at DEBUG, exceptions (their
messages, arguments and attributes), refusals (bodies and headers), request records,
metrics, spans, the spend report and Redis's key names. Traffic through the sync and the
async client: answered calls, a per-user quota refusal, a per-user budget refusal, budget
alerts, and Redis going down mid-run. The names that replace them are pseudonyms that
agree wherever they appear, and across gateways that share the key."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import uuid
from pathlib import Path
from collections.abc import Iterator

import httpx2
import openai
import pytest
import redis
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import REGISTRY, generate_latest

import fleetgate as fg
from fleetgate.errors import REFUSAL_CODES
from fleetgate.privacy import KEY_NAME, Privacy
from fleetgate.prices import PriceTable
from fleetgate.testing import RedisRig
from fleetgate.testing.fake_openai import FakeConfig, FakeOpenAI, ModelLimits
from tests.polling import until

MODEL = "gpt-4.1"
MAX_OUTPUT = 600
SMALL = 5  # a call that leaves room in its user's budget
RUN = uuid.uuid4().hex
#: What must never come out, each a prefix of every value of its kind in this test.
USER, TEAM, FEATURE = f"MARKERUSER{RUN}", f"MARKERTEAM{RUN}", f"MARKERFEATURE{RUN}"
PROMPT, API_KEY, PASSWORD = f"MARKERPROMPT{RUN}", f"sk-MARKERKEY{RUN}", f"MARKERPASSWORD{RUN}"
MARKERS = (USER, TEAM, FEATURE, PROMPT, API_KEY, API_KEY.removeprefix("sk-"), PASSWORD)
#: The SDK the application calls logs its own requests at DEBUG (the prompt among them)
#: before the gateway sees them: those lines are the application's, and are held to every
#: marker but the prompt.
SDK_LOGGERS = ("openai", "httpx", "httpx2", "httpcore")
#: Long answers, so a call costs close to its worst case and one fills most of a budget.
LONG = FakeConfig(answer_words=400, default_limits=ModelLimits(requests_per_minute=1_000_000,
                                                               tokens_per_minute=100_000_000))


def ask(tag: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"Write a long story. {PROMPT} {tag}"}]


class Everything(logging.Handler):
    """Every record of every logger, formatted with its arguments and any traceback."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
        self.lines: list[tuple[str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append((record.name, f"{self.format(record)} args={record.args!r}"))


@pytest.fixture
def logs() -> Iterator[Everything]:
    handler = Everything()
    loggers = [logging.getLogger()] + [logging.getLogger(name) for name in list(logging.root.manager.loggerDict)]
    levels = [(logger, logger.level) for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.DEBUG)
    logging.getLogger().addHandler(handler)
    yield handler
    logging.getLogger().removeHandler(handler)
    for logger, level in levels:
        logger.setLevel(level)


def shown(error: BaseException) -> list[str]:
    """What an exception lets out: its message, repr, arguments and attributes, and the
    refusal it came from (body and headers), down its chain of causes."""
    found: list[str] = []
    seen: BaseException | None = error
    while seen is not None:
        found += [str(seen), repr(seen), repr(seen.args)]
        for name, value in vars(seen).items():
            if name != "response":  # below: the SDK's request in it carries the caller's own API key
                found.append(f"{name}={value!r}")
        for _, names in REFUSAL_CODES.values():
            found += [f"{name}={getattr(seen, name, None)!r}" for name in names]
        response = getattr(seen, "response", None)
        if isinstance(response, httpx2.Response):
            found += [response.text, repr(list(response.headers.items()))]
        seen = seen.__cause__ or seen.__context__
    return found


def worst_case() -> float:
    price = PriceTable.load(fg.__path__[0] + "/prices.toml").price(MODEL)
    assert price is not None
    return price.dollars(100, MAX_OUTPUT)  # over any prompt here


@pytest.mark.fake_openai(config=LONG)
def test_nothing_private_leaves_the_gateway(fake_openai: FakeOpenAI, redis_rig: RedisRig, logs: Everything,
                                            tmp_path: Path) -> None:
    url = redis_rig.start_standalone(password=PASSWORD)
    assert PASSWORD in url
    node = redis_rig.nodes[-1]
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    alerts: list[str] = []
    gate = fg.Gateway(
        base_url=fake_openai.base_url, redis_url=url, tracer_provider=provider, breakers={"enabled": False},
        privacy={"sensitive": ["team", "feature"]},
        cache={"enabled": True, "namespace": "user"}, dedup={"namespace": "user"},  # keyed by user
        modes={"optional_features": [FEATURE]},  # refused, by name, in reduced mode
        prompts={"layout": True},  # its report names templates by feature
        metrics={"features": [FEATURE]},  # a feature shown in labels: as its pseudonym
        per_user=fg.QuotaLimits(requests_per_minute=1),  # one call per user, then refused
        teams={TEAM: fg.QuotaLimits(requests_per_minute=1_000_000)},
        budgets={"limits": [
            # One long answer spends over half of a user's budget (an alert); the next call
            # cannot fit its worst case in what is left.
            {"scope": "user", "dollars": worst_case() * 1.05, "period": "day"},
            {"scope": "team", "name": TEAM, "dollars": 1_000.0, "period": "day"},  # named: a metric
        ]},
        on_budget_alert=lambda budget, *_: alerts.append(budget),
    )
    client, aclient = gate.openai(api_key=API_KEY, max_retries=0), gate.async_openai(api_key=API_KEY, max_retries=0)
    errors: list[BaseException] = []
    loop = asyncio.new_event_loop()  # one for the async client's whole life

    def sync_traffic(tag: str) -> None:
        with gate.scope(user=f"{USER}-{tag}-quota", team=TEAM, feature=FEATURE, deadline=5):
            client.chat.completions.create(model=MODEL, messages=ask(tag), max_tokens=SMALL)
        with gate.scope(user=f"{USER}-{tag}-quota", team=TEAM, feature=FEATURE, deadline=0.05):
            with pytest.raises(fg.RateLimited) as limited:  # the user's quota: one a minute
                client.chat.completions.create(model=MODEL, messages=ask(tag), max_tokens=SMALL)
        errors.append(limited.value)
        assert limited.value.quota.startswith("user:u_")
        with gate.scope(user=f"{USER}-{tag}-cache", team=TEAM, feature=FEATURE, deadline=5):
            for _ in range(2):  # the second from the cache, in the user's namespace
                client.chat.completions.create(model=MODEL, messages=ask(tag), max_tokens=SMALL, temperature=0)

    async def async_traffic(tag: str) -> None:
        async with gate.scope(user=f"{USER}-{tag}-quota", team=TEAM, feature=FEATURE, deadline=5):
            await aclient.chat.completions.create(model=MODEL, messages=ask(tag), max_tokens=SMALL)
        async with gate.scope(user=f"{USER}-{tag}-quota", team=TEAM, feature=FEATURE, deadline=0.05):
            with pytest.raises(fg.RateLimited) as limited:
                await aclient.chat.completions.create(model=MODEL, messages=ask(tag), max_tokens=SMALL)
        errors.append(limited.value)
        async with gate.scope(user=f"{USER}-{tag}-cache", team=TEAM, feature=FEATURE, deadline=5):
            for _ in range(2):
                await aclient.chat.completions.create(model=MODEL, messages=ask(tag), max_tokens=SMALL, temperature=0)

    def spend_sync(user: str) -> None:
        with gate.scope(user=user, team=TEAM, feature=FEATURE, deadline=5):
            client.chat.completions.create(model=MODEL, messages=ask(user), max_tokens=MAX_OUTPUT)

    async def spend_async(user: str) -> None:
        async with gate.scope(user=user, team=TEAM, feature=FEATURE, deadline=5):
            await aclient.chat.completions.create(model=MODEL, messages=ask(user), max_tokens=MAX_OUTPUT)

    sync_traffic("sync")
    loop.run_until_complete(async_traffic("async"))
    # A user's budget: the first call spends over half of it (an alert), the next is refused.
    spenders = [f"{USER}-sync-budget", f"{USER}-async-budget"]
    spend_sync(spenders[0])
    loop.run_until_complete(spend_async(spenders[1]))
    until(lambda: len(alerts) >= 2)
    # The budget layer comes before the quotas: its refusal is what the caller gets.
    with gate.scope(user=spenders[0], team=TEAM, feature=FEATURE, deadline=5):
        with pytest.raises(fg.BudgetExceeded) as refused:
            client.chat.completions.create(model=MODEL, messages=ask("over"), max_tokens=MAX_OUTPUT)
    errors.append(refused.value)

    async def over_async() -> None:
        async with gate.scope(user=spenders[1], team=TEAM, feature=FEATURE, deadline=5):
            with pytest.raises(fg.BudgetExceeded) as refused:
                await aclient.chat.completions.create(model=MODEL, messages=ask("over"), max_tokens=MAX_OUTPUT)
        errors.append(refused.value)

    loop.run_until_complete(over_async())
    assert refused.value.budget.startswith("user:u_") and refused.value.budget.endswith(":day")
    assert gate.stats["cache_hits"] == 2, gate.stats
    until(lambda: len(gate.costs(by="user")) >= 6)  # spend is settled in the background
    reports = {by: gate.costs(by=by) for by in ("user", "team", "feature")}
    assert all(name.startswith("u_") for name, _ in reports["user"]), reports["user"]
    stored = redis.Redis.from_url(url)
    key_names = [k.decode(errors="replace") for k in stored.scan_iter(count=1_000)]
    fleet_key = stored.get(KEY_NAME)
    assert isinstance(fleet_key, bytes)
    stored.close()
    metrics = generate_latest(REGISTRY).decode() + b"".join(gate.metrics_app()(
        {"REQUEST_METHOD": "GET", "PATH_INFO": "/metrics", "QUERY_STRING": ""}, lambda status, headers: None)).decode()

    # Reduced mode refuses the feature, naming it.
    gate.modes.set("reduced", reason="load test")
    with gate.scope(user=f"{USER}-reduced", team=TEAM, feature=FEATURE), pytest.raises(fg.ServiceDegraded) as off:
        client.chat.completions.create(model=MODEL, messages=ask("reduced"), max_tokens=SMALL)
    errors.append(off.value)
    assert gate.privacy.label("feature", FEATURE) in str(off.value)
    gate.modes.clear()

    # A config with the Redis URL under a mistyped key, and a user where a number belongs:
    # refused, naming the keys, repeating neither value.
    bad = tmp_path / "fleetgate.toml"
    bad.write_text(f'redis_ulr = "{url}"\n[per_user]\nrequests_per_minute = "{USER}"\n')
    with pytest.raises(fg.ConfigError) as config_error:
        fg.Gateway.from_config(bad)
    errors.append(config_error.value)
    assert "redis_url" in str(config_error.value) and "requests_per_minute" in str(config_error.value)

    # Redis goes down: the outage is said and calls go on under the failure policy.
    redis_rig.stop_node(node)
    for n in range(2):
        try:
            spend_sync(f"{USER}-outage-sync-{n}")
        except (fg.FleetgateError, openai.APIError) as e:
            errors.append(e)
        try:
            loop.run_until_complete(spend_async(f"{USER}-outage-async-{n}"))
        except (fg.FleetgateError, openai.APIError) as e:
            errors.append(e)
    assert any("unavailable" in text or "down" in text for _, text in logs.lines), "the outage was said"
    loop.run_until_complete(aclient.close())
    loop.close()
    gate.close()

    prompt_report = gate.prompt_report()
    assert gate.privacy.label("feature", FEATURE) in prompt_report
    spans = exporter.get_finished_spans()
    assert spans
    records = [json.loads(text.split(" ", 2)[2].rsplit(" args=", 1)[0]) for name, text in logs.lines
               if name == "fleetgate.requests"]
    assert records and {r["team"] for r in records} == {gate.privacy.label("team", TEAM)}
    assert all(r["user"].startswith("u_") for r in records)
    # One pseudonym per user wherever it appears: the record, the quota, the report.
    user = f"{USER}-sync-quota"
    assert (f"user:{gate.privacy.label('user', user)}" == errors[0].quota  # type: ignore[attr-defined]
            and gate.privacy.label("user", user) in {r["user"] for r in records})
    assert {name for name, _ in reports["user"]} >= {gate.privacy.label("user", u) for u in spenders}
    assert f'budget="team:{gate.privacy.label("team", TEAM)}:day"' in metrics

    sdk = "\n".join(text for name, text in logs.lines if name.split(".")[0] in SDK_LOGGERS)
    # openai before 3.4 logs each request's options at DEBUG, the application's messages
    # among them: those prompts (which name their user here, see ask()) are the application's.
    sdk = re.sub(rf"Write a long story\. {PROMPT}[^'\"\n]*", "<the application's prompt>", sdk)
    ours = "\n".join(
        [text for name, text in logs.lines if name.split(".")[0] not in SDK_LOGGERS]
        + [text for e in errors for text in shown(e)]
        + alerts + [metrics, prompt_report] + key_names
        + [json.dumps(reports)]
        + [f"{s.name} {dict(s.attributes or {})} {s.status.description} {[dict(e.attributes or {}) for e in s.events]}"
           for s in spans])
    for marker in (*MARKERS, fleet_key.decode()):
        assert marker not in ours, f"{marker[:16]}… leaked:\n" + "\n".join(
            line for line in ours.splitlines() if marker in line)[:2000]
        if marker != PROMPT:
            assert marker not in sdk, f"{marker[:16]}… leaked into the SDK's own logs"


def test_pseudonyms_agree_across_pods_and_hide_their_key() -> None:
    """Two gateways with one key name a user alike; another key names it otherwise; the key
    shows in no repr."""
    key = f"MARKERPRIVACYKEY{RUN}"
    a, b = (Privacy(key, ["team"]) for _ in range(2))
    other = Privacy(f"another-{key}")
    assert a.label("user", "u-42") == b.label("user", "u-42") != other.label("user", "u-42")
    assert a.label("user", "u-42").startswith("u_") and len(a.label("user", "u-42") or "") == 2 + 20
    assert a.label("team", "support").startswith("t_") and other.label("team", "support") == "support"
    assert a.label("feature", "chat") == "chat" and a.label("user", None) is None
    assert key not in repr(a) and key not in repr(fg.Gateway(privacy={"key": key}).privacy)
    gate = fg.Gateway(privacy={"key": key}, per_user=fg.QuotaLimits(requests_per_minute=60))
    _, (quota,) = gate.quotas_for(MODEL, fg.Scope(user="u-42"))
    assert quota.name == f"user:{a.label('user', 'u-42')}"


def test_the_key_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    key = f"MARKERPRIVACYKEY{RUN}"
    monkeypatch.setenv("FLEETGATE_PRIVACY__KEY", key)
    gate = fg.Gateway()
    assert gate.privacy.label("user", "u-42") == Privacy(key).label("user", "u-42")
    assert key not in repr(gate.config) and key not in repr(gate.privacy)


def test_a_fleet_without_a_configured_key_shares_one_in_redis(redis_url: str) -> None:
    pods = [fg.Gateway(redis_url=redis_url) for _ in range(2)]
    assert pods[0].privacy.label("user", "u-7") == pods[1].privacy.label("user", "u-7")
    embedded = [fg.Gateway() for _ in range(2)]  # a key per process: nothing to agree with
    assert embedded[0].privacy.label("user", "u-7") != embedded[1].privacy.label("user", "u-7")
    for gate in (*pods, *embedded):
        gate.close()


def test_a_pod_that_starts_while_redis_is_down_takes_the_fleets_key_once_it_is_back(
        redis_rig: RedisRig, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    caplog.set_level(logging.WARNING, logger="fleetgate")
    monkeypatch.setattr(Privacy, "retry_seconds", 0.05)
    url = redis_rig.start_standalone(password=PASSWORD)
    node = redis_rig.nodes[-1]
    redis_rig.stop_node(node)
    late = fg.Gateway(redis_url=url, per_user=fg.QuotaLimits(requests_per_minute=60))
    said = [r.getMessage() for r in caplog.records if "privacy key could not be read" in r.getMessage()]
    assert len(said) == 1 and "FLEETGATE_PRIVACY__KEY" in said[0] and "***" in said[0]
    _, (before,) = late.quotas_for(MODEL, fg.Scope(user="u-7"))  # named with the pod's own key meanwhile
    assert before.name.startswith("user:u_")
    redis_rig.restart(node)
    until(lambda: "shared" in late.privacy.source)
    pod = fg.Gateway(redis_url=url, per_user=fg.QuotaLimits(requests_per_minute=60))
    _, (after,) = late.quotas_for(MODEL, fg.Scope(user="u-7"))
    _, (fleet,) = pod.quotas_for(MODEL, fg.Scope(user="u-7"))
    assert after.name == fleet.name != before.name, "the quota is named again with the fleet's key"
    assert PASSWORD not in caplog.text
    for gate in (late, pod):
        gate.close()
    redis_rig.stop_node(node)  # the session's rig: no server asking for a password left behind
