"""Stateful Responses calls (``previous_response_id``, ``conversation``) reserve for the
context OpenAI holds, through the real SDK against FakeOpenAI (which holds that context and
bills it) and real Redis: the budget's worst case and the quota reservation never fall below
what the fake billed, and settle to it; a chain started on one pod is known on another; an
unknown chain is counted, or given the allowance; and a fleet of chains runs close to a TPM
limit without upstream 429s."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx2
import openai
import pytest
import redis

import fleetgate as fg
from fleetgate.chains import Chain, Chains, continued
from fleetgate.estimate import estimate_request
from fleetgate.path.call import Spent
from fleetgate.testing.fake_openai import FakeConfig, FakeOpenAI, ModelLimits
from tests.polling import until

MODEL = "gpt-4.1"
MAX_OUTPUT = 64
HELD = "x-fleetgate-held-context"
BUDGET = {"limits": [{"dollars": 1_000.0}]}


def question(turn: int) -> str:
    return f"Turn {turn}: tell me a little more about how the fleet shares its quotas."


@dataclasses.dataclass
class Sent:
    """One request the gateway sent upstream, as an observer between it and the fake saw
    it: its path, body, and the dollars the gateway's budgets held while it was out."""

    path: str
    body: dict[str, Any]
    reserved: float


class Observer(httpx2.BaseTransport):
    """The gateway's upstream transport, watched: what went upstream, and what the budgets
    held at that moment (every reservation of the call is made by then)."""

    def __init__(self, gate: Callable[[], fg.Gateway]) -> None:
        self.inner, self.gate, self.sent = httpx2.HTTPTransport(), gate, list[Sent]()

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        self.sent.append(_seen(self.gate(), request))
        return self.inner.handle_request(request)


class AsyncObserver(httpx2.AsyncBaseTransport):
    def __init__(self, gate: Callable[[], fg.Gateway]) -> None:
        self.inner, self.gate, self.sent = httpx2.AsyncHTTPTransport(), gate, list[Sent]()

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        self.sent.append(_seen(self.gate(), request))
        return await self.inner.handle_async_request(request)


def _seen(gate: fg.Gateway, request: httpx2.Request) -> Sent:
    body = json.loads(request.content) if request.content else {}
    return Sent(request.url.path, body, sum(status.reserved for _, status in gate.budgets.statuses()))


class Pod:
    """A gateway and a client of it (sync or async), its upstream watched."""

    def __init__(self, fake: FakeOpenAI, kind: str, **config: Any) -> None:
        config.setdefault("budgets", BUDGET)
        config.setdefault("models", {MODEL: fg.QuotaLimits(tokens_per_minute=6_000_000)})
        self.gate = fg.Gateway(base_url=fake.base_url, **config)
        self.kind = kind
        self.loop = asyncio.new_event_loop()  # one for every async call: the client's connections live on it
        if kind == "sync":
            self.observer: Observer | AsyncObserver = Observer(lambda: self.gate)
            self.client: Any = self.gate.openai(
                api_key="sk-fake", max_retries=0,
                http_client=openai.DefaultHttpx2Client(transport=self.gate.transport(self.observer)))  # type: ignore[arg-type]
        else:
            self.observer = AsyncObserver(lambda: self.gate)
            self.client = self.gate.async_openai(
                api_key="sk-fake", max_retries=0,
                http_client=openai.DefaultAsyncHttpx2Client(transport=self.gate.async_transport(self.observer)))  # type: ignore[arg-type]

    def create(self, **body: Any) -> tuple[Any, httpx2.Headers, Spent | None]:
        """One Responses call: the response, its headers, what the gateway spent on it."""
        body = {"model": MODEL, "max_output_tokens": MAX_OUTPUT, **body}
        if self.kind == "sync":
            raw = self.client.responses.with_raw_response.create(**body)
        else:
            raw = self.loop.run_until_complete(self._create_async(body))
        return raw.parse(), raw.headers, Spent.of(raw.http_response)

    async def _create_async(self, body: dict[str, Any]) -> Any:
        return await self.client.responses.with_raw_response.create(**body)

    def settled(self) -> None:
        """Until every budget hold is settled (settlement runs in the background on Redis)."""
        until(lambda: all(status.reserved == 0 for _, status in self.gate.budgets.statuses()))

    def spent(self) -> float:
        return sum(status.spent for _, status in self.gate.budgets.statuses())

    def close(self) -> None:
        self.gate.close()
        self.loop.close()


def reserved_tokens(sent: Sent, headers: httpx2.Headers, gate: fg.Gateway) -> int:
    """The tokens the limit layer reserved for the call: its estimate with the held context."""
    held = int(headers[HELD].split(";")[0]) if HELD in headers else 0
    estimate = estimate_request("/responses", sent.body, gate.config.assumed_max_output_tokens)
    return dataclasses.replace(estimate, held=held).tokens


def replay(pods: list[Pod], fake: FakeOpenAI, turns: int, *, start: str | None = None,
           conversation: str | None = None) -> list[tuple[float, float, int, int, str]]:
    """A chain of `turns`, turn i on pod i mod len(pods), each after the last settled (and,
    across pods, after the answering pod's record reached Redis). Per turn: the dollars the
    budgets held and the fake billed, the tokens reserved and billed, where the held figure
    came from."""
    rows = []
    previous = start
    for turn in range(turns):
        pod = pods[turn % len(pods)]
        before = len(fake.bill())
        link = {"conversation": conversation} if conversation else {"previous_response_id": previous}
        response, headers, spent = pod.create(input=question(turn), **{k: v for k, v in link.items() if v})
        sent = [s for s in pod.observer.sent if s.path.endswith("/responses")][-1]
        charges = fake.bill()[before:]
        assert len(charges) == 1, "the fake bills each answer once"
        charge = charges[0]
        assert charge.usage["input_tokens"] == response.usage.input_tokens
        billed_tokens = charge.usage["input_tokens"] + charge.usage["output_tokens"]
        assert spent is not None and spent.quota_tokens >= billed_tokens, "the quota settles to what was billed"
        rows.append((sent.reserved, charge.dollars or 0.0, reserved_tokens(sent, headers, pod.gate), billed_tokens,
                     headers.get(HELD, "").partition("; ")[2]))
        pod.settled()
        assert pod.gate.chains.flush()
        previous = response.id
    return rows


def assert_covered(rows: list[tuple[float, float, int, int, str]], sources: list[str]) -> None:
    """Every turn of `rows` (:func:`replay`) reserved at least what it was billed, in dollars
    and in tokens, its held context from `sources` (turn by turn)."""
    assert [row[4] for row in rows] == sources, "where each turn's held context came from"
    for turn, (reserved, billed, tokens, billed_tokens, _) in enumerate(rows):
        assert reserved >= billed, f"turn {turn}: the budget held ${reserved:.6f} for a ${billed:.6f} answer"
        assert tokens >= billed_tokens, f"turn {turn}: {tokens} tokens reserved for {billed_tokens} billed"


@pytest.fixture(params=["sync", "async"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


# -- the reservation error of a replayed chain ---------------------------------------------------


def test_a_replayed_chain_reserves_at_least_what_is_billed_and_settles_to_it(
        fake_openai: FakeOpenAI, redis_url: str, kind: str) -> None:
    pod = Pod(fake_openai, kind, redis_url=redis_url)
    spent = pod.spent()  # the fleet's budget, spent by earlier tests on this Redis too
    try:
        rows = replay([pod], fake_openai, 12)
        spent = pod.spent() - spent
    finally:
        pod.close()
    inputs = [fake_openai.bill()[-12:][i].usage["input_tokens"] for i in range(12)]
    assert inputs == sorted(inputs) and inputs[-1] > 10 * inputs[0], "the context grows turn by turn"
    assert_covered(rows, [""] + ["ledger"] * 11)
    assert spent == pytest.approx(sum(r[1] for r in rows), rel=1e-9), "the budgets settle to the bill"


def test_without_the_ledger_a_long_chain_is_under_reserved(fake_openai: FakeOpenAI, redis_url: str) -> None:
    """What the ledger fixes: the body alone reserves less than a long chain is billed."""
    pod = Pod(fake_openai, "sync", redis_url=redis_url, server_context={"enabled": False})
    try:
        rows = replay([pod], fake_openai, 12)
    finally:
        pod.close()
    reserved, billed, tokens, billed_tokens, _ = rows[-1]
    assert reserved < billed and tokens < billed_tokens


def test_a_chain_started_on_one_pod_is_continued_on_another(fake_openai: FakeOpenAI, store_url: str,
                                                            kind: str) -> None:
    pods = [Pod(fake_openai, kind, redis_url=store_url), Pod(fake_openai, kind, redis_url=store_url)]
    try:
        rows = replay(pods, fake_openai, 10)
        reads = [pod.gate.stats["chain_reads"] for pod in pods]
    finally:
        for pod in pods:
            pod.close()
    assert_covered(rows, [""] + ["ledger"] * 9)
    assert reads == [4, 5], "each continuation read its chain from Redis once: it was made on the other pod"
    keys = [k.decode() for k in _redis(store_url).keys("fg:chain:*")] if "cluster" not in store_url else []
    assert all("resp_" not in k for k in keys), "response ids do not reach Redis keys"


def test_a_conversation_is_read_from_the_fleet_on_each_turn(fake_openai: FakeOpenAI, redis_url: str,
                                                            kind: str) -> None:
    pods = [Pod(fake_openai, kind, redis_url=redis_url), Pod(fake_openai, kind, redis_url=redis_url)]
    try:
        conversation = pods[0].gate.openai(api_key="sk-fake").conversations.create(
            items=[{"type": "message", "role": "user", "content": "We are talking about fleet quotas. " * 20}])
        rows = replay(pods, fake_openai, 10, conversation=conversation.id)
        reads = [pod.gate.stats["chain_reads"] for pod in pods]
    finally:
        for pod in pods:
            pod.close()
    assert_covered(rows, ["count"] + ["ledger"] * 9)
    assert reads == [5, 5], "every turn read the conversation from Redis, though its pod had a record of it"


def test_a_streamed_answer_is_learned_too(fake_openai: FakeOpenAI, kind: str) -> None:
    pod = Pod(fake_openai, kind)
    body = {"model": MODEL, "input": question(0), "max_output_tokens": MAX_OUTPUT, "stream": True}

    async def read_async() -> Any:
        events = [event async for event in await pod.client.responses.create(**body)]
        return events[-1].response

    try:
        if kind == "sync":
            done = list(pod.client.responses.create(**body))[-1].response
        else:
            done = pod.loop.run_until_complete(read_async())
        _, headers, _ = pod.create(input=question(1), previous_response_id=done.id)
    finally:
        pod.close()
    assert headers[HELD] == f"{done.usage.input_tokens + done.usage.output_tokens}; ledger"


def test_a_compacted_chain_is_over_reserved_never_under(fake_openai: FakeOpenAI, kind: str) -> None:
    """Server-side compaction shrinks what the next turn carries: the ledger's figure (the
    whole input and output) covers it, and the turn after learns the smaller one."""
    pod = Pod(fake_openai, kind)
    compaction = [{"type": "compaction", "compact_threshold": 400}]
    rows, inputs, previous = [], [], None
    try:
        for turn in range(12):
            before = len(fake_openai.bill())
            response, headers, _ = pod.create(input=question(turn), context_management=compaction,
                                              **({"previous_response_id": previous} if previous else {}))
            sent = [s for s in pod.observer.sent if s.path.endswith("/responses")][-1]
            charge = fake_openai.bill()[before]
            rows.append((sent.reserved, charge.dollars or 0.0))
            inputs.append(response.usage.input_tokens)
            previous = response.id
    finally:
        pod.close()
    assert any(later < earlier for earlier, later in zip(inputs, inputs[1:])), "the chain was compacted"
    assert all(reserved >= billed for reserved, billed in rows)


# -- unknown chains ------------------------------------------------------------------------------


def start_elsewhere(fake: FakeOpenAI, turns: int) -> str:
    """A chain made without the gateway (another deployment's): the id of its last answer."""
    client = openai.OpenAI(base_url=fake.base_url, api_key="sk-fake")
    previous = None
    for turn in range(turns):
        previous = client.responses.create(model=MODEL, input=question(turn), max_output_tokens=MAX_OUTPUT,
                                           **({"previous_response_id": previous} if previous else {})).id
    assert previous is not None
    return previous


def test_an_unknown_chain_is_counted_by_openai(fake_openai: FakeOpenAI, kind: str) -> None:
    start = start_elsewhere(fake_openai, 6)
    pod = Pod(fake_openai, kind)
    try:
        rows = replay([pod], fake_openai, 3, start=start)
        counts = [s for s in pod.observer.sent if s.path.endswith("/responses/input_tokens")]
    finally:
        pod.close()
    assert_covered(rows, ["count", "ledger", "ledger"])
    assert len(counts) == 1 and counts[0].body["previous_response_id"] == start
    assert pod.gate.stats["chain_counted"] == 1


def test_an_unknown_chain_reserves_the_allowance(fake_openai: FakeOpenAI, kind: str) -> None:
    start = start_elsewhere(fake_openai, 6)
    pod = Pod(fake_openai, kind, server_context={"unknown": "allowance", "unknown_chain_tokens": 5_000})
    try:
        response, headers, _ = pod.create(input=question(6), previous_response_id=start)
        counts = [s for s in pod.observer.sent if s.path.endswith("/input_tokens")]
    finally:
        pod.close()
    assert headers[HELD] == "5000; allowance" and not counts
    assert response.usage.input_tokens < 5_000, "the allowance covers the chain"


def test_counting_that_fails_falls_back_to_the_allowance(fake_openai: FakeOpenAI, kind: str) -> None:
    """The counting endpoint answers 500: the call reserves the allowance, and goes."""
    start = start_elsewhere(fake_openai, 2)
    pod = Pod(fake_openai, kind, server_context={"unknown_chain_tokens": 3_000})
    original = pod.observer.inner

    class NoCounting(httpx2.BaseTransport, httpx2.AsyncBaseTransport):
        def handle_request(self, request: httpx2.Request) -> httpx2.Response:
            if request.url.path.endswith("/input_tokens"):
                return httpx2.Response(500, json={"error": {"message": "down", "type": "server_error"}})
            return original.handle_request(request)  # type: ignore[union-attr]

        async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
            if request.url.path.endswith("/input_tokens"):
                return httpx2.Response(500, json={"error": {"message": "down", "type": "server_error"}})
            return await original.handle_async_request(request)  # type: ignore[union-attr]

    pod.observer.inner = NoCounting()  # type: ignore[assignment]
    try:
        response, headers, _ = pod.create(input=question(2), previous_response_id=start)
    finally:
        pod.close()
    assert headers[HELD] == "3000; allowance" and response.output_text
    assert pod.gate.stats["chain_count_failures"] == 1


def test_an_unknown_response_id_is_answered_404_and_reserves_nothing_held(fake_openai: FakeOpenAI,
                                                                          kind: str) -> None:
    pod = Pod(fake_openai, kind)
    try:
        with pytest.raises(openai.NotFoundError, match="Previous response with id 'resp_missing' not found"):
            pod.create(input="Hello again", previous_response_id="resp_missing")
    finally:
        pod.close()
    assert pod.gate.stats["chain_not_found"] == 1 and not fake_openai.bill()


# -- what calls continuing nothing pay -----------------------------------------------------------


def test_calls_that_continue_no_chain_ask_nothing(fake_openai: FakeOpenAI, redis_url: str) -> None:
    pod = Pod(fake_openai, "sync", redis_url=redis_url)
    try:
        _, headers, _ = pod.create(input="Hello")
        pod.client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=8)
        stats = pod.gate.stats.snapshot()
    finally:
        pod.close()
    assert HELD not in headers
    assert not any(s.path.endswith("/input_tokens") for s in pod.observer.sent)
    assert not any(name.startswith("chain_") for name in stats), stats


# -- Redis down ----------------------------------------------------------------------------------


def test_with_redis_down_an_unseen_chain_is_unknown_under_fail_open(fake_openai: FakeOpenAI,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    start = start_elsewhere(fake_openai, 3)
    pod = Pod(fake_openai, "sync", redis_url="redis://127.0.0.1:1", budgets={}, models={})
    try:
        _, headers, _ = pod.create(input=question(3), previous_response_id=start)
    finally:
        pod.close()
    assert headers[HELD].endswith("; count")
    assert pod.gate.stats["chain_store_down"] == 1
    assert "the chains' Redis at redis://127.0.0.1:1 is unavailable" in caplog.text


def test_with_redis_down_a_continuing_call_is_refused_under_fail_closed(fake_openai: FakeOpenAI) -> None:
    start = start_elsewhere(fake_openai, 2)
    pod = Pod(fake_openai, "sync", redis_url="redis://127.0.0.1:1", failure_policy="fail_closed", budgets={},
              models={})
    try:
        with pytest.raises(fg.StoreUnavailable, match="fail_closed"):
            pod.create(input=question(2), previous_response_id=start)
        before = len(fake_openai.bill())
    finally:
        pod.close()
    assert before == 2, "the refused call was never sent"


# -- the ledger itself ---------------------------------------------------------------------------


def test_the_ledger_is_bounded_and_keys_hide_ids() -> None:
    from fleetgate.config import ServerContextSettings
    from fleetgate.stats import GatewayStats

    chains = Chains(ServerContextSettings(local_chains=3), None, GatewayStats(), "fail_open")
    for i in range(5):
        chains.learn(Chain("response", f"resp_{i}"), 100 + i)
    assert [chains.local(Chain("response", f"resp_{i}")) for i in range(5)] == [None, None, (102, None), (103, None), (104, None)]
    assert "resp_4" not in Chains.key(Chain("response", "resp_4"))
    assert continued({"previous_response_id": "resp_1"}) == Chain("response", "resp_1")
    assert continued({"conversation": {"id": "conv_1"}}) == Chain("conversation", "conv_1")
    assert continued({"input": "hi"}) is None


# -- the fake holds context as OpenAI does -------------------------------------------------------


def test_the_fake_bills_held_context_and_counts_input_tokens(fake_openai: FakeOpenAI) -> None:
    client = openai.OpenAI(base_url=fake_openai.base_url, api_key="sk-fake")
    first = client.responses.create(model=MODEL, input="Hello there", max_output_tokens=MAX_OUTPUT)
    counted = client.responses.input_tokens.count(model=MODEL, input="And then?", previous_response_id=first.id)
    second = client.responses.create(model=MODEL, input="And then?", previous_response_id=first.id,
                                     max_output_tokens=MAX_OUTPUT)
    held = first.usage.input_tokens + first.usage.output_tokens
    assert second.usage.input_tokens == counted.input_tokens == held + 3
    assert [c.usage["input_tokens"] for c in fake_openai.bill()] == [first.usage.input_tokens, held + 3]
    assert fake_openai.counters(MODEL).tokens_admitted == (first.usage.input_tokens + MAX_OUTPUT
                                                           + held + 3 + MAX_OUTPUT), "held context counts against TPM"
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model=MODEL, input="x", previous_response_id="resp_unknown")
    with pytest.raises(openai.BadRequestError):
        client.responses.create(model=MODEL, input="x", previous_response_id=first.id, conversation="conv_x")
    unstored = client.responses.create(model=MODEL, input="x", store=False)
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model=MODEL, input="y", previous_response_id=unstored.id)
    conversation = client.conversations.create()
    one = client.responses.create(model=MODEL, input="Hi", conversation=conversation.id)
    two = client.responses.create(model=MODEL, input="Hi", conversation={"id": conversation.id})
    assert two.usage.input_tokens == one.usage.input_tokens + one.usage.output_tokens + 1


# -- a fleet of chains against a TPM limit -------------------------------------------------------

TPM = 480_000
#: A model of its own: the quota's state in Redis is named for it, and earlier tests on the
#: same Redis used the model above with other limits.
LIMITED = f"gpt-4.1-chains-{uuid.uuid4().hex[:8]}"


@pytest.mark.fake_openai(config=FakeConfig(answer_words=8, models={
    LIMITED: ModelLimits(requests_per_minute=1_000_000, tokens_per_minute=TPM)}))
def test_chains_run_close_to_the_token_limit_without_upstream_429s(fake_openai: FakeOpenAI, redis_url: str) -> None:
    """Eight threads run 10-turn chains through two pods sharing the quota in Redis, for at
    most 30 s or 3,000 calls. Upstream counts each call's held context against its tokens
    per minute: reserved for, the pods stay under the limit while using nearly all of it
    (without the ledger, about one call in six is refused upstream)."""
    # Quota leases on, as by default: room a lease holds is not refilled in the store.
    pods = [fg.Gateway(base_url=fake_openai.base_url, redis_url=redis_url, max_upstream_retries=0,
                       models={LIMITED: fg.QuotaLimits(tokens_per_minute=TPM)})
            for _ in range(2)]
    clients = [pod.openai(api_key="sk-fake", max_retries=0) for pod in pods]
    stop_at, calls = time.monotonic() + 30, threading.Semaphore(3_000)
    errors: list[BaseException] = []

    def run(worker: int) -> None:
        client = clients[worker % 2]
        try:
            while True:
                previous = None
                for turn in range(10):
                    if time.monotonic() >= stop_at or not calls.acquire(blocking=False):
                        return
                    try:
                        previous = client.responses.create(
                            model=LIMITED, input=question(turn), max_output_tokens=16,
                            **({"previous_response_id": previous} if previous else {})).id
                    except openai.RateLimitError:
                        break  # counted by the fake; the chain starts again
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(w,)) for w in range(8)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    elapsed = time.monotonic() - started
    for pod in pods:
        pod.close()
    assert not errors, errors[:3]
    up = fake_openai.counters(LIMITED)
    assert up.requests >= 1_000, "enough calls to judge one in a thousand"
    assert up.rate_limited <= up.requests * 0.001, f"{up.rate_limited} of {up.requests} refused upstream"
    allowed = TPM / 60 * (elapsed + 1)  # the rate, and one second's slice at the start
    assert up.tokens_admitted >= 0.95 * allowed, f"{up.tokens_admitted / allowed:.1%} of the allowance used"


def _redis(url: str) -> redis.Redis:
    return redis.Redis.from_url(url)
