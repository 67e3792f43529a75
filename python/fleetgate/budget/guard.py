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
    on_exhausted = "cheaper"     # "refuse", "cheaper", "cache_only" or "queue"

One call, as the budget layer drives it:

1. :meth:`Budgets.reserve` (or :meth:`~Budgets.reserve_async`): the worst case priced at
   the ``service_tier`` the request asks for (``flex``, ``priority``/``fast``; ``auto``,
   ``default``, ``scale`` or none at the standard price; :mod:`fleetgate.tiers`) (an
   unpriced model: refused, or let through uncounted), then held on every budget that
   applies, all or nothing. A :class:`Hold`, or None when no budget holds the call.
2. No room: :meth:`Budgets.when_refused` says what to do (queue for the next period, step
   down to a cheaper model, serve from the cache, or refuse).
3. The answer: :meth:`Budgets.spend` settles the hold with what the call cost (its usage
   priced at the tier the answer reports it was served at), or
   :meth:`Budgets.release` gives it back when nothing was spent.

When the store does not answer within ``[budgets] store_timeout_seconds`` it counts as down
and ``failure_policy`` applies: ``fail_open`` holds calls on this pod's ``local_share`` of
each budget, kept in this process for the period (so a pod spends at most that share of a
budget alone, over however many outages); ``fail_closed`` refuses them with
StoreUnavailable. An outage is logged once when it starts and once when it ends, calls held
on the share are counted in ``stats["budget_fail_open"]``, and within half a second of a
failure the store is not asked again (one call then does). Spend settled on the local share
is not in the fleet's totals or reports.

A budget of a user (or of a sensitive team or feature) is named by its pseudonym
(:mod:`fleetgate.privacy`): ``user:u_3f9a…:day``, in its alerts, refusals and metrics alike;
so are the user, team and feature its spend is recorded under.

Alerts follow settled spend only: a refused reservation fires none (worst cases in flight
fill a budget long before its spend does).
"""

from __future__ import annotations

import logging
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from fleetgate._core import Budget, BudgetReservation, BudgetStatus, Ledger, Limiter
from fleetgate.config import BudgetLimit, BudgetSettings, GatewayConfig
from fleetgate.errors import BudgetExceeded, ConfigError, StoreUnavailable
from fleetgate.estimate import Estimate
from fleetgate.outage import Outage
from fleetgate.prices import ModelPrice, PriceTable, price_tier
from fleetgate.privacy import Privacy
from fleetgate.scope import Scope

__all__ = ["AlertCallback", "Budgets", "Hold"]

log = logging.getLogger("fleetgate")

#: ``on_budget_alert(budget, threshold, spent, limit, period)``: a budget reached `threshold`
#: (a share of its limit) for the first time in `period`, across the fleet.
AlertCallback = Callable[[str, float, float, float, str], object]

_CACHED_BUDGETS = 65_536  # user names are unbounded; budget objects are cheap to make again
_DEFAULT_LOCAL_SHARE: float = GatewayConfig.model_fields["local_share"].default
_STORE_ADVICE = re.compile(r"^the Redis store is unavailable \((?P<detail>.*)\); check that Redis is reachable.*$", re.S)


@dataclass(frozen=True, slots=True)
class Hold:
    """The budgets a call has reserved on, and what to label its spend with (a user, and a
    sensitive team or feature, by pseudonym)."""

    reservation: BudgetReservation
    price: ModelPrice
    model: str
    feature: str
    user: str
    team: str
    #: Held on this pod's share of each budget while the store was down (not in the fleet's
    #: totals).
    local: bool = False
    #: The priced tier the call asked for (:func:`~fleetgate.prices.price_tier`).
    tier: str = "default"
    #: Its spend is recorded when settled (False: a deployment's hold on a call whose
    #: spend the call's own hold records).
    records: bool = True


@dataclass(frozen=True, slots=True)
class _Plan:
    """What a call would reserve: the budgets that apply, and its worst case at `price`."""

    budgets: list[Budget]
    price: ModelPrice
    worst: float
    #: Its spend is recorded (not a deployment's hold).
    records: bool = True


class Budgets:
    """The budgets of one gateway, and the ledger that holds them."""

    def __init__(self, settings: BudgetSettings, prices: PriceTable, limiter: Limiter,
                 count: Callable[[str], None], on_alert: AlertCallback | None = None, *,
                 failure_policy: str | None = None, local_share: float | None = None,
                 privacy: Privacy | None = None, on_unpriced: Callable[[str], None] | None = None) -> None:
        """`failure_policy` (default: the limiter's) and `local_share` (default: the
        gateway's default) decide what happens while the store is down. `privacy` names
        users (default: a key for this process alone). `on_unpriced(model)` hears of each
        call of a model with no price."""
        self.settings = settings
        self._on_unpriced = on_unpriced
        self.privacy = privacy if privacy is not None else Privacy.process_local()
        self.prices = prices
        self._count = count
        self._on_alert = on_alert
        self.ledger = Ledger(limiter, report_timezone=settings.timezone, on_alert=self._alert)
        self.failure_policy = failure_policy or limiter.failure_policy
        if self.failure_policy not in ("fail_open", "fail_closed"):
            raise ConfigError(f'failure_policy must be "fail_open" or "fail_closed", got {self.failure_policy!r}')
        self.local_share = _DEFAULT_LOCAL_SHARE if local_share is None else local_share
        if not 0 < self.local_share <= 1:
            raise ConfigError(f"local_share must be in (0, 1], got {self.local_share}")
        #: The store, as logs and refusals name it (its password hidden).
        self.store_name = f"the budgets' Redis at {limiter.store}" if limiter.store else "the budget ledger"
        self._outage = Outage(self.store_name)
        #: This pod's share of each budget, for calls made while the store is down: no
        #: alerts (a share's thresholds are not the budget's).
        self._local = Ledger(report_timezone=settings.timezone)
        self._local_budgets: OrderedDict[str, Budget] = OrderedDict()
        self._share_seen = 0.0
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
            value = {"global": "", "team": sc.team, "feature": sc.feature, "user": sc.user}.get(rule.scope)
            if value is None or (rule.name is not None and value != rule.name):
                continue
            found.append(self._budget(rule, value))
        return found

    @property
    def of_deployments(self) -> bool:
        """Whether some budgets are of deployments (``scope = "deployment"``)."""
        return any(rule.scope == "deployment" for rule in self.settings.limits)

    def of_deployment(self, name: str) -> list[Budget]:
        """The budgets a call sent to the deployments named `name` spends from."""
        return [self._budget(rule, name) for rule in self.settings.limits
                if rule.scope == "deployment" and rule.name in (None, name)]

    def named(self) -> list[Budget]:
        """The budgets whose number is bounded: the global ones and those of a named team,
        feature or user (not those kept per value)."""
        return [self._budget(rule, "" if rule.scope == "global" else rule.name or "")
                for rule in self.settings.limits if rule.scope == "global" or rule.name is not None]

    def _budget(self, rule: BudgetLimit, value: str) -> Budget:
        name = (f"{rule.scope}:{self.privacy.label(rule.scope, value)}:{rule.period}" if value
                else f"global:{rule.period}")
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
        """The model's price and the most a call can cost at the tier it asks for: its prompt
        as the larger of the tokenizer's count and OpenAI's character estimate, no prompt token
        read from the prompt cache, every one possibly written to it, and the most output it
        may produce. Raises ConfigError for a model with no price when
        ``[budgets] unpriced = "refuse"``."""
        price = self.prices.price(estimate.model)
        if price is None:
            if self._on_unpriced is not None:
                self._on_unpriced(estimate.model)
            if self.settings.unpriced == "refuse":
                raise ConfigError(
                    f"model {estimate.model!r} has no price, so no budget can hold its calls: add it under "
                    f'[prices.models."{estimate.model}"] (input, cached_input, output dollars per 1M tokens), '
                    'or set [budgets] unpriced = "allow"')
            self._count("budget_unpriced")
            return None, 0.0
        prompt = max(estimate.prompt_tokens, estimate.prompt_chars_estimate) + estimate.held
        return price, price.worst(prompt, estimate.max_output_tokens, tier=price_tier(estimate.service_tier))

    def hold(self, estimate: Estimate, sc: Scope, reservation: BudgetReservation, price: ModelPrice,
             local: bool = False, records: bool = True) -> Hold:
        label = self.privacy.label
        return Hold(reservation, price, estimate.model, label("feature", sc.feature) or "",
                    label("user", sc.user) or "", label("team", sc.team) or "", local,
                    price_tier(estimate.service_tier), records)

    # -- reserving ---------------------------------------------------------------------------

    def reserve(self, estimate: Estimate, sc: Scope, *, lease: float | None = None,
                deployment: str | None = None) -> Hold | None:
        """Hold the call's worst-case cost on every budget of scope `sc`, or on none. None
        when no budget is configured, or the model has no price and ``unpriced = "allow"``.
        `deployment`: on the budgets of the deployments of that name instead (None when it
        has none), a hold whose spend is not recorded (the call's own hold records it).
        Raises BudgetExceeded (a budget has no room: see :meth:`when_refused`), ConfigError
        (no price, ``unpriced = "refuse"``) or StoreUnavailable (the store is down and
        ``failure_policy = "fail_closed"``); with ``fail_open`` a call made while the store
        is down is held on this pod's share of each budget (counted in ``budget_fail_open``;
        refusals are the caller's to count). `lease`: how long the hold lasts unsettled
        (default ``[budgets] reservation_seconds``; a background call's is its life)."""
        plan = self._plan(estimate, sc, deployment)
        if plan is None:
            return None
        if self._goes_without_store(plan):
            return self._without_store(plan, estimate, sc, None, lease)
        try:
            reservation = self.ledger.reserve(plan.budgets, plan.worst,
                                              lease=lease or self.settings.reservation_seconds,
                                              now=self.clock(), timeout=self.settings.store_timeout_seconds)
        except StoreUnavailable as e:
            return self._without_store(plan, estimate, sc, e, lease)
        return self._held(plan, estimate, sc, reservation)

    async def reserve_async(self, estimate: Estimate, sc: Scope, *, lease: float | None = None,
                            deployment: str | None = None) -> Hold | None:
        """:meth:`reserve`, waiting for the store off the event loop."""
        plan = self._plan(estimate, sc, deployment)
        if plan is None:
            return None
        if self._goes_without_store(plan):
            return self._without_store(plan, estimate, sc, None, lease)
        try:
            reservation = await self.ledger.reserve_async(
                plan.budgets, plan.worst, lease=lease or self.settings.reservation_seconds, now=self.clock(),
                timeout=self.settings.store_timeout_seconds)
        except StoreUnavailable as e:
            return self._without_store(plan, estimate, sc, e, lease)
        return self._held(plan, estimate, sc, reservation)

    def when_refused(self, error: BudgetExceeded, seconds_left: float) -> tuple[str, float]:
        """What to do when a budget refused the call, by its ``on_exhausted``: ``("queue",
        seconds)`` to wait for its next period when that comes within `seconds_left`
        (counted in ``budget_queued``), else ``("cheaper", 0)``, ``("cache_only", 0)`` or
        ``("refuse", 0)``."""
        action = self.action(error.budget)
        if action == "queue":
            wait = max(0.0, error.resets_at - self.clock()) + 0.001
            if wait < seconds_left:
                self._count("budget_queued")
                return "queue", wait
            return "refuse", 0.0
        return action, 0.0

    def _plan(self, estimate: Estimate, sc: Scope, deployment: str | None) -> _Plan | None:
        if deployment is not None:
            budgets = self.of_deployment(deployment)
            if not budgets:
                return None
        elif not self.active:
            return None
        price, worst = self.worst_case(estimate)
        if price is None:
            return None
        return _Plan(self.applicable(sc) if deployment is None else budgets, price, worst, deployment is None)

    def _goes_without_store(self, plan: _Plan) -> bool:
        """Whether the call skips the store: it is down (within its recheck interval), or
        it is, and the call only records spend (no budget to ask it about)."""
        return self._outage.down if not plan.budgets else self._outage.suspended()

    def _held(self, plan: _Plan, estimate: Estimate, sc: Scope, reservation: BudgetReservation) -> Hold:
        if plan.budgets:
            self._outage.answered("budgets are held across the fleet again")
        return self.hold(estimate, sc, reservation, plan.price, records=plan.records)

    def _without_store(self, plan: _Plan, estimate: Estimate, sc: Scope, error: StoreUnavailable | None,
                       lease: float | None = None) -> Hold:
        """The call under the failure policy, the store being down (`error`: what it just
        said; None: it failed moments ago and was not asked)."""
        if error is not None:
            self._store_failed(error)
        if self.failure_policy == "fail_closed":
            raise StoreUnavailable(
                f"{self.store_name} is unavailable ({_detail(error) if error else 'it failed moments ago'}), and "
                f'failure_policy = "fail_closed" refuses calls under a budget while it is') from error
        budgets = [self._local_budget(b) for b in plan.budgets]
        try:
            reservation = self._local.reserve(budgets, plan.worst, lease=lease or self.settings.reservation_seconds,
                                              now=self.clock())
        except BudgetExceeded as e:
            raise BudgetExceeded(f"{e} (this pod's share, {self.local_share:g} of the budget, while "
                                 f"{self.store_name} is unavailable)", e.budget, e.resets_at, e.limit, e.spent) from e
        self._count("budget_fail_open")
        return self.hold(estimate, sc, reservation, plan.price, local=True, records=plan.records)

    def _store_failed(self, error: StoreUnavailable) -> None:
        meanwhile = (f"calls are held on this pod's share ({self.local_share:g}) of each budget until it answers"
                     if self.failure_policy == "fail_open" else
                     'calls under a budget are refused until it answers (failure_policy = "fail_closed")')
        self._outage.failed(_detail(error), meanwhile)

    def _local_budget(self, budget: Budget) -> Budget:
        """`budget`'s share for this pod, by the same name (so its ``on_exhausted`` holds)."""
        local = self._local_budgets.get(budget.name)
        if local is None:
            local = Budget(budget.name, budget.limit * self.local_share, budget.period, budget.timezone, [])
            self._local_budgets[budget.name] = local
            if len(self._local_budgets) > _CACHED_BUDGETS:
                self._local_budgets.popitem(last=False)
        return local

    # -- settling ----------------------------------------------------------------------------

    def spend(self, hold: Hold, cost: float | None, prompt_tokens: int, output_tokens: int) -> None:
        """Settle `hold` with what the call cost: `cost`, its usage priced at the tier that
        served it, when the response had one; else from the token counts at the tier asked
        (in the background)."""
        if cost is None:
            cost = hold.price.dollars(prompt_tokens, output_tokens, tier=hold.tier)
            self._count("budget_settled_from_estimate")
        ledger = self._local if hold.local else self.ledger
        ledger.settle_later(hold.reservation, cost, model=hold.model, feature=hold.feature, user=hold.user,
                            team=hold.team, record=hold.records)

    def release(self, hold: Hold | None) -> None:
        """Nothing was spent (the call never reached upstream, or upstream refused it)."""
        if hold is not None:
            (self._local if hold.local else self.ledger).release_later(hold.reservation)

    # -- reading -----------------------------------------------------------------------------

    def statuses(self) -> list[tuple[Budget, BudgetStatus]]:
        """Where each named budget stands in its period, across the fleet; none while the
        store is down (the outage said once, as for calls)."""
        return self._statuses(self.named()) or []

    def spent_share(self) -> float:
        """The largest share of a global budget spent or held in its period, across the
        fleet (the modes' ``budget_share`` signal); while the store is down, the last read."""
        found = self._statuses([b for b in self.named() if b.name.startswith("global")])
        if found is not None:
            self._share_seen = max(((s.spent + s.reserved) / s.limit for _, s in found if s.limit), default=0.0)
        return self._share_seen

    def _statuses(self, budgets: list[Budget]) -> list[tuple[Budget, BudgetStatus]] | None:
        """The statuses of `budgets`; None while the store is down."""
        if not budgets:
            return []
        if self._outage.suspended():
            return None
        try:
            found = [(budget, self.ledger.status(budget, now=self.clock())) for budget in budgets]
        except StoreUnavailable as e:
            self._store_failed(e)
            return None
        self._outage.answered("budgets are held across the fleet again")
        return found

    def _alert(self, budget: str, threshold: float, spent: float, limit: float, period: str) -> None:
        log.warning("fleetgate: budget %s reached %d%% of $%.6g in %s ($%.6g spent)", budget, round(threshold * 100),
                    limit, period, spent)
        self._count("budget_alerts")
        if self._on_alert is not None:
            self._on_alert(budget, threshold, spent, limit, period)


def _detail(error: StoreUnavailable) -> str:
    """What went wrong, without the limiter's advice (which names settings the budgets'
    own message names better)."""
    text = str(error)
    found = _STORE_ADVICE.match(text)
    return found.group("detail") if found else text
