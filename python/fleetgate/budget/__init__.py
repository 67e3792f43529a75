"""Money and tokens: dollar budgets held across the fleet (:mod:`.guard`), token budgets by
request type (:mod:`.presets`), and spend reports (:mod:`.report`)."""

from fleetgate.budget.guard import AlertCallback, Budgets, Hold
from fleetgate.budget.presets import TRUNCATED_HEADER, Presets, Shaped

__all__ = ["TRUNCATED_HEADER", "AlertCallback", "Budgets", "Hold", "Presets", "Shaped"]
