"""Test tools for fleetgate and its users: real servers on loopback, never mocks.

- :class:`RedisRig` starts a standalone Redis and a Redis Cluster (3 primaries with a
  replica each) on free loopback ports in a temporary directory, and can kill a primary
  to exercise failover.
- :class:`FakeOpenAI` (extra ``testing``) is a local OpenAI-compatible server with
  OpenAI's limits, faults on a schedule and the Batch API; ``FakeConfig`` configures it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fleetgate._lazy import lazy

if TYPE_CHECKING:
    from fleetgate.testing.fake_openai import FakeConfig, FakeOpenAI
    from fleetgate.testing.redis import RedisNode, RedisRig, RedisRigError

__all__ = ["FakeConfig", "FakeOpenAI", "RedisNode", "RedisRig", "RedisRigError"]


# Loaded when asked for: the fake server needs aiohttp (the `testing` extra), and the pytest
# plugin (fleetgate.testing.pytest_plugin) must cost a test run nothing until it is used.
_LAZY = {"FakeConfig": "fleetgate.testing.fake_openai", "FakeOpenAI": "fleetgate.testing.fake_openai",
         "RedisNode": "fleetgate.testing.redis", "RedisRig": "fleetgate.testing.redis",
         "RedisRigError": "fleetgate.testing.redis"}

if not TYPE_CHECKING:

    __getattr__ = lazy(__name__, _LAZY, globals())
