"""Test tools for fleetgate and its users: real servers on loopback, never mocks.

- :class:`RedisRig` starts a standalone Redis and a Redis Cluster (3 primaries with a
  replica each) on free loopback ports in a temporary directory, and can kill a primary
  to exercise failover.
- :class:`FakeOpenAI` (extra ``testing``) is a local OpenAI-compatible server with
  OpenAI's limits, faults on a schedule and the Batch API; ``FakeConfig`` configures it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fleetgate.testing.redis import RedisNode, RedisRig, RedisRigError

if TYPE_CHECKING:
    from fleetgate.testing.fake_openai import FakeConfig, FakeOpenAI

__all__ = ["FakeConfig", "FakeOpenAI", "RedisNode", "RedisRig", "RedisRigError"]


def __getattr__(name: str) -> Any:
    # The fake server needs aiohttp (the `testing` extra): import it only when asked for.
    if name in ("FakeOpenAI", "FakeConfig"):
        from fleetgate.testing import fake_openai

        return getattr(fake_openai, name)
    raise AttributeError(f"module 'fleetgate.testing' has no attribute {name!r}")
