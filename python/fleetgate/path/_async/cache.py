"""cache: answers kept for requests that ask the same (the exact layer: the request's
identity, within the sharing namespace), then for prompts that mean the same (the semantic
layer, FAISS, in the same namespace). A hit is the answer; a miss goes on, and the answer
the primary rung gives is kept (a stream once it has ended whole).

Contract: the cache and deduplication use one request identity (:attr:`Call.identity`),
so a call collapsed into another's flight is the same request the cache would answer.
Only the primary rung's answers are kept, by the caller that made them (not by the callers
that shared its flight); a probe is never answered from the cache.
"""

from __future__ import annotations

import httpx2

from fleetgate.cache import AnswerCache
from fleetgate.path._async.layer import Layer, Next
from fleetgate.path.call import Call

__all__ = ["Cache"]


class Cache(Layer):
    name = "cache"

    def __init__(self, cache: AnswerCache) -> None:
        self.cache = cache

    async def handle(self, call: Call, next: Next) -> httpx2.Response:  # noqa: A002
        if call.body.get("background") is True:
            return await next(call)  # answered "queued": a placeholder, not an answer to keep
        cache = self.cache
        address = call.cache_address = cache.address(call.identity, call.endpoint, call.body, call.request,
                                                     call.scope)
        if address is None:
            return await next(call)
        if not call.probe and cache.serves(call.body):
            call.looked_up = True
            hit = await cache.lookup_async(address.key, call.request, address.semantic)
            if hit is not None:
                call.tier = "cache"
                return hit
        response = await next(call)
        if call.tier == "primary" and call.shared not in ("follower", "fleet"):
            response = await cache.keep_async(address.key, response, address.semantic)
        return response
