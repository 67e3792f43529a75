"""Settling after the answer: a reservation (quota or budget) that cannot be settled is
counted and logged, never raised at the caller, whose answer is already in; it lapses by
itself (a quota refills, a budget reservation expires after ``reservation_seconds``)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from fleetgate.errors import FleetgateError
from fleetgate.stats import GatewayStats

if TYPE_CHECKING:
    from fleetgate.budget.guard import Budgets, Hold
    from fleetgate.path.call import Call, Outcome

__all__ = ["release_hold", "settle_failed", "settle_hold"]

log = logging.getLogger("fleetgate")


def settle_failed(stats: GatewayStats, error: FleetgateError) -> None:
    stats.count("settle_failures")
    log.warning("fleetgate: could not settle a reservation (%s); it lapses by itself", error)


def settle_hold(budgets: Budgets, stats: GatewayStats, call: Call, hold: Hold, outcome: Outcome) -> None:
    """Spend on a budget hold what `call` cost: its usage priced, else the prompt and what
    it wrote (a stream's deltas; the most it could write when that is unknown); nothing
    billed: the hold given back; a background response's hold is left on its handoff, to
    be settled when it ends."""
    if outcome.later is not None:
        outcome.later.holds.append(hold)
        return
    if not outcome.billed:
        release_hold(budgets, stats, hold)
        return
    cost = call.timing.cost if outcome.usage is not None else None
    output = outcome.deltas if call.stream else call.estimate.max_output_tokens
    try:
        budgets.spend(hold, cost, call.estimate.input_tokens, output)
    except FleetgateError as e:
        settle_failed(stats, e)


def release_hold(budgets: Budgets, stats: GatewayStats, hold: Hold) -> None:
    """Nothing was spent on `hold`: given back."""
    try:
        budgets.release(hold)
    except FleetgateError as e:
        settle_failed(stats, e)
