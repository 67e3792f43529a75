"""Where cached answers live: in memory (one process, least recently used go first), or in
Redis (shared by the fleet; redis-py, since caching is off the per-request hot path of the
limiter: one GET per lookup, one SET per stored answer)."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Protocol

from fleetgate.errors import StoreUnavailable
from fleetgate.redis_clients import redis_client

__all__ = ["AnswerStore", "MemoryStore", "RedisAnswerStore", "store_for"]


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
        import redis  # here, not at module level: a gateway without Redis never imports redis-py

        self._client = redis_client(url)
        self._failed: type[Exception] = redis.RedisError

    def get(self, key: str) -> bytes | None:
        try:
            value = self._client.get(f"fg:cache:{key}")
        except self._failed as e:
            raise StoreUnavailable(f"the answer cache's Redis is unavailable ({e}); check that Redis is "
                                   "reachable at redis_url") from e
        return value if isinstance(value, bytes) else None

    def put(self, key: str, value: bytes, ttl: float) -> None:
        try:
            self._client.set(f"fg:cache:{key}", value, px=max(1, int(ttl * 1000)))
        except self._failed as e:
            raise StoreUnavailable(f"the answer cache's Redis is unavailable ({e}); check that Redis is "
                                   "reachable at redis_url") from e


def store_for(redis_url: str | None, max_entries: int) -> AnswerStore:
    return MemoryStore(max_entries) if redis_url is None else RedisAnswerStore(redis_url)
