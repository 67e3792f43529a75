"""The models a fleet has gated lately, so that ``fleetgate check`` can name those with no
price before a budget refuses their calls.

1. A gateway notes a model the first time its process gates it (when the model's quota is
   first looked up: no work per call) and every call refused for lack of a price.
2. A model new to the process is kept in it (:meth:`SeenModels.names`) and, with Redis,
   queued for a daemon thread that writes it to the sorted set ``fg:models:seen`` (member:
   the model, score: when this process saw it, never moved back), once per model per
   process. The same write drops names not seen for :data:`KEEP_SECONDS` and keeps at
   most :data:`MOST_KEPT`, so names a client made up cannot grow the set for ever.
3. ``fleetgate check --redis …`` reads the names seen in the last :data:`RECENT_SECONDS`
   (:func:`recent`).

A process notes at most :data:`MOST_PER_PROCESS` names. When Redis cannot be reached the
names stay queued, the failure is logged once, and the next note (or :meth:`close`) tries
again. A forked child (a server that makes its gateway before forking its workers) starts
afresh: it notes what it gates itself, with a writer and a connection of its own.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any, cast

from fleetgate.redis_clients import redacted_url, redis_client

__all__ = ["KEY", "RECENT_SECONDS", "SeenModels", "recent"]

log = logging.getLogger("fleetgate")

#: The sorted set of models seen by the fleet, scored by when.
KEY = "fg:models:seen"
#: What ``fleetgate check`` calls recent: 7 days.
RECENT_SECONDS = 7 * 86400
#: Names not seen for this long leave the set: 30 days.
KEEP_SECONDS = 30 * 86400
#: The most names the set keeps (the most recently seen).
MOST_KEPT = 10_000
#: The most names one process notes.
MOST_PER_PROCESS = 1_000
#: Longer names are not noted: no model is named so.
_LONGEST_NAME = 200


class SeenModels:
    """The models this process has gated, written to Redis in the background (`redis_url`;
    None: kept in the process alone)."""

    def __init__(self, redis_url: str | None, *, clock: Callable[[], float] = time.time) -> None:
        self.redis_url = redis_url
        self._clock = clock
        self._fresh()
        _ALL.add(self)

    def _fresh(self) -> None:
        """The state of a process that has noted nothing yet."""
        self._seen: set[str] = set()
        self._pending: dict[str, float] = {}
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._writer: threading.Thread | None = None
        self._written = 0  # notes written so far, for flush()
        self._noted = 0
        self._failing = False
        self._closed = False
        self._client: Any = None

    def note(self, model: str) -> None:
        """Remember `model` as gated now; the first time, queue it for Redis."""
        if model in self._seen:
            return
        with self._lock:
            if model in self._seen or len(self._seen) >= MOST_PER_PROCESS or len(model) > _LONGEST_NAME:
                return
            self._seen.add(model)
            if self.redis_url is None or self._closed:
                return
            self._pending[model] = self._clock()
            self._noted += 1
            if self._writer is None:
                self._writer = threading.Thread(target=self._write_loop, name="fleetgate-seen-models", daemon=True)
                self._writer.start()
            self._wake.notify()

    def names(self) -> set[str]:
        """The models this process has noted."""
        with self._lock:
            return set(self._seen)

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait at most `timeout` seconds until every note so far is in Redis; True if it is
        (or there is no Redis)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            target = self._noted
            while self._written < target and self._writer is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._wake.notify()
                self._wake.wait(min(left, 0.1))
            return True

    def close(self, timeout: float = 2.0) -> None:
        """Write what is still queued (waiting at most `timeout` seconds, and not at all while
        Redis cannot be reached) and stop the writer."""
        if not self._failing:
            self.flush(timeout)
        with self._lock:
            self._closed = True
            self._wake.notify_all()

    def _write_loop(self) -> None:
        while True:
            with self._lock:
                while not self._pending and not self._closed:
                    self._wake.wait()
                if not self._pending:
                    return
                batch = dict(self._pending)
            written = self._write(batch)
            with self._lock:
                if written:  # a model is queued once per process: what was written is no longer pending
                    for model in batch:
                        del self._pending[model]
                    self._written += len(batch)
                    self._wake.notify_all()
                elif self._closed:
                    return
                else:
                    self._wake.wait(30.0)  # Redis is down: try again on the next note, or in 30 s

    def _write(self, batch: dict[str, float]) -> bool:
        assert self.redis_url is not None
        try:
            if self._client is None:
                self._client = redis_client(self.redis_url)
            now = self._clock()
            pipe = self._client.pipeline(transaction=False)
            pipe.zadd(KEY, batch, gt=True)
            pipe.zremrangebyscore(KEY, "-inf", now - KEEP_SECONDS)
            pipe.zremrangebyrank(KEY, 0, -(MOST_KEPT + 1))
            pipe.execute()
        except Exception as e:  # redis-py's errors and a bad URL alike: logged, retried later
            if not self._failing:
                log.warning("fleetgate: cannot note the models this process gates in %s (%s: %s); "
                            "`fleetgate check` will not list them until Redis answers",
                            redacted_url(self.redis_url), type(e).__name__, e)
            self._failing = True
            return False
        if self._failing:
            log.warning("fleetgate: noting the models this process gates in %s again", redacted_url(self.redis_url))
        self._failing = False
        return True


_ALL: weakref.WeakSet[SeenModels] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for seen in list(_ALL):
        closed = seen._closed
        seen._fresh()
        seen._closed = closed


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def recent(redis_url: str, *, within: float = RECENT_SECONDS, now: float | None = None,
           timeout: float = 5.0) -> dict[str, float]:
    """The models the fleet sharing `redis_url` gated in the last `within` seconds, with
    when (unix seconds), most recent first. Raises redis-py's errors."""
    client = redis_client(redis_url, timeout=timeout)
    try:
        since = (time.time() if now is None else now) - within
        found = cast("list[tuple[bytes | str, float]]", client.zrevrangebyscore(KEY, "+inf", since, withscores=True))
    finally:
        client.close()
    return {(m.decode() if isinstance(m, bytes) else str(m)): float(at) for m, at in found}
