"""The Python side's Redis (the cache's answers, the modes, the rollouts, the batch job
registry: everything off the per-request hot path, which the Rust core serves): one
redis-py client per store URL, standalone or ``redis+cluster://``, and the URL as a log or
an error may show it (no password)."""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from fleetgate.errors import ConfigError

if TYPE_CHECKING:
    import redis
    import redis.cluster

__all__ = ["redacted_url", "redis_client"]


def redacted_url(url: str) -> str:
    """`url` with any password replaced by ``***``, fit for a message or a log."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    userinfo, _, hosts = rest.rpartition("@")
    user, colon, _ = userinfo.partition(":")
    return f"{scheme}://{user}{':***' if colon else ''}@{hosts}" if colon or user else url


def redis_client(url: str, timeout: float | None = 2.0) -> redis.Redis | redis.cluster.RedisCluster:
    """A redis-py client for one of fleetgate's store URLs (``redis+cluster://h:p,h:p`` too);
    `timeout` bounds each socket wait (None: blocking reads may wait as long as they ask)."""
    import redis  # noqa: PLC0415 - at first use: a gateway without Redis never imports redis-py
    import redis.cluster  # noqa: PLC0415
    if url.startswith("redis+cluster://"):
        hosts = url.removeprefix("redis+cluster://").split("/")[0].split("@")[-1]
        nodes = []
        for host in filter(None, hosts.split(",")):
            name, _, port = host.rpartition(":")
            if not name or not port.isdigit():
                raise ConfigError(f"redis_url: {host!r} is not host:port")
            nodes.append(redis.cluster.ClusterNode(name, int(port)))  # type: ignore[no-untyped-call]
        if not nodes:
            raise ConfigError("redis_url: a redis+cluster:// URL names at least one host:port")
        parts = urlsplit(url.replace("redis+cluster://", "redis://", 1).split(",")[0])
        return redis.cluster.RedisCluster(startup_nodes=nodes, username=parts.username, password=parts.password,
                                          socket_timeout=timeout)
    return redis.Redis.from_url(url, socket_timeout=timeout)
