"""Where cached answers live: in memory (one process, least recently used go first), or in
Redis (shared by the fleet; redis-py, since caching is off the per-request hot path of the
limiter: one GET per lookup, one SET per stored answer)."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Protocol
from urllib.parse import urlsplit

import redis
import redis.cluster

from fleetgate.errors import ConfigError, StoreUnavailable

__all__ = ["AnswerStore", "MemoryStore", "RedisAnswerStore", "redacted_url", "redis_client", "store_for"]


class AnswerStore(Protocol):
    def get(self, key: str) -> bytes | None: ...
    def put(self, key: str, value: bytes, ttl: float) -> None: ...


class MemoryStore:
    """Answers in this process, each until its TTL, at most `max_entries`."""

    def __init__(self, max_entries: int) -> None:
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._max = max_entries
        self._lock = threading.Lock()

    def get(self, key: str) -> bytes | None:
        with self._lock:
            found = self._entries.get(key)
            if found is None:
                return None
            if found[0] <= time.monotonic():
                del self._entries[key]
                return None
            self._entries.move_to_end(key)
            return found[1]

    def put(self, key: str, value: bytes, ttl: float) -> None:
        with self._lock:
            self._entries[key] = (time.monotonic() + ttl, value)
            self._entries.move_to_end(key)
            while len(self._entries) > self._max:
                self._entries.popitem(last=False)


class RedisAnswerStore:
    """Answers in Redis, each under ``fg:cache:<key>`` with its TTL."""

    def __init__(self, url: str) -> None:
        self._client = redis_client(url)

    def get(self, key: str) -> bytes | None:
        try:
            value = self._client.get(f"fg:cache:{key}")
        except redis.RedisError as e:
            raise StoreUnavailable(f"the answer cache's Redis is unavailable ({e})") from e
        return value if isinstance(value, bytes) else None

    def put(self, key: str, value: bytes, ttl: float) -> None:
        try:
            self._client.set(f"fg:cache:{key}", value, px=max(1, int(ttl * 1000)))
        except redis.RedisError as e:
            raise StoreUnavailable(f"the answer cache's Redis is unavailable ({e})") from e


def store_for(redis_url: str | None, max_entries: int) -> AnswerStore:
    return MemoryStore(max_entries) if redis_url is None else RedisAnswerStore(redis_url)


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
