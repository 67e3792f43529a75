"""Settling a background call once its response ended (or could not be followed): from
the usage it reports, at the service tier that served it; nothing, when it reports none;
its worst case otherwise.

A call this pod made settles the holds it carries (:class:`~fleetgate.path.call.Handoff`):
its quota reservation to what upstream counted, its budget hold to the cost. A call taken
over from another pod has no holds here (a ledger hold cannot be settled from another
process): its cost is spent directly on its budgets and spend records, and the first pod's
hold lapses by itself at the end of its lease (until then the budget counts the call's
worst case on top of its spend: it may refuse early, never admit too much). Its quota
reservation stays counted at the request's estimate, as OpenAI's limiter counts it, until
the quota refills.
"""

from __future__ import annotations

import logging
from typing import Any

from fleetgate._core import Budget, Limiter
from fleetgate.background.pending import PendingCall
from fleetgate.background.polling import How
from fleetgate.budget.guard import Budgets
from fleetgate.errors import BudgetExceeded, FleetgateError
from fleetgate.estimate import UsageCounts, usage_counts, usage_tokens
from fleetgate.metrics import GatewayMetrics
from fleetgate.path.call import Handoff
from fleetgate.prices import PriceTable, price_tier
from fleetgate.stats import GatewayStats

__all__ = ["Settler"]

log = logging.getLogger("fleetgate")

#: What a quota reservation is settled from, by how its call was settled.
_QUOTA_SOURCE: dict[How, str] = {"usage": "usage", "nothing": "failure", "worst": "estimate"}


class Settler:
    """Spends what background calls cost, on one gateway's quotas and budgets."""

    def __init__(self, limiter: Limiter, budgets: Budgets, prices: PriceTable, stats: GatewayStats,
                 metrics: GatewayMetrics | None) -> None:
        self._limiter, self._budgets, self._prices, self._stats, self._metrics = limiter, budgets, prices, stats, metrics

    def settle(self, record: PendingCall, handoff: Handoff | None, how: How, usage: dict[str, Any] | None,
               tier: str | None) -> bool:
        """Spend what the call cost (or give its holds back); False when its budgets could
        not take the spend yet (taken over, and a budget already holds more than it may)."""
        counts = usage_counts(usage) if usage is not None else None
        served = tier or record.tier  # as the request path prices an answer: the tier that served it, else asked
        cost = self._prices.counts_cost(record.model, counts, tier=served) if counts is not None else None
        if how == "worst":
            log.warning("fleetgate: background response %s could not be followed to its end: settled at its worst "
                        "case, $%.6g", record.response_id, record.worst)
        try:
            if handoff is not None:
                self._settle_holds(record, handoff, how, usage, counts, cost)
            elif not self._spend_taken(record, how, cost):
                return False
        except FleetgateError as e:
            self._stats.count("settle_failures")
            log.warning("fleetgate: could not settle background response %s (%s)", record.response_id, e)
        self._stats.count(f"background_settled_{how}")
        if counts is not None and self._metrics is not None:
            # Labelled with its feature as the request path labels it (a call taken over: none).
            feature = handoff.call.scope.feature if handoff is not None else None
            self._metrics.billed(record.model, feature, counts, cost, service_tier=price_tier(served),
                                 deployment=record.deployment.rpartition("@")[2] or None)
        return True

    def give_back(self, record: PendingCall, handoff: Handoff | None) -> None:
        """Another pod settles a call this pod held: its quota stays as counted, its budget
        hold is given back (the other pod spends the cost directly)."""
        for hold in handoff.holds if handoff is not None else ():
            try:
                self._budgets.release(hold)
            except FleetgateError as e:
                self._stats.count("settle_failures")
                log.warning("fleetgate: could not give back a hold of background response %s (%s); it lapses by "
                            "itself", record.response_id, e)

    def _settle_holds(self, record: PendingCall, handoff: Handoff, how: How, usage: dict[str, Any] | None,
                      counts: UsageCounts | None, cost: float | None) -> None:
        estimate = handoff.call.estimate
        if handoff.quota is not None:
            tokens = (estimate.settle_with(usage_tokens(usage)) if how == "usage"
                      else 0 if how == "nothing" else estimate.upstream_tokens)
            self._limiter.settle_later(handoff.quota, tokens)
            # Counted as the limit layer counts what it settles at once.
            self._stats.count(f"settled_from_{_QUOTA_SOURCE[how]}")
        for hold in handoff.holds:  # the call's budgets', its deployment's
            if how == "nothing":
                self._budgets.release(hold)
            elif how == "worst":
                self._budgets.spend(hold, record.worst, estimate.prompt_tokens, estimate.max_output_tokens)
            else:
                assert counts is not None  # settled from its usage
                self._budgets.spend(hold, cost, counts.prompt, counts.output)

    def _spend_taken(self, record: PendingCall, how: How, cost: float | None) -> bool:
        """Spend a taken-over call's cost on its budgets (and the spend records) directly."""
        dollars = record.worst if how == "worst" else (cost or 0.0) if how == "usage" else 0.0
        if not record.recorded or dollars <= 0:
            return True
        settings = self._budgets.settings
        budgets = [Budget(name, limit, period, settings.timezone, settings.alerts)  # type: ignore[arg-type]
                   for name, limit, period in record.budgets]
        ledger = self._budgets.ledger
        try:
            reservation = ledger.reserve(budgets, 0.0, lease=60.0, now=record.made_at,
                                         timeout=settings.store_timeout_seconds)
        except BudgetExceeded as e:  # over already: spend once the first pod's hold lapses
            self._stats.count("background_settle_waits")
            log.warning("fleetgate: background response %s cost $%.6g, not spent yet: %s; tried again until its "
                        "first pod's hold lapses", record.response_id, dollars, e)
            return False
        ledger.settle(reservation, dollars, model=record.model, feature=record.feature, user=record.user,
                      team=record.team)
        return True
