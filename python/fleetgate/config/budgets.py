"""Money and tokens: dollar budgets (``[budgets]``) and token budgets by request type
(``[presets]``)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["BudgetLimit", "BudgetSettings", "PresetSettings"]


class BudgetLimit(BaseModel):
    """One dollar budget. ``scope = "feature"`` with ``name`` is that feature's budget;
    without ``name`` every feature gets a budget of this size (likewise users and teams).
    ``scope = "deployment"``: the spend of the deployments of that name (``[deployments]``;
    a project's, whatever model it serves); one that has spent it passes its calls on to the
    model's next deployment, and the last one's refusal is the call's."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    scope: Literal["global", "team", "feature", "user", "deployment"] = "global"
    name: str | None = Field(default=None, min_length=1)
    dollars: float = Field(gt=0)
    period: Literal["day", "month"] = "day"
    #: When it is spent: refuse with ``fleetgate.BudgetExceeded``, step down to the
    #: ``[fallback] models`` cheaper model, serve only from the cache, or queue the call
    #: until the next period (within its deadline).
    on_exhausted: Literal["refuse", "cheaper", "cache_only", "queue"] = "refuse"


class BudgetSettings(BaseModel):
    """Dollar budgets (:mod:`fleetgate.budget`), held across the fleet."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    limits: list[BudgetLimit] = Field(default_factory=list)
    #: The time zone days and months are counted in (IANA name, e.g. "Europe/Berlin").
    timezone: str = "UTC"
    #: Shares of a budget at which an alert fires, once per budget and period.
    alerts: list[float] = Field(default_factory=lambda: [0.5, 0.75, 0.9, 1.0])
    #: How long a reservation holds without being settled (a pod that died mid-call).
    reservation_seconds: float = Field(default=600.0, gt=0, le=86_400)
    #: With Redis: how long a call waits for its budgets' reservation before the store
    #: counts as down and ``failure_policy`` applies (fail_open: the call is held on this
    #: pod's ``local_share`` of each budget; fail_closed: refused with StoreUnavailable).
    #: A reservation normally takes a round trip per budget; 0.5 s is a store in trouble.
    store_timeout_seconds: float = Field(default=0.5, gt=0, le=60)
    #: A call of a model with no price under a budget: refuse it, or let it through
    #: uncounted (logged).
    unpriced: Literal["refuse", "allow"] = "refuse"
    #: Record every call's cost for ``fleetgate costs`` even where no budget applies (calls
    #: under a budget are always recorded).
    record_spend: bool = False


class PresetSettings(BaseModel):
    """A token budget for one type of request (``scope(preset=…)``, or the feature's name)."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    #: The model requests of this type use (None: the one the caller asked for).
    model: str | None = None
    #: Longer input is cut to this many tokens (by the model's encoding), with a marker.
    max_input_tokens: int | None = Field(default=None, gt=0)
    #: The most output tokens a request of this type may ask for.
    max_output_tokens: int | None = Field(default=None, gt=0)
    #: Appended where input was cut.
    marker: str = " [... truncated]"
