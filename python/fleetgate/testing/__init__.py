"""Test tools for fleetgate and its users: real servers on loopback, never mocks.

- :class:`RedisRig` starts a standalone Redis and a Redis Cluster (3 primaries with a
  replica each) on free loopback ports in a temporary directory, and can kill a primary
  to exercise failover.
"""

from __future__ import annotations

from fleetgate.testing.redis import RedisNode, RedisRig, RedisRigError

__all__ = ["RedisNode", "RedisRig", "RedisRigError"]
