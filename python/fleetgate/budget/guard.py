"""Dollar budgets on the request path: before a call, its worst-case cost (the prompt plus
the most output it may produce, at the model's price) is reserved on every budget that
applies, in one atomic step per budget across the fleet; after it, the real cost from the
response's ``usage`` settles the reservation. A reservation that is never settled (its pod
died) lapses after ``[budgets] reservation_seconds``.

    [[budgets.limits]]
    scope = "feature"            # "global", "team", "feature" or "user"
    name = "support-chat"        # omit: every feature gets a budget of this size
    dollars = 50.0
    period = "day"               # or "month", in [budgets] timezone
    on_exhausted = "cheaper"     # "refuse", "cheaper" or "queue"
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from fleetgate._core import Budget, BudgetReservation, Ledger, Limiter
from fleetgate.config import BudgetLimit, BudgetSettings
from fleetgate.errors import BudgetExceeded, ConfigError
from fleetgate.estimate import Estimate
from fleetgate.prices import ModelPrice, PriceTable
from fleetgate.scope import Scope

__all__ = ["AlertCallback", "Budgets", "Hold"]

log = logging.getLogger("fleetgate")

#: ``on_budget_alert(budget, threshold, spent, limit, period)``: a budget reached `threshold`
#: (a share of its limit) for the first time in `period`, across the fleet.
AlertCallback = Callable[[str, float, float, float, str], object]

_CACHED_BUDGETS = 65_536  # user names are unbounded; budget objects are cheap to make again


@dataclass(frozen=True, slots=True)
class Hold:
    """The budgets a call has reserved on, and what to label its spend with."""

    reservation: BudgetReservation
    price: ModelPrice
    model: str
    feature: str
    user: str
    team: str


class Budgets:
    """The budgets of one gateway, and the ledger that holds them."""

    def __init__(self, settings: BudgetSettings, prices: PriceTable, limiter: Limiter,
                 count: Callable[[str], None], on_alert: AlertCallback | None = None) -> None:
        self.settings = settings
        self.prices = prices
        self._count = count
        self._on_alert = on_alert
        self.ledger = Ledger(limiter, report_timezone=settings.timezone, on_alert=self._alert)
        #: Unix seconds: which day or month a call falls in (replaceable, for tests).
        self.clock: Callable[[], float] = time.time
        self._budgets: OrderedDict[str, Budget] = OrderedDict()
        self._actions: dict[str, str] = {}
        for rule in settings.limits:  # fail at start-up, not at the first call
            Budget("check", rule.dollars, rule.period, settings.timezone, settings.alerts)

    @property
    def active(self) -> bool:
        return bool(self.settings.limits) or self.settings.record_spend

    def applicable(self, sc: Scope) -> list[Budget]:
        """The budgets a call in scope `sc` spends from."""
        found = []
        for rule in self.settings.limits:
            value = {"global": "", "team": sc.team, "feature": sc.feature, "user": sc.user}[rule.scope]
            if value is None or (rule.name is not None and value != rule.name):
                continue
            found.append(self._budget(rule, value))
        return found

    def named(self) -> list[Budget]:
        """The budgets whose number is bounded: the global ones and those of a named team,
        feature or user (not those kept per value)."""
        return [self._budget(rule, "" if rule.scope == "global" else rule.name or "")
                for rule in self.settings.limits if rule.scope == "global" or rule.name is not None]

    def _budget(self, rule: BudgetLimit, value: str) -> Budget:
        name = f"{rule.scope}:{value}:{rule.period}" if value else f"global:{rule.period}"
        budget = self._budgets.get(name)
        if budget is None:
            budget = Budget(name, rule.dollars, rule.period, self.settings.timezone, self.settings.alerts)
            self._budgets[name] = budget
            self._actions[name] = rule.on_exhausted
            if len(self._budgets) > _CACHED_BUDGETS:
                old, _ = self._budgets.popitem(last=False)
                self._actions.pop(old, None)
        return budget

    def action(self, budget: str) -> str:
        """What to do when `budget` is spent (``[[budgets.limits]] on_exhausted``)."""
        return self._actions.get(budget, "refuse")

    def worst_case(self, estimate: Estimate) -> tuple[ModelPrice | None, float]:
        """The model's price and the most a call can cost: every prompt token uncached, and
        the most output it may produce. Raises ConfigError for a model with no price when
        ``[budgets] unpriced = "refuse"``."""
        price = self.prices.price(estimate.model)
        if price is None:
            if self.settings.unpriced == "refuse":
                raise ConfigError(
                    f"model {estimate.model!r} has no price, so no budget can hold its calls: add it under "
                    f'[prices.models."{estimate.model}"] (input, cached_input, output dollars per 1M tokens), '
                    'or set [budgets] unpriced = "allow"')
            self._count("budget_unpriced")
            return None, 0.0
        return price, price.dollars(estimate.prompt_tokens, estimate.max_output_tokens)

    def reserve(self, estimate: Estimate, sc: Scope) -> Hold | None:
        """Reserve a call's worst-case cost on every budget that applies: its hold, or None
        (no budgets, or an unpriced model let through). Raises BudgetExceeded when one has
        no room, ConfigError for an unpriced model under ``unpriced = "refuse"``, and
        StoreUnavailable when the ledger's store is down."""
        price, worst = self.worst_case(estimate) if self.active else (None, 0.0)
        if price is None:
            return None
        reservation = self.ledger.reserve(self.applicable(sc), worst, lease=self.settings.reservation_seconds,
                                          now=self.clock())
        return self.hold(estimate, sc, reservation, price)

    async def reserve_async(self, estimate: Estimate, sc: Scope) -> Hold | None:
        """:meth:`reserve`, awaiting the store."""
        price, worst = self.worst_case(estimate) if self.active else (None, 0.0)
        if price is None:
            return None
        reservation = await self.ledger.reserve_async(self.applicable(sc), worst,
                                                      lease=self.settings.reservation_seconds, now=self.clock())
        return self.hold(estimate, sc, reservation, price)

    def when_refused(self, error: BudgetExceeded, seconds_left: float) -> tuple[str, float]:
        """What to do for a call `error` refused: ``("queue", seconds)`` to wait for the
        budget's next period when it comes within `seconds_left`, else what its
        ``on_exhausted`` says (``"cheaper"``, ``"cache_only"``, ``"refuse"``; a queue
        whose wait is too long refuses), with 0 seconds."""
        action = self.action(error.budget)
        if action != "queue":
            return action, 0.0
        wait = max(0.0, error.resets_at - self.clock()) + 0.001
        if wait < seconds_left:
            self._count("budget_queued")
            return "queue", wait
        return "refuse", 0.0

    def hold(self, estimate: Estimate, sc: Scope, reservation: BudgetReservation, price: ModelPrice) -> Hold:
        return Hold(reservation, price, estimate.model, sc.feature or "", sc.user or "", sc.team or "")

    def spend(self, hold: Hold, cost: float | None, prompt_tokens: int, output_tokens: int) -> None:
        """Settle `hold` with what the call cost: `cost`, its usage priced, when the response
        had one; else from the token counts (in the background)."""
        if cost is None:
            cost = hold.price.dollars(prompt_tokens, output_tokens)
            self._count("budget_settled_from_estimate")
        self.ledger.settle_later(hold.reservation, cost, model=hold.model, feature=hold.feature, user=hold.user,
                                 team=hold.team)

    def release(self, hold: Hold | None) -> None:
        """Nothing was spent (the call never reached upstream, or upstream refused it)."""
        if hold is not None:
            self.ledger.release_later(hold.reservation)

    def _alert(self, budget: str, threshold: float, spent: float, limit: float, period: str) -> None:
        log.warning("fleetgate: budget %s reached %d%% of $%.6g in %s ($%.6g spent)", budget, round(threshold * 100),
                    limit, period, spent)
        self._count("budget_alerts")
        if self._on_alert is not None:
            self._on_alert(budget, threshold, spent, limit, period)
