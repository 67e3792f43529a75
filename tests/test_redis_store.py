"""What only a shared store must do: agree across processes, stay on one cluster slot per
script, survive lost scripts, a failover and an outage."""

from __future__ import annotations

import multiprocessing
import threading
import time

import pytest
import redis

import fleetgate as fg
from tests.conftest import Failover


def _hammer(url: str, name: str, seconds: float, queue: multiprocessing.Queue) -> None:
    limiter = fg.Limiter(url, failure_policy="fail_closed")
    quota = fg.Quota(name, requests_per_minute=1_200, request_burst=10)
    admitted = 0
    stop = time.monotonic() + seconds
    while time.monotonic() < stop:
        if limiter.try_acquire(quota).allowed:
            admitted += 1
    queue.put(admitted)


def test_processes_share_one_quota_exactly(store_url: str, name: str) -> None:
    """Four processes hammer one quota of 20 requests/s (burst 10) for 2 s: together they
    get the allowance, never more."""
    ctx = multiprocessing.get_context("spawn")
    queue: multiprocessing.Queue = ctx.Queue()
    seconds = 2.0
    started = time.monotonic()
    procs = [ctx.Process(target=_hammer, args=(store_url, name, seconds, queue)) for _ in range(4)]
    for p in procs:
        p.start()
    total = sum(queue.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(timeout=30)
    elapsed = time.monotonic() - started  # includes process start-up: a generous bound
    assert total <= 20 * elapsed + 10
    assert total >= 20 * seconds * 0.9, f"only {total} admitted: the quota was wasted"


def test_hostile_names_stay_on_one_slot(cluster_url: str) -> None:
    limiter = fg.Limiter(cluster_url, failure_policy="fail_closed")
    for hostile in ["{", "}", "{}", "a}{b", "{user}:x", "}{", "%7B", "{{{{"]:
        quota = fg.Quota(hostile, requests_per_minute=60, algorithm="sliding_window", tokens_per_minute=100)
        d = limiter.try_acquire(quota, tokens=5)  # two keys per script: CROSSSLOT if escaping failed
        assert d.allowed and d.source == "redis"
        assert d.reservation is not None
        limiter.settle(d.reservation, tokens=1)


def test_distinct_names_never_share_state(redis_url: str) -> None:
    limiter = fg.Limiter(redis_url, failure_policy="fail_closed")
    a, b = fg.Quota("x{y}", requests_per_minute=1), fg.Quota("x%7By%7D", requests_per_minute=1)
    assert limiter.try_acquire(a).allowed
    assert limiter.try_acquire(b).allowed, "escaping must be injective"


def test_scripts_lost_by_a_restart_are_reloaded(store_url: str, redis_rig, name: str) -> None:
    limiter = fg.Limiter(store_url, failure_policy="fail_closed")
    quota = fg.Quota(name, requests_per_minute=600)
    assert limiter.try_acquire(quota).source == "redis"
    for node in redis_rig.nodes:
        if node.alive:
            redis.Redis(port=node.port, password=node.password).script_flush()
    d = limiter.try_acquire(quota)
    assert d.allowed and d.source == "redis"
    assert d.remaining_requests == 8, "state survived; only the script cache was lost"


def test_a_primary_killed_under_load(cluster_url: str, failover: Failover, name: str) -> None:
    """Threads keep deciding while the quota's primary dies; the replica takes over and the
    limiter goes back to Redis with nothing crashing."""
    limiter = fg.Limiter(cluster_url, failure_policy="fail_open", local_share=0.5)
    quota = fg.Quota(name, requests_per_minute=600_000)
    sources: list[str] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            try:
                sources.append(limiter.try_acquire(quota).source)
            except BaseException as e:  # any exception is a failure of this test
                errors.append(e)
                return

    threads = [threading.Thread(target=load) for _ in range(8)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    failover.kill_primary(f"fg:{{{name}}}:tb")
    failover.rig.wait_cluster_ok()
    deadline = time.monotonic() + 60

    def back() -> bool:
        """Decisions went back to the shared store after the outage was noticed (read while
        the load runs: the threads' last decisions after the stop are not the question)."""
        return "fallback" in sources and sources[-1] == "redis"
    while time.monotonic() < deadline and not back():
        time.sleep(0.1)
    returned = back()
    stop.set()
    for t in threads:
        t.join(timeout=10)
    assert not errors
    assert "fallback" in sources, "the outage was noticed"
    assert returned, "decisions went back to the shared store after failover"
    assert limiter.store_errors > 0


def test_redis_down_follows_the_failure_policy(redis_rig, name: str) -> None:
    rig_url = redis_rig.start_standalone()
    node = redis_rig.nodes[-1]
    open_limiter = fg.Limiter(rig_url, failure_policy="fail_open", local_share=0.25)
    closed_limiter = fg.Limiter(rig_url, failure_policy="fail_closed")
    quota = fg.Quota(name, requests_per_minute=600, request_burst=8)
    assert open_limiter.try_acquire(quota).source == "redis"
    assert closed_limiter.try_acquire(quota).source == "redis"
    node.process.kill()
    node.process.wait()

    # Fail-open: this pod decides alone on its share (a quarter of the burst: 2).
    decisions = [open_limiter.try_acquire(quota) for _ in range(3)]
    assert [d.allowed for d in decisions] == [True, True, False]
    assert all(d.degraded and d.source == "fallback" for d in decisions)
    assert open_limiter.degraded

    # Fail-closed: a typed error, promptly, every time.
    for _ in range(3):
        with pytest.raises(fg.StoreUnavailable, match="unavailable"):
            closed_limiter.try_acquire(quota)
    with pytest.raises(fg.StoreUnavailable):
        closed_limiter.ping()

    redis_rig.restart(node)
    time.sleep(0.6)  # past recheck_after: the next decision tries Redis again
    for _ in range(50):
        d = open_limiter.try_acquire(quota)
        if d.source == "redis":
            break
        time.sleep(0.1)
    assert d.source == "redis"


def test_unreachable_at_start_still_decides(name: str) -> None:
    limiter = fg.Limiter("redis://127.0.0.1:1", failure_policy="fail_open", connect_timeout=0.2)
    d = limiter.try_acquire(fg.Quota(name, requests_per_minute=600))
    assert d.allowed and d.degraded
