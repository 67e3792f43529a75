"""A gateway's :class:`Modes`: the mode read on the request path, judged and exchanged with the
fleet every ``evaluate_every_seconds`` on a thread of its own."""

from __future__ import annotations

import asyncio
import logging
import math
import os
import socket
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any, cast

from fleetgate.config import MODES, ModeName, ModeSettings
from fleetgate.errors import StoreUnavailable
from fleetgate.modes.hysteresis import Hysteresis
from fleetgate.modes.signals import _Window
from fleetgate.modes.states import _FULL, _LEVEL, ModeState, operator_mode
from fleetgate.modes.store import _POD_STALE_SECONDS, ModeStore, PodMode
from fleetgate.outage import Outage
from fleetgate.redis_clients import redacted_url

__all__ = ["Modes"]

log = logging.getLogger("fleetgate")


class Modes:
    """A gateway's degradation mode: read on the request path as one attribute
    (:attr:`current`), judged and exchanged with the fleet on a thread of its own."""

    def __init__(self, settings: ModeSettings, redis_url: str | None,
                 on_change: Callable[[ModeState, ModeState], None] | None = None) -> None:
        self.settings = settings
        #: The mode requests are served in now.
        self.current: ModeState = _FULL
        self.pod = f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"
        self.store = ModeStore(redis_url) if redis_url else None
        self._outage = Outage(f"the modes' Redis at {redacted_url(redis_url)}") if redis_url else None
        self._window = _Window(settings.window_seconds) if settings.auto else None
        self._auto = Hysteresis(settings)
        self._auto_state: ModeState = _FULL
        self._operator: ModeState | None = None
        self._on_change = on_change
        self._signals: Callable[[], dict[str, Any]] = dict
        self._changed = threading.Condition()
        self._async_waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = set()
        self._next_probe = 0.0
        self._probe_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._judging = threading.RLock()

    def start(self, signals: Callable[[], dict[str, Any]]) -> None:
        """Judge the mode every ``evaluate_every_seconds`` from this pod's calls and
        `signals()` (the fleet's: breakers and budgets), and exchange it with the fleet."""
        self._signals = signals
        if self.settings.auto or self.store is not None:
            self._ensure_thread()

    def _ensure_thread(self) -> None:
        if self._thread is None and not self._stop.is_set():
            self._thread = threading.Thread(target=_judge_forever, args=(weakref.ref(self), self._stop),
                                            name="fleetgate-modes", daemon=True)
            self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.store is not None:
            try:
                self.store.leave(self.pod)
            except StoreUnavailable as e:
                log.warning("fleetgate: %s; this pod stays in `fleetgate mode show` for %.0fs", e, _POD_STALE_SECONDS)
            self.store.close()

    # -- the request path ---------------------------------------------------------------------

    def observe(self, failed: bool, seconds: float) -> None:
        """An upstream call ended: failed (5xx, no answer) or not, after `seconds`."""
        if self._window is not None:
            self._window.add(failed, seconds)

    def probe(self) -> bool:
        """Whether this request, in a mode entered by itself that sends nothing upstream, goes
        upstream to see if it recovered (one per ``probe_every_seconds``)."""
        now = time.monotonic()
        if self.current.source != "auto" or now < self._next_probe:
            return False
        with self._probe_lock:
            if now < self._next_probe:
                return False
            self._next_probe = now + self.settings.probe_every_seconds
            return True

    def wait_out(self, timeout: float) -> ModeState:
        """Wait while the mode is maintenance, at most `timeout` seconds; the mode then."""
        end = time.monotonic() + timeout
        with self._changed:
            while self.current.mode == "maintenance":
                left = end - time.monotonic()
                if left <= 0:
                    break
                self._changed.wait(left)
        return self.current

    async def wait_out_async(self, timeout: float) -> ModeState:
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while self.current.mode == "maintenance":
            left = end - loop.time()
            if left <= 0:
                break
            waiter = (loop, loop.create_future())
            self._async_waiters.add(waiter)
            try:
                if self.current.mode != "maintenance":
                    break
                await asyncio.wait_for(asyncio.shield(waiter[1]), left)
            except TimeoutError:
                break
            finally:
                self._async_waiters.discard(waiter)
        return self.current

    # -- an operator in this process -------------------------------------------------------------

    def set(self, mode: str, for_seconds: float | None = None, reason: str = "") -> ModeState:
        """Put the fleet (with Redis) or this process (embedded) in `mode`, for `for_seconds`
        or until :meth:`clear`; every pod honours it within ``evaluate_every_seconds``."""
        with self._judging:  # not undone by a judgement that read Redis just before
            return self._set(mode, for_seconds, reason)

    def _set(self, mode: str, for_seconds: float | None, reason: str) -> ModeState:
        if self.store is not None:
            state = self.store.set(mode, for_seconds, reason, by=self.pod)
        else:
            state = operator_mode(mode, for_seconds, reason or "set in this process")
            if for_seconds is not None:
                self._ensure_thread()  # to end it on time
        self._operator = state
        self._settle()
        return state

    def clear(self) -> None:
        """Hand the mode back to the signals."""
        with self._judging:
            if self.store is not None:
                self.store.clear()
            self._operator = None
            self._settle()

    def judge(self) -> ModeState:
        """Judge the signals and read the operator's mode now (the thread does this every
        ``evaluate_every_seconds``); the mode then."""
        with self._judging:
            return self._judge()

    def _judge(self) -> ModeState:
        if self._window is not None:
            self._auto.step(self._window.signals(self.settings.min_requests, **self._signals()), time.monotonic())
        own = ModeState(self._auto.mode, "auto", self._auto.reason) if self._auto.mode != "full" else _FULL
        if self.store is not None and self._outage is not None:
            try:
                self._operator, pods = self.store.exchange(self.pod, self.current, own.mode)
                if self.settings.auto:
                    own = self._with_fleet(own, pods)
                self._outage.answered("the operator's mode and the fleet's are read again")
            except StoreUnavailable as e:  # said once per outage; the last mode read stands
                self._outage.failed(e.__cause__ or e, "keeping the operator's mode last read, and this pod's "
                                    "own judgement")
        if (own.mode, own.reason) != (self._auto_state.mode, self._auto_state.reason):
            if own.mode not in ("full", self._auto_state.mode):  # a probe once the new mode held requests back
                self._next_probe = time.monotonic() + self.settings.probe_every_seconds
            self._auto_state = ModeState(own.mode, own.source, own.reason, time.time())
        self._settle()
        return self.current

    def _with_fleet(self, own: ModeState, pods: list[PodMode]) -> ModeState:
        """The worse of this pod's judgement and the fleet's: the mode at least
        ``[modes] quorum`` of the live pods judge (a pod with a bad network alone does not
        move the fleet; a pod too quiet to measure follows it)."""
        levels = sorted((_LEVEL.get(p.own, 0) for p in pods), reverse=True)
        if not levels:
            return own
        needed = max(1, math.ceil(self.settings.quorum * len(levels)))
        fleet = levels[needed - 1]
        if fleet <= own.level:
            return own
        mode = MODES[fleet]
        return ModeState(cast(ModeName, mode), "auto", f"{sum(1 for lv in levels if lv >= fleet)} of {len(levels)} "
                                                       f"pods judge {mode} or worse")

    def _settle(self) -> None:
        """Make the operator's mode (while it lasts) or the automatic one current."""
        with self._judging:
            self._settle_now()

    def _settle_now(self) -> None:
        operator = self._operator
        if operator is not None and operator.until is not None and operator.until <= time.time():
            operator = self._operator = None
        now = operator or (self._auto_state if self._auto_state.mode != "full" else _FULL)
        was = self.current
        if (now.mode, now.source, now.reason, now.until) == (was.mode, was.source, was.reason, was.until):
            return
        self.current = now
        with self._changed:
            self._changed.notify_all()
        for loop, future in list(self._async_waiters):
            try:
                loop.call_soon_threadsafe(_wake, future)
            except RuntimeError:  # its loop is closed: nobody waits there any more
                self._async_waiters.discard((loop, future))
        if self._on_change is not None and was.mode != now.mode:
            self._on_change(was, now)


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _judge_forever(ref: weakref.ref[Modes], stop: threading.Event) -> None:
    """The judging thread; it ends with its gateway's modes (closed, or collected). A
    failure is said once while it lasts (its traceback at DEBUG), and its end once."""
    failing: str | None = None
    while True:
        modes = ref()
        if modes is None:
            return
        every = modes.settings.evaluate_every_seconds
        try:
            modes.judge()
        except Exception as e:  # the thread must outlive any one failure, or the mode freezes
            said = f"{type(e).__name__}: {e}"
            if said != failing:
                log.error("fleetgate: judging the degradation mode failed (%s); trying again every %.1fs, "
                          "the mode stays as it is", said, every)
                log.debug("fleetgate: judging the degradation mode failed", exc_info=True)
            failing = said
        else:
            if failing is not None:
                log.info("fleetgate: judging the degradation mode works again")
            failing = None
        del modes
        if stop.wait(every):
            return
