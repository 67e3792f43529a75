"""Background responses (``background: true``) through the gateway, against FakeOpenAI and
real Redis, through the real openai SDK: the budget spends what the fake billed once each
response ended (polled, or told by a webhook), at the tier that served it; a pod that stops
hands its calls to another; a response the API forgot is spent at its worst case."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import httpx2
import pytest
from prometheus_client import CollectorRegistry, generate_latest

import fleetgate as fg
from fleetgate.background import BackgroundCollector
from fleetgate.redis_clients import redis_client
from fleetgate.background.pending import PendingCall, RedisPending
from fleetgate.background.polling import Decision, Polled, decide
from fleetgate.config import BackgroundSettings
from fleetgate.testing import RedisRig
from fleetgate.testing.fake_openai import BackgroundTimings, FakeConfig, FakeOpenAI
from fleetgate.testing.fake_openai.background import sign
from fleetgate.webhooks import Receiver, WebhookRejected
from tests.polling import until
from tests.scrape import by_label, scrape_wsgi

MODEL = "gpt-4.1-mini"
MAX_OUTPUT = 300
SECRET = "whsec_" + "c2VjcmV0LWZvci1mbGVldGdhdGUtdGVzdHMtb25seQ=="
#: Polls often, so a test waits little for a response that ended.
FAST_POLLS = {"poll_min_seconds": 0.05, "poll_max_seconds": 0.2}
KEYS = [f"fg:{{background}}:{part}" for part in ("calls", "claims", "owners", "due")]


def fake_config(**timings: Any) -> FakeConfig:
    return FakeConfig(answer_words=120, background=BackgroundTimings(**timings))


def gateway(fake: FakeOpenAI, feature: str, redis_url: str | None = None, **background: Any) -> fg.Gateway:
    return fg.Gateway(base_url=fake.base_url, redis_url=redis_url,
                      budgets={"limits": [{"scope": "feature", "name": feature, "dollars": 10.0}]},
                      features={feature: fg.QuotaLimits(requests_per_minute=1_000, tokens_per_minute=1_000_000)},
                      background={**FAST_POLLS, **background})


def spent(gate: fg.Gateway, prefix: str = "") -> tuple[float, float]:
    """(spent, reserved) of the test's one budget (whose name starts with `prefix`)."""
    [status] = [status for budget, status in gate.budgets.statuses() if budget.name.startswith(prefix)]
    return status.spent, status.reserved


def billed(fake: FakeOpenAI) -> float:
    return sum(c.dollars or 0.0 for c in fake.bill())


def cost_by_tier(gate: fg.Gateway, feature: str) -> dict[str, float]:
    """Dollars the gateway's metrics count for `feature`, by the service tier that served them."""
    return by_label(scrape_wsgi(gate.metrics_app()), "fleetgate_cost_dollars_total", "service_tier", feature=feature)


@pytest.fixture
def feature() -> str:
    """A feature (and so a budget) no other test uses."""
    return f"bg-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="module")
def own_redis(redis_rig: RedisRig) -> str:
    """A Redis of these tests' own: no other test's gateway (closed or not) watches it, so
    none takes over the calls these tests leave to the fleet."""
    return redis_rig.start_standalone()


@pytest.fixture
def fleet(own_redis: str) -> Iterator[str]:
    """The shared store, with no background call left over from another test."""
    client = redis_client(own_redis)
    client.delete(*KEYS)
    yield own_redis
    client.delete(*KEYS)
    client.close()


class WebhookServer:
    """A plain WSGI app on a loopback port, as the README shows it, handing each delivery
    to the receiver it is given once the gateway exists."""

    def __init__(self) -> None:
        self.receiver: Receiver | None = None
        self.answers: list[int] = []
        self.server: WSGIServer = make_server("127.0.0.1", 0, self.app, handler_class=_Quiet)
        self.url = f"http://127.0.0.1:{self.server.server_port}/webhooks/openai"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def app(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        headers = {k[5:].replace("_", "-").lower(): v for k, v in environ.items() if k.startswith("HTTP_")}
        assert self.receiver is not None
        try:
            self.receiver.handle(body, headers)
        except WebhookRejected:
            self.answers.append(400)
            start_response("400 Bad Request", [("content-type", "text/plain")])
            return [b"refused"]
        self.answers.append(200)
        start_response("200 OK", [("content-type", "text/plain")])
        return [b"ok"]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
        return None


@pytest.fixture
def webhooks() -> Iterator[WebhookServer]:
    server = WebhookServer()
    yield server
    server.close()


# -- settled when they end ---------------------------------------------------------------------


@pytest.mark.parametrize("store", ["embedded", "redis"])
def test_sync_background_calls_spend_what_the_fake_billed_once_they_end(store: str, feature: str,
                                                                         request: pytest.FixtureRequest) -> None:
    redis_url = request.getfixturevalue("fleet") if store == "redis" else None
    # Long enough that none ends before the four are made and counted, on a busy machine too.
    with FakeOpenAI(fake_config(complete_seconds=3.0)) as fake:
        gate = gateway(fake, feature, redis_url)
        client = gate.openai(api_key="sk-fake", max_retries=0)
        with gate.scope(feature=feature):
            answers = [client.responses.create(model=MODEL, input=f"Write story {i} about otters.", background=True,
                                               max_output_tokens=MAX_OUTPUT, service_tier=tier)
                       for i, tier in enumerate(["auto", "flex", "priority", "auto"])]
        assert [a.status for a in answers] == ["queued"] * 4 and all(a.usage is None for a in answers)
        assert gate.background.pending() == 4
        assert spent(gate)[0] == 0.0  # nothing spent at once: the cost is not known yet
        assert gate.stats["settled_from_usage"] == 0  # nor the feature's quota settled
        until(lambda: gate.background.pending() == 0)
        assert gate.stats["settled_from_usage"] == 4  # settled from the usage once they ended
        assert len(fake.bill()) == 4 and {c.tier for c in fake.bill()} == {"default", "flex", "priority"}
        until(lambda: spent(gate) == pytest.approx((billed(fake), 0.0), abs=1e-8))
        assert gate.stats["background_settled_usage"] == 4
        assert gate.background.fleet_pending() == 0
        by_tier: dict[str, float] = {}
        for charge in fake.bill():
            by_tier[charge.tier] = by_tier.get(charge.tier, 0.0) + (charge.dollars or 0.0)
        assert cost_by_tier(gate, feature) == pytest.approx(by_tier)  # each at the tier that served it
        gate.close()


def test_async_background_calls_spend_what_the_fake_billed_once_they_end(feature: str) -> None:
    with FakeOpenAI(fake_config(complete_seconds=0.3)) as fake:
        gate = gateway(fake, feature)
        client = gate.async_openai(api_key="sk-fake", max_retries=0)

        async def main() -> list[str]:
            with gate.scope(feature=feature):
                answers = await asyncio.gather(*(
                    client.responses.create(model=MODEL, input=f"Write story {i}.", background=True,
                                            max_output_tokens=MAX_OUTPUT) for i in range(3)))
            return [a.status or "" for a in answers]

        assert asyncio.run(main()) == ["queued"] * 3  # the loop is gone: the watcher goes on
        until(lambda: gate.background.pending() == 0)
        until(lambda: spent(gate) == pytest.approx((billed(fake), 0.0), abs=1e-8))
        assert len(fake.bill()) == 3 and gate.stats["background_settled_usage"] == 3
        gate.close()


@pytest.mark.parametrize("read", ["whole", "first event"])
def test_a_background_stream_is_settled_when_read_whole_or_when_its_response_ends(read: str, feature: str) -> None:
    with FakeOpenAI(fake_config(complete_seconds=0.3)) as fake:
        gate = gateway(fake, feature)
        client = gate.openai(api_key="sk-fake", max_retries=0)
        with gate.scope(feature=feature):
            stream = client.responses.create(model=MODEL, input="Stream a story.", background=True, stream=True,
                                             max_output_tokens=MAX_OUTPUT)
            events = [next(iter(stream))] if read == "first event" else list(stream)
            stream.close()  # left early: the response runs on upstream
        assert events[0].type == "response.created"
        if read == "whole":  # its usage came with it: settled at its end, nothing handed over
            assert events[-1].type == "response.completed" and gate.stats["background_watched"] == 0
        else:
            assert gate.stats["background_watched"] == 1
        until(lambda: len(fake.bill()) == 1 and gate.background.pending() == 0)
        until(lambda: spent(gate) == pytest.approx((billed(fake), 0.0), abs=1e-8))
        gate.close()


def test_a_cancelled_response_spends_what_it_reports(feature: str) -> None:
    with FakeOpenAI(fake_config(queued_seconds=0.0, complete_seconds=600)) as fake:
        gate = gateway(fake, feature)
        client = gate.openai(api_key="sk-fake", max_retries=0)
        with gate.scope(feature=feature):
            answer = client.responses.create(model=MODEL, input="A very long novel.", background=True,
                                             max_output_tokens=MAX_OUTPUT)
        assert spent(gate)[1] > 0  # its worst case held while it runs
        cancelled = client.responses.cancel(answer.id)
        assert cancelled.status == "cancelled"
        until(lambda: gate.background.pending() == 0)
        [charge] = fake.bill()
        assert charge.usage["output_tokens"] == 0 and charge.usage["input_tokens"] > 0
        until(lambda: spent(gate) == pytest.approx((charge.dollars, 0.0), abs=1e-8))
        gate.close()


def test_a_response_cancelled_while_queued_spends_nothing(feature: str) -> None:
    with FakeOpenAI(fake_config(queued_seconds=600, complete_seconds=600)) as fake:
        gate = gateway(fake, feature)
        client = gate.async_openai(api_key="sk-fake", max_retries=0)

        async def main() -> None:
            with gate.scope(feature=feature):
                answer = await client.responses.create(model=MODEL, input="Later.", background=True)
            await client.responses.cancel(answer.id)

        asyncio.run(main())
        until(lambda: gate.background.pending() == 0)
        assert fake.bill() == [] and gate.stats["background_settled_nothing"] == 1
        assert gate.stats["settled_from_failure"] == 1  # its quota given back too
        until(lambda: spent(gate) == (0.0, 0.0))  # the hold given back
        gate.close()


# -- webhooks ----------------------------------------------------------------------------------


@pytest.mark.parametrize("client_kind", ["sync", "async"])
def test_a_webhook_settles_the_response_at_once(client_kind: str, feature: str, webhooks: WebhookServer) -> None:
    # Polls an hour apart: only the webhook can settle it within the test.
    with FakeOpenAI(fake_config(complete_seconds=0.2, webhook_url=webhooks.url, webhook_secret=SECRET)) as fake:
        gate = gateway(fake, feature, poll_min_seconds=3_600, poll_max_seconds=3_600)
        webhooks.receiver = gate.webhooks(secret=SECRET)
        with gate.scope(feature=feature):
            if client_kind == "sync":
                gate.openai(api_key="sk-fake").responses.create(model=MODEL, input="Hi.", background=True)
            else:
                asyncio.run(gate.async_openai(api_key="sk-fake").responses.create(model=MODEL, input="Hi.",
                                                                                  background=True))
        until(lambda: gate.background.pending() == 0)
        until(lambda: len(fake.webhooks()) == 1)  # the fake notes a delivery once it is answered
        assert [(d.type, d.status) for d in fake.webhooks()] == [("response.completed", 200)]
        assert gate.stats["background_webhooks"] == 1 and gate.stats["background_settled_usage"] == 1
        until(lambda: spent(gate) == pytest.approx((billed(fake), 0.0), abs=1e-8))
        gate.close()


def test_a_webhook_to_another_pod_has_the_watching_pod_settle_at_once(feature: str, fleet: str,
                                                                      webhooks: WebhookServer) -> None:
    with FakeOpenAI(fake_config(complete_seconds=0.2, webhook_url=webhooks.url, webhook_secret=SECRET)) as fake:
        slow = {"poll_min_seconds": 3_600, "poll_max_seconds": 3_600}
        watching = gateway(fake, feature, fleet, **slow)
        receiving = gateway(fake, feature, fleet, **slow)
        webhooks.receiver = receiving.webhooks(secret=SECRET)  # the load balancer chose this pod
        with watching.scope(feature=feature):
            watching.openai(api_key="sk-fake").responses.create(model=MODEL, input="Hi.", background=True)
        until(lambda: watching.background.pending() == 0)
        assert receiving.stats["background_webhooks"] == 1 and receiving.background.pending() == 0
        assert watching.stats["background_settled_usage"] == 1  # its own hold, settled by its own pod
        until(lambda: spent(watching) == pytest.approx((billed(fake), 0.0), abs=1e-8))
        for gate in (watching, receiving):
            gate.close()


def test_a_webhook_with_a_bad_or_stale_signature_is_refused(feature: str, webhooks: WebhookServer) -> None:
    wrong = "whsec_" + "bm90LXRoZS1yaWdodC1zZWNyZXQtYXQtYWxsLTEyMzQ="
    with FakeOpenAI(fake_config(complete_seconds=0.2, webhook_url=webhooks.url, webhook_secret=wrong)) as fake:
        gate = gateway(fake, feature)
        receiver = webhooks.receiver = gate.webhooks(secret=SECRET)
        with gate.scope(feature=feature):
            gate.openai(api_key="sk-fake").responses.create(model=MODEL, input="Hi.", background=True)
        until(lambda: len(fake.webhooks()) == 1)
        assert fake.webhooks()[0].status == 400  # refused: settled by polling all the same
        until(lambda: gate.background.pending() == 0)
        assert gate.stats["background_webhooks_rejected"] == 1 and gate.stats["background_webhooks"] == 0
        assert gate.stats["background_settled_usage"] == 1
        until(lambda: spent(gate) == pytest.approx((billed(fake), 0.0), abs=1e-8))

        body = b'{"id":"evt_1","object":"event","type":"response.completed","created_at":1,"data":{"id":"resp_x"}}'
        now = int(time.time())
        good = {"webhook-id": "evt_1", "webhook-timestamp": str(now), "webhook-signature": sign(SECRET, "evt_1", now, body)}
        assert receiver.handle(body, good).type == "response.completed"  # an id nobody watches: nothing to do
        assert receiver.handle(body, [(k.encode(), v.encode()) for k, v in good.items()]).type == "response.completed"
        with pytest.raises(WebhookRejected, match="signing secret"):
            receiver.handle(body.replace(b"resp_x", b"resp_y"), good)  # the body changed under its signature
        stale = now - 3_600
        old = {**good, "webhook-timestamp": str(stale), "webhook-signature": sign(SECRET, "evt_1", stale, body)}
        with pytest.raises(WebhookRejected, match="too old"):
            receiver.handle(body, old)
        with pytest.raises(WebhookRejected, match="webhook-signature"):
            receiver.handle(body, {k: v for k, v in good.items() if k != "webhook-signature"})
        with pytest.raises(fg.ConfigError, match="OPENAI_WEBHOOK_SECRET"):
            gate.webhooks(secret="")
        gate.close()


# -- a fleet finishes what a pod left ----------------------------------------------------------


def test_a_stopped_gateway_hands_its_calls_to_another_that_settles_them(feature: str, fleet: str,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-fake")  # the fleet's key: a pod taking over polls with its own
    # It ends well after the first pod stops, on a busy machine too.
    with FakeOpenAI(fake_config(complete_seconds=3.0)) as fake:
        first = gateway(fake, feature, fleet, claim_seconds=1.0)
        with first.scope(feature=feature):
            first.openai(api_key="sk-fake").responses.create(model=MODEL, input="Long task.", background=True,
                                                             max_output_tokens=MAX_OUTPUT)
        held = spent(first)[1]
        assert held > 0 and first.background.fleet_pending() == 1
        first.close()  # mid-call: handed back to the fleet, its hold kept until it lapses
        assert first.stats["background_settled_usage"] == 0

        second = gateway(fake, feature, fleet, claim_seconds=1.0)
        until(lambda: second.background.fleet_pending() == 0)
        assert second.stats["background_taken_over"] == 1 and second.stats["background_settled_usage"] == 1
        [charge] = fake.bill()
        # The spend is exactly what was billed; the first pod's hold still counts until it lapses.
        until(lambda: spent(second) == pytest.approx((charge.dollars, held), abs=1e-8))
        second.close()


#: A pod that makes a background call and dies at once, without closing its gateway.
DYING_POD = """
import os, sys
import fleetgate as fg
base_url, redis_url, feature = sys.argv[1:4]
gate = fg.Gateway(base_url=base_url, redis_url=redis_url,
                  budgets={"limits": [{"scope": "feature", "name": feature, "dollars": 10.0}]},
                  background={"claim_seconds": 1.0, "poll_min_seconds": 3600, "poll_max_seconds": 3600})
with gate.scope(feature=feature):
    answer = gate.openai(api_key="sk-fake").responses.create(
        model="gpt-4.1-mini", input="Work on it while I am gone.", background=True, max_output_tokens=300)
print(answer.id, flush=True)
os._exit(0)
"""


def test_the_calls_of_a_pod_that_died_are_taken_over_once_its_claims_lapse(feature: str, fleet: str,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-fake")
    with FakeOpenAI(fake_config(complete_seconds=0.2)) as fake:
        died = subprocess.run([sys.executable, "-c", DYING_POD, fake.base_url, fleet, feature], capture_output=True,
                              text=True, env=dict(os.environ), timeout=120)
        assert died.returncode == 0, died.stderr
        response_id = died.stdout.strip()
        assert response_id.startswith("resp_")
        survivor = gateway(fake, feature, fleet, claim_seconds=1.0)
        held = spent(survivor)[1]
        assert held > 0  # the dead pod's hold, until it lapses
        until(lambda: survivor.background.fleet_pending() == 0)
        assert survivor.stats["background_taken_over"] == 1 and survivor.stats["background_settled_usage"] == 1
        [charge] = fake.bill()
        until(lambda: spent(survivor) == pytest.approx((charge.dollars, held), abs=1e-8))
        survivor.close()


def test_the_fleets_record_is_claimed_by_one_pod_at_a_time(store_url: str) -> None:
    store = RedisPending(store_url)
    store.release(store.renew([], "x", 1.0), "x")
    call = PendingCall(f"resp_{uuid.uuid4().hex}", "http://127.0.0.1:9/v1/responses", MODEL, time.time(),
                       time.time() + 60, 10, 20, 0.5, project="proj_a", budgets=[("feature:a:day", 5.0, "day")],
                       recorded=True, feature="a")
    store.add(call, "pod-a", 60.0)
    assert store.renew([call.response_id], "pod-a", 60.0) == [call.response_id]
    assert store.renew([call.response_id], "pod-b", 60.0) == []  # not pod-b's
    assert call.response_id not in [c.response_id for c in store.take("pod-b", 60.0, 100)]  # claimed
    assert not store.finish(call.response_id, "pod-b")
    store.release([call.response_id], "pod-a")  # pod-a hands it back
    [taken] = [c for c in store.take("pod-b", 60.0, 100) if c.response_id == call.response_id]
    assert taken == call
    assert store.renew([call.response_id], "pod-a", 60.0) == []  # pod-a lost it
    assert store.mark_due(call.response_id) and store.due([call.response_id]) == [call.response_id]
    assert store.due([call.response_id]) == []
    assert store.finish(call.response_id, "pod-b") and not store.mark_due(call.response_id)
    store.close()


def test_a_response_the_api_forgot_is_spent_at_its_worst_case(feature: str, fleet: str,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-fake")
    with FakeOpenAI(fake_config(complete_seconds=0.1, keep_seconds=0.2)) as fake:
        first = gateway(fake, feature, fleet, claim_seconds=1.0, poll_min_seconds=3_600, poll_max_seconds=3_600)
        with first.scope(feature=feature):
            answer = first.openai(api_key="sk-fake").responses.create(model=MODEL, input="Forget me.",
                                                                      background=True, max_output_tokens=MAX_OUTPUT)
        worst = spent(first)[1]
        first.close()
        plain = httpx2.Client(base_url=fake.base_url, headers={"authorization": "Bearer sk-fake"})
        until(lambda: plain.get(f"/responses/{answer.id}").status_code == 404)  # ended, then forgotten
        plain.close()

        second = gateway(fake, feature, fleet, claim_seconds=1.0)
        until(lambda: second.background.fleet_pending() == 0)
        assert second.stats["background_settled_worst"] == 1
        [charge] = fake.bill()
        assert charge.dollars is not None and charge.dollars < worst
        until(lambda: spent(second)[0] == pytest.approx(worst, abs=1e-8))  # never released
        second.close()


def test_an_embedded_gateway_closed_mid_call_spends_the_worst_case(feature: str) -> None:
    with FakeOpenAI(fake_config(complete_seconds=600)) as fake:
        gate = gateway(fake, feature)
        with gate.scope(feature=feature):
            gate.openai(api_key="sk-fake").responses.create(model=MODEL, input="Slow.", background=True)
        worst = spent(gate)[1]
        gate.close()  # nobody else could settle it
        assert gate.stats["background_settled_worst"] == 1 and gate.background.pending() == 0
        assert gate.stats["settled_from_estimate"] == 1  # its quota kept at what upstream counted
        until(lambda: spent(gate) == pytest.approx((worst, 0.0), abs=1e-8))


# -- bounded, and counted ----------------------------------------------------------------------


def test_pending_calls_are_bounded_and_counted_in_stats_and_metrics(feature: str, fleet: str) -> None:
    with FakeOpenAI(fake_config(complete_seconds=600)) as fake:
        gate = gateway(fake, feature, fleet, max_pending=2)
        client = gate.openai(api_key="sk-fake", max_retries=0)
        with gate.scope(feature=feature):
            ids = [client.responses.create(model=MODEL, input=f"Task {i}.", background=True).id for i in range(2)]
            with pytest.raises(fg.QueueFull, match=r"max_pending") as refused:
                client.responses.create(model=MODEL, input="One too many.", background=True)
            client.responses.create(model=MODEL, input="Not in the background.")  # not watched: not bounded
        assert refused.value.lane == "background" and refused.value.limit == 2
        assert fake.counters(MODEL).requests == 3  # the refused one was never sent
        assert gate.stats["background_refused"] == 1 and gate.background.pending() == 2
        registry = CollectorRegistry()
        registry.register(BackgroundCollector(gate.background, gate.stats))
        text = generate_latest(registry).decode()
        assert 'fleetgate_background_pending{scope="pod"} 2.0' in text
        assert 'fleetgate_background_pending{scope="fleet"} 2.0' in text
        for response_id in ids:
            client.responses.cancel(response_id)
        until(lambda: gate.background.pending() == 0)
        text = generate_latest(registry).decode()
        assert 'fleetgate_background_settled_total{how="usage"} 2.0' in text
        assert 'fleetgate_background_pending{scope="fleet"} 0.0' in text
        assert len(fake.bill()) == 3  # the call not in the background, and the two cancelled mid-run
        until(lambda: spent(gate) == pytest.approx((billed(fake), 0.0), abs=1e-8))
        gate.close()


def test_with_the_store_down_a_pod_still_settles_its_own_calls(feature: str, caplog: pytest.LogCaptureFixture) -> None:
    with FakeOpenAI(fake_config(complete_seconds=0.2)) as fake:
        gate = gateway(fake, feature, "redis://127.0.0.1:1/0")  # nothing listens there
        client = gate.openai(api_key="sk-fake", max_retries=0)
        with gate.scope(feature=feature):
            for i in range(3):
                client.responses.create(model=MODEL, input=f"Task {i}.", background=True)
        until(lambda: gate.background.pending() == 0)
        assert gate.stats["background_settled_usage"] == 3 and gate.stats["background_store_errors"] >= 3
        said = [r.getMessage() for r in caplog.records if "background calls' Redis" in r.getMessage()]
        assert len(said) == 1 and "keeps watching and settling its own" in said[0]  # once per outage
        gate.close()


def test_a_call_watched_while_the_store_was_down_is_recorded_once_it_is_back(redis_rig: RedisRig,
                                                                             feature: str) -> None:
    url = redis_rig.start_standalone()
    node = redis_rig.nodes[-1]
    with FakeOpenAI(fake_config(complete_seconds=600)) as fake:
        gate = gateway(fake, feature, url, claim_seconds=0.6)
        redis_rig.stop_node(node)  # an outage
        client = gate.openai(api_key="sk-fake", max_retries=0)
        with gate.scope(feature=feature):
            answer = client.responses.create(model=MODEL, input="During the outage.", background=True)
        assert gate.stats["background_store_errors"] >= 1 and gate.background.pending() == 1
        redis_rig.restart(node)
        until(lambda: gate.background.fleet_pending() == 1)  # recorded for the fleet now
        client.responses.cancel(answer.id)
        until(lambda: gate.background.pending() == 0)
        # Settled from its usage by this pod (not dropped as if another pod had taken it).
        assert gate.stats["background_settled_usage"] == 1 and gate.background.fleet_pending() == 0
        gate.close()


def test_each_poll_decides_to_wait_longer_or_to_settle_and_how() -> None:
    settings = BackgroundSettings(poll_min_seconds=1.0, poll_max_seconds=8.0)
    running, usage = Polled("in_progress"), {"input_tokens": 5, "output_tokens": 7, "total_tokens": 12}
    assert [decide(running, wait, settings, overdue=False) for wait in (1.0, 4.0, 8.0)] == [
        Decision(None, 2.0), Decision(None, 8.0), Decision(None, 8.0)]  # doubled, up to the last
    assert decide(Polled("completed", usage, "flex"), 2.0, settings, overdue=False) == Decision("usage")
    assert decide(Polled("incomplete", usage), 2.0, settings, overdue=True) == Decision("usage")
    assert decide(Polled("cancelled"), 2.0, settings, overdue=False) == Decision("nothing")
    assert decide(Polled("missing"), 2.0, settings, overdue=False) == Decision("worst")  # never released
    assert decide(Polled("unreachable", reason="HTTP 503"), 2.0, settings, overdue=False) == Decision(None, 4.0)
    assert decide(Polled("unreachable"), 2.0, settings, overdue=True) == Decision("worst")
    assert decide(running, 2.0, settings, overdue=True) == Decision("worst")
    with pytest.raises(fg.ConfigError, match="poll_max_seconds"):
        fg.Gateway(background={"poll_min_seconds": 5, "poll_max_seconds": 1})


@pytest.mark.parametrize("stream", [False, True], ids=["answer", "stream left early"])
def test_a_background_call_through_a_deployment_is_polled_there_with_its_key(
        stream: bool, feature: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A model served by a deployment with a key of its own: its background responses (also
    one whose stream the caller left after its first event) are polled at that deployment,
    with that key (the caller's would be refused: they could not be followed and would be
    settled at their worst), and settled from their usage."""
    monkeypatch.setenv("FG_BG_DEPLOYMENT_KEY", "sk-deployment-key-42")
    config = FakeConfig(answer_words=120, api_key="sk-deployment-key-42",
                        background=BackgroundTimings(complete_seconds=0.3))
    with FakeOpenAI(config) as fake:
        gate = fg.Gateway(budgets={"limits": [{"scope": "feature", "name": feature, "dollars": 10.0},
                                              {"scope": "deployment", "name": "project", "dollars": 10.0}]},
                          background=FAST_POLLS, deployments={MODEL: [fg.ModelDeployment(
                              name="project", base_url=fake.base_url, api_key_env="FG_BG_DEPLOYMENT_KEY")]})
        client = gate.openai(api_key="sk-caller", max_retries=0)
        before = deployment_cost("project")
        with gate.scope(feature=feature):
            for i in range(3):
                if stream:
                    events = client.responses.create(model=MODEL, input=f"Story {i}.", background=True, stream=True,
                                                     max_output_tokens=MAX_OUTPUT)
                    assert next(iter(events)).type == "response.created"
                    events.close()  # left early: the response runs on upstream
                else:
                    answer = client.responses.create(model=MODEL, input=f"Story {i}.", background=True,
                                                     max_output_tokens=MAX_OUTPUT)
                    assert answer.status == "queued"
        assert gate.stats["background_watched"] == 3
        until(lambda: gate.background.pending() == 0)
        assert gate.stats["background_settled_usage"] == 3, "not settled from the response's own usage"
        until(lambda: spent(gate, "feature") == pytest.approx((billed(fake), 0.0), abs=1e-8))
        # Its spend counts for the deployment, as an answer read at once does: on its budget too.
        until(lambda: spent(gate, "deployment") == pytest.approx((billed(fake), 0.0), abs=1e-8))
        assert deployment_cost("project") - before == pytest.approx(billed(fake), abs=1e-9)
        gate.close()


def deployment_cost(deployment: str) -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value("fleetgate_deployment_cost_dollars_total",
                                     {"model": MODEL, "deployment": deployment}) or 0.0


def test_a_pod_taking_over_polls_at_the_deployment_with_its_key(feature: str, fleet: str,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A pod stops with a background call made at a deployment with a key of its own;
    the pod that takes it over polls it there with that deployment's key (read from its own
    environment: the fleet's record never holds a key), not the fleet's OPENAI_API_KEY."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-fleet-key-refused-there")
    monkeypatch.setenv("FG_BG_TAKEOVER_KEY", "sk-deployment-key-77")
    config = FakeConfig(answer_words=120, api_key="sk-deployment-key-77",
                        background=BackgroundTimings(complete_seconds=3.0))  # ends after the first pod stops
    with FakeOpenAI(config) as fake:
        def pod() -> fg.Gateway:
            return fg.Gateway(redis_url=fleet, background={**FAST_POLLS, "claim_seconds": 1.0},
                              budgets={"limits": [{"scope": "feature", "name": feature, "dollars": 10.0},
                                                  {"scope": "deployment", "name": "project", "dollars": 10.0}]},
                              deployments={MODEL: [fg.ModelDeployment(name="project", base_url=fake.base_url,
                                                                      api_key_env="FG_BG_TAKEOVER_KEY")]})
        first = pod()
        with first.scope(feature=feature):
            first.openai(api_key="sk-caller").responses.create(model=MODEL, input="Long task.", background=True,
                                                               max_output_tokens=MAX_OUTPUT)
        first.close()  # mid-call: handed back to the fleet
        second = pod()
        until(lambda: second.background.fleet_pending() == 0)
        assert second.stats["background_taken_over"] == 1 and second.stats["background_settled_usage"] == 1
        # The pod taking it over spends its cost on the deployment's budget too, recorded once.
        assert spent(second, "deployment")[0] == pytest.approx(billed(fake), abs=1e-8)
        assert spent(second, "feature")[0] == pytest.approx(billed(fake), abs=1e-8)
        recorded = second.budgets.ledger.report([time.strftime("%Y-%m-%d", time.gmtime())])
        assert sum(row[-1] for row in recorded if row[2] == feature) == pytest.approx(billed(fake), abs=1e-8)
        second.close()
