"""Limiter behaviour a caller notices, on every store: embedded, Redis, Redis Cluster."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

import fleetgate as fg

MakeLimiter = Callable[..., fg.Limiter]


@pytest.fixture(params=["embedded", "standalone", "cluster"])
def make_limiter(request: pytest.FixtureRequest) -> MakeLimiter:
    if request.param == "embedded":
        return lambda **kw: fg.Limiter(None, **kw)
    url = request.getfixturevalue("redis_url" if request.param == "standalone" else "cluster_url")
    return lambda **kw: fg.Limiter(url, failure_policy="fail_closed", **kw)


def test_admits_the_burst_then_refuses_with_a_retry_after(make_limiter: MakeLimiter, name: str) -> None:
    limiter = make_limiter()
    quota = fg.Quota(name, requests_per_minute=60, request_burst=3)
    decisions = [limiter.try_acquire(quota) for _ in range(4)]
    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert [d.remaining_requests for d in decisions[:3]] == [2, 1, 0]
    refused = decisions[3]
    assert not refused and refused.limited_by == name and refused.reservation is None
    assert 0.9 < refused.retry_after <= 1.0  # one request refills in 1 s at 60 per minute
    assert refused.source in ("local", "redis")


def test_one_call_reserves_on_every_quota_or_none(make_limiter: MakeLimiter, name: str) -> None:
    limiter = make_limiter()
    # Names chosen so that on a cluster the quotas land on different slots.
    org = fg.Quota(f"{name}:org", requests_per_minute=600, tokens_per_minute=60_000)
    user = fg.Quota(f"{name}:user:{{42}}", requests_per_minute=60, request_burst=1)
    first = limiter.try_acquire([org, user], tokens=400)
    assert first.allowed and first.reservation is not None
    assert first.reservation.quotas == [org.name, user.name]
    refused = limiter.try_acquire([org, user], tokens=400)
    assert not refused.allowed and refused.limited_by == user.name
    # The refusal took nothing from the org quota: its whole remaining burst is still there
    # (9 requests and 600 tokens; had the refusal kept its share, 8 and 200 would be left).
    assert limiter.try_acquire(org, requests=9, tokens=600).allowed


def test_settle_gives_back_the_unused_estimate(make_limiter: MakeLimiter, name: str) -> None:
    limiter = make_limiter()
    quota = fg.Quota(name, tokens_per_minute=60_000)  # 1,000-token burst
    d = limiter.try_acquire(quota, tokens=900)
    assert d.remaining_tokens == 100
    assert not limiter.try_acquire(quota, tokens=500).allowed
    assert d.reservation is not None
    limiter.settle(d.reservation, tokens=300)
    assert d.reservation.settled
    assert limiter.try_acquire(quota, tokens=500).allowed
    with pytest.raises(fg.ConfigError, match="already settled"):
        limiter.settle(d.reservation, tokens=300)


def test_settle_charges_usage_above_the_estimate(make_limiter: MakeLimiter, name: str) -> None:
    limiter = make_limiter()
    quota = fg.Quota(name, tokens_per_minute=60_000)
    d = limiter.try_acquire(quota, tokens=100)
    assert d.reservation is not None
    limiter.settle(d.reservation, tokens=800)
    assert not limiter.try_acquire(quota, tokens=300).allowed


def test_sliding_window_counts_the_last_minute_exactly(make_limiter: MakeLimiter, name: str) -> None:
    limiter = make_limiter()
    quota = fg.Quota(name, requests_per_minute=3, tokens_per_minute=100, algorithm="sliding_window")
    first = limiter.try_acquire(quota, tokens=60)
    assert first.allowed and first.remaining_tokens == 40
    refused = limiter.try_acquire(quota, tokens=50)
    assert not refused.allowed and 59 < refused.retry_after <= 60
    assert first.reservation is not None
    limiter.settle(first.reservation, tokens=10)
    assert limiter.try_acquire(quota, tokens=50).allowed
    assert limiter.try_acquire(quota, tokens=0).allowed
    assert not limiter.try_acquire(quota, tokens=0).allowed, "three requests are in the window"


def test_headers_lower_the_shared_view_never_raise_it(make_limiter: MakeLimiter, name: str) -> None:
    limiter = make_limiter()
    quota = fg.Quota(name, requests_per_minute=600, tokens_per_minute=600_000)
    limiter.sync_from_headers(quota, {
        "x-ratelimit-limit-requests": "600", "x-ratelimit-remaining-requests": "2",
        "x-ratelimit-reset-requests": "5s",
        "x-ratelimit-limit-tokens": "600000", "x-ratelimit-remaining-tokens": "999999",
        "x-ratelimit-reset-tokens": "1m0s",
    })
    assert [limiter.try_acquire(quota).allowed for _ in range(3)] == [True, True, False]
    # A report of more room than the view has changes nothing.
    assert limiter.try_acquire(quota, requests=0, tokens=10_000).remaining_tokens == 0


def test_sliding_window_headers_hold_until_upstream_resets(make_limiter: MakeLimiter, name: str) -> None:
    limiter = make_limiter()
    quota = fg.Quota(name, requests_per_minute=100, algorithm="sliding_window")
    limiter.sync_from_headers(quota, {"x-ratelimit-remaining-requests": "1", "x-ratelimit-reset-requests": "30s"})
    assert limiter.try_acquire(quota).allowed
    refused = limiter.try_acquire(quota)
    assert not refused.allowed and 29 < refused.retry_after <= 30


def test_acquire_waits_for_room(make_limiter: MakeLimiter, name: str) -> None:
    limiter = make_limiter()
    quota = fg.Quota(name, requests_per_minute=600, request_burst=1)  # one every 0.1 s
    assert limiter.acquire(quota).allowed
    assert not limiter.try_acquire(quota).allowed
    waited = limiter.acquire(quota, timeout=5)
    assert waited.allowed and waited.reservation is not None


def test_acquire_raises_rate_limited_when_room_comes_too_late(make_limiter: MakeLimiter, name: str) -> None:
    limiter = make_limiter()
    quota = fg.Quota(name, requests_per_minute=1)
    assert limiter.try_acquire(quota).allowed
    with pytest.raises(fg.RateLimited) as caught:
        limiter.acquire(quota, timeout=0.05)
    assert caught.value.quota == name and 59 < caught.value.retry_after <= 60


def test_async_twins(make_limiter: MakeLimiter, name: str) -> None:
    limiter = make_limiter()
    quota = fg.Quota(name, requests_per_minute=600, request_burst=2, tokens_per_minute=60_000)

    async def main() -> None:
        d = await limiter.try_acquire_async(quota, tokens=500)
        assert d.allowed and d.reservation is not None
        await limiter.settle_async(d.reservation, tokens=100)
        assert (await limiter.acquire_async(quota, tokens=100)).allowed
        assert not (await limiter.try_acquire_async(quota)).allowed
        assert (await limiter.acquire_async(quota, timeout=5)).allowed
        await limiter.sync_from_headers_async(quota, {"x-ratelimit-remaining-tokens": "0"})
        with pytest.raises(fg.RateLimited):
            await limiter.acquire_async(quota, tokens=1, timeout=0.01)
        many = await asyncio.gather(*(limiter.try_acquire_async(quota) for _ in range(20)))
        assert all(not d.allowed for d in many)
        await limiter.ping_async()

    asyncio.run(main())
    # The async methods are coroutines: they can be made outside a running loop.
    assert not asyncio.run(limiter.try_acquire_async(quota)).allowed


def test_costs_that_can_never_fit_are_errors_not_waits(make_limiter: MakeLimiter, name: str) -> None:
    limiter = make_limiter()
    quota = fg.Quota(name, tokens_per_minute=60_000)
    with pytest.raises(fg.ConfigError, match=r"can never be admitted.*token_burst"):
        limiter.acquire(quota, tokens=1_001)
    with pytest.raises(fg.ConfigError, match="tokens must be zero or more"):
        limiter.try_acquire(quota, tokens=-1)
    with pytest.raises(TypeError, match="quotas must be a Quota"):
        limiter.try_acquire("gpt-4.1")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="quotas must be a Quota"):
        limiter.try_acquire([quota, "gpt-4.1"])  # type: ignore[list-item]
    with pytest.raises(fg.ConfigError, match="no quotas given"):
        limiter.try_acquire([])
    with pytest.raises(fg.ConfigError, match="timeout"):
        limiter.acquire(quota, timeout=-1)


def test_reservations_belong_to_their_limiter(name: str, redis_url: str) -> None:
    quota = fg.Quota(name, tokens_per_minute=60_000)
    embedded, shared = fg.Limiter(), fg.Limiter(redis_url, failure_policy="fail_closed")
    for owner, stranger in ((embedded, shared), (shared, embedded)):
        d = owner.try_acquire(quota, tokens=10)
        assert d.reservation is not None
        for settle in (stranger.settle, stranger.settle_later):
            with pytest.raises(fg.ConfigError, match="another limiter"):
                settle(d.reservation, 1)
        assert not d.reservation.settled, "a refused settle leaves the reservation to its owner"
        owner.settle(d.reservation, 1)
        assert d.reservation.settled


def test_settle_later_claims_at_once(name: str, redis_url: str) -> None:
    limiter = fg.Limiter(redis_url, failure_policy="fail_closed")
    d = limiter.try_acquire(fg.Quota(name, tokens_per_minute=60_000), tokens=10)
    assert d.reservation is not None
    limiter.settle_later(d.reservation, 5)
    assert d.reservation.settled
    with pytest.raises(fg.ConfigError, match="already settled"):
        limiter.settle_later(d.reservation, 5)


@pytest.mark.parametrize(
    ("url", "needle"),
    [
        ("localhost:6379", "expected a scheme"),
        ("http://user:hunter2@h:1", "unknown scheme"),
        ("redis+cluster://", "at least one host"),
        ("redis+cluster://a:1,b", "explicit port"),
    ],
)
def test_bad_store_urls(url: str, needle: str) -> None:
    with pytest.raises(fg.ConfigError, match=needle) as caught:
        fg.Limiter(url)
    assert "hunter2" not in str(caught.value)


def test_bad_options() -> None:
    with pytest.raises(fg.ConfigError, match="failure_policy"):
        fg.Limiter(failure_policy="maybe")  # type: ignore[arg-type]
    with pytest.raises(fg.ConfigError, match="local_share"):
        fg.Limiter("redis://127.0.0.1:1", local_share=0)
    with pytest.raises(fg.ConfigError, match="timeout"):
        fg.Limiter("redis://127.0.0.1:1", timeout=0)


def test_a_cancelled_wait_gives_its_admission_back(make_limiter: MakeLimiter, name: str) -> None:
    limiter = make_limiter()
    # Tokens refill at 100/s: had the cancelled wait kept its 900, the next could not have
    # them within its 2 s timeout.
    quota = fg.Quota(name, requests_per_minute=600, request_burst=1, tokens_per_minute=6_000, token_burst=1_000)

    async def main() -> None:
        assert (await limiter.try_acquire_async(quota)).allowed
        # This wait is admitted about 0.1 s from now, after its caller has given up.
        waiter = asyncio.ensure_future(limiter.acquire_async(quota, tokens=900))
        await asyncio.sleep(0.02)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        await asyncio.sleep(0.2)  # the cancelled wait is admitted meanwhile, and given back
        decision = await limiter.acquire_async(quota, tokens=900, timeout=2)
        assert decision.allowed, "the 900 tokens of the cancelled wait came back"

    asyncio.run(main())


def test_async_errors_raise_at_the_call_or_the_await(make_limiter: MakeLimiter, name: str) -> None:
    limiter = make_limiter()
    quota = fg.Quota(name, requests_per_minute=1)
    with pytest.raises(fg.ConfigError, match="tokens must be zero or more"):
        limiter.try_acquire_async(quota, tokens=-5)  # checked before any coroutine exists

    async def main() -> None:
        assert (await limiter.try_acquire_async(quota)).allowed
        with pytest.raises(fg.RateLimited):
            await limiter.acquire_async(quota, timeout=0.01)

    asyncio.run(main())
