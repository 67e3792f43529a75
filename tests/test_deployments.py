"""A model served by several deployments (``[deployments]``), each a FakeOpenAI enforcing
its own limits, through the real SDK with the gateway's defaults on: provisioned capacity
first and spill-over, weighted balance, a rejected key isolated while the model keeps
being served, upstream's 429 spilled at once, and the request each deployment is sent."""

from __future__ import annotations

import collections
import contextlib
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx2
import openai
import pytest

import fleetgate as fg
from fleetgate._core import BudgetStatus
from fleetgate.deployments import Deployments
from fleetgate.testing.fake_openai import AzureShape, FakeConfig, FakeOpenAI, Fault, ModelLimits
from tests.polling import until

MODEL = "gpt-4.1-mini"


@contextlib.contextmanager
def fakes(*configs: FakeConfig) -> Iterator[list[FakeOpenAI]]:
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(FakeOpenAI(c)) for c in configs]


def limited(rpm: int) -> FakeConfig:
    return FakeConfig(answer_words=4, models={MODEL: ModelLimits(requests_per_minute=rpm, tokens_per_minute=10_000_000)})


def deployment(name: str, fake: FakeOpenAI, **settings: object) -> fg.ModelDeployment:
    return fg.ModelDeployment(name=name, base_url=fake.base_url, **settings)  # type: ignore[arg-type]


def ask(client: openai.OpenAI) -> str:
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": "hello"}], max_tokens=8)
    return raw.headers["x-fleetgate-upstream"]


def no_limits(model: str) -> None:
    """No model limits: deployments set their own, or none."""
    return None


def served(fake: FakeOpenAI) -> int:
    return fake.counters(MODEL).requests


def spills(deployment: str, reason: str) -> float:
    """Calls `deployment` passed on for `reason`, as the metrics count them (this process's)."""
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value("fleetgate_deployment_spills_total",
                                     {"model": MODEL, "deployment": deployment, "reason": reason}) or 0.0


def test_provisioned_capacity_first_and_the_rest_spills_to_pay_as_you_go() -> None:
    """The provisioned deployment (120 RPM: two calls a second) takes what its quota has
    room for now; the rest go to pay-as-you-go at once, without waiting, and neither
    upstream refuses a call."""
    with fakes(limited(120), limited(100_000)) as (ptu, paygo):
        gateway = fg.Gateway(deployments={MODEL: [
            deployment("ptu", ptu, requests_per_minute=120, priority=0),
            deployment("paygo", paygo, requests_per_minute=100_000, priority=1)]})
        client = gateway.openai(api_key="sk-caller", max_retries=0)
        spilled_before = spills("ptu", "quota")
        started = time.monotonic()
        where = collections.Counter(ask(client) for _ in range(30))
        elapsed = time.monotonic() - started
        gateway.close()
    assert where["ptu"] >= 1, "the provisioned deployment was not tried first"
    assert where["ptu"] <= 2 * (elapsed + 1), "more than the provisioned quota allows"
    assert where["ptu"] + where["paygo"] == 30
    assert served(ptu) == where["ptu"] and served(paygo) == where["paygo"]
    assert ptu.counters(MODEL).rate_limited == 0 and paygo.counters(MODEL).rate_limited == 0
    # Refused once, the provisioned deployment is left out until its room comes back.
    assert 1 <= gateway.stats.snapshot().get("deployment_spilled", 0) <= where["paygo"]
    assert spills("ptu", "quota") - spilled_before >= 1


def test_deployments_of_one_priority_share_calls_by_weight() -> None:
    with fakes(limited(1_000_000), limited(1_000_000)) as (east, west):
        gateway = fg.Gateway(deployments={MODEL: [
            deployment("east", east, weight=3, requests_per_minute=1_000_000),
            deployment("west", west, weight=1, requests_per_minute=1_000_000)]})
        client = gateway.openai(api_key="sk-caller", max_retries=0)
        where = collections.Counter(ask(client) for _ in range(400))
        gateway.close()
    share = where["east"] / 400
    assert 0.65 <= share <= 0.85, f"east took {share:.0%} of the calls at weight 3 to 1"  # ±4.6 sd of 75%


def test_a_rejected_key_isolates_its_deployment_and_the_model_keeps_serving() -> None:
    revoked = FakeConfig(answer_words=4, faults=[Fault(kind="error", status=401)])
    with fakes(revoked, limited(100_000)) as (dead, alive):
        gateway = fg.Gateway(deployments={MODEL: [deployment("dead", dead, priority=0),
                                                  deployment("alive", alive, priority=1)]})
        client = gateway.openai(api_key="sk-caller", max_retries=0)
        where = collections.Counter(ask(client) for _ in range(10))
        states = gateway.breakers.states() if gateway.breakers is not None else {}
        gateway.close()
    assert where == {"alive": 10}
    assert dead.counters(MODEL).faults.get("error", 0) == 1, "the dead deployment was tried again"
    assert states[f"/chat/completions:{MODEL}@dead"] == "isolated"
    from prometheus_client import REGISTRY

    assert REGISTRY.get_sample_value("fleetgate_breaker_state", {"breaker": f"/chat/completions:{MODEL}@dead"}) == 3
    assert spills("dead", "rejected_key") >= 1


def test_an_upstream_429_spills_to_the_next_deployment_at_once() -> None:
    """The gateway believes the first deployment has far more room than upstream gives it
    (6,000 RPM configured, 60 enforced); upstream refuses: the call goes to the next
    deployment, the SDK never sees a 429, and the other deployment's quota is untouched."""
    with fakes(limited(60), limited(100_000)) as (small, big):
        gateway = fg.Gateway(deployments={MODEL: [
            deployment("small", small, requests_per_minute=6_000, priority=0),
            deployment("big", big, requests_per_minute=100_000, priority=1)]})
        client = gateway.openai(api_key="sk-caller", max_retries=0)
        before = spills("small", "upstream_429")
        where = collections.Counter(ask(client) for _ in range(10))
        counted = spills("small", "upstream_429") - before, gateway.stats["upstream_rate_limited"]
        room = {d.name: gateway.limiter.try_acquire(d.quota, requests=0).remaining_requests
                for d in gateway.deployments.of(MODEL) if d.quota is not None}
        gateway.close()
    assert where["small"] >= 1 and where["small"] + where["big"] == 10
    assert small.counters(MODEL).rate_limited >= 1, "upstream never refused: nothing was spilled"
    assert room["big"] is not None and room["big"] >= 1_600, "another deployment's 429 emptied this one's quota"
    assert counted == (small.counters(MODEL).rate_limited,) * 2, "a spilled 429 went uncounted"


def test_the_last_deployment_decides_as_one_upstream_would() -> None:
    """Every deployment out of room: the last one waits for its quota within the deadline,
    and a call that cannot be admitted in time is refused as a rate limit."""
    with fakes(limited(100_000), limited(100_000)) as (a, b):  # one a minute each: no room within 5 s
        gateway = fg.Gateway(default_deadline_seconds=5, deployments={MODEL: [
            deployment("a", a, requests_per_minute=1, priority=0),
            deployment("b", b, requests_per_minute=1, priority=1)]})
        client = gateway.openai(api_key="sk-caller", max_retries=0)
        assert {ask(client), ask(client)} == {"a", "b"}  # one request's burst each
        with pytest.raises(openai.RateLimitError):
            ask(client)
        gateway.close()


def test_each_deployment_is_sent_its_own_url_key_and_project(tmp_path: Path) -> None:
    secret = tmp_path / "key"
    secret.write_text("sk-from-file\n")
    deployments = Deployments({MODEL: [
        fg.ModelDeployment(name="openai", base_url="https://api.openai.com/v1/", api_key_env="KEY_A",
                           organization="org-a", project="proj_a"),
        fg.ModelDeployment(name="azure", base_url="https://r.openai.azure.com", api_key_file=secret,
                           azure_deployment="gpt41mini", api_version="2024-10-21"),
        fg.ModelDeployment(name="caller", base_url="http://127.0.0.1:9/v1")]}, no_limits, 0.0, environ={"KEY_A": "sk-a"})
    asked = httpx2.Request("POST", "http://gateway/v1/chat/completions?x=1", content=b"{}",
                           headers={"authorization": "Bearer sk-caller", "openai-project": "proj_caller"})
    sent = {d.name: d.request_for(asked, "/chat/completions") for d in deployments.of(MODEL)}
    assert str(sent["openai"].url) == "https://api.openai.com/v1/chat/completions?x=1"
    assert sent["openai"].headers["authorization"] == "Bearer sk-a"
    assert sent["openai"].headers["openai-project"] == "proj_a"
    assert sent["openai"].headers["openai-organization"] == "org-a"
    azure = sent["azure"]
    assert str(azure.url) == "https://r.openai.azure.com/openai/deployments/gpt41mini/chat/completions?x=1&api-version=2024-10-21"
    assert azure.headers["api-key"] == "sk-from-file" and "authorization" not in azure.headers
    assert "openai-project" not in azure.headers, "the caller's project went to another deployment"
    assert sent["caller"].headers["authorization"] == "Bearer sk-caller"
    assert sent["caller"].content == b"{}"


def test_a_missing_key_is_named_not_shown(tmp_path: Path) -> None:
    with pytest.raises(fg.ConfigError) as caught:
        Deployments({MODEL: [
            fg.ModelDeployment(name="a", base_url="https://x/v1", api_key_env="NOT_SET_ANYWHERE"),
            fg.ModelDeployment(name="b", base_url="https://x/v1", api_key_file=tmp_path / "absent")]}, no_limits, 0.0,
            environ={})
    message = str(caught.value)
    assert "NOT_SET_ANYWHERE" in message and str(tmp_path / "absent") in message


def test_deployment_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="api_version"):
        fg.ModelDeployment(name="a", base_url="https://x", azure_deployment="d")
    with pytest.raises(ValueError, match="not both"):
        fg.ModelDeployment(name="a", base_url="https://x", api_key_env="A", api_key_file=Path("k"))
    with pytest.raises(fg.ConfigError, match="repeat"):
        Deployments({MODEL: [fg.ModelDeployment(name="a", base_url="https://x"),
                             fg.ModelDeployment(name="a", base_url="https://y")]}, no_limits, 0.0)
    with pytest.raises(fg.ConfigError, match="name = 'projekt': no deployment has that name \\(theirs: project\\)"):
        fg.Gateway(budgets={"limits": [{"scope": "deployment", "name": "projekt", "dollars": 5.0}]},
                   deployments={MODEL: [fg.ModelDeployment(name="project", base_url="https://x")]})


def _chain(client: openai.OpenAI, turns: int) -> list[str]:
    """A Responses chain of `turns`; the deployment that answered each turn."""
    where, previous = [], None
    for turn in range(turns):
        raw = client.responses.with_raw_response.create(
            model=MODEL, input=f"turn {turn}", max_output_tokens=8,
            **({"previous_response_id": previous} if previous else {}))
        where.append(raw.headers["x-fleetgate-upstream"])
        previous = raw.parse().id
    return where


def test_a_chain_stays_with_the_deployment_holding_it() -> None:
    """Calls continuing a Responses chain go to the deployment that holds it (each fake
    knows only its own responses, answering 404 for another's), as the chain ledger says:
    no call is sent to the wrong one."""
    with fakes(limited(1_000_000), limited(1_000_000)) as (east, west):
        gateway = fg.Gateway(deployments={MODEL: [deployment("east", east), deployment("west", west)]})
        client = gateway.openai(api_key="sk-caller", max_retries=0)
        chains = [_chain(client, 4) for _ in range(12)]
        gateway.close()
    assert all(len(set(turns)) == 1 for turns in chains), chains
    assert {turns[0] for turns in chains} == {"east", "west"}, "one deployment took every chain"
    assert gateway.stats.snapshot().get("deployment_spilled", 0) == 0, "a turn went to the wrong deployment first"


def test_a_chain_continued_with_another_model_goes_to_its_deployment_in_the_same_project() -> None:
    """A chain begun with one model and continued with another is held by the project
    that answered it: the second model's deployment there takes the call, though the
    second model puts another deployment first."""
    other = "gpt-4.1"
    config = FakeConfig(answer_words=4)
    with fakes(config, config) as (east, west):
        gateway = fg.Gateway(deployments={
            MODEL: [deployment("east", east, priority=0), deployment("west", west, priority=1)],
            other: [deployment("w", west, priority=0), deployment("e", east, priority=1)]})
        client = gateway.openai(api_key="sk-caller", max_retries=0)
        begun = client.responses.with_raw_response.create(model=MODEL, input="turn 0", max_output_tokens=8)
        continued = client.responses.with_raw_response.create(
            model=other, input="turn 1", max_output_tokens=8, previous_response_id=begun.parse().id)
        spilled = gateway.stats.snapshot().get("deployment_spilled", 0)
        gateway.close()
    assert begun.headers["x-fleetgate-upstream"] == "east"
    assert continued.headers["x-fleetgate-upstream"] == "e" and spilled == 0


def test_a_chain_held_where_the_fleet_does_not_know_is_found_by_its_404s() -> None:
    """Without the chain ledger (``[server_context]`` off), a call continuing a chain tries
    the deployments in order; one that does not hold it answers 404 and the next is tried."""
    with fakes(limited(1_000_000), limited(1_000_000)) as (east, west):
        gateway = fg.Gateway(server_context={"enabled": False},
                             deployments={MODEL: [deployment("east", east), deployment("west", west)]})
        client = gateway.openai(api_key="sk-caller", max_retries=0)
        chains = [_chain(client, 3) for _ in range(12)]
        gateway.close()
    assert all(len(set(turns)) == 1 for turns in chains), chains


def test_deployments_with_their_own_keys_and_azures_url_shape(monkeypatch: pytest.MonkeyPatch) -> None:
    """The caller's SDK speaks to the gateway with its own key; each deployment is sent its
    own (an OpenAI project's bearer key, an Azure resource's ``api-key`` on Azure's URL
    shape), which each fake checks. A key revoked later isolates its deployment."""
    monkeypatch.setenv("FG_TEST_KEY_OPENAI", "sk-project-openai-1234")
    monkeypatch.setenv("FG_TEST_KEY_AZURE", "azure-key-5678")
    openai_project = FakeConfig(answer_words=4, api_key="sk-project-openai-1234")
    azure = FakeConfig(answer_words=4, api_key="azure-key-5678", azure=AzureShape(deployments={"mini-se": MODEL}))
    with fakes(openai_project, azure) as (project, region):
        gateway = fg.Gateway(deployments={MODEL: [
            deployment("project", project, api_key_env="FG_TEST_KEY_OPENAI", weight=1),
            fg.ModelDeployment(name="sweden", base_url=region.azure_endpoint, api_key_env="FG_TEST_KEY_AZURE",
                               azure_deployment="mini-se", api_version="2024-10-21", weight=1)]})
        client = gateway.openai(api_key="sk-caller", max_retries=0)
        before = collections.Counter(ask(client) for _ in range(40))
        project.revoke_key()
        after = collections.Counter(ask(client) for _ in range(10))
        gateway.close()
    assert before["project"] > 0 and before["sweden"] > 0 and sum(before.values()) == 40
    assert region.counters(MODEL).requests == before["sweden"] + after["sweden"]
    assert after == {"sweden": 10}, "the revoked deployment was still sent calls"
    assert project.counters(MODEL).unauthorized <= 1


def test_calls_sharing_a_prompt_cache_key_or_a_long_prefix_stay_on_one_deployment() -> None:
    """Three templates with long system prompts, and calls with three prompt-cache keys,
    over two deployments of equal weight: each template's (and each key's) calls all go to
    one deployment, whose prompt cache serves them after the first, and the cached share
    is reported per deployment."""
    from prometheus_client import REGISTRY

    def cached_on(name: str) -> float:
        return REGISTRY.get_sample_value("fleetgate_deployment_tokens_total",
                                         {"model": MODEL, "deployment": name, "kind": "cached_input"}) or 0.0

    with fakes(limited(1_000_000), limited(1_000_000)) as (east, west):
        gateway = fg.Gateway(deployments={MODEL: [deployment("east", east), deployment("west", west)]})
        client = gateway.openai(api_key="sk-caller", max_retries=0)
        before = {"east": cached_on("east"), "west": cached_on("west")}
        homes: dict[str, set[str]] = collections.defaultdict(set)
        cached = 0
        for turn in range(8):
            for t in range(3):
                system = f"Template {t}. " + "You answer questions about the fleet's quotas. " * 120
                raw = client.chat.completions.with_raw_response.create(
                    model=MODEL, max_tokens=8, messages=[{"role": "system", "content": system},
                                                         {"role": "user", "content": f"question {turn}"}])
                homes[f"template {t}"].add(raw.headers["x-fleetgate-upstream"])
                details = raw.parse().usage.prompt_tokens_details  # type: ignore[union-attr]
                cached += (details.cached_tokens or 0) if details is not None else 0
                homes[f"key {t}"].add(ask_with_key(client, f"key-{t}"))
        gateway.close()
    assert all(len(h) == 1 for h in homes.values()), homes
    assert {h for hs in homes.values() for h in hs} == {"east", "west"}, "one deployment took every template"
    assert cached >= 3 * 7 * 1024, "the templates' prompts were not served from their deployment's cache"
    reported = cached_on("east") - before["east"] + cached_on("west") - before["west"]
    assert reported == cached


def ask_with_key(client: openai.OpenAI, key: str) -> str:
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": "hello"}], max_tokens=8, prompt_cache_key=key)
    return raw.headers["x-fleetgate-upstream"]


def test_a_deployment_that_cannot_be_reached_spills_its_calls() -> None:
    """A region down (nothing listens at its address): each call spills to the next
    deployment; the failures count against the unreachable deployment's breaker only, not
    the fleet's degradation modes (on here)."""
    import socket

    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # bound, never listening: connections are refused
        with fakes(limited(100_000)) as (alive,):
            gateway = fg.Gateway(modes={"auto": True}, deployments={MODEL: [
                fg.ModelDeployment(name="down", base_url=f"http://127.0.0.1:{port}/v1", priority=0),
                deployment("alive", alive, priority=1)]})
            client = gateway.openai(api_key="sk-caller", max_retries=0)
            where = collections.Counter(ask(client) for _ in range(30))
            states = gateway.breakers.states() if gateway.breakers is not None else {}
            seen = list(gateway.modes._window.calls) if gateway.modes._window is not None else []
            mode = gateway.modes.current.mode
            gateway.close()
    assert where == {"alive": 30}
    # The fleet's degradation modes judge the model, which every call found served.
    assert len(seen) == 30 and not any(failed for _, failed, _ in seen) and mode == "full"
    assert states.get(f"/chat/completions:{MODEL}@alive") == "closed"
    assert states.get(f"/chat/completions:{MODEL}@down") == "open", "the breaker never saw the failures"


def test_a_deployment_known_to_be_full_is_left_out_but_the_one_whose_room_comes_back_first() -> None:
    """The order a call tries: those with room (as far as this pod knows) by priority, then
    only the full one whose room comes back soonest, where the call will wait; calls no
    longer park on a small deployment while a large one refills many times faster."""
    deployments = Deployments({MODEL: [fg.ModelDeployment(name=n, base_url="https://x/v1", priority=p)
                                       for n, p in (("a", 0), ("b", 0), ("c", 1), ("d", 1))]}, no_limits, 0.0)
    a, b, c, d = deployments.of(MODEL)
    assert {x.name for x in deployments.order(MODEL, {})[:2]} == {"a", "b"}  # priority 0 first
    a.refused(300.0)
    b.refused(100.0)
    assert [x.name for x in deployments.order(MODEL, {})][-1] == "b" and len(deployments.order(MODEL, {})) == 3
    assert {x.name for x in deployments.order(MODEL, {})[:2]} == {"c", "d"}, "the full ones were tried first"
    c.refused(500.0)
    d.refused(50.0)
    assert [x.name for x in deployments.order(MODEL, {})] == ["d"], "not the deployment whose room comes back first"


def test_a_budget_holds_a_call_once_across_its_spills_and_spends_what_was_billed() -> None:
    """With a budget on (and the rest of the defaults), calls that spill from a full
    provisioned deployment to pay-as-you-go are held once each and spend exactly what the
    two upstreams billed, nothing left reserved."""
    with fakes(limited(120), limited(100_000)) as (ptu, paygo):
        gateway = fg.Gateway(budgets={"limits": [{"dollars": 10.0}]}, deployments={MODEL: [
            deployment("ptu", ptu, requests_per_minute=120, priority=0),
            deployment("paygo", paygo, requests_per_minute=100_000, priority=1)]})
        client = gateway.openai(api_key="sk-caller", max_retries=0)
        where = collections.Counter(ask(client) for _ in range(20))
        billed = sum(c.dollars or 0.0 for fake in (ptu, paygo) for c in fake.bill())

        def settled() -> bool:
            [(_, status)] = gateway.budgets.statuses()
            return status.reserved == 0.0 and status.spent == pytest.approx(billed, abs=1e-9)
        until(settled)
        gateway.close()
    assert where["ptu"] >= 1 and where["paygo"] >= 1 and len(ptu.bill()) + len(paygo.bill()) == 20


def _budget(gateway: fg.Gateway, prefix: str) -> BudgetStatus:
    [status] = [status for budget, status in gateway.budgets.statuses() if budget.name.startswith(prefix)]
    return status


@pytest.mark.parametrize("redis", [False, True], ids=["embedded", "redis"])
def test_a_deployment_that_spent_its_budget_spills_and_each_call_is_recorded_once(
        redis: bool, request: pytest.FixtureRequest) -> None:
    """A project's budget (``scope = "deployment"``) caps what its deployment spends: once
    spent, calls go to the next deployment, which has none. The calls it took are spent on
    it, every call on the feature's budget, and each call is recorded once in the spend
    records (``fleetgate costs``)."""
    store = {"redis_url": request.getfixturevalue("redis_url")} if redis else {}
    run = uuid.uuid4().hex[:8]  # budgets and spend records of this run alone in the shared Redis
    feature, ptu_name = f"feature-{run}", f"ptu-{run}"
    with fakes(limited(100_000), limited(100_000)) as (ptu, paygo):
        gateway = fg.Gateway(**store, budgets={"limits": [  # type: ignore[arg-type]
            {"scope": "feature", "name": feature, "dollars": 10.0},
            {"scope": "deployment", "name": ptu_name, "dollars": 0.0001}]},
            deployments={MODEL: [deployment(ptu_name, ptu, priority=0), deployment("paygo", paygo, priority=1)]})
        client = gateway.openai(api_key="sk-caller", max_retries=0)
        with gateway.scope(feature=feature):
            where = collections.Counter(ask(client) for _ in range(30))
        ptu_billed = sum(c.dollars or 0.0 for c in ptu.bill())
        billed = ptu_billed + sum(c.dollars or 0.0 for c in paygo.bill())

        def settled() -> bool:
            total, project = _budget(gateway, "feature"), _budget(gateway, "deployment")
            return total.reserved == 0.0 and project.reserved == 0.0 and \
                total.spent == pytest.approx(billed, abs=1e-9) and project.spent == pytest.approx(ptu_billed, abs=1e-9)
        until(settled)
        recorded = sum(row[-1] for row in gateway.budgets.ledger.report([time.strftime("%Y-%m-%d", time.gmtime())])
                       if row[2] == feature)
        gateway.close()
    assert 1 <= where[ptu_name] < 30 and where[ptu_name] + where["paygo"] == 30
    assert ptu_billed <= 0.0001
    assert recorded == pytest.approx(billed, abs=1e-9), "a call's cost was recorded twice (or not at all)"
    assert spills(ptu_name, "budget") >= 1


def test_when_every_deployment_has_spent_its_budget_the_call_is_refused_by_it() -> None:
    with fakes(limited(100_000)) as (only,):
        gateway = fg.Gateway(budgets={"limits": [{"scope": "deployment", "dollars": 0.00005}]},
                             deployments={MODEL: [deployment("only", only)]})
        client = gateway.openai(api_key="sk-caller", max_retries=0)
        with pytest.raises(openai.RateLimitError) as refused:
            for _ in range(10):
                ask(client)
        gateway.close()
    assert "deployment:only:day" in str(refused.value)
    assert 1 <= len(only.bill()) < 10


def test_when_every_deployment_is_isolated_the_fallback_ladder_serves() -> None:
    """Both deployments of a model reject their keys: each is isolated, the call is refused
    as a circuit open, and the fallback ladder's cheaper model (served at base_url) answers."""
    revoked = FakeConfig(answer_words=4, faults=[Fault(kind="error", status=401)])
    with fakes(revoked, revoked, limited(100_000)) as (a, b, cheap):
        gateway = fg.Gateway(base_url=cheap.base_url, fallback={"models": {MODEL: "gpt-4.1-nano"}},
                             deployments={MODEL: [deployment("a", a), deployment("b", b)]})
        client = gateway.openai(api_key="sk-caller", max_retries=0)
        answers = [client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}],
                                                  max_tokens=8) for _ in range(5)]
        gateway.close()
    assert {answer.model for answer in answers} == {"gpt-4.1-nano"}
    assert a.counters(MODEL).faults.get("error", 0) <= 2 and b.counters(MODEL).faults.get("error", 0) <= 2
    assert cheap.counters("gpt-4.1-nano").requests == 5


def test_a_deployment_without_limits_of_its_own_draws_on_the_models_or_the_default() -> None:
    with fakes(limited(100_000)) as (fake,):
        gateway = fg.Gateway(model_headroom=0.25, default_model_limits=fg.QuotaLimits(requests_per_minute=600),
                             models={"gpt-4.1": fg.QuotaLimits(tokens_per_minute=80_000)},
                             deployments={MODEL: [deployment("own", fake, requests_per_minute=100),
                                                  deployment("default", fake)],
                                          "gpt-4.1": [deployment("model", fake)]})
        quotas = {d.name: d.quota for m in (MODEL, "gpt-4.1") for d in gateway.deployments.of(m)}
        gateway.close()
    assert all(q is not None for q in quotas.values()), "a deployment went unlimited"
    assert (quotas["own"].requests_per_minute, quotas["own"].tokens_per_minute) == (75, None)  # type: ignore[union-attr]
    assert quotas["default"].requests_per_minute == 450  # type: ignore[union-attr]
    assert quotas["model"].tokens_per_minute == 60_000  # type: ignore[union-attr]


def test_a_chain_goes_to_its_home_even_when_this_pod_thinks_it_full() -> None:
    """The deployment holding a chain is the only one that can answer it: a call continuing
    it goes there (waiting for its room, as to a single upstream) even when this pod last
    saw it full and another deployment would have its room back sooner."""
    with fakes(limited(1_000_000), limited(1_000_000)) as (east, west):
        gateway = fg.Gateway(deployments={MODEL: [deployment("east", east), deployment("west", west)]})
        client = gateway.openai(api_key="sk-caller", max_retries=0)
        first = client.responses.with_raw_response.create(model=MODEL, input="turn 0", max_output_tokens=8)
        home = first.headers["x-fleetgate-upstream"]
        for d in gateway.deployments.of(MODEL):
            d.refused(300.0 if d.name == home else 5.0)  # the other's room comes back first
        second = client.responses.with_raw_response.create(
            model=MODEL, input="turn 1", max_output_tokens=8, previous_response_id=first.parse().id)
        gateway.close()
    assert second.headers["x-fleetgate-upstream"] == home


def test_a_users_quota_has_the_call_wait_where_it_is_not_spill() -> None:
    """A refusal by the caller's own quota (which every deployment shares) is not a
    deployment's lack of room: the call waits for it on the deployment it tried, and no
    deployment is counted as having passed it on."""
    with fakes(limited(1_000_000), limited(1_000_000)) as (east, west):
        gateway = fg.Gateway(per_user=fg.QuotaLimits(requests_per_minute=60, burst_seconds=1),
                             deployments={MODEL: [deployment("east", east), deployment("west", west)]})
        client = gateway.openai(api_key="sk-caller", max_retries=0)
        with gateway.scope(user="someone"):
            served = [ask(client) for _ in range(3)]  # one a second: the 2nd and 3rd wait for the user
        spilled = gateway.stats["deployment_spilled"]
        gateway.close()
    assert len(served) == 3 and spilled == 0
