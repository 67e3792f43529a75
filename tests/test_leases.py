"""Quota leases: a busy quota is admitted from a lease the pod holds, with no round trip,
yet the fleet still never admits more than the quota, a quota near its limit is decided
request by request, and a lease nobody uses goes back to the fleet."""

from __future__ import annotations

import multiprocessing
import time

import pytest

import fleetgate as fg
from tests.polling import until
from fleetgate.testing import FakeConfig, FakeOpenAI
from fleetgate.testing.fake_openai.config import ModelLimits


def _busy(limiter: fg.Limiter, quota: fg.Quota, n: int, tokens: int = 0) -> dict[str, int]:
    sources: dict[str, int] = {}
    for _ in range(n):
        d = limiter.acquire(quota, tokens=tokens, timeout=5)
        sources[d.source] = sources.get(d.source, 0) + 1
        assert d.reservation is not None
        limiter.settle(d.reservation, tokens)
    return sources


def _holding(limiter: fg.Limiter, quota: fg.Quota, tokens: int = 0) -> tuple[int, int]:
    """Admit until this process holds a lease of `quota` with room left (a refill may be
    on its way when the loop stops); what it holds."""
    for _ in range(5_000):
        held = limiter.leased(quota)
        if held[0] > 0 and held[1] >= tokens:
            return held
        d = limiter.acquire(quota, tokens=tokens, timeout=5)
        assert d.reservation is not None
        limiter.settle(d.reservation, 0)
    raise AssertionError("no lease was ever held")


def test_a_busy_quota_is_admitted_from_the_lease(store_url: str, name: str) -> None:
    limiter = fg.Limiter(store_url, lease_seconds=0.1)
    quota = fg.Quota(name, requests_per_minute=6_000_000, tokens_per_minute=600_000_000)
    sources = _busy(limiter, quota, 2_000, tokens=100)
    granted, served = limiter.lease_counts
    assert sources["lease"] == served > 1_900, sources
    assert 0 < granted < 100, "one grant serves many admissions"


def test_without_leases_every_decision_is_the_stores(redis_url: str, name: str) -> None:
    limiter = fg.Limiter(redis_url)
    quota = fg.Quota(name, requests_per_minute=6_000_000)
    assert _busy(limiter, quota, 200) == {"redis": 200}
    assert limiter.lease_counts == (0, 0)


def test_a_small_burst_is_decided_request_by_request(redis_url: str, name: str) -> None:
    """A tenth of a 10-request burst is under two requests: no lease is worth it."""
    limiter = fg.Limiter(redis_url, lease_seconds=0.1)
    quota = fg.Quota(name, requests_per_minute=600, tokens_per_minute=100_000)
    assert _busy(limiter, quota, 10, tokens=50) == {"redis": 10}


def test_sliding_windows_are_never_leased(redis_url: str, name: str) -> None:
    limiter = fg.Limiter(redis_url, lease_seconds=0.1)
    quota = fg.Quota(name, requests_per_minute=6_000_000, algorithm="sliding_window")
    assert _busy(limiter, quota, 300) == {"redis": 300}


def _hammer_leased(url: str, name: str, seconds: float, queue: multiprocessing.Queue) -> None:
    limiter = fg.Limiter(url, failure_policy="fail_closed", lease_seconds=0.1)
    quota = fg.Quota(name, requests_per_minute=6_000, request_burst=200)
    admitted = 0
    stop = time.monotonic() + seconds
    while time.monotonic() < stop:
        admitted += limiter.try_acquire(quota).allowed
    queue.put(admitted)


def test_leasing_processes_never_admit_more_than_the_quota(store_url: str, name: str) -> None:
    """Four leasing processes hammer 100 requests/s (burst 200) for 2 s: they get the
    allowance, never more. (Hammered, the quota is near its limit all along, where leases
    give way to decisions in the store one by one: a busy quota with room is admitted from
    leases, as the test above shows.)"""
    ctx = multiprocessing.get_context("spawn")
    queue: multiprocessing.Queue = ctx.Queue()
    seconds = 2.0
    started = time.monotonic()
    procs = [ctx.Process(target=_hammer_leased, args=(store_url, name, seconds, queue)) for _ in range(4)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    elapsed = time.monotonic() - started  # includes process start-up: a generous bound
    total = sum(results)
    assert total <= 100 * elapsed + 200
    # What leases still hold when the run stops is at most a tenth of the burst per process.
    assert total >= (100 * seconds + 200) * 0.8, f"only {total} admitted: the quota was wasted"


def test_the_room_leases_hold_is_not_refilled_in_the_store(redis_url: str, name: str) -> None:
    """A pod leases room from a bucket; while the lease may still be admitted from, the
    bucket refills only up to its burst less what the lease holds, so the room in the
    store and in the lease together never exceed the burst upstream allows (else another
    pod could send a full burst just before the lease is spent on top of it)."""
    pod = fg.Limiter(redis_url, lease_seconds=10.0)  # admitted from for 20 s after the grant
    quota = fg.Quota(name, requests_per_minute=60_000, request_burst=1_000)  # refills 1,000/s
    for _ in range(5_000):  # a busy pod, until its lease is big enough to tell
        held, _ = pod.leased(quota)
        if held >= 20:
            break
        _busy(pod, quota, 1)
    assert held >= 20, "no lease big enough to tell"
    time.sleep(2.0)  # Redis's clock refills the bucket meanwhile, however busy this machine
    room = fg.Limiter(redis_url).try_acquire(quota, requests=0).remaining_requests
    assert room is not None and room + held <= 1_000, f"room {room} in the store and {held} leased"


def test_what_a_lease_cannot_pay_is_charged_to_the_store_at_once(redis_url: str, name: str) -> None:
    """A call admitted from a lease used 40,000 tokens beyond its estimate: what the lease
    held pays part, the store is charged the rest now (not when the lease goes back), and
    the lease never owes."""
    pod = fg.Limiter(redis_url, lease_seconds=10.0)  # admitted from for 20 s after the grant
    quota = fg.Quota(name, requests_per_minute=6_000_000, tokens_per_minute=60_000, token_burst=60_000)
    watcher = fg.Limiter(redis_url)

    def room() -> int:
        """The room in the store and in the pod's lease (a grant landing in between may
        count twice: never less than there is)."""
        store = watcher.try_acquire(quota, requests=0, tokens=0).remaining_tokens
        assert store is not None
        return store + pod.leased(quota)[1]

    _holding(pod, quota, tokens=100)
    d = pod.try_acquire(quota, tokens=100)
    assert d.source == "lease" and d.reservation is not None
    before, settled = room(), time.monotonic()
    pod.settle(d.reservation, 100 + 40_000)
    assert pod.leased(quota)[1] >= 0, "the lease owes what it could not pay"

    def charged() -> bool:
        refilled = 1_000 * (time.monotonic() - settled + 1)  # 1,000 tokens/s, and a second's slack
        return room() <= before - 40_000 + refilled
    until(charged, seconds=15.0)  # well within the lease's shelf: the give-back did not pay it
    assert pod.leased(quota)[1] >= 0


def test_a_report_of_less_room_forfeits_the_lease(redis_url: str, name: str) -> None:
    limiter = fg.Limiter(redis_url, lease_seconds=0.1)
    quota = fg.Quota(name, requests_per_minute=6_000_000)
    _holding(limiter, quota)
    limiter.sync_from_headers(quota, {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "1s"})
    assert limiter.leased(quota)[0] == 0, "the lease outlived upstream's report"
    # The store is lowered too; it refills at the quota's rate, as upstream's limit does.
    assert limiter.try_acquire(quota).source == "redis", "the lease was used after upstream said the quota was full"


def test_settling_a_lease_decision_twice_is_an_error(redis_url: str, name: str) -> None:
    limiter = fg.Limiter(redis_url, lease_seconds=0.1)
    quota = fg.Quota(name, requests_per_minute=6_000_000, tokens_per_minute=600_000_000)
    _holding(limiter, quota, tokens=10)
    d = limiter.try_acquire(quota, tokens=10)
    assert d.source == "lease" and d.reservation is not None
    limiter.settle(d.reservation, 4)
    with pytest.raises(fg.ConfigError, match="already settled"):
        limiter.settle(d.reservation, 4)
    other = fg.Limiter(redis_url)
    _holding(limiter, quota, tokens=10)
    e = limiter.try_acquire(quota, tokens=10)
    assert e.source == "lease"
    with pytest.raises(fg.ConfigError, match="another limiter"):
        other.settle(e.reservation, 4)  # type: ignore[arg-type]


def test_an_idle_lease_goes_back_to_the_fleet(redis_url: str, name: str) -> None:
    """A pod leases room of a slowly refilling bucket, stops, and what it held is given
    back to the bucket, where another pod sees it."""
    pod = fg.Limiter(redis_url, lease_seconds=0.1)
    quota = fg.Quota(name, tokens_per_minute=600_000, token_burst=600_000)
    assert _busy(pod, quota, 2_000, tokens=100).get("lease", 0) > 0
    # The last admission may have taken the lease's last room, or a busy machine may have let
    # the lease lapse since: admit until it holds room again (a tokens-only quota's lease
    # counts no requests).
    for _ in range(5_000):
        _, held = pod.leased(quota)
        if held >= 100:
            break
        d = pod.acquire(quota, tokens=100, timeout=5)
        assert d.reservation is not None
        pod.settle(d.reservation, 100)
    assert held >= 100, "no lease was held"
    watcher = fg.Limiter(redis_url)
    before = watcher.try_acquire(quota, requests=0, tokens=0).remaining_tokens
    assert before is not None and before + held <= 600_000
    deadline = time.monotonic() + 10.0  # unused for a second, then given back
    while pod.leased(quota) != (0, 0) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert pod.leased(quota) == (0, 0), "the idle lease was kept"
    after = watcher.try_acquire(quota, requests=0, tokens=0).remaining_tokens
    assert after is not None and after >= before + held, f"room {before} -> {after}: {held} were not given back"


def test_the_gateway_leases_with_redis(redis_url: str, name: str) -> None:
    """Calls through the SDK are admitted from the gateway's lease; with
    ``quota_lease_seconds = 0`` every one is decided in Redis."""
    limits = {"gpt-4.1-mini": fg.QuotaLimits(requests_per_minute=6_000_000, tokens_per_minute=600_000_000)}
    # Upstream's limits as large, or its x-ratelimit-* headers would forfeit the lease.
    upstream = ModelLimits(requests_per_minute=6_000_000, tokens_per_minute=600_000_000)
    with FakeOpenAI(FakeConfig(default_limits=upstream)) as fake:
        for seconds, leased in ((0.1, True), (0.0, False)):
            gate = fg.Gateway(base_url=fake.base_url, redis_url=redis_url, models=limits,
                              quota_lease_seconds=seconds)
            client = gate.openai(api_key="sk-test", max_retries=0)
            for _ in range(60):
                client.chat.completions.create(model="gpt-4.1-mini", max_tokens=8,
                                               messages=[{"role": "user", "content": f"hello {name}"}])
            granted, served = gate.limiter.lease_counts
            assert (granted > 0 and served > 0) if leased else (granted, served) == (0, 0), (seconds, granted, served)
            assert gate.stats["settled_from_usage"] == 60
    with pytest.raises(fg.ConfigError, match="lease_seconds"):
        fg.Limiter(redis_url, lease_seconds=11)
