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
from fleetgate.errors import BudgetExceeded, ConfigError, StoreUnavailable
from fleetgate.path._async.layer import Layer, Next
from fleetgate.path.call import Call, Refused
from fleetgate.path.settle import release_hold, settle_hold
from fleetgate.stats import GatewayStats

__all__ = ["Budget", "reserve_hold_async"]


async def reserve_hold_async(budgets: Budgets, stats: GatewayStats, call: Call, background_lease: float,
                             by: str, deployment: str | None = None) -> Hold | None:
    """`call`'s worst case held on the budgets of its scope (`deployment`: on those of the
    deployments of that name), for a background call its life long; None when none holds
    it. Refused (by the layer `by`): a budget has no room, the model has no price under
    ``unpriced = "refuse"``, or the store is down under ``fail_closed``."""
    lease = background_lease if call.body.get("background") is True else None
    try:
        return await budgets.reserve_async(call.estimate, call.scope, lease=lease, deployment=deployment)
    except (BudgetExceeded, ConfigError, StoreUnavailable) as e:
        stats.count("budget_refused" if isinstance(e, BudgetExceeded) else "refused")
        raise Refused(e, by) from e


class Budget(Layer):
    name = "budget"

    def __init__(self, budgets: Budgets, stats: GatewayStats, background_lease: float) -> None:
        self.budgets, self.stats, self.background_lease = budgets, stats, background_lease

    async def handle(self, call: Call, next: Next) -> httpx2.Response:  # noqa: A002
        hold = await reserve_hold_async(self.budgets, self.stats, call, self.background_lease, self.name)
        if hold is None:
            return await next(call)
        try:
            response = await next(call)
        except BaseException:
            release_hold(self.budgets, self.stats, hold)
            raise
        call.when_done(lambda outcome: settle_hold(self.budgets, self.stats, call, hold, outcome))
        return response
