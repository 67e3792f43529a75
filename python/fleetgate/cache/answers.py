"""The answer cache: the exact layer (a key over everything in a request that changes its
answer, and the answers stored under it), then the semantic layer
(:mod:`fleetgate.cache.semantic`) for prompts that mean the same."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING, Any, NamedTuple

import httpx2

from fleetgate.cache.store import AnswerStore, RedisAnswerStore, store_for
from fleetgate.config import CacheSettings
from fleetgate.errors import StoreUnavailable
from fleetgate.outage import Outage
from fleetgate.redis_clients import redacted_url
from fleetgate.sharing import deterministic, digest, is_read, namespace_of
from fleetgate.scope import Scope

if TYPE_CHECKING:
    from fleetgate.cache.embedders import Embedder
    from fleetgate.cache.semantic import SemanticCache, SemanticQuery
    from fleetgate.stats import GatewayStats

__all__ = ["CACHE_HEADER", "SIMILARITY_HEADER", "AnswerCache", "CacheAddress"]

#: Response header: ``hit`` for an answer from the exact layer, ``semantic`` from the
#: semantic one (then ``x-fleetgate-similarity`` gives the prompts' cosine similarity).
CACHE_HEADER = "x-fleetgate-cache"
SIMILARITY_HEADER = "x-fleetgate-similarity"

log = logging.getLogger("fleetgate")

#: Headers a stored answer does not keep: the wire's, and those of the call that made it.
_NOT_STORED = frozenset({"content-encoding", "content-length", "transfer-encoding", "date", "x-request-id",
                         "set-cookie", "x-fleetgate-dedup"})


class CacheAddress(NamedTuple):
    """Where a request's answer is kept: its exact key, and what the semantic layer
    matches it on (None: not by meaning)."""

    key: str
    semantic: SemanticQuery | None


class AnswerCache:
    def __init__(self, settings: CacheSettings, redis_url: str | None, stats: GatewayStats,
                 embedder: Embedder | None = None, on_guarded: Callable[[str], object] | None = None) -> None:
        """`embedder` is the semantic layer's (required when it is enabled); `on_guarded`
        hears of each near-miss its guards refused."""
        self.settings = settings
        self.stats = stats
        self.store: AnswerStore | None = store_for(redis_url, settings.max_entries) if settings.enabled else None
        self._outage = Outage(f"the answer cache's Redis at {redacted_url(redis_url)}" if redis_url
                              else "the answer cache")
        self.semantic: SemanticCache | None = None
        if self.store is not None and settings.semantic.enabled:
            if embedder is None:
                raise ValueError("the semantic layer needs an embedder")
            # numpy and FAISS (the `semantic` extra) load with the semantic layer.
            from fleetgate.cache.semantic import SemanticCache

            self.semantic = SemanticCache(settings.semantic, embedder, stats, redis_url, self.store, on_guarded)

    def query(self, endpoint: str, body: dict[str, Any], request: httpx2.Request, sc: Scope) -> SemanticQuery | None:
        """What the semantic layer matches the request on (None: it is off, or cannot)."""
        return None if self.semantic is None else self.semantic.query(endpoint, body, request, sc)

    def close(self) -> None:
        if self.semantic is not None:
            self.semantic.close()

    def key(self, identity: str, request: httpx2.Request, sc: Scope) -> str | None:
        """The key of the answer to a request of `identity` (:func:`fleetgate.sharing.identity`),
        or None when its scope cannot share one."""
        if self.store is None:
            return None
        namespace = namespace_of(self.settings.namespace, request, sc)
        return None if namespace is None else digest(namespace, identity)

    def address(self, identity: str, endpoint: str, body: dict[str, Any], request: httpx2.Request,
                sc: Scope) -> CacheAddress | None:
        """Where the answer to a request is kept, or None when it is not cached (the cache
        is off, or the scope cannot share answers)."""
        key = self.key(identity, request, sc)
        return None if key is None else CacheAddress(key, self.query(endpoint, body, request, sc))

    def serves(self, body: dict[str, Any]) -> bool:
        """Whether the policy answers this request from the cache."""
        return self.settings.when == "always" or deterministic(body)

    # -- lookup ----------------------------------------------------------------------------

    def lookup(self, key: str, request: httpx2.Request, query: SemanticQuery | None = None) -> httpx2.Response | None:
        """The stored answer to `request` (or, by `query`, to one that means the same), or
        None. A Redis failure is logged and is a miss."""
        assert self.store is not None
        if self._outage.suspended():
            self.stats.count("cache_errors")
            return None
        try:
            stored = self.store.get(key)
            self._outage.answered()
            if stored is not None:
                self.stats.count("cache_hits")
                return _response(stored, request, ("hit",))
            self.stats.count("cache_misses")
            if query is None or self.semantic is None:
                return None
            match = self.semantic.find(query)
            stored = self.store.get(match.key) if match is not None else None
        except StoreUnavailable as e:
            self.stats.count("cache_errors")
            self._outage.failed(e, "calls are answered without the cache until it is back")
            return None
        if match is None:
            return None
        if stored is None:  # the answer expired before its entry was swept
            self.stats.count("semantic_stale")
            return None
        return _response(stored, request, ("semantic", f"{match.similarity:.4f}"))

    # -- storing ----------------------------------------------------------------------------

    def keep(self, key: str, response: httpx2.Response, query: SemanticQuery | None = None) -> httpx2.Response:
        """Store `response` (a successful answer) under `key` (and, by `query`, in the
        semantic layer): read whole, at once; a stream, once it has ended whole. Returns
        the response to hand on."""
        if response.status_code != 200:
            return response
        if isinstance(response.stream, httpx2.SyncByteStream) and not is_read(response):
            return _rewrap(response, _TeeStream(response.stream,
                                                lambda body: self._put(key, response, body, True, query)))
        if isinstance(response.stream, httpx2.AsyncByteStream) and not is_read(response):
            return _rewrap(response, _AsyncTeeStream(response.stream,
                                                     lambda body: self._put_later(key, response, body, True, query)))
        self._put(key, response, response.content, False, query)
        return response

    async def keep_async(self, key: str, response: httpx2.Response,
                         query: SemanticQuery | None = None) -> httpx2.Response:
        """`keep`, with Redis off the event loop."""
        if response.status_code == 200 and is_read(response) and self._shared:
            await asyncio.to_thread(self._put, key, response, response.content, False, query)
            return response
        return self.keep(key, response, query)

    async def lookup_async(self, key: str, request: httpx2.Request,
                           query: SemanticQuery | None = None) -> httpx2.Response | None:
        """`lookup`, with Redis and embedding off the event loop."""
        if self._shared or (query is not None and self.semantic is not None):
            return await asyncio.to_thread(self.lookup, key, request, query)
        return self.lookup(key, request)

    @property
    def _shared(self) -> bool:
        return isinstance(self.store, RedisAnswerStore)

    def _put_later(self, key: str, response: httpx2.Response, body: bytes, raw: bool,
                   query: SemanticQuery | None) -> None:
        """Store from a stream's end on the event loop: in a worker thread when in Redis."""
        if not self._shared:
            self._put(key, response, body, raw, query)
            return
        done = asyncio.get_running_loop().run_in_executor(None, self._put, key, response, body, raw, query)
        done.add_done_callback(_log_failure)

    def _put(self, key: str, response: httpx2.Response, body: bytes, raw: bool,
             query: SemanticQuery | None = None) -> None:
        """Store `body`: the decoded answer, or (`raw`) the bytes as they came on the wire."""
        assert self.store is not None
        if len(body) > self.settings.max_entry_bytes:
            self.stats.count("cache_too_large")
            return
        dropped = _NOT_STORED - {"content-encoding"} if raw else _NOT_STORED
        headers = [(k, v) for k, v in response.headers.multi_items() if k.lower() not in dropped]
        head = json.dumps({"status": response.status_code, "headers": headers}).encode()
        stored = head + b"\n" + body
        if self._outage.suspended():
            self.stats.count("cache_errors")
            return
        try:
            self.store.put(key, stored, self.settings.ttl_seconds)
        except StoreUnavailable as e:
            self.stats.count("cache_errors")
            self._outage.failed(e, "calls are answered without the cache until it is back")
            return
        self._outage.answered()
        self.stats.count("cache_stored")
        if query is not None and self.semantic is not None:
            self.semantic.add_later(query, key, self.settings.ttl_seconds, stored)


def _log_failure(done: asyncio.Future[None]) -> None:
    if not done.cancelled() and done.exception() is not None:
        log.error("fleetgate: storing an answer in the cache failed", exc_info=done.exception())


def _response(stored: bytes, request: httpx2.Request, how: tuple[str, ...]) -> httpx2.Response:
    """A stored answer as a response; `how` is ("hit",) or ("semantic", similarity)."""
    head, _, body = stored.partition(b"\n")
    meta = json.loads(head)
    headers = [(k, v) for k, v in meta["headers"]] + [(CACHE_HEADER, how[0])]
    if len(how) > 1:
        headers.append((SIMILARITY_HEADER, how[1]))
    return httpx2.Response(int(meta["status"]), headers=headers, content=body, request=request)


def _rewrap(response: httpx2.Response, stream: httpx2.SyncByteStream | httpx2.AsyncByteStream) -> httpx2.Response:
    return httpx2.Response(response.status_code, headers=response.headers, stream=stream,
                           request=response.request, extensions=response.extensions)


def _ended_whole(body: bytes) -> bool:
    """Whether a stream's bytes carry its end: chat's ``[DONE]`` or the responses API's
    ``response.completed`` (a reader may stop there and close without reading further)."""
    return b"data: [DONE]" in body[-64:] or b"response.completed" in body


class _Tee:
    """A copy of a passing stream, stored once if it ended whole."""

    def __init__(self, done: Callable[[bytes], None]) -> None:
        self._done, self._parts, self._stored = done, list[bytes](), False

    def add(self, chunk: bytes) -> bytes:
        self._parts.append(chunk)
        return chunk

    def end(self, whole: bool) -> None:
        if self._stored:
            return
        body = b"".join(self._parts)
        if whole or _ended_whole(body):
            self._stored = True
            self._done(body)


class _TeeStream(httpx2.SyncByteStream):
    """Passes a stream through and keeps a copy; stores it only when it ended whole."""

    def __init__(self, inner: httpx2.SyncByteStream, done: Callable[[bytes], None]) -> None:
        self._inner, self._tee = inner, _Tee(done)

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._inner:
            yield self._tee.add(chunk)
        self._tee.end(whole=True)

    def close(self) -> None:
        try:
            self._tee.end(whole=False)
        finally:
            self._inner.close()


class _AsyncTeeStream(httpx2.AsyncByteStream):
    def __init__(self, inner: httpx2.AsyncByteStream, done: Callable[[bytes], None]) -> None:
        self._inner, self._tee = inner, _Tee(done)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._inner:
            yield self._tee.add(chunk)
        self._tee.end(whole=True)

    async def aclose(self) -> None:
        try:
            self._tee.end(whole=False)
        finally:
            await self._inner.aclose()
