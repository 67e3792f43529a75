"""The asyncio side of fleetgate's async methods.

An async method validates its arguments at the call and returns the coroutine made here.
When awaited, it starts the operation on fleetgate's I/O runtime and waits on an asyncio
future. Finished operations are queued in Rust; the loop watches one socket per loop
and resolves every finished future in a single callback, so results arrive in batches
and no I/O thread ever waits for the GIL.
"""

from __future__ import annotations

import asyncio
import itertools
import weakref
from typing import Any

from fleetgate._core import Completions, Submission


class _LoopBridge:
    __slots__ = ("completions", "pending", "ids")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.completions = Completions()
        self.pending: dict[int, tuple[asyncio.Future[Any], Submission]] = {}
        self.ids = itertools.count()
        # The socket closes with `completions`, when the loop and this bridge are gone.
        loop.add_reader(self.completions.fileno(), self._drain)

    def _drain(self) -> None:
        for op_id, ok, value in self.completions.drain():
            future, submission = self.pending.pop(op_id)
            if future.cancelled():
                submission.orphaned(value)
            elif ok:
                future.set_result(value)
            else:
                assert isinstance(value, BaseException)
                future.set_exception(value)


_bridges: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopBridge] = weakref.WeakKeyDictionary()


def _bridge(loop: asyncio.AbstractEventLoop) -> _LoopBridge:
    bridge = _bridges.get(loop)
    if bridge is None:
        bridge = _bridges[loop] = _LoopBridge(loop)
    return bridge


async def await_submission(submission: Submission) -> Any:
    """Start `submission` on the running loop and wait for its outcome."""
    loop = asyncio.get_running_loop()
    bridge = _bridge(loop)
    op_id = next(bridge.ids)
    future: asyncio.Future[Any] = loop.create_future()
    bridge.pending[op_id] = (future, submission)
    submission.start(bridge.completions, op_id)
    try:
        return await future
    except asyncio.CancelledError:
        # An admission that arrives after this is given back, not leaked.
        submission.cancel()
        raise
