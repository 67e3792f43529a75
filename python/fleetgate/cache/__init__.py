"""The answer cache: an exact repeat of a request (the same endpoint and everything in its
body that changes the answer, in the same namespace) is answered from the stored answer,
without an upstream call. Streams are stored once they end and replayed as streams.

    [cache]
    enabled = true
    when = "deterministic"   # or "always": which requests are answered from the cache
    namespace = "user"       # who may share answers (always within one API key)
    ttl_seconds = 3600

Answers carry ``x-fleetgate-cache: hit`` when they come from the cache.
"""

from fleetgate.cache.exact import CACHE_HEADER, ExactCache
from fleetgate.cache.store import AnswerStore, MemoryStore, RedisAnswerStore

__all__ = ["CACHE_HEADER", "AnswerStore", "ExactCache", "MemoryStore", "RedisAnswerStore"]
