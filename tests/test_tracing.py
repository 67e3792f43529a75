"""OpenTelemetry spans of gated requests, in the GenAI semantic conventions, with no
prompt or answer in them."""

from __future__ import annotations

import asyncio

import openai
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import fleetgate as fg
from fleetgate.testing.fake_openai import FakeConfig, FakeOpenAI, Fault

MODEL = "gpt-4.1-mini"
PROMPT = "MARKER-tracing-prompt Where is my parcel?"


@pytest.fixture
def spans() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


@pytest.mark.fake_openai(config=FakeConfig(faults=[Fault(kind="error", model="gpt-4.1", status=503)]))
def test_one_client_span_per_request_in_genai_conventions(
        fake_openai: FakeOpenAI, spans: tuple[TracerProvider, InMemorySpanExporter]) -> None:
    provider, exporter = spans
    gate = fg.Gateway(base_url=fake_openai.base_url, tracer_provider=provider, cache={"enabled": True},
                      breakers={"enabled": False})
    client = gate.openai(api_key="sk-test", max_retries=0)
    parent = provider.get_tracer("app").start_as_current_span("handle ticket")
    with parent, gate.scope(feature="support"):
        answer = client.chat.completions.create(model=MODEL, temperature=0, max_tokens=50,
                                                messages=[{"role": "user", "content": PROMPT}])
        client.chat.completions.create(model=MODEL, temperature=0, max_tokens=50,
                                       messages=[{"role": "user", "content": PROMPT}])
        with pytest.raises(openai.InternalServerError):
            client.chat.completions.create(model="gpt-4.1", messages=[{"role": "user", "content": PROMPT}])
        client.embeddings.create(model="text-embedding-3-small", input=PROMPT)
    finished = exporter.get_finished_spans()
    app = next(s for s in finished if s.name == "handle ticket")
    ours = [s for s in finished if s.instrumentation_scope.name == "fleetgate"]
    assert [s.name for s in ours] == [f"chat {MODEL}", f"chat {MODEL}", "chat gpt-4.1",
                                      "embeddings text-embedding-3-small"]
    first, hit, failed, embedded = ours
    assert all(s.kind == SpanKind.CLIENT and s.parent is not None and s.parent.span_id == app.context.span_id
               for s in ours)
    a = first.attributes or {}
    assert a["gen_ai.operation.name"] == "chat" and a["gen_ai.provider.name"] == "openai"
    assert a["gen_ai.request.model"] == MODEL and a["gen_ai.request.max_tokens"] == 50
    assert a["gen_ai.request.temperature"] == 0 and a["server.address"] == "127.0.0.1"
    assert a["gen_ai.response.id"] == answer.id and a["gen_ai.response.finish_reasons"] == ("stop",)
    assert answer.usage is not None
    assert a["gen_ai.usage.input_tokens"] == answer.usage.prompt_tokens
    assert a["gen_ai.usage.output_tokens"] == answer.usage.completion_tokens
    assert a["fleetgate.tier"] == "primary" and a["fleetgate.feature"] == "support"
    assert (hit.attributes or {})["fleetgate.cache"] == "hit"
    assert failed.status.status_code == StatusCode.ERROR and (failed.attributes or {})["error.type"] == "503"
    assert (embedded.attributes or {})["gen_ai.operation.name"] == "embeddings"
    everything = repr([(s.name, dict(s.attributes or {}), [e.attributes for e in s.events]) for s in ours])
    assert "MARKER" not in everything
    assert answer.choices[0].message.content not in everything
    gate.close()


def test_async_failures_and_refusals_are_marked(fake_openai: FakeOpenAI,
                                                spans: tuple[TracerProvider, InMemorySpanExporter]) -> None:
    provider, exporter = spans
    gate = fg.Gateway(base_url=fake_openai.base_url, tracer_provider=provider,
                      budgets={"limits": [{"name": "capped", "scope": "feature", "dollars": 1e-9}]})
    broken = fg.Gateway(base_url="http://127.0.0.1:9/v1", tracer_provider=provider)  # nothing listens there

    async def main() -> None:
        with gate.scope(feature="capped"):
            with pytest.raises(fg.BudgetExceeded):
                await gate.async_openai(api_key="sk-test").chat.completions.create(
                    model=MODEL, messages=[{"role": "user", "content": PROMPT}])
        with pytest.raises(openai.APIConnectionError):
            await broken.async_openai(api_key="sk-test", max_retries=0).chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": PROMPT}])

    asyncio.run(main())
    refused, failed = exporter.get_finished_spans()
    assert (refused.attributes or {})["fleetgate.refused"] is True and refused.status.status_code == StatusCode.ERROR
    assert (refused.attributes or {})["error.type"] == "429"
    assert failed.status.status_code == StatusCode.ERROR and (failed.attributes or {})["error.type"] == "ConnectError"


def test_disabled_tracing_makes_no_spans(fake_openai: FakeOpenAI,
                                        spans: tuple[TracerProvider, InMemorySpanExporter]) -> None:
    provider, exporter = spans
    gate = fg.Gateway(base_url=fake_openai.base_url, tracer_provider=provider, tracing={"enabled": False})
    assert gate.tracer is None
    gate.openai(api_key="sk-test").chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    assert exporter.get_finished_spans() == ()
