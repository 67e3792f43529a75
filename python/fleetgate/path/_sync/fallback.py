# Generated from fleetgate/path/_async/fallback.py by scripts/unasync.py: edit that file, then run the script.
"""fallback: the ladder around the rest of the path. When a layer below refuses the call
(its circuit is open, no quota or lane slot comes before the deadline, a budget is spent)
the caller gets the first rung that can answer: a cheaper model (the rest of the path run
again for it), the static answer, the deferred queue, else the refusal itself. A spent
budget does what its ``on_exhausted`` says: wait for its next period (``queue``), step down
only to the cheaper model (``cheaper``), answer only from the cache (``cache_only``) or
refuse. See :mod:`fleetgate.fallback`. Before any of that, a Flex call that Flex had no
capacity for is sent again on the standard tier (:mod:`.flex`). Under the ladder, every
rung's call made with ``background: true`` is watched until its response ends, and settled
then (:mod:`.background`).

Contract: every refusal from below ends here, as an answer marked with its rung; the
refusal that turned the primary path down stays on the call (:attr:`Call.refusal`), for the
router to count against the configuration it refused. A setting to fix (``ConfigError``)
is refused at once: no rung below can help.
"""

from __future__ import annotations

from functools import partial

import httpx2

from fleetgate.budget.guard import Budgets
from fleetgate.cache import AnswerCache
from fleetgate.errors import BudgetExceeded, ConfigError, FleetgateError
from fleetgate.fallback import Ladder, Rung, rungs
from fleetgate.path._sync.background import Background
from fleetgate.path._sync.flex import FlexFallback
from fleetgate.path._sync.layer import Layer, Next
from fleetgate.path.call import Call, Refused
from fleetgate.path.refusals import refuse
from fleetgate.path.waits import sleep

__all__ = ["Fallback"]


class Fallback(Layer):
    name = "fallback"

    def __init__(self, ladder: Ladder, budgets: Budgets, cache: AnswerCache, flex: FlexFallback,
                 background: Background) -> None:
        self.ladder, self.budgets, self.cache, self.flex, self.background = ladder, budgets, cache, flex, background

    def handle(self, call: Call, next: Next) -> httpx2.Response:  # noqa: A002
        if call.body.get("background") is True:
            next = partial(self.background.handle, next=next)  # noqa: A001
        while True:
            try:
                return self.flex.handle(call, next)
            except Refused as refused:
                call.refusal, error = refused, refused.error
            action, wait = self._when_refused(call, error)
            if action != "queue":
                break
            sleep(call.waits(wait, "budget"))
        for rung in rungs(action):
            if rung == "cheaper":
                body = self.ladder.cheaper_body(call.body)
                cheaper = call.step_down(body) if body is not None else None
                if cheaper is None:
                    continue
                try:
                    response = next(cheaper)
                except Refused as again:
                    if action == "cheaper":  # the step down was refused too: say why
                        error = again.error
                    continue
                call.tier = "fallback_model"
                return response
            answer = self._rung(call, rung, error)
            if answer is not None:
                call.tier = rung
                return answer
        return refuse(call, error)

    def _rung(self, call: Call, rung: Rung, error: FleetgateError) -> httpx2.Response | None:
        """The answer of a rung below the models, or None when it has none for the call."""
        if rung == "static":
            return self.ladder.static_response(call.request, call.endpoint, call.body)
        if rung == "deferred":
            return self.ladder.defer(call.request, call.endpoint, call.body, str(error))
        address = call.cache_address
        return (self.cache.lookup(address.key, call.request, address.semantic)
                if address is not None else None)

    def _when_refused(self, call: Call, error: FleetgateError) -> tuple[str, float]:
        """What the refusal asks: ``("queue", seconds)`` (wait for a budget's next period),
        else the rungs to try (:func:`fleetgate.fallback.rungs`) with 0 seconds."""
        if isinstance(error, ConfigError):
            return "refuse", 0.0
        if isinstance(error, BudgetExceeded):
            return self.budgets.when_refused(error, call.seconds_left())
        return "ladder", 0.0
