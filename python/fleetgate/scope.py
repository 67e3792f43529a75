"""Who is calling and how urgently: the scope of a request, carried by contextvars so it
follows the code through threads started with ``contextvars.copy_context`` and through
asyncio tasks."""

from __future__ import annotations

import enum
import math
import time
from contextvars import ContextVar, Token
from dataclasses import dataclass, replace
from types import TracebackType

__all__ = ["Priority", "Scope", "current_scope", "scope"]


class Priority(enum.IntEnum):
    """How urgent a request is; lower is more urgent."""

    REALTIME = 0
    INTERACTIVE = 1
    BATCH = 2


@dataclass(frozen=True, slots=True)
class Scope:
    """The scope a request runs in.

    ``deadline`` is how long each call may wait, in seconds from its own start (for quota,
    a lane, upstream retries, a paused model, a maintenance hold); ``deadline_at`` a Unix
    time (``time.time()``) every call of the block must be sent by. None: not set.
    """

    user: str | None = None
    feature: str | None = None
    team: str | None = None
    priority: Priority = Priority.INTERACTIVE
    deadline: float | None = None
    #: Collapse identical in-flight requests: None follows the gateway's ``[dedup]`` policy.
    dedup: bool | None = None
    #: The request type's token budget (``[presets.<name>]``); None: the feature's, if any.
    preset: str | None = None
    deadline_at: float | None = None

    def seconds_left(self) -> float | None:
        """How long a call starting now may wait: its ``deadline``, cut to what is left
        before ``deadline_at``; None when the scope sets neither."""
        left = self.deadline
        if self.deadline_at is not None:
            until = max(0.0, self.deadline_at - time.time())
            left = until if left is None else min(left, until)
        return left

    def call_deadline(self, default: float) -> float:
        """The ``time.monotonic()`` instant a call starting now must be sent by (`default`
        seconds from now when the scope sets no deadline)."""
        left = self.seconds_left()
        return time.monotonic() + (default if left is None else left)


_current: ContextVar[Scope] = ContextVar("fleetgate_scope", default=Scope())


def current_scope() -> Scope:
    """The scope of the running code (an empty scope outside any ``scope`` block)."""
    return _current.get()


class scope:  # noqa: N801 - used as a context manager, like contextlib's helpers
    """Set who is calling for the code inside the block; nested blocks refine the outer one.

        with gate.scope(user="u-42", feature="support-chat", deadline=10):
            client.responses.create(...)   # may wait up to 10 s
            client.responses.create(...)   # may wait up to 10 s too, from its own start

    ``deadline`` is how long each call inside the block may wait, in seconds from that
    call's start (for quota, a lane, upstream retries, a paused model, a maintenance hold),
    like a client library's timeout; an inner deadline never extends an outer one. A
    deadline for the whole block is an instant, ``deadline_at`` (a Unix time, as
    ``time.time()`` gives; for example the deadline an incoming request brought along):

        with gate.scope(deadline=10, deadline_at=time.time() + 30):
            ...   # each call waits up to 10 s, and none is sent after the 30 s are over

    ``dedup`` turns the collapsing of identical in-flight requests on or off for the block,
    whatever the gateway's ``[dedup] when`` says. ``preset`` names the token budget of the
    block's requests (``[presets.<name>]``). Works with ``with`` and ``async with``.
    """

    __slots__ = ("_fields", "_token")

    def __init__(self, *, user: str | None = None, feature: str | None = None, team: str | None = None,
                 priority: Priority | int | None = None, deadline: float | None = None,
                 dedup: bool | None = None, preset: str | None = None, deadline_at: float | None = None) -> None:
        if deadline is not None and not deadline >= 0:
            raise ValueError(f"deadline must be a number of seconds >= 0, got {deadline!r}")
        if deadline_at is not None and not math.isfinite(deadline_at):
            raise ValueError(f"deadline_at must be a Unix time (time.time() + seconds), got {deadline_at!r}")
        for name, value in (("user", user), ("feature", feature), ("team", team), ("preset", preset)):
            if value is not None and (not isinstance(value, str) or not value):
                raise TypeError(f"{name} must be a non-empty str, got {value!r}")
        self._fields = (user, feature, team, None if priority is None else Priority(priority), deadline, dedup, preset,
                        deadline_at)
        self._token: Token[Scope] | None = None

    def __enter__(self) -> Scope:
        user, feature, team, priority, deadline, dedup, preset, deadline_at = self._fields
        outer = _current.get()
        inner = replace(
            outer,
            user=user if user is not None else outer.user,
            feature=feature if feature is not None else outer.feature,
            team=team if team is not None else outer.team,
            priority=priority if priority is not None else outer.priority,
            deadline=_earliest(outer.deadline, deadline),
            dedup=dedup if dedup is not None else outer.dedup,
            preset=preset if preset is not None else outer.preset,
            deadline_at=_earliest(outer.deadline_at, deadline_at),
        )
        self._token = _current.set(inner)
        return inner

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._token is not None:
            _current.reset(self._token)
            self._token = None

    async def __aenter__(self) -> Scope:
        return self.__enter__()

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.__exit__(exc_type, exc, tb)


def _earliest(outer: float | None, inner: float | None) -> float | None:
    """An inner block's limit never extends its outer block's."""
    if inner is None:
        return outer
    return inner if outer is None else min(outer, inner)
