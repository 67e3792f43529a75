"""The one interface of a step on the request path.

A layer is given the call and the rest of the path (`next`, the layers after it): it may
answer by itself (a cache hit, a refusal), change the call and pass it on, or pass it on
and look at what comes back. Each layer is one file; the path is the ordered list
:func:`fleetgate.path._async.stack.layers` builds from the config.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import httpx2

from fleetgate.path.call import Call

__all__ = ["Layer", "Next"]

#: The rest of the path after a layer.
Next = Callable[[Call], Awaitable[httpx2.Response]]


class Layer:
    """A step on the request path."""

    #: The step's name, as the config and the docs call it.
    name = "layer"

    async def handle(self, call: Call, next: Next) -> httpx2.Response:  # noqa: A002 - the path's own word
        raise NotImplementedError
