"""Structured output through the gateway against FakeOpenAI: each recovery step (as is,
fenced, surrounded by prose), truncated and wrong-schema answers retried with the errors
fed back, the retry bound, the typed error, and the async twin."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Iterator
from types import SimpleNamespace

import pytest
from pydantic import BaseModel

import fleetgate as fg
from fleetgate.testing.fake_openai import FakeConfig, FakeOpenAI, Fault
from fleetgate.validate import accumulate, accumulate_async, recover, request_for, strict_schema


class Ticket(BaseModel):
    title: str
    priority: int
    tags: list[str]
    urgent: bool


def gate_for(fake: FakeOpenAI) -> tuple[fg.Gateway, object]:
    gate = fg.Gateway(base_url=fake.base_url, breakers={"enabled": False})
    return gate, gate.openai(api_key="sk-fake", max_retries=0)


@pytest.mark.fake_openai(config=FakeConfig())
def test_a_structured_answer_validates_as_it_is(fake_openai: FakeOpenAI) -> None:
    gate, client = gate_for(fake_openai)
    ticket = gate.complete("File a ticket: the login page is down", Ticket, model="gpt-4.1-mini", client=client)
    assert isinstance(ticket, Ticket) and ticket.tags
    assert fake_openai.counters("gpt-4.1-mini").requests == 1


@pytest.mark.parametrize("kind", ["markdown_fence", "trailing_prose"])
def test_answers_in_fences_or_between_prose_are_recovered(kind: str) -> None:
    with FakeOpenAI(FakeConfig(faults=[Fault(kind=kind)])) as fake:  # type: ignore[arg-type]
        gate, client = gate_for(fake)
        ticket = gate.complete("File a ticket: printer jam", Ticket, model="gpt-4.1-mini", client=client)
        assert isinstance(ticket, Ticket) and fake.counters("gpt-4.1-mini").requests == 1


@pytest.mark.fake_openai(config=FakeConfig(faults=[Fault(kind="wrong_schema", end=1.5)]))
def test_a_wrong_schema_is_retried_with_the_errors_fed_back(fake_openai: FakeOpenAI) -> None:
    gate, client = gate_for(fake_openai)
    with pytest.raises(fg.StructuredOutputError) as failed:
        gate.complete("File a ticket: slow VPN", Ticket, model="gpt-4.1-mini", client=client, retries=1)
    error = failed.value
    assert len(error.attempts) == 2 and fake_openai.counters("gpt-4.1-mini").requests == 2, "the bound holds"
    assert "title: Field required" in error.attempts[0].error and error.raw == error.attempts[-1].text
    assert "title" not in json.loads(error.raw)


@pytest.mark.fake_openai(config=FakeConfig(faults=[Fault(kind="wrong_schema", probability=0.6)]))
def test_a_retry_can_succeed_after_wrong_answers(fake_openai: FakeOpenAI) -> None:
    gate, client = gate_for(fake_openai)
    tickets = [gate.complete(f"File a ticket: issue {i}", Ticket, model="gpt-4.1-mini", client=client, retries=8)
               for i in range(5)]
    assert all(isinstance(t, Ticket) for t in tickets)
    assert fake_openai.counters("gpt-4.1-mini").requests > 5, "some answers were wrong and asked again"


@pytest.mark.fake_openai(config=FakeConfig())
def test_a_truncated_answer_says_so(fake_openai: FakeOpenAI) -> None:
    gate, client = gate_for(fake_openai)
    with pytest.raises(fg.StructuredOutputError, match="cut off at the output limit") as failed:
        gate.complete("File a ticket: broken chair", Ticket, model="gpt-4.1-mini", client=client, retries=0,
                      max_tokens=3)
    assert failed.value.attempts[0].finish_reason == "length"


@pytest.mark.fake_openai(config=FakeConfig())
def test_the_async_twin(fake_openai: FakeOpenAI) -> None:
    gate = fg.Gateway(base_url=fake_openai.base_url)

    async def main() -> Ticket:
        return await gate.complete_async("File a ticket: no coffee", Ticket, model="gpt-4o-mini",
                                         client=gate.async_openai(api_key="sk-fake", max_retries=0))

    assert isinstance(asyncio.run(main()), Ticket)


def test_recovery_steps_in_order() -> None:
    value = '{"title": "t", "priority": 1, "tags": [], "urgent": false}'
    assert recover(value, Ticket).title == "t"
    assert recover(f"```json\n{value}\n```", Ticket).title == "t"
    assert recover(f"Sure, here you go: {value} -- hope it helps {{not json}}", Ticket).title == "t"
    assert recover('Text with "quotes {" then ' + value, Ticket).priority == 1
    with pytest.raises(ValueError, match="no JSON value"):
        recover("no json here", Ticket)


def test_structured_outputs_where_the_model_has_them() -> None:
    assert request_for("gpt-4.1-mini", Ticket)["type"] == "json_schema"
    assert request_for("gpt-3.5-turbo", Ticket) == {"type": "json_object"}
    schema = strict_schema(Ticket)
    assert schema["additionalProperties"] is False and set(schema["required"]) == {"title", "priority", "tags",
                                                                                  "urgent"}


def chunk(text: str | None, finish: str | None = None) -> SimpleNamespace:
    return SimpleNamespace(choices=[SimpleNamespace(delta=SimpleNamespace(content=text), finish_reason=finish)])


@pytest.mark.fake_openai(config=FakeConfig())
def test_a_stream_is_accumulated_whole(fake_openai: FakeOpenAI) -> None:
    gate, client = gate_for(fake_openai)
    text, finish = accumulate(client.chat.completions.create(  # type: ignore[attr-defined]
        model="gpt-4.1-mini", stream=True, messages=[{"role": "user", "content": "Tell me a story"}]))
    assert text and finish == "stop"


@pytest.mark.fake_openai(config=FakeConfig(faults=[Fault(kind="cut_stream")]))
def test_a_broken_stream_raises_with_what_arrived(fake_openai: FakeOpenAI) -> None:
    gate, client = gate_for(fake_openai)
    with pytest.raises(fg.PartialResponseError) as cut:
        accumulate(client.chat.completions.create(  # type: ignore[attr-defined]
            model="gpt-4.1-mini", stream=True, messages=[{"role": "user", "content": "Tell me a story"}]))
    assert cut.value.content and cut.value.finish_reason is None

    async def main() -> None:
        aclient = gate.async_openai(api_key="sk-fake", max_retries=0)
        await accumulate_async(await aclient.chat.completions.create(
            model="gpt-4.1-mini", stream=True, messages=[{"role": "user", "content": "Tell me a story"}]))

    with pytest.raises(fg.PartialResponseError, match="broke|without a finish"):
        asyncio.run(main())


def test_a_stalled_stream_raises_after_the_idle_timeout() -> None:
    release = threading.Event()

    def stalls() -> Iterator[SimpleNamespace]:
        yield chunk("Hello")
        release.wait(10)  # stalls until the test is done
        yield chunk(" world", "stop")

    with pytest.raises(fg.PartialResponseError, match="nothing for 0.2 s") as stalled:
        accumulate(stalls(), idle_timeout=0.2)
    release.set()
    assert stalled.value.content == "Hello"

    async def astalls() -> AsyncIterator[SimpleNamespace]:
        yield chunk("Hi")
        await asyncio.sleep(10)
        yield chunk("!", "stop")

    with pytest.raises(fg.PartialResponseError) as astalled:
        asyncio.run(accumulate_async(astalls(), idle_timeout=0.2))
    assert astalled.value.content == "Hi"
    assert accumulate(iter([chunk("a"), chunk("b", "length")])) == ("ab", "length")
