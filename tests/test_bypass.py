"""An SDK client from the gateway given an http_client of its own: warned when that client
would bypass the gateway, quiet when it sends through the gateway's transport."""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import Callable
import httpx2
import openai
import pytest

import fleetgate as fg
from fleetgate.sdk import sends_through_gateway
from fleetgate.testing.fake_openai import FakeOpenAI

MSG = [{"role": "user", "content": "Hello"}]
MODEL = "gpt-4.1-mini"


def gateway(fake: FakeOpenAI) -> fg.Gateway:
    return fg.Gateway(base_url=fake.base_url,
                      models={MODEL: fg.QuotaLimits(requests_per_minute=6_000, tokens_per_minute=1_000_000)})


def test_a_foreign_http_client_is_warned_about_every_way_it_can_come(fake_openai: FakeOpenAI) -> None:
    gate = gateway(fake_openai)
    ways: dict[str, Callable[[httpx2.Client], openai.OpenAI]] = {
        "gate.openai": lambda own: gate.openai(api_key="sk-fake", http_client=own),
        "with_options": lambda own: gate.openai(api_key="sk-fake").with_options(http_client=own),
        "copy": lambda own: gate.openai(api_key="sk-fake").copy(http_client=own),
    }
    for way, make in ways.items():
        with pytest.warns(fg.BypassWarning) as record:
            client = make(httpx2.Client())
        assert len(record) == 1, way
        message = str(record[0].message)
        assert "bypass the gateway" in message and "httpx2.Client(transport=gate.transport(inner))" in message, way
        assert record[0].filename == __file__, f"{way}: the warning names the caller's line"
        # It says true: the call reaches upstream without the gateway seeing it.
        before = gate.stats["requests"], fake_openai.counters(MODEL).requests
        client.chat.completions.create(model=MODEL, messages=MSG, max_tokens=16)
        assert (gate.stats["requests"], fake_openai.counters(MODEL).requests) == (before[0], before[1] + 1), way


def test_a_legacy_httpx_client_is_warned_about_too(fake_openai: FakeOpenAI) -> None:
    import httpx  # the openai SDK still takes a legacy httpx client

    gate = gateway(fake_openai)
    with pytest.warns(fg.BypassWarning, match="httpx.Client"):
        gate.openai(api_key="sk-fake", http_client=httpx.Client())


def test_a_client_that_sends_through_the_gateway_is_not_warned_about(fake_openai: FakeOpenAI) -> None:
    gate = gateway(fake_openai)
    with warnings.catch_warnings():
        warnings.simplefilter("error", fg.BypassWarning)
        own = httpx2.Client(transport=gate.transport(httpx2.HTTPTransport(retries=1)))
        clients = [
            gate.openai(api_key="sk-fake"),
            gate.openai(api_key="sk-fake", http_client=own),
            gate.openai(api_key="sk-fake").with_options(timeout=30, max_retries=0),
            gate.openai(api_key="sk-fake").copy(http_client=own),
        ]
        for client in clients:
            client.chat.completions.create(model=MODEL, messages=MSG, max_tokens=16)
    assert gate.stats["requests"] == len(clients)


def test_sends_through_gateway_looks_at_every_transport(fake_openai: FakeOpenAI) -> None:
    gate = gateway(fake_openai)
    assert sends_through_gateway(httpx2.Client(transport=gate.transport()))
    assert sends_through_gateway(httpx2.AsyncClient(transport=gate.async_transport()))
    assert not sends_through_gateway(httpx2.Client())
    assert not sends_through_gateway(httpx2.Client(transport=gate.transport(),
                                                   mounts={"https://": httpx2.HTTPTransport()})), \
        "a mounted transport of its own lets some requests bypass the gateway"
    assert not sends_through_gateway(object())


def test_async_a_foreign_http_client_is_warned_about_every_way_it_can_come(fake_openai: FakeOpenAI) -> None:
    gate = gateway(fake_openai)
    ways: dict[str, Callable[[httpx2.AsyncClient], openai.AsyncOpenAI]] = {
        "gate.async_openai": lambda own: gate.async_openai(api_key="sk-fake", http_client=own),
        "with_options": lambda own: gate.async_openai(api_key="sk-fake").with_options(http_client=own),
        "copy": lambda own: gate.async_openai(api_key="sk-fake").copy(http_client=own),
    }

    async def main() -> None:
        for way, make in ways.items():
            with pytest.warns(fg.BypassWarning) as record:
                client = make(httpx2.AsyncClient())
            assert len(record) == 1, way
            message = str(record[0].message)
            assert "bypass the gateway" in message, way
            assert "httpx2.AsyncClient(transport=gate.async_transport(inner))" in message, way
            assert record[0].filename == __file__, f"{way}: the warning names the caller's line"
            before = gate.stats["requests"], fake_openai.counters(MODEL).requests
            await client.chat.completions.create(model=MODEL, messages=MSG, max_tokens=16)
            assert (gate.stats["requests"], fake_openai.counters(MODEL).requests) == (before[0], before[1] + 1), way

    asyncio.run(main())


def test_async_a_client_that_sends_through_the_gateway_is_not_warned_about(fake_openai: FakeOpenAI) -> None:
    gate = gateway(fake_openai)

    async def main() -> int:
        own = httpx2.AsyncClient(transport=gate.async_transport())
        clients = [
            gate.async_openai(api_key="sk-fake"),
            gate.async_openai(api_key="sk-fake", http_client=own),
            gate.async_openai(api_key="sk-fake").with_options(timeout=30),
            gate.async_openai(api_key="sk-fake").copy(http_client=own),
        ]
        for client in clients:
            await client.chat.completions.create(model=MODEL, messages=MSG, max_tokens=16)
        return len(clients)

    with warnings.catch_warnings():
        warnings.simplefilter("error", fg.BypassWarning)
        sent = asyncio.run(main())
    assert gate.stats["requests"] == sent
