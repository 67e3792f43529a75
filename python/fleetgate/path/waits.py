"""Waiting on the request path, in the two forms the generated sync layers and the async
source need (``sleep`` is what ``sleep_async`` becomes when the sync twin is generated)."""

from __future__ import annotations

import asyncio
import time

__all__ = ["sleep", "sleep_async"]


def sleep(seconds: float) -> None:
    time.sleep(seconds)


async def sleep_async(seconds: float) -> None:
    await asyncio.sleep(seconds)
