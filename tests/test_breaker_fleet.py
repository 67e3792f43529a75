"""Circuit breakers shared by a fleet: pods are `Breakers` registries, each on its own
`Limiter` (its own connection) to one real Redis. A half-open breaker is probed by one pod
for the whole fleet, and every pod follows that round's verdict."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

import fleetgate as fg

PROBES = 3
# The poller is left idle (`share_every` of an hour) so that a pod learns the fleet's
# decisions only where the test asks: `sync_now()`, or its own `allow()`.
OPTIONS: dict[str, Any] = {
    "min_calls": 2, "window": 4, "open_base": 0.2, "open_max": 0.2, "jitter": 0.0,
    "half_open_probes": PROBES, "probe_max_wait": 120.0, "share_every": 3600.0,
}


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"still waiting for {what}"
        time.sleep(0.01)


def fleet(url: str, name: str, pods: int) -> tuple[list[fg.Breakers], list[fg.Breaker]]:
    registries = [fg.Breakers(fg.Limiter(url), **OPTIONS) for _ in range(pods)]
    return registries, [r.get(name) for r in registries]


def wait_half_open(registries: list[fg.Breakers], breakers: list[fg.Breaker]) -> None:
    def all_half_open() -> bool:
        for registry in registries:
            registry.sync_now()
        return all(b.state == "half_open" for b in breakers)

    wait_for(all_half_open, "every pod to see the open period end")


def trip_and_wait_half_open(registries: list[fg.Breakers], breakers: list[fg.Breaker]) -> None:
    first = breakers[0]
    for _ in range(2):
        first.record(first.allow(), 503)
    wait_half_open(registries, breakers)


def try_call(breaker: fg.Breaker) -> tuple[int, bool] | None:
    """A permit and whether it is a probe (let through by a breaker that is not closed)."""
    try:
        permit = breaker.allow()
    except fg.CircuitOpen as refused:
        assert refused.reason == "probes_out", refused.reason
        return None
    return permit, breaker.state != "closed"


@pytest.mark.parametrize("pods", [2, 3])
def test_a_fleet_sends_one_round_of_probes(store_url: str, name: str, pods: int) -> None:
    """Pods take turns asking to call; every probe succeeds. The fleet sends exactly
    `half_open_probes` probes and every pod ends closed."""
    registries, breakers = fleet(store_url, f"/chat/completions:{name}", pods)
    trip_and_wait_half_open(registries, breakers)
    probes = 0
    deadline = time.monotonic() + 30
    while not all(b.state == "closed" for b in breakers):
        assert time.monotonic() < deadline, f"pods still not closed after {probes} probes"
        for breaker in breakers:
            if breaker.state == "closed":
                continue
            granted = try_call(breaker)
            if granted is not None:
                permit, probe = granted
                probes += probe
                breaker.record(permit, 200)
        time.sleep(0.01)
    assert probes == PROBES


def test_pods_waiting_on_the_round_follow_its_close_and_its_reopen(store_url: str, name: str) -> None:
    registries, breakers = fleet(store_url, f"/responses:{name}", 3)
    prober, others = breakers[0], breakers[1:]
    trip_and_wait_half_open(registries, breakers)

    probe = prober.allow()
    for other in others:
        assert try_call(other) is None, "one round for the fleet: the others send no probe"
    prober.record(probe, 503)
    assert prober.state == "open"

    def others_are(state: str) -> Callable[[], bool]:
        def check() -> bool:
            for registry in registries[1:]:
                registry.sync_now()
            return all(o.state == state for o in others)
        return check

    wait_for(others_are("open"), "the fleet's reopen")
    wait_half_open(registries, breakers)

    permits = [prober.allow() for _ in range(PROBES)]
    for other in others:
        assert try_call(other) is None
    for permit in permits:
        prober.record(permit, 200)
    assert prober.state == "closed"
    wait_for(others_are("closed"), "the half-open pods to adopt the fleet's close")
    for other in others:
        permit = other.allow()
        other.record(permit, 200)
        assert other.state == "closed"
