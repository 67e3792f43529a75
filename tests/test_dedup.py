"""Identical requests in flight share one upstream call: through the real SDK against
FakeOpenAI, and against a hand-paced stream upstream for late joiners."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator
from typing import Any

import httpx2
import openai
import pytest

import fleetgate as fg
from fleetgate._core import FleetFlights
from fleetgate.path.call import gated_call
from fleetgate.testing.fake_openai import FakeConfig, FakeOpenAI, Fault, Latency

MODEL = "gpt-4.1-mini"
MSG = [{"role": "user", "content": "What are your opening hours?"}]
SLOW = FakeConfig(faults=[Fault(kind="latency", latency=Latency(ms=400))])


def ask(client: openai.AsyncOpenAI, **extra: Any) -> Any:
    return client.chat.completions.create(model=MODEL, messages=MSG, temperature=0, **extra)


@pytest.mark.fake_openai(config=SLOW)
def test_1000_identical_requests_make_one_upstream_call(fake_openai: FakeOpenAI) -> None:
    gate = fg.Gateway(base_url=fake_openai.base_url)
    client = gate.async_openai(api_key="sk-fake", max_retries=0)

    async def main() -> list[Any]:
        return await asyncio.gather(*(ask(client) for _ in range(1_000)))

    answers = asyncio.run(main())
    assert len(answers) == 1_000
    assert len({a.model_dump_json() for a in answers}) == 1, "every caller gets the same answer"
    assert fake_openai.counters(MODEL).requests == 1
    assert gate.stats["dedup_followers"] == 999 and gate.collapser.flights.in_flight == 0


@pytest.mark.fake_openai(config=SLOW)
def test_cancelling_the_leader_still_answers_the_others(fake_openai: FakeOpenAI) -> None:
    gate = fg.Gateway(base_url=fake_openai.base_url)
    client = gate.async_openai(api_key="sk-fake", max_retries=0)

    async def main() -> list[Any]:
        leader = asyncio.ensure_future(ask(client))
        await asyncio.sleep(0.05)
        others = [asyncio.ensure_future(ask(client)) for _ in range(20)]
        await asyncio.sleep(0.05)
        leader.cancel()
        return await asyncio.gather(*others)

    answers = asyncio.run(main())
    assert len({a.id for a in answers}) == 1
    assert fake_openai.counters(MODEL).requests == 1 and gate.stats["dedup_cancelled"] == 0


@pytest.mark.fake_openai(config=SLOW)
def test_cancelling_everyone_cancels_the_upstream_call(fake_openai: FakeOpenAI) -> None:
    gate = fg.Gateway(base_url=fake_openai.base_url)
    client = gate.async_openai(api_key="sk-fake", max_retries=0)

    async def main() -> None:
        waiting = [asyncio.ensure_future(ask(client)) for _ in range(10)]
        await asyncio.sleep(0.1)
        for w in waiting:
            w.cancel()
        await asyncio.gather(*waiting, return_exceptions=True)
        await asyncio.sleep(0.05)  # the shared call's task runs its cancellation

    asyncio.run(main())
    assert gate.stats["dedup_cancelled"] == 1
    assert gate.collapser.flights.in_flight == 0


@pytest.mark.fake_openai(config=FakeConfig(faults=[Fault(kind="reset", latency=Latency(ms=200))]))
def test_an_upstream_failure_reaches_every_waiter(fake_openai: FakeOpenAI) -> None:
    gate = fg.Gateway(base_url=fake_openai.base_url)
    client = gate.async_openai(api_key="sk-fake", max_retries=0)

    async def main() -> list[Any]:
        return await asyncio.gather(*(ask(client) for _ in range(30)), return_exceptions=True)

    errors = asyncio.run(main())
    assert all(isinstance(e, openai.APIConnectionError) for e in errors), errors[:3]
    assert fake_openai.counters(MODEL).requests == 1


@pytest.mark.fake_openai(config=SLOW)
def test_streams_fan_out_to_every_caller(fake_openai: FakeOpenAI) -> None:
    gate = fg.Gateway(base_url=fake_openai.base_url)
    client = gate.async_openai(api_key="sk-fake", max_retries=0)

    async def one() -> str:
        stream = await ask(client, stream=True)
        return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

    async def main() -> list[str]:
        return await asyncio.gather(*(one() for _ in range(50)))

    texts = asyncio.run(main())
    assert len(set(texts)) == 1 and texts[0]
    assert fake_openai.counters(MODEL).requests == 1


class _PacedStream(httpx2.AsyncBaseTransport):
    """An upstream whose SSE stream sends one event, then waits to be let go."""

    def __init__(self) -> None:
        self.calls = 0
        self.first_sent = asyncio.Event()
        self.go_on = asyncio.Event()

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        self.calls += 1

        async def events() -> AsyncIterator[bytes]:
            for i, word in enumerate(["Open ", "nine ", "to ", "five."]):
                chunk = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": MODEL,
                         "choices": [{"index": 0, "delta": {"content": word}, "finish_reason": None}]}
                yield b"data: " + json.dumps(chunk).encode() + b"\n\n"
                if i == 0:
                    self.first_sent.set()
                    await self.go_on.wait()
            yield b"data: [DONE]\n\n"

        return httpx2.Response(200, headers={"content-type": "text/event-stream"}, stream=_Gen(events()))


class _Gen(httpx2.AsyncByteStream):
    def __init__(self, gen: AsyncIterator[bytes]) -> None:
        self.gen = gen

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self.gen:
            yield chunk


def test_a_late_joiner_gets_what_was_already_sent() -> None:
    gate = fg.Gateway(base_url="http://upstream.test/v1")

    async def main() -> tuple[str, str, int]:
        upstream = _PacedStream()
        client = openai.AsyncOpenAI(base_url="http://upstream.test/v1", api_key="sk-fake", max_retries=0,
                                    http_client=httpx2.AsyncClient(transport=gate.async_transport(upstream)))

        async def one() -> str:
            stream = await ask(client, stream=True)
            return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

        early = asyncio.ensure_future(one())
        await upstream.first_sent.wait()
        late = asyncio.ensure_future(one())
        await asyncio.sleep(0.05)
        upstream.go_on.set()
        return await early, await late, upstream.calls

    early, late, calls = asyncio.run(main())
    assert early == late == "Open nine to five." and calls == 1


@pytest.mark.fake_openai(config=SLOW)
def test_threads_share_one_call_too(fake_openai: FakeOpenAI) -> None:
    gate = fg.Gateway(base_url=fake_openai.base_url)
    client = gate.openai(api_key="sk-fake", max_retries=0)
    answers: list[str] = []
    barrier = threading.Barrier(20)

    def one() -> None:
        barrier.wait()
        answers.append(ask(client).id)  # type: ignore[arg-type]

    threads = [threading.Thread(target=one) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(answers) == 20 and len(set(answers)) == 1
    assert fake_openai.counters(MODEL).requests == 1


@pytest.mark.fake_openai(config=SLOW)
def test_which_requests_collapse_is_a_policy(fake_openai: FakeOpenAI) -> None:
    def upstream_calls(gate: fg.Gateway, scopes: list[dict[str, Any]], **extra: Any) -> int:
        client = gate.async_openai(api_key="sk-fake", max_retries=0)
        before = fake_openai.counters(MODEL).requests

        async def one(sc: dict[str, Any]) -> None:
            async with gate.scope(**sc):
                await client.chat.completions.create(model=MODEL, messages=MSG, **extra)

        async def main() -> None:
            await asyncio.gather(*(one(sc) for sc in scopes))

        asyncio.run(main())
        return fake_openai.counters(MODEL).requests - before

    gate = fg.Gateway(base_url=fake_openai.base_url)
    assert upstream_calls(gate, [{}] * 3, temperature=0.7) == 3, "not deterministic: each caller gets its own"
    assert upstream_calls(gate, [{"dedup": True}] * 3, temperature=0.7) == 1, "a scope may ask to share"
    assert upstream_calls(gate, [{"dedup": False}] * 3, temperature=0) == 3, "or not to"
    per_user = fg.Gateway(base_url=fake_openai.base_url, dedup={"namespace": "user"})
    assert upstream_calls(per_user, [{"user": "a"}, {"user": "a"}, {"user": "b"}], temperature=0) == 2
    never = fg.Gateway(base_url=fake_openai.base_url, dedup={"enabled": False})
    assert upstream_calls(never, [{}] * 3, temperature=0) == 3


@pytest.mark.fake_openai(config=SLOW)
def test_pods_share_one_call_through_redis(fake_openai: FakeOpenAI, store_url: str) -> None:
    """Two pods (two gateways, one Redis): the second waits for the first one's answer."""
    pods = [fg.Gateway(base_url=fake_openai.base_url, redis_url=store_url, dedup={"across_pods": True})
            for _ in range(2)]
    clients = [pod.openai(api_key="sk-fake", max_retries=0) for pod in pods]
    content = [{"role": "user", "content": f"fleet-wide question {id(pods)}"}]
    raws: dict[int, Any] = {}

    def one(i: int) -> None:
        raws[i] = clients[i].chat.completions.with_raw_response.create(model=MODEL, messages=content, temperature=0)

    first = threading.Thread(target=one, args=(0,))
    first.start()
    threading.Event().wait(0.1)  # the first pod has claimed the call and is waiting upstream
    one(1)
    first.join()
    assert raws[0].headers["x-fleetgate-dedup"] == "leader" and raws[1].headers["x-fleetgate-dedup"] == "fleet"
    assert raws[0].parse().id == raws[1].parse().id
    assert fake_openai.counters(MODEL).requests == 1
    assert pods[1].stats["dedup_fleet_followers"] == 1


@pytest.mark.fake_openai(config=SLOW)
def test_async_pods_share_one_call_through_redis(fake_openai: FakeOpenAI, redis_url: str) -> None:
    pods = [fg.Gateway(base_url=fake_openai.base_url, redis_url=redis_url, dedup={"across_pods": True})
            for _ in range(2)]
    clients = [pod.async_openai(api_key="sk-fake", max_retries=0) for pod in pods]
    content = [{"role": "user", "content": f"fleet-wide async question {id(pods)}"}]

    async def one(i: int, after: float) -> Any:
        await asyncio.sleep(after)
        return await clients[i].chat.completions.with_raw_response.create(model=MODEL, messages=content, temperature=0)

    async def main() -> list[Any]:
        # Each pod also has local followers of its own flight.
        return await asyncio.gather(one(0, 0), one(0, 0), one(1, 0.1), one(1, 0.1))

    raws = asyncio.run(main())
    roles = [r.headers["x-fleetgate-dedup"] for r in raws]
    assert sorted(roles[:2]) == ["follower", "leader"] and sorted(roles[2:]) == ["fleet", "follower"]
    assert len({r.parse().id for r in raws}) == 1
    assert fake_openai.counters(MODEL).requests == 1
    assert pods[1].stats["dedup_fleet_followers"] == 1


@pytest.mark.fake_openai(config=FakeConfig())
def test_a_pod_that_dies_holding_a_claim_blocks_nobody_past_its_lease(fake_openai: FakeOpenAI, store_url: str) -> None:
    gate = fg.Gateway(base_url=fake_openai.base_url, redis_url=store_url, dedup={"across_pods": True})
    content = [{"role": "user", "content": f"orphaned claim {id(gate)}"}]
    body = json.dumps({"model": MODEL, "messages": content, "temperature": 0}).encode()
    request = httpx2.Request("POST", f"{fake_openai.base_url}/chat/completions", content=body,
                             headers={"authorization": "Bearer sk-fake"})
    call = gated_call(request, gate.config.assumed_max_output_tokens, 60.0)
    assert call is not None
    namespace = gate.collapser.namespace(call)
    assert namespace is not None
    key = gate.collapser.flight_key(call, namespace)
    # Another pod claims the call for half a second and dies without answering.
    assert FleetFlights(fg.Limiter(store_url)).claim(key, 0.5)
    raw = gate.openai(api_key="sk-fake", max_retries=0).chat.completions.with_raw_response.create(
        model=MODEL, messages=content, temperature=0)
    assert raw.parse().choices[0].message.content
    assert raw.headers["x-fleetgate-dedup"] == "leader"
    assert fake_openai.counters(MODEL).requests == 1, "after the lease, this pod made the call itself"
    assert gate.stats["dedup_fleet_followers"] == 1


@pytest.mark.fake_openai(config=FakeConfig())
def test_with_redis_down_each_pod_calls_alone(fake_openai: FakeOpenAI, caplog: pytest.LogCaptureFixture) -> None:
    gate = fg.Gateway(base_url=fake_openai.base_url, redis_url="redis://127.0.0.1:1/0", dedup={"across_pods": True})
    client = gate.openai(api_key="sk-fake", max_retries=0)
    for n in range(3):
        raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=MSG, temperature=0)
        assert raw.status_code == 200 and raw.headers["x-fleetgate-dedup"] == "leader"
        assert fake_openai.counters(MODEL).requests == n + 1
    said = [r for r in caplog.records if "deduplication's Redis" in r.getMessage()]
    assert len(said) == 1 and said[0].levelname == "WARNING", "the outage is said once, not per call"
    assert "each pod makes its own calls" in said[0].getMessage() and "127.0.0.1:1" in said[0].getMessage()
