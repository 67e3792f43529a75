"""budget: the call's worst-case cost (its prompt and the most output it may produce, at
its model's price) is reserved on every dollar budget that applies, atomically across the
fleet, before it goes on; the reservation is settled with the real cost once the answer is
in (a stream: at its end), and released when nothing was spent. A call made with
``background: true`` is held for ``[background] lease_seconds`` (its life), and settled
when its response ends (:mod:`fleetgate.background`). See :mod:`fleetgate.budget.guard`.

Contract: a budget with no room refuses with ``BudgetExceeded`` (the fallback layer then
does what its ``on_exhausted`` says, and the router counts it against a rollout side); a
model with no price refuses with ``ConfigError`` under ``unpriced = "refuse"``; with Redis
down the budgets follow ``failure_policy`` (a per-pod share under ``fail_open``, a
``StoreUnavailable`` refusal under ``fail_closed``). Nothing is reserved for a call that
never leaves.
"""

from __future__ import annotations

import httpx2

from fleetgate.budget.guard import Budgets, Hold
from fleetgate.errors import BudgetExceeded, ConfigError, FleetgateError, StoreUnavailable
from fleetgate.path._async.layer import Layer, Next
from fleetgate.path.call import Call, Outcome, Refused
from fleetgate.path.settle import settle_failed
from fleetgate.stats import GatewayStats

__all__ = ["Budget"]

class Budget(Layer):
    name = "budget"

    def __init__(self, budgets: Budgets, stats: GatewayStats, background_lease: float) -> None:
        self.budgets, self.stats, self.background_lease = budgets, stats, background_lease

    async def handle(self, call: Call, next: Next) -> httpx2.Response:  # noqa: A002
        lease = self.background_lease if call.body.get("background") is True else None
        try:
            hold = await self.budgets.reserve_async(call.estimate, call.scope, lease=lease)
        except (BudgetExceeded, ConfigError, StoreUnavailable) as e:
            self.stats.count("budget_refused" if isinstance(e, BudgetExceeded) else "refused")
            raise Refused(e, self.name) from e
        if hold is None:
            return await next(call)
        try:
            response = await next(call)
        except BaseException:
            self._release(hold)
            raise
        call.when_done(lambda outcome: self._settle(call, hold, outcome))
        return response

    def _settle(self, call: Call, hold: Hold, outcome: Outcome) -> None:
        """Spend what the call cost: its usage priced, else the prompt and what it wrote (a
        stream's deltas; the most it could write when that is unknown); a background
        response's hold is left to be settled when it ends."""
        if outcome.later is not None:
            outcome.later.hold = hold
            return
        if not outcome.billed:
            self._release(hold)
            return
        cost = call.timing.cost if outcome.usage is not None else None
        output = outcome.deltas if call.stream else call.estimate.max_output_tokens
        try:
            self.budgets.spend(hold, cost, call.estimate.input_tokens, output)
        except FleetgateError as e:
            settle_failed(self.stats, e)

    def _release(self, hold: Hold) -> None:
        try:
            self.budgets.release(hold)
        except FleetgateError as e:
            settle_failed(self.stats, e)

