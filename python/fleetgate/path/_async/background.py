"""background, the fallback layer's innermost step: a Responses call made with ``background:
true`` is answered at once (``queued``, no usage) while its response runs on; its cost is
known only when it ends. Before such a call is sent, this step makes sure the gateway can
watch one more (else it is refused, not sent); once the answer is in, the handoff the layers
below filled (the limit layer's quota reservation, the budget layer's hold) goes to the
watcher, which settles both from the usage the response reports when it ends
(:mod:`fleetgate.background`).

Contract: it runs under the fallback ladder, above the budget layer, so that every rung's
call is watched, and the budget layer's hold is on the handoff before it goes. A gateway
that already watches ``[background] max_pending`` calls refuses with ``QueueFull`` (lane
``background``): a refusal of the call's own configuration, before anything is held.
"""

from __future__ import annotations

import httpx2

from fleetgate.path._async.layer import Layer, Next
from fleetgate.path.call import Call, Outcome, Refused
from fleetgate.path.services import BackgroundWatcher

__all__ = ["Background"]


class Background(Layer):
    name = "background"

    def __init__(self, calls: BackgroundWatcher) -> None:
        self.calls = calls

    async def handle(self, call: Call, next: Next) -> httpx2.Response:  # noqa: A002
        if call.body.get("background") is not True:
            return await next(call)
        full = self.calls.room()
        if full is not None:
            raise Refused(full, self.name)
        response = await next(call)
        call.when_done(self._watch)
        return response

    def _watch(self, outcome: Outcome) -> None:
        if outcome.later is not None:
            self.calls.watch(outcome.later)
