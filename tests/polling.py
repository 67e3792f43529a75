"""Waiting in tests for something that happens in the background: polled, never timed.
The bound is generous (a busy machine is slow, not broken); it only keeps a broken
feature from hanging the suite."""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["until"]


def until(check: Callable[[], bool], seconds: float = 60.0) -> None:
    """Wait for `check` to hold; AssertionError after `seconds`."""
    end = time.monotonic() + seconds
    while not check():
        if time.monotonic() > end:
            raise AssertionError("the condition did not come about")
        time.sleep(0.01)
