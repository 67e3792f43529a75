"""WebSocket mode (``client.responses.connect()``) and Realtime (``client.realtime.connect()``)
through the gateway, with the real openai SDK against FakeOpenAI: every ``response.create``
frame admitted by the budgets and quotas before it is sent, and settled to what the fake
billed; refusals raised on send without the frame reaching the fake; a socket closed
mid-response settled from its estimate."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest

import fleetgate as fg
from fleetgate.estimate import UsageCounts, estimate_request, usage_counts
from fleetgate.testing.fake_openai import FakeConfig, FakeOpenAI, Fault, Latency, ModelLimits
from tests.polling import until
from tests.scrape import scrape_wsgi, total

MODEL = "gpt-4.1-mini"
#: Holds every response after ``response.created``: closing the socket then is mid-response.
HELD = FakeConfig(faults=[Fault(kind="latency", latency=Latency(ms=600_000))])


def gateway(fake: FakeOpenAI, dollars: float = 1.0, **overrides: Any) -> fg.Gateway:
    settings: dict[str, Any] = {
        "base_url": fake.base_url,
        "models": {MODEL: fg.QuotaLimits(requests_per_minute=6_000, tokens_per_minute=1_000_000)},
        "budgets": {"limits": [{"scope": "feature", "dollars": dollars}]},
    }
    settings.update(overrides)
    return fg.Gateway(**settings)


def billed(fake: FakeOpenAI) -> float:
    return sum(c.dollars or 0.0 for c in fake.bill())


def spent(gate: fg.Gateway, feature: str) -> float:
    return dict(gate.costs(by="feature")).get(feature, 0.0)


def spent_as_billed(gate: fg.Gateway, fake: FakeOpenAI, feature: str, responses: int) -> None:
    """The budget's spend (settled in the background) comes to exactly what the fake billed."""
    until(lambda: len(fake.bill()) == responses and spent(gate, feature) == pytest.approx(billed(fake), rel=1e-9))
    assert billed(fake) > 0


def error_code(event: Any) -> Any:
    """An ``error`` event's code (older SDKs leave a Responses WebSocket error a dict)."""
    error = event.error
    return error.get("code") if isinstance(error, dict) else error.code


def metric(gate: fg.Gateway, name: str, **labels: str) -> float:
    """The sum of `name`'s samples whose labels include `labels`."""
    return total(scrape_wsgi(gate.metrics_app()), name, **labels)


def realtime_item(text: str) -> dict[str, Any]:
    return {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}


# -- admitted and settled --------------------------------------------------------------------

def test_responses_frames_are_admitted_and_settled_to_the_bill(fake_openai: FakeOpenAI, redis_url: str,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    """Frames on two lanes, at three tiers: each settled from its own response's usage, at
    the tier it was served (the fleet's ledger on Redis equals the fake's bill), and each
    leaving a request record (the SDK's resource methods pass markers of parameters left
    out, which are not part of the frame)."""
    caplog.set_level(logging.INFO, logger="fleetgate.requests")
    gate = gateway(fake_openai, redis_url=redis_url)
    client = gate.openai(api_key="sk-fake")
    with gate.scope(user="u-42", feature="ws-sync"), client.responses.connect() as connection:
        connection.response.create(model=MODEL, input="Plan my week.", max_output_tokens=80, service_tier="flex")
        connection.send({"type": "response.create", "model": MODEL, "input": "And my weekend?",  # on lane "b"
                         "max_output_tokens": 40, "stream_id": "b"})
        connection.response.create(model=MODEL, input="Summarise both.", max_output_tokens=60,
                                   service_tier="priority")
        ended = []
        for event in connection:
            if event.type == "response.completed":
                ended.append(event.response.service_tier)
                if len(ended) == 3:
                    break
    assert sorted(ended) == ["default", "flex", "priority"]
    assert sorted(c.tier for c in fake_openai.bill()) == ["default", "flex", "priority"]
    spent_as_billed(gate, fake_openai, "ws-sync", 3)
    assert gate.stats["requests"] == 3 and gate.stats["settled_from_usage"] == 3
    records = [json.loads(r.getMessage()) for r in caplog.records if r.name == "fleetgate.requests"]
    assert [r["endpoint"] for r in records] == ["/responses"] * 3
    assert sorted(r["service_tier"] for r in records) == ["default", "flex", "priority"]
    assert metric(gate, "fleetgate_cost_dollars_total", service_tier="flex") > 0


def test_async_responses_frames_are_admitted_and_settled_to_the_bill(fake_openai: FakeOpenAI) -> None:
    gate = gateway(fake_openai)

    async def main() -> int:
        client = gate.async_openai(api_key="sk-fake")
        done = 0
        async with gate.scope(feature="ws-async"), client.responses.connect() as connection:
            await asyncio.gather(*(connection.response.create(model=MODEL, input=f"Question {i}?",
                                                               max_output_tokens=50) for i in range(4)))
            async for event in connection:
                if event.type == "response.completed":
                    done += 1
                    if done == 4:
                        break
        return done

    assert asyncio.run(main()) == 4
    spent_as_billed(gate, fake_openai, "ws-async", 4)
    assert gate.stats["settled_from_usage"] == 4


def test_realtime_responses_are_admitted_and_settled_to_the_bill(fake_openai: FakeOpenAI) -> None:
    gate = gateway(fake_openai)
    client = gate.openai(api_key="sk-fake")
    with gate.scope(feature="voice"), client.realtime.connect(model=MODEL) as connection:
        connection.session.update(session={"type": "realtime", "instructions": "Be brief.", "max_output_tokens": 30})
        connection.conversation.item.create(item=realtime_item("What is the capital of France?"))
        connection.response.create()
        connection.conversation.item.create(item=realtime_item("And of Italy?"))
        connection.response.create(response={"max_output_tokens": 20})
        done = 0
        for event in connection:
            if event.type == "response.done":
                assert event.response.usage is not None
                done += 1
                if done == 2:
                    break
    spent_as_billed(gate, fake_openai, "voice", 2)
    assert gate.stats["settled_from_usage"] == 2


def test_async_realtime_takes_its_model_from_session_update(fake_openai: FakeOpenAI) -> None:
    gate = gateway(fake_openai, budgets={"limits": [{"scope": "feature", "name": "voice", "dollars": 1.0}]})

    async def main() -> None:
        client = gate.async_openai(api_key="sk-fake")
        async with gate.scope(feature="voice"), client.realtime.connect(model="gpt-4.1") as connection:
            await connection.session.update(session={"type": "realtime", "model": MODEL})
            await connection.conversation.item.create(item=realtime_item("Hello there."))
            await connection.response.create()
            async for event in connection:
                if event.type == "response.done":
                    break

    asyncio.run(main())
    spent_as_billed(gate, fake_openai, "voice", 1)
    assert [c.model for c in fake_openai.bill()] == [MODEL]


# -- refused before sending ------------------------------------------------------------------

def test_a_budget_refusal_is_raised_on_send_and_the_frame_never_leaves(fake_openai: FakeOpenAI) -> None:
    gate = gateway(fake_openai, budgets={"limits": [{"scope": "feature", "name": "tiny", "dollars": 0.000001}]})
    client = gate.openai(api_key="sk-fake")
    with client.responses.connect() as connection:
        with gate.scope(feature="tiny"), pytest.raises(fg.BudgetExceeded) as refused:
            connection.response.create(model=MODEL, input="A long essay, please.", max_output_tokens=500)
        assert "tiny" in str(refused.value)
        with gate.scope(feature="other"):  # the connection goes on: other frames are sent
            connection.response.create(model=MODEL, input="Hi", max_output_tokens=20)
        for event in connection:
            if event.type == "response.completed":
                break
    assert fake_openai.counters(MODEL).requests == 1, "the refused frame never reached upstream"
    assert gate.stats["budget_refused"] == 1 and len(fake_openai.bill()) == 1


def test_an_async_budget_refusal_is_raised_on_send(fake_openai: FakeOpenAI) -> None:
    gate = gateway(fake_openai, dollars=0.000001)

    async def main() -> None:
        client = gate.async_openai(api_key="sk-fake")
        async with gate.scope(feature="tiny"), client.realtime.connect(model=MODEL) as connection:
            await connection.conversation.item.create(item=realtime_item("Tell me everything."))
            with pytest.raises(fg.BudgetExceeded):
                await connection.response.create(response={"max_output_tokens": 4_000})

    asyncio.run(main())
    assert fake_openai.counters(MODEL).requests == 0 and fake_openai.bill() == []
    assert spent(gate, "tiny") == 0.0


def test_frames_wait_for_quota_and_are_refused_past_their_deadline(fake_openai: FakeOpenAI) -> None:
    """A quota of one frame at a time: the second waits for room and is sent; one whose
    deadline comes first is refused on send, unsent."""
    gate = gateway(fake_openai, model_headroom=0,
                   models={MODEL: fg.QuotaLimits(requests_per_minute=60, burst_seconds=1)})
    client = gate.openai(api_key="sk-fake")
    with client.responses.connect() as connection:
        with gate.scope(feature="waits", deadline=30):
            connection.response.create(model=MODEL, input="First", max_output_tokens=20)
            connection.response.create(model=MODEL, input="Second", max_output_tokens=20)  # waits for room
        with gate.scope(feature="waits", deadline=0.05), pytest.raises(fg.RateLimited):
            connection.response.create(model=MODEL, input="Third", max_output_tokens=20)
        done = 0
        for event in connection:
            if event.type == "response.completed":
                done += 1
                if done == 2:
                    break
    assert fake_openai.counters(MODEL).requests == 2
    assert gate.stats["refused"] == 1
    spent_as_billed(gate, fake_openai, "waits", 2)


def test_async_frames_wait_for_quota(fake_openai: FakeOpenAI) -> None:
    gate = gateway(fake_openai, model_headroom=0,
                   models={MODEL: fg.QuotaLimits(requests_per_minute=60, burst_seconds=1)})

    async def main() -> None:
        client = gate.async_openai(api_key="sk-fake")
        async with gate.scope(feature="waits", deadline=30), client.responses.connect() as connection:
            await connection.response.create(model=MODEL, input="First", max_output_tokens=20)
            await connection.response.create(model=MODEL, input="Second", max_output_tokens=20)
            async with gate.scope(deadline=0.05):
                with pytest.raises(fg.RateLimited):
                    await connection.response.create(model=MODEL, input="Third", max_output_tokens=20)
            done = 0
            async for event in connection:
                if event.type == "response.completed":
                    done += 1
                    if done == 2:
                        break

    asyncio.run(main())
    assert fake_openai.counters(MODEL).requests == 2
    spent_as_billed(gate, fake_openai, "waits", 2)


@pytest.mark.fake_openai(config=FakeConfig(models={MODEL: ModelLimits(tokens_per_minute=100)}))
def test_an_upstream_refusal_releases_the_budget(fake_openai: FakeOpenAI) -> None:
    """Upstream's error event (here: over its tokens per minute) answers the frame: nothing
    was billed, so nothing is spent; and the fleet's view of the model's quota is emptied."""
    # A minute's burst of 60 requests, refilled at one a second: emptied, it stays so a while.
    gate = gateway(fake_openai, model_headroom=0, models={MODEL: fg.QuotaLimits(requests_per_minute=60,
                                                                                 burst_seconds=60)})
    client = gate.openai(api_key="sk-fake")
    with gate.scope(feature="big"), client.responses.connect() as connection:
        connection.response.create(model=MODEL, input="Hello", max_output_tokens=500)
        for event in connection:
            if event.type == "error":
                assert error_code(event) == "rate_limit_exceeded"
                break
        model_quota, _ = gate.quotas_for(MODEL, fg.Scope())
        assert model_quota is not None
        until(lambda: gate.limiter.try_acquire(model_quota, requests=0).remaining_requests == 0)
        with gate.scope(deadline=0.05), pytest.raises(fg.RateLimited):
            connection.response.create(model=MODEL, input="Hello", max_output_tokens=500)
    until(lambda: gate.stats["settled_from_failure"] == 1)
    assert spent(gate, "big") == 0.0 and gate.stats["settled_from_estimate"] == 0


@pytest.mark.fake_openai(config=FakeConfig(models={MODEL: ModelLimits(tokens_per_minute=100)}))
def test_an_upstream_refusal_of_a_realtime_frame_releases_the_budget(fake_openai: FakeOpenAI) -> None:
    """Realtime's error names the frame it answers (its ``event_id``)."""
    gate = gateway(fake_openai)
    client = gate.openai(api_key="sk-fake")
    with gate.scope(feature="big"), client.realtime.connect(model=MODEL) as realtime:
        realtime.response.create(response={"max_output_tokens": 500})
        for event in realtime:
            if event.type == "error":
                assert error_code(event) == "rate_limit_exceeded"
                break
    assert fake_openai.bill() == []
    until(lambda: gate.stats["settled_from_failure"] == 1)
    assert spent(gate, "big") == 0.0 and gate.stats["settled_from_estimate"] == 0


# -- closed mid-response ---------------------------------------------------------------------

def worst_settled(gate: fg.Gateway, text: str, max_output: int) -> float:
    """What a response lost in flight is settled to: its prompt and the most it could write."""
    estimate = estimate_request("/responses", {"model": MODEL, "input": text, "max_output_tokens": max_output},
                                gate.config.assumed_max_output_tokens)
    price = gate.prices.price(MODEL)
    assert price is not None
    return price.dollars(estimate.prompt_tokens, max_output)


@pytest.mark.fake_openai(config=HELD)
def test_a_socket_closed_mid_response_settles_it_from_its_estimate(fake_openai: FakeOpenAI) -> None:
    gate = gateway(fake_openai)
    client = gate.openai(api_key="sk-fake")
    with gate.scope(feature="closed"), client.responses.connect() as connection:
        connection.response.create(model=MODEL, input="Write slowly.", max_output_tokens=300)
        for event in connection:
            if event.type == "response.created":
                break  # the fake holds the rest: the socket closes mid-response
    until(lambda: spent(gate, "closed") > 0)
    assert spent(gate, "closed") == pytest.approx(worst_settled(gate, "Write slowly.", 300))
    assert gate.stats["settled_from_estimate"] == 1
    assert fake_openai.bill() == [], "the fake cancelled what was in flight"


@pytest.mark.fake_openai(config=HELD)
def test_an_async_socket_closed_mid_response_settles_it_from_its_estimate(fake_openai: FakeOpenAI) -> None:
    gate = gateway(fake_openai)

    async def main() -> None:
        client = gate.async_openai(api_key="sk-fake")
        async with gate.scope(feature="closed"), client.realtime.connect(model=MODEL) as connection:
            await connection.conversation.item.create(item=realtime_item("Write slowly."))
            await connection.response.create(response={"max_output_tokens": 300})
            async for event in connection:
                if event.type == "response.created":
                    break

    asyncio.run(main())
    until(lambda: spent(gate, "closed") > 0)
    assert spent(gate, "closed") == pytest.approx(worst_settled(gate, "Write slowly.", 300))
    assert fake_openai.bill() == []


# -- records and metrics ---------------------------------------------------------------------

def test_frames_are_recorded_and_counted_as_http_calls(fake_openai: FakeOpenAI,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="fleetgate.requests")
    gate = gateway(fake_openai)
    client = gate.openai(api_key="sk-fake")
    before = metric(gate, "fleetgate_requests_total", endpoint="/realtime", outcome="refused")
    with gate.scope(user="alice@example.com", feature="voice"), client.realtime.connect(model=MODEL) as connection:
        connection.conversation.item.create(item=realtime_item("Hello"))
        connection.response.create()
        for event in connection:
            if event.type == "response.done":
                break
        with pytest.raises(fg.BudgetExceeded):  # over the feature's $1.00 at its worst
            connection.response.create(response={"max_output_tokens": 10_000_000})
    records = [json.loads(r.getMessage()) for r in caplog.records if r.name == "fleetgate.requests"]
    assert [(r["endpoint"], r["model"], r["status"], r["feature"], r["refused"]) for r in records] == [
        ("/realtime", MODEL, 200, "voice", False), ("/realtime", MODEL, 429, "voice", True)]
    assert records[0]["cost_usd"] == pytest.approx(billed(fake_openai))
    assert records[0]["request_id"].startswith("resp_")
    assert records[0]["user"] and records[0]["user"] == records[1]["user"] and "alice" not in json.dumps(records)
    assert metric(gate, "fleetgate_requests_total", endpoint="/realtime", outcome="refused") == before + 1
    assert metric(gate, "fleetgate_refusals_total", reason="budget_exceeded") >= 1
    assert metric(gate, "fleetgate_requests_total", endpoint="/realtime", outcome="ok") >= 1
    assert "alice" not in str(scrape_wsgi(gate.metrics_app())), "a raw user id in a metric"
    assert gate.stats["requests"] == 2 and gate.stats["budget_refused"] == 1


def test_a_realtime_usage_is_read_with_its_own_names() -> None:
    """Realtime names its details ``input_token_details``: its cached tokens are priced
    (and recorded) as cached, as the Responses API's are."""
    usage = {"total_tokens": 1_230, "input_tokens": 1_200, "output_tokens": 30,
             "input_token_details": {"cached_tokens": 1_024, "text_tokens": 1_200, "audio_tokens": 0},
             "output_token_details": {"text_tokens": 30, "audio_tokens": 0}}
    assert usage_counts(usage) == UsageCounts(prompt=1_200, cached=1_024, output=30, reasoning=0)


# -- responses the server starts on its own ---------------------------------------------------

def test_realtime_responses_the_server_starts_are_counted_when_they_end(fake_openai: FakeOpenAI) -> None:
    """With turn detection the server answers a spoken turn without a response.create:
    nothing could be reserved before, but its spend and tokens are counted when it ends, in
    the scope of the connection's latest frame."""
    gate = gateway(fake_openai)
    client = gate.openai(api_key="sk-fake")
    with gate.scope(feature="voice"), client.realtime.connect(model=MODEL) as connection:
        connection.session.update(session={"type": "realtime", "instructions": "Answer briefly.",
                                           "turn_detection": {"type": "server_vad"}})
        connection.input_audio_buffer.append(audio="AAAA")
        connection.input_audio_buffer.commit()
        for event in connection:
            if event.type == "response.done":
                break
    spent_as_billed(gate, fake_openai, "voice", 1)
    assert gate.stats["requests"] == 1 and gate.stats["settled_from_usage"] == 1


@pytest.mark.fake_openai(config=HELD)
def test_an_async_response_the_server_started_is_counted_when_the_socket_closes(fake_openai: FakeOpenAI) -> None:
    gate = gateway(fake_openai)

    async def main() -> None:
        client = gate.async_openai(api_key="sk-fake")
        async with gate.scope(feature="voice"), client.realtime.connect(model=MODEL) as connection:
            await connection.session.update(session={"type": "realtime", "max_output_tokens": 200,
                                                     "turn_detection": {"type": "server_vad"}})
            await connection.input_audio_buffer.commit()
            async for event in connection:
                if event.type == "response.created":
                    break  # held by the fake: closed mid-response

    asyncio.run(main())
    until(lambda: spent(gate, "voice") > 0)
    price = gate.prices.price(MODEL)
    assert price is not None  # nothing said in text: the most it could have written
    assert spent(gate, "voice") == pytest.approx(price.dollars(0, 200))
    assert gate.stats["settled_from_estimate"] == 1 and fake_openai.bill() == []


# -- the fleet's degradation modes -----------------------------------------------------------

def test_the_fleets_mode_refuses_frames_it_cannot_serve(fake_openai: FakeOpenAI) -> None:
    """A socket has no cached or static answer: in cached-only mode its frames are refused;
    in maintenance, once their deadline passed; back in full mode they go."""
    gate = gateway(fake_openai)
    client = gate.openai(api_key="sk-fake")
    with gate.scope(feature="modes"), client.responses.connect() as connection:
        gate.modes.set("cached-only", for_seconds=600, reason="upstream outage")
        with pytest.raises(fg.ServiceDegraded):
            connection.response.create(model=MODEL, input="Hello", max_output_tokens=20)
        gate.modes.set("maintenance", for_seconds=600, reason="migration")
        with gate.scope(deadline=0.05), pytest.raises(fg.ServiceDegraded):
            connection.response.create(model=MODEL, input="Hello", max_output_tokens=20)
        gate.modes.clear()
        connection.response.create(model=MODEL, input="Hello", max_output_tokens=20)
        for event in connection:
            if event.type == "response.completed":
                break
    assert fake_openai.counters(MODEL).requests == 1 and gate.stats["mode_refused"] == 2
    spent_as_billed(gate, fake_openai, "modes", 1)


def test_async_frames_wait_out_maintenance(fake_openai: FakeOpenAI) -> None:
    gate = gateway(fake_openai)

    async def main() -> None:
        client = gate.async_openai(api_key="sk-fake")
        async with gate.scope(feature="modes", deadline=30), client.responses.connect() as connection:
            gate.modes.set("maintenance", for_seconds=0.2, reason="a short one")
            await connection.response.create(model=MODEL, input="Hello", max_output_tokens=20)  # waits it out
            async for event in connection:
                if event.type == "response.completed":
                    break

    asyncio.run(main())
    assert fake_openai.counters(MODEL).requests == 1 and gate.stats["mode_refused"] == 0
    spent_as_billed(gate, fake_openai, "modes", 1)


# -- traces ----------------------------------------------------------------------------------

@pytest.mark.fake_openai(config=FakeConfig(faults=[Fault(kind="latency", model="gpt-4.1", latency=Latency(ms=600_000))]))
def test_each_frame_has_a_client_span(fake_openai: FakeOpenAI) -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import StatusCode

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    gate = gateway(fake_openai, tracer_provider=provider,
                   budgets={"limits": [{"scope": "feature", "name": "tiny", "dollars": 0.000001}]})
    client = gate.openai(api_key="sk-fake")
    with client.responses.connect() as connection:
        with gate.scope(feature="voice"):
            connection.response.create(model=MODEL, input="MARKER Hello", max_output_tokens=20)
            for event in connection:
                if event.type == "response.completed":
                    answered = event.response
                    break
        with gate.scope(feature="tiny"), pytest.raises(fg.BudgetExceeded):
            connection.response.create(model=MODEL, input="Hello", max_output_tokens=500)
        connection.response.create(model="gpt-4.1", input="Held by the fake", max_output_tokens=20)
        for event in connection:
            if event.type == "response.created":
                break  # closed mid-response
    spans = [s for s in exporter.get_finished_spans() if s.instrumentation_scope.name == "fleetgate"]
    assert [s.name for s in spans] == [f"chat {MODEL}", f"chat {MODEL}", "chat gpt-4.1"]
    done, refused, lost = (dict(s.attributes or {}) for s in spans)
    assert done["gen_ai.response.id"] == answered.id and done["fleetgate.feature"] == "voice"
    assert answered.usage is not None and done["gen_ai.usage.output_tokens"] == answered.usage.output_tokens
    assert refused["fleetgate.refused"] is True and spans[1].status.status_code == StatusCode.ERROR
    assert lost["error.type"] == "ConnectionAbortedError" and spans[2].status.status_code == StatusCode.ERROR
    assert "MARKER" not in repr([dict(s.attributes or {}) for s in spans])


# -- reconnected -------------------------------------------------------------------------------

@pytest.mark.fake_openai(config=FakeConfig(faults=[Fault(kind="reset", model="gpt-4.1")]))
def test_a_socket_cut_mid_response_is_settled_when_the_sdk_reconnects(fake_openai: FakeOpenAI) -> None:
    """The server cuts the socket after ``response.created``; the SDK reconnects: the lost
    response is settled from its estimate, and a frame sent while reconnecting goes on the
    new socket and is settled from its usage."""
    limits = fg.QuotaLimits(requests_per_minute=6_000, tokens_per_minute=1_000_000)
    gate = gateway(fake_openai, models={MODEL: limits, "gpt-4.1": limits})
    client = gate.openai(api_key="sk-fake")

    def reconnecting(event: Any) -> None:
        connection.response.create(model=MODEL, input="Again, please.", max_output_tokens=20)  # queued

    with gate.scope(feature="reconnect"), client.responses.connect(on_reconnecting=reconnecting,
                                                                   initial_delay=0.01) as connection:
        connection.response.create(model="gpt-4.1", input="Cut off", max_output_tokens=100)
        for event in connection:
            if event.type == "response.completed":
                assert event.response.model == MODEL
                break
        price = gate.prices.price("gpt-4.1")
        assert price is not None
        lost = price.dollars(estimate_request("/responses", {"model": "gpt-4.1", "input": "Cut off"}, 1024)
                             .prompt_tokens, 100)
        # Settled when the socket was lost, not only once the connection is closed.
        until(lambda: spent(gate, "reconnect") == pytest.approx(lost + billed(fake_openai)))
    assert [c.model for c in fake_openai.bill()] == [MODEL]
    assert gate.stats["settled_from_estimate"] == 1 and gate.stats["settled_from_usage"] == 1
