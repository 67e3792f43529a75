"""The fleet's degradation modes: how much of the service a pod gives when upstream,
the budget or an operator says it cannot give everything.

=============  ===========================================================================
``full``       everything, as configured
``reduced``    the ``[fallback] models`` cheaper model, output capped at
               ``[modes] reduced_max_output_tokens``, ``optional_features`` refused
``cached-only`` answers from the cache (exact, then semantic) whatever the request's
               temperature; a miss gets the static answer, else ``ServiceDegraded``
``static``     the ``[fallback] static_answer``, else ``ServiceDegraded``
``maintenance`` requests wait (within their deadline) and are answered when it ends;
               past the deadline they go to ``[fallback] defer_to`` when set
=============  ===========================================================================

A mode is entered by itself when a trigger of ``[modes.enter.<mode>]`` holds (error rate
and latency of this pod's upstream calls, breakers open across the fleet, a global budget's
spent share), and left only once every trigger of it fell under ``exit_ratio`` of its
threshold and stayed there for ``exit_after_seconds``: a signal wavering at a threshold
does not flap the mode. In a mode entered by itself that sends nothing upstream, one
request per ``probe_every_seconds`` still goes (in cached-only, one the cache could not
answer), so that recovery is seen. With Redis each pod says what its own signals judge,
and every pod serves in the worse of its own judgement and the mode at least ``quorum``
of the live pods judge: an outage seen by most pods moves the whole fleet, a pod too quiet
to measure follows it, and one pod with a bad network does not move the others.

An operator's mode (``fleetgate mode set cached-only --for 30m``; ``gate.modes.set`` in
one process) wins over the automatic one until it expires or is cleared. It is kept in
Redis (``fg:mode``) and read by every pod every ``evaluate_every_seconds`` (at most a
second). Each pod publishes the mode it is in (``fg:mode:pods``) for ``fleetgate mode show``.

Each gated answer names the mode that served it in ``x-fleetgate-mode``, the metrics
(``fleetgate_mode``, ``fleetgate_mode_answers_total``) and its log record.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import socket
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Literal, cast

from fleetgate.config import MODES, ModeName, ModeSettings, ModeTrigger
from fleetgate.errors import ConfigError, StoreUnavailable
from fleetgate.outage import Outage
from fleetgate.redis_clients import redacted_url, redis_client

if TYPE_CHECKING:
    from fleetgate.gateway import Gateway

__all__ = ["MODES", "MODE_HEADER", "ModeState", "ModeStore", "Modes", "PodMode", "Signals", "Hysteresis", "mode_level"]

log = logging.getLogger("fleetgate")

#: The response header naming the mode that served a gated call.
MODE_HEADER = "x-fleetgate-mode"
_LEVEL = {name: level for level, name in enumerate(MODES)}
_OPERATOR_KEY = "fg:mode"
_PODS_KEY = "fg:mode:pods"
#: A pod that has not said its mode for this long is left out of ``fleetgate mode show``.
_POD_STALE_SECONDS = 10.0


def mode_level(mode: str) -> int:
    """0 for ``full`` up to 4 for ``maintenance``; raises ConfigError for an unknown name."""
    try:
        return _LEVEL[mode]
    except KeyError:
        raise ConfigError(f"unknown mode {mode!r}: one of {', '.join(MODES)}") from None


@dataclass(frozen=True, slots=True)
class ModeState:
    """The mode a pod is in, and why."""

    mode: ModeName
    #: ``"auto"`` (its signals), ``"operator"`` (``fleetgate mode set``) or ``"default"``.
    source: Literal["default", "auto", "operator"] = "default"
    reason: str = ""
    #: Unix seconds it began, and when an operator's mode ends (None: until cleared or its cause ends).
    since: float = 0.0
    until: float | None = None

    @property
    def level(self) -> int:
        return _LEVEL[self.mode]

    def retry_after(self, fallback: float | None) -> float | None:
        return max(0.0, self.until - time.time()) if self.until is not None else fallback


_FULL = ModeState("full")


@dataclass(frozen=True, slots=True)
class Signals:
    """What a pod judges its mode on. Rates are None with too few calls to say."""

    requests: int = 0
    error_rate: float | None = None
    p95_seconds: float | None = None
    open_breakers: int = 0
    isolated_breakers: int = 0
    budget_share: float = 0.0


class _Window:
    """This pod's recent upstream calls: (when, failed, seconds). Appending is the only
    work on the request path (a deque append is atomic); the judging thread prunes."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.calls: deque[tuple[float, bool, float]] = deque(maxlen=20_000)

    def add(self, failed: bool, seconds: float) -> None:
        self.calls.append((time.monotonic(), failed, seconds))

    def signals(self, min_requests: int, **fleet: Any) -> Signals:
        horizon = time.monotonic() - self.seconds
        calls = self.calls
        while calls and calls[0][0] < horizon:
            calls.popleft()
        recent = list(calls)
        n = len(recent)
        if n < min_requests:
            return Signals(requests=n, **fleet)
        times = sorted(c[2] for c in recent)
        p95 = times[min(n - 1, math.ceil(0.95 * n) - 1)]
        return Signals(requests=n, error_rate=sum(1 for c in recent if c[1]) / n, p95_seconds=p95, **fleet)


_SIGNALS = ("error_rate", "p95_seconds", "open_breakers", "isolated_breakers", "budget_share")
_COUNTS = ("open_breakers", "isolated_breakers")


class Hysteresis:
    """The automatic mode from a stream of signals: up as soon as a trigger holds, down only
    after ``exit_after_seconds`` under ``exit_ratio`` of every trigger that holds the mode.
    Pure: no clock or I/O of its own (``step`` is given the time)."""

    def __init__(self, settings: ModeSettings) -> None:
        self.settings = settings
        self.mode: ModeName = "full"
        self.reason = ""
        self._cause: str | None = None
        self._calm_since: float | None = None

    def step(self, signals: Signals, now: float) -> bool:
        """Judge `signals` at `now` (seconds, any monotonic clock); True when the mode changed."""
        worst, reason, cause = self._worst(signals, 1.0)
        if _LEVEL[worst] > _LEVEL[self.mode]:
            self.mode, self.reason, self._cause, self._calm_since = worst, reason, cause, None
            return True
        held, _, _ = self._worst(signals, self.settings.exit_ratio, unknown_holds=self._cause)
        if _LEVEL[held] >= _LEVEL[self.mode]:
            self._calm_since = None
            return False
        if self._calm_since is None:
            self._calm_since = now
        if now - self._calm_since < self.settings.exit_after_seconds:
            return False
        was = self.mode
        self.mode, self._calm_since = held, None
        self._cause = None if held == "full" else self._cause
        self.reason = f"left {was}: its signals stayed under {self.settings.exit_ratio:g} of the triggers" \
                      f" for {self.settings.exit_after_seconds:g}s"
        return True

    def _worst(self, s: Signals, ratio: float, unknown_holds: str | None = None) -> tuple[ModeName, str, str | None]:
        """The most severe mode a trigger holds at `ratio` of its thresholds, why, and which
        signal. A rate nobody measured (too few calls) holds when it is `unknown_holds`:
        a mode entered on errors is left on evidence, not on silence."""
        for mode in reversed(MODES[1:]):
            trigger = self.settings.enter.get(cast(ModeName, mode))
            if trigger is None:
                continue
            found = _holds(trigger, s, ratio, unknown_holds)
            if found is not None:
                return cast(ModeName, mode), found[0], found[1]
        return "full", "", None


def _holds(trigger: ModeTrigger, s: Signals, ratio: float, unknown_holds: str | None) -> tuple[str, str] | None:
    for name in _SIGNALS:
        threshold = getattr(trigger, name)
        if threshold is None:
            continue
        value = getattr(s, name)
        if value is None:
            if name == unknown_holds:
                return f"{name} not measured yet (too few calls)", name
            continue
        at = max(1, math.ceil(threshold * ratio)) if name in _COUNTS else threshold * ratio
        if value >= at:
            shown = f"{value:.2f}" if isinstance(value, float) else str(value)
            return f"{name.replace('_', ' ')} {shown} ≥ {at:g}", name
    return None


@dataclass(frozen=True, slots=True)
class PodMode:
    """What one pod said of its mode (``fleetgate mode show``)."""

    pod: str
    mode: str
    source: str
    reason: str
    #: Seconds since it said so.
    age: float
    #: What its own signals judge (the fleet's automatic mode is what a quorum of pods judge).
    own: str = "full"


class ModeStore:
    """The operator's mode and every pod's, in Redis. Not on the request path: pods read it
    from their judging thread, and the CLI through it."""

    def __init__(self, redis_url: str) -> None:
        self.url = redis_url
        self._client: Any = None

    @property
    def redis(self) -> Any:
        """The redis-py client, made at first use (a cluster client connects as it is made,
        and a gateway starts while Redis is down)."""
        if self._client is None:
            self._client = redis_client(self.url, timeout=2.0)
        return self._client

    def set(self, mode: str, for_seconds: float | None = None, reason: str = "", by: str = "") -> ModeState:
        """Set the fleet's mode (until `for_seconds` pass, or until cleared)."""
        state = operator_mode(mode, for_seconds, reason or f"set by {by or 'an operator'}")
        value = json.dumps(asdict(state))
        try:
            if for_seconds is None:
                self.redis.set(_OPERATOR_KEY, value)
            else:
                self.redis.set(_OPERATOR_KEY, value, px=max(1, int(for_seconds * 1000)))
        except Exception as e:  # redis-py's errors: one seam
            raise _unavailable(self.url, e) from e
        return state

    def clear(self) -> bool:
        """Hand the mode back to the pods' own judgement; False when none was set."""
        try:
            return bool(self.redis.delete(_OPERATOR_KEY))
        except Exception as e:
            raise _unavailable(self.url, e) from e

    def read(self) -> ModeState | None:
        """The operator's mode, or None."""
        try:
            raw = self.redis.get(_OPERATOR_KEY)
        except Exception as e:
            raise _unavailable(self.url, e) from e
        return _parse(raw)

    def exchange(self, pod: str, state: ModeState, own: str) -> tuple[ModeState | None, list[PodMode]]:
        """Say this pod's mode (and `own`: what its signals alone judge), and read the
        operator's mode and every live pod's, in one round trip."""
        said = json.dumps({"mode": state.mode, "source": state.source, "reason": state.reason, "own": own,
                           "at": time.time()})
        try:
            pipe = self.redis.pipeline(transaction=False)
            pipe.get(_OPERATOR_KEY)
            pipe.hset(_PODS_KEY, pod, said)
            pipe.expire(_PODS_KEY, 86_400)  # a fleet gone for a day leaves nothing behind
            pipe.hgetall(_PODS_KEY)
            raw, _, _, found = pipe.execute()
        except Exception as e:
            raise _unavailable(self.url, e) from e
        return _parse(raw), self._live(found)

    def leave(self, pod: str) -> None:
        """Take a closing pod out of the record."""
        try:
            self.redis.hdel(_PODS_KEY, pod)
        except Exception as e:
            raise _unavailable(self.url, e) from e

    def pods(self) -> list[PodMode]:
        """Every live pod's mode; pods silent for long are dropped from the record."""
        try:
            return self._live(self.redis.hgetall(_PODS_KEY), prune=True)
        except StoreUnavailable:
            raise
        except Exception as e:
            raise _unavailable(self.url, e) from e

    def _live(self, found: Any, prune: bool = False) -> list[PodMode]:
        now, live, stale = time.time(), [], []
        for pod, raw in cast(dict[bytes, bytes], found).items():
            try:
                said = json.loads(raw)
                age = now - float(said["at"])
                entry = PodMode(pod.decode(), str(said["mode"]), str(said["source"]), str(said["reason"]), age,
                                str(said.get("own", said["mode"])))
            except (ValueError, KeyError, TypeError):
                stale.append(pod)
                continue
            if age > _POD_STALE_SECONDS:
                stale.append(pod)
            else:
                live.append(entry)
        if stale and prune:
            self.redis.hdel(_PODS_KEY, *stale)
        return sorted(live, key=lambda p: p.pod)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()

    def __enter__(self) -> ModeStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def operator_mode(mode: str, for_seconds: float | None, reason: str) -> ModeState:
    """An operator's mode from now, checked: a known mode, a positive duration (None: until cleared)."""
    mode_level(mode)
    if for_seconds is not None and for_seconds <= 0:
        raise ConfigError(f"a mode's duration must be positive, not {for_seconds}")
    now = time.time()
    return ModeState(cast(ModeName, mode), "operator", reason, now, None if for_seconds is None else now + for_seconds)


def _parse(raw: Any) -> ModeState | None:
    if raw is None:
        return None
    try:
        fields = json.loads(raw)
        mode_level(fields["mode"])
        return ModeState(fields["mode"], "operator", str(fields.get("reason", "")), float(fields["since"]),
                         None if fields.get("until") is None else float(fields["until"]))
    except (ValueError, KeyError, TypeError):
        log.error("fleetgate: the operator's mode in Redis (%s) is unreadable: ignored; "
                  "`fleetgate mode set` or `fleetgate mode clear` replaces it", _OPERATOR_KEY)
        return None


def _unavailable(url: str, error: Exception) -> StoreUnavailable:
    return StoreUnavailable(f"the modes' Redis at {redacted_url(url)} is unavailable ({error})")


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


def fleet_signals(gateway: Gateway) -> Callable[[], dict[str, Any]]:
    """What the fleet shares that a pod's mode is judged on: breakers open and isolated
    (shared through Redis), and the most spent share of a global budget."""
    ref = weakref.ref(gateway)
    triggers = gateway.config.modes.enter.values()
    wants_budget = any(t.budget_share is not None for t in triggers)

    def signals() -> dict[str, Any]:
        gate = ref()
        if gate is None:
            return {}
        states = gate.breakers.states().values() if gate.breakers is not None else ()
        found: dict[str, Any] = {"open_breakers": sum(1 for s in states if s in ("open", "isolated")),
                                 "isolated_breakers": sum(1 for s in states if s == "isolated")}
        if wants_budget:
            found["budget_share"] = gate.budgets.spent_share()
        return found

    return signals
