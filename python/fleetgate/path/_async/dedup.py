"""dedup: identical calls in flight at once make one upstream call; every caller gets its
answer (or its error). Identical is the request's identity (:attr:`Call.identity`, the one
the cache uses) within the sharing namespace, for the requests the policy lets share
(deterministic ones by default). See :mod:`fleetgate.dedup`.

Contract: followers are not counted as served (their leader's call was), do not keep the
answer in the cache, and never collapse a probe. Across pods only upstream's answers
(primary or a cheaper model's) are shared, never a refusal.
"""

from __future__ import annotations

import httpx2

from fleetgate.dedup import Collapser
from fleetgate.path._async.layer import Layer, Next
from fleetgate.path.call import Call
from fleetgate.path.refusals import refuse

__all__ = ["Dedup"]


class Dedup(Layer):
    name = "dedup"

    def __init__(self, collapser: Collapser) -> None:
        self.collapser = collapser

    async def handle(self, call: Call, next: Next) -> httpx2.Response:  # noqa: A002
        return await self.collapser.collapse_async(call, lambda: next(call), lambda error: refuse(call, error))
