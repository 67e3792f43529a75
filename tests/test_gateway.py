"""The gateway through the real openai SDK, against FakeOpenAI (and, for crafted headers,
httpx2's MockTransport as the upstream)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest

import fleetgate as fg
import fleetgate.gateway
from fleetgate.estimate import UsageCounts, usage_counts
from fleetgate.testing.fake_openai import FakeConfig, FakeOpenAI, ModelLimits

MSG = [{"role": "user", "content": "How do I reset my password?"}]
MODEL = "gpt-4.1-mini"


def gateway(fake: FakeOpenAI, **overrides: Any) -> fg.Gateway:
    settings: dict[str, Any] = {"base_url": fake.base_url,
                                "models": {MODEL: fg.QuotaLimits(requests_per_minute=6_000, tokens_per_minute=1_000_000)}}
    settings.update(overrides)
    return fg.Gateway(**settings)


def test_sync_calls_are_limited_and_settled_from_usage(fake_openai: FakeOpenAI) -> None:
    gate = gateway(fake_openai)
    client = gate.openai(api_key="sk-fake")
    chat = client.chat.completions.create(model=MODEL, messages=MSG, max_tokens=64)
    reply = client.responses.create(model=MODEL, input="Hello", max_output_tokens=64)
    vectors = client.embeddings.create(model="text-embedding-3-small", input=["a", "b"])
    assert chat.choices[0].message.content and reply.output_text and len(vectors.data) == 2
    assert gate.stats["requests"] == 3
    assert gate.stats["settled_from_usage"] == 2, "embeddings of an unlisted model reserve nothing"
    assert client.models.list(), "other endpoints pass straight through"


@pytest.mark.fake_openai(config=FakeConfig(answer_words=2))
def test_settling_keeps_what_upstream_counts_and_gives_back_the_rest(fake_openai: FakeOpenAI) -> None:
    """Chinese text takes more tokens than its characters suggest: the gateway reserves the
    tokenizer's count, then gives back all but what OpenAI counts (characters / 4 plus the
    maximum output), since the short answer's usage is below that."""
    from fleetgate.estimate import estimate_request

    gate = gateway(fake_openai, model_headroom=0, models={MODEL: fg.QuotaLimits(tokens_per_minute=6_000, burst_seconds=60)})
    body = {"model": MODEL, "messages": [{"role": "user", "content": "你好，我忘记了密码。" * 20}], "max_tokens": 50}
    estimate = estimate_request("/chat/completions", body, 1024)
    assert estimate.tokens > estimate.upstream_tokens + 20
    gate.openai(api_key="sk-fake").chat.completions.create(**body)
    model_quota, _ = gate.quotas_for(MODEL, fg.Scope())
    assert model_quota is not None
    left = gate.limiter.try_acquire(model_quota, requests=0, tokens=0).remaining_tokens
    assert left is not None
    # 100 tokens/s of refill: a few at most in the time the call took.
    assert 6_000 - estimate.upstream_tokens <= left <= 6_000 - estimate.upstream_tokens + 30


def test_async_client(fake_openai: FakeOpenAI) -> None:
    gate = gateway(fake_openai)

    async def main() -> list[str]:
        client = gate.async_openai(api_key="sk-fake")
        async with gate.scope(user="u-1"):
            results = await asyncio.gather(*(client.responses.create(model=MODEL, input=f"q{i}") for i in range(10)))
        return [r.output_text for r in results]

    assert len(asyncio.run(main())) == 10
    assert gate.stats["requests"] == 10 and fake_openai.counters(MODEL).requests == 10


def test_streams_pass_through_and_settle_from_their_usage(fake_openai: FakeOpenAI) -> None:
    gate = gateway(fake_openai)
    client = gate.openai(api_key="sk-fake")
    with_usage = list(client.chat.completions.create(model=MODEL, messages=MSG, stream=True,
                                                     stream_options={"include_usage": True}))
    assert with_usage[-1].usage is not None
    assert gate.stats["settled_from_usage"] == 1
    without = list(client.chat.completions.create(model=MODEL, messages=MSG, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in without if c.choices)
    assert gate.stats["settled_from_estimate"] == 1, "a stream with no usage is settled on an estimate, and says so"
    with client.responses.stream(model=MODEL, input="hi") as stream:
        final = stream.get_final_response()
    assert final.output_text and gate.stats["settled_from_usage"] == 2


def test_async_streams(fake_openai: FakeOpenAI) -> None:
    gate = gateway(fake_openai)

    async def main() -> int:
        client = gate.async_openai(api_key="sk-fake")
        stream = await client.chat.completions.create(model=MODEL, messages=MSG, stream=True,
                                                      stream_options={"include_usage": True})
        return len([chunk async for chunk in stream])

    assert asyncio.run(main()) > 3
    assert gate.stats["settled_from_usage"] == 1


def test_scope_applies_user_feature_and_team_quotas(fake_openai: FakeOpenAI) -> None:
    gate = gateway(fake_openai, per_user=fg.QuotaLimits(requests_per_minute=120, burst_seconds=1),  # a burst of 2
                   features={"search": fg.QuotaLimits(requests_per_minute=60, burst_seconds=1)})
    client = gate.openai(api_key="sk-fake", max_retries=2)
    # The calls that fit get a deadline a loaded machine cannot miss; the one that does not
    # fit a short one: no room comes within it, so the gateway refuses instead of waiting.
    with gate.scope(user="u-1", deadline=30):
        client.chat.completions.create(model=MODEL, messages=MSG)
        client.chat.completions.create(model=MODEL, messages=MSG)
    with gate.scope(user="u-1", deadline=0.05), pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model=MODEL, messages=MSG)
    assert caught.value.code == "fleetgate_rate_limited"
    assert caught.value.response.headers["x-should-retry"] == "false"
    assert gate.stats["refused"] == 1, "the SDK did not retry the gateway's refusal"
    assert fake_openai.counters(MODEL).requests == 2, "a refused call never reaches upstream"
    with gate.scope(user="u-2", deadline=30):
        client.chat.completions.create(model=MODEL, messages=MSG)  # another user has room
    with gate.scope(feature="search", deadline=30):
        client.chat.completions.create(model=MODEL, messages=MSG)
    with gate.scope(feature="search", deadline=0.05), pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model=MODEL, messages=MSG)


def test_nested_scopes_refine_and_never_extend_the_deadline() -> None:
    with fg.scope(user="u-1", deadline=5) as outer:
        with fg.scope(feature="chat", deadline=60, priority=fg.Priority.BATCH) as inner:
            assert (inner.user, inner.feature, inner.priority) == ("u-1", "chat", fg.Priority.BATCH)
            assert inner.deadline == outer.deadline
            assert fg.current_scope() is inner
        assert fg.current_scope() is outer
    assert fg.current_scope() == fg.Scope()
    with pytest.raises(ValueError, match="deadline"):
        fg.scope(deadline=-1)
    with pytest.raises(TypeError, match="user"):
        fg.scope(user="")


def test_a_gateway_is_a_context_manager_and_closes_once() -> None:
    with fg.Gateway() as gate:
        assert not gate.closed
    assert gate.closed
    gate.close()  # again: nothing to do

    async def main() -> fg.Gateway:
        async with fg.Gateway() as agate:
            assert not agate.closed
        return agate

    assert asyncio.run(main()).closed

@pytest.mark.fake_openai(config=FakeConfig())
def test_a_deadline_is_each_calls_and_deadline_at_the_blocks(fake_openai: FakeOpenAI) -> None:
    """A call late in a block that already lasted longer than its deadline still gets the
    whole deadline, from its own start; a block's deadline_at, once past, refuses."""
    gate = gateway(fake_openai)
    client = gate.openai(api_key="sk-fake", max_retries=0)
    with gate.scope(deadline=1.0) as sc:
        client.chat.completions.create(model=MODEL, messages=MSG)
        time.sleep(1.0)  # the block has lasted its deadline
        assert sc.seconds_left() == 1.0
        client.chat.completions.create(model=MODEL, messages=MSG)
    assert gate.stats["deadline_expired"] == 0 and fake_openai.counters(MODEL).requests == 2
    with gate.scope(deadline=30, deadline_at=time.time() - 1), pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(model=MODEL, messages=MSG)
    assert caught.value.code == "fleetgate_deadline_expired" and fake_openai.counters(MODEL).requests == 2
    with fg.scope(deadline=5, deadline_at=time.time() + 3600) as outer:
        assert outer.seconds_left() == 5
        with fg.scope(deadline=60, deadline_at=time.time() + 1) as inner:
            assert inner.deadline == 5 and inner.deadline_at is not None and inner.deadline_at < outer.deadline_at
            left = inner.seconds_left()
            assert left is not None and left <= 1
    with pytest.raises(ValueError, match="deadline_at"):
        fg.scope(deadline_at=float("nan"))


@pytest.mark.fake_openai(config=FakeConfig(models={MODEL: ModelLimits(requests_per_minute=600)}))
def test_upstream_429s_are_retried_by_the_gateway_alone(fake_openai: FakeOpenAI) -> None:
    # The gateway does not limit this model itself, so upstream refuses the burst.
    gate = gateway(fake_openai, models={})
    client = gate.openai(api_key="sk-fake", max_retries=2)
    for _ in range(15):
        assert client.chat.completions.create(model=MODEL, messages=MSG).choices
    counters = fake_openai.counters(MODEL)
    assert counters.rate_limited > 0 and gate.stats["upstream_retries"] == counters.rate_limited
    assert counters.requests == 15 + counters.rate_limited


@pytest.mark.fake_openai(config=FakeConfig(models={MODEL: ModelLimits(requests_per_minute=60)}))
def test_an_upstream_429_past_the_deadline_is_handed_back_unretried(fake_openai: FakeOpenAI) -> None:
    gate = gateway(fake_openai, models={})
    client = gate.openai(api_key="sk-fake", max_retries=2)
    client.chat.completions.create(model=MODEL, messages=MSG)
    with gate.scope(deadline=0.2), pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model=MODEL, messages=MSG)  # upstream asks for ~1 s
    assert caught.value.code == "rate_limit_exceeded"
    assert fake_openai.counters(MODEL).requests == 2, "neither the gateway nor the SDK retried"


def _upstream(remaining: Callable[[], int], seen: list[dict[str, Any]]) -> httpx2.MockTransport:
    def handle(request: httpx2.Request) -> httpx2.Response:
        seen.append(json.loads(request.content))
        body = {"id": "c", "object": "chat.completion", "created": 0, "model": MODEL,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}}
        headers = {"x-ratelimit-limit-requests": "600", "x-ratelimit-remaining-requests": str(remaining()),
                   "x-ratelimit-reset-requests": "30s", "x-request-id": "req_1"}
        return httpx2.Response(200, json=body, headers=headers)

    return httpx2.MockTransport(handle)


def test_headers_lower_the_shared_view(tmp_path: Path) -> None:
    """Another client of the organization spent the quota: upstream says 1 request is
    left, and the gateway stops sending instead of running into 429s."""
    # A minute's burst: without the headers, hundreds of calls would fit right away.
    gate = fg.Gateway(models={MODEL: fg.QuotaLimits(requests_per_minute=600, burst_seconds=60)})
    seen: list[dict[str, Any]] = []
    transport = gate.transport(inner=_upstream(lambda: 1, seen))
    client = openai.OpenAI(base_url="http://upstream.test/v1", api_key="sk-fake",
                           http_client=httpx2.Client(transport=transport))
    with gate.scope(deadline=30):
        client.chat.completions.create(model=MODEL, messages=MSG)
        client.chat.completions.create(model=MODEL, messages=MSG)
    with gate.scope(deadline=0.05), pytest.raises(openai.RateLimitError, match="fleetgate"):
        client.chat.completions.create(model=MODEL, messages=MSG)
    assert len(seen) == 2


def test_config_from_toml_with_environment_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "fleetgate.toml"
    path.write_text(
        'base_url = "http://127.0.0.1:9/v1"\nlocal_share = 0.25\n'
        '[models."gpt-4.1-mini"]\nrequests_per_minute = 5000\ntokens_per_minute = 2000000\n'
        "[per_user]\nrequests_per_minute = 60\n"
        '[features.support-chat]\ntokens_per_minute = 200000\n'
    )
    monkeypatch.setenv("FLEETGATE_LOCAL_SHARE", "0.5")
    gate = fg.Gateway.from_config(path)
    assert gate.config.local_share == 0.5, "the environment wins over the file"
    assert gate.config.models["gpt-4.1-mini"].tokens_per_minute == 2_000_000
    model_quota, quotas = gate.quotas_for("gpt-4.1-mini", fg.Scope(user="u-9", feature="support-chat"))
    assert model_quota is not None and [q.name for q in quotas] == [
        "model:gpt-4.1-mini", f"user:{gate.privacy.label('user', 'u-9')}", "feature:support-chat"]
    path.write_text("locl_share = 0.5\n")
    with pytest.raises(fg.ConfigError, match="locl_share: unknown key; did you mean `local_share`"):
        fg.Gateway.from_config(path)
    with pytest.raises(fg.ConfigError, match="missing.toml: no such file"):
        fg.Gateway.from_config(tmp_path / "missing.toml")


def test_shared_limiter_through_redis(fake_openai: FakeOpenAI, redis_url: str) -> None:
    gate = gateway(fake_openai, redis_url=redis_url, failure_policy="fail_closed",
                   models={"gpt-4.1-nano": fg.QuotaLimits(requests_per_minute=6_000)})
    client = gate.openai(api_key="sk-fake")
    assert client.chat.completions.create(model="gpt-4.1-nano", messages=MSG).choices
    assert gate.stats["settled_from_usage"] == 1


@pytest.mark.fake_openai(config=FakeConfig(models={MODEL: ModelLimits(requests_per_minute=60)}))
def test_an_upstream_429_empties_the_fleets_view(fake_openai: FakeOpenAI) -> None:
    # The gateway believes in 600 per minute with a minute's burst; upstream allows 1 per second.
    gate = gateway(fake_openai, max_upstream_retries=0,
                   models={MODEL: fg.QuotaLimits(requests_per_minute=600, burst_seconds=60)})
    client = gate.openai(api_key="sk-fake", max_retries=2)
    client.chat.completions.create(model=MODEL, messages=MSG)
    with pytest.raises(openai.RateLimitError) as upstream:
        client.chat.completions.create(model=MODEL, messages=MSG)
    assert upstream.value.code == "rate_limit_exceeded"
    # The view is empty now: the gateway waits (here: refuses within its deadline) instead
    # of sending into another refusal.
    with gate.scope(deadline=0.05), pytest.raises(openai.RateLimitError) as refused:
        client.chat.completions.create(model=MODEL, messages=MSG)
    assert refused.value.code == "fleetgate_rate_limited"
    assert fake_openai.counters(MODEL).requests == 2


def test_model_quotas_keep_the_configured_headroom() -> None:
    limits = fg.QuotaLimits(requests_per_minute=600, tokens_per_minute=100_000)
    for headroom, rpm, tpm in ((0.01, 594, 99_000), (0.0, 600, 100_000)):
        gate = fg.Gateway(models={MODEL: limits}, per_user=limits, model_headroom=headroom)
        model_quota, quotas = gate.quotas_for(MODEL, fg.Scope(user="u"))
        assert model_quota is not None
        assert (model_quota.requests_per_minute, model_quota.tokens_per_minute) == (rpm, tpm)
        assert quotas[1].requests_per_minute == 600, "only the model's limits (upstream's) keep headroom"


def test_a_quota_made_again_after_the_memo_starts_over_is_the_same_room(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fleetgate.gateway, "_QUOTA_MEMO", 2)
    gate = fg.Gateway(per_user=fg.QuotaLimits(requests_per_minute=60, burst_seconds=1))  # a burst of one request
    _, (first,) = gate.quotas_for(MODEL, fg.Scope(user="u1"))
    assert gate.limiter.try_acquire([first])
    for user in ("u2", "u3"):  # the memo fills and starts over
        gate.quotas_for(MODEL, fg.Scope(user=user))
    _, (again,) = gate.quotas_for(MODEL, fg.Scope(user="u1"))
    assert again is not first and again.name == first.name
    assert not gate.limiter.try_acquire([again]), "u1's request is still counted"
    gate.close()


def test_usage_counts_read_every_endpoints_usage() -> None:
    chat = {"prompt_tokens": 120, "completion_tokens": 30, "prompt_tokens_details": {"cached_tokens": 64},
            "completion_tokens_details": {"reasoning_tokens": 12}}
    assert usage_counts(chat) == UsageCounts(prompt=120, cached=64, output=30, reasoning=12)
    responses = {"input_tokens": 50, "output_tokens": 9, "input_tokens_details": {"cached_tokens": 0},
                 "output_tokens_details": {"reasoning_tokens": 4}}
    assert usage_counts(responses) == UsageCounts(prompt=50, cached=0, output=9, reasoning=4)
    assert usage_counts({"prompt_tokens": 7, "total_tokens": 7}) == UsageCounts(prompt=7, cached=0, output=0, reasoning=0)
    assert usage_counts({"prompt_tokens": None, "prompt_tokens_details": None}) == UsageCounts(0, 0, 0, 0)
