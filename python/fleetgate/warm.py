"""Warm start: what a gateway's first call needs, loaded in the background as soon as the
gateway is made, so no call pays for it inside its deadline.

A fresh process would otherwise load the tokenizer (``o200k_base``: a few hundred
milliseconds and some 50 MB) inside its first call, and the semantic layer's local
embedder inside its first lookup. :class:`Warmup` loads, on a daemon thread, the encodings
of every model the configuration names (``o200k_base`` always) and the shared embedder
when the semantic cache or the nearest classifier is on.

A call that arrives before the warm-up is over waits for it first, and its deadline
starts once it ends (a ``scope(deadline_at=…)`` instant is an instant, and still holds).
A readiness probe waits for it with ``gate.ready(timeout)`` (``await
gate.ready_async(timeout)``), which raises what failed to load: the failure is logged
once, and each call then loads what it needs itself (and fails as that load fails).

A fork (a server that makes its gateway before forking its workers) waits for a warm-up
still loading, so that no child inherits a half-done load.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import weakref
from collections.abc import Iterable
from types import TracebackType
from typing import TYPE_CHECKING

from fleetgate._core import count_tokens, encoding_for_model
from fleetgate.config import GatewayConfig
from fleetgate.config.named_models import model_places
from fleetgate.errors import FleetgateError

if TYPE_CHECKING:
    from fleetgate.cache.embedders import Embedder

__all__ = ["Warmup", "configured_models"]

log = logging.getLogger("fleetgate")

#: Counted once per encoding to load it: longer than the size above which the core counts
#: with the GIL released, so the load does not hold up the application's threads.
_LOAD_TEXT = "warm " * 3_400
#: The encoding of every current model family, and of any model the table does not know.
_DEFAULT_MODEL = "gpt-4o"


def configured_models(config: GatewayConfig) -> set[str]:
    """Every model `config` names (see :func:`~fleetgate.config.named_models.model_places`)."""
    return set(model_places(config))


class Warmup:
    """Loads the encodings of `models` (one model per encoding; ``o200k_base`` always) and
    `embedder` (when it has a ``load()`` method, as :class:`~fleetgate.cache.LocalEmbedder`
    does) on a daemon thread started at once."""

    def __init__(self, models: Iterable[str], embedder: Embedder | None = None) -> None:
        by_encoding = {encoding_for_model(_DEFAULT_MODEL): _DEFAULT_MODEL}
        for model in sorted(models):
            by_encoding.setdefault(encoding_for_model(model), model)
        #: The encodings it loads, by name.
        self.encodings = sorted(by_encoding)
        self._models = [by_encoding[name] for name in self.encodings]
        self._embedder = embedder
        self._error: BaseException | None = None
        self._traceback: TracebackType | None = None
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._async_waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        _warmups.add(self)
        threading.Thread(target=self._run, name="fleetgate-warmup", daemon=True).start()

    @property
    def done(self) -> bool:
        """Whether the warm-up is over (loaded, or failed)."""
        return self._done.is_set()

    def _run(self) -> None:
        try:
            for model in self._models:
                count_tokens(model, _LOAD_TEXT)
            load = getattr(self._embedder, "load", None)
            if callable(load):
                load()
        except Exception as e:  # kept for ready(), which raises it
            self._error, self._traceback = e, e.__traceback__
            log.error("fleetgate: warming up failed (%s: %s); gate.ready() raises this error, and each call "
                      "loads what it needs itself", type(e).__name__, e)
        finally:
            self._embedder = None
            with self._lock:
                self._done.set()
                waiters, self._async_waiters = self._async_waiters, []
            for loop, future in waiters:
                try:
                    loop.call_soon_threadsafe(_wake, future)
                except RuntimeError:  # its loop is closed: nobody waits there any more
                    pass

    def ready(self, timeout: float | None = None) -> bool:
        """Wait at most `timeout` seconds (None: until it is over) for the warm-up: True
        once everything is loaded, False if it is still loading; raises what failed to load."""
        if not self._done.wait(timeout):
            return False
        error = self._error
        if error is not None:
            raise error.with_traceback(self._traceback)  # as it was raised, however often asked
        return True

    async def ready_async(self, timeout: float | None = None) -> bool:
        """:meth:`ready` without blocking the event loop."""
        await self.wait_async(timeout)
        return self.ready(0)

    def wait(self) -> None:
        """Wait until the warm-up is over, loaded or failed (what failed is ready()'s to say)."""
        self._done.wait()

    async def wait_async(self, timeout: float | None = None) -> None:
        """:meth:`wait` without blocking the event loop, for at most `timeout` seconds."""
        if self._done.is_set():
            return
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        waiter = (loop, future)
        with self._lock:
            if self._done.is_set():
                return
            self._async_waiters.append(waiter)
        try:
            await asyncio.wait_for(asyncio.shield(future), timeout)
        except TimeoutError:
            pass
        finally:
            with self._lock:
                if waiter in self._async_waiters:
                    self._async_waiters.remove(waiter)


#: Every warm-up made in this process, for a fork.
_warmups: weakref.WeakSet[Warmup] = weakref.WeakSet()
#: How long a fork waits for warm-ups still loading.
_FORK_WAIT_SECONDS = 120.0


def _finish_before_fork() -> None:
    """A process forked while a tokenizer or model is half loaded would leave its child
    waiting forever for that load (the loading thread does not come along): a fork (a
    server that makes its gateway before forking its workers) waits for it first."""
    for warmup in list(_warmups):
        if not warmup._done.wait(_FORK_WAIT_SECONDS):
            log.warning("fleetgate: forking while the gateway is still warming up after %.0fs; the child's "
                        "gate.ready() raises: make the gateway in each worker instead", _FORK_WAIT_SECONDS)


def _after_fork_in_child() -> None:
    for warmup in list(_warmups):
        warmup._lock = threading.Lock()
        warmup._async_waiters = []
        if not warmup._done.is_set():
            warmup._error = FleetgateError(
                "this process was forked while its gateway was still warming up, so what it loaded may be "
                "half done here: make the gateway after forking (in each worker), or call gate.ready() "
                "before forking")
            log.error("fleetgate: %s", warmup._error)
            warmup._done.set()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_finish_before_fork, after_in_child=_after_fork_in_child)


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
