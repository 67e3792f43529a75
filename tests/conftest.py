"""Fixtures: real Redis servers (a standalone one and a 3x2 cluster) for the whole session,
started on free loopback ports and stopped at the end, also when tests fail."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from fleetgate.testing import RedisNode, RedisRig


@pytest.fixture(scope="session")
def redis_rig() -> Iterator[RedisRig]:
    with RedisRig() as rig:
        yield rig


@pytest.fixture(scope="session")
def redis_url(redis_rig: RedisRig) -> str:
    return redis_rig.start_standalone()


@pytest.fixture(scope="session")
def cluster_url(redis_rig: RedisRig) -> str:
    return redis_rig.start_cluster()


@pytest.fixture(params=["standalone", "cluster"])
def store_url(request: pytest.FixtureRequest) -> str:
    """Each shared-store test runs against both topologies."""
    return request.getfixturevalue("redis_url" if request.param == "standalone" else "cluster_url")


class Failover:
    """Kills primaries on request; restarts them after the test so later tests see a
    healthy cluster."""

    def __init__(self, rig: RedisRig) -> None:
        self.rig = rig
        self.killed: list[RedisNode] = []

    def kill_primary(self, key: str) -> RedisNode:
        node = self.rig.kill_primary(key)
        self.killed.append(node)
        return node

    def restore(self) -> None:
        for node in self.killed:
            self.rig.restart(node)
        self.rig.wait_cluster_ok()


@pytest.fixture
def failover(redis_rig: RedisRig, cluster_url: str) -> Iterator[Failover]:
    helper = Failover(redis_rig)
    yield helper
    helper.restore()


@pytest.fixture
def name() -> str:
    """A quota name no other test uses, so shared state never leaks between tests."""
    return f"test-{uuid.uuid4().hex[:12]}"
