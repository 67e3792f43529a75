"""Money and tokens: dollar budgets held across the fleet (:mod:`.guard`), token budgets by
request type (:mod:`.presets`), spend reports (:mod:`.report`), and the ledger reconciled with
what OpenAI billed (:mod:`.reconcile`, imported on its own: it reads OpenAI's admin APIs)."""

from fleetgate.budget.guard import AlertCallback, Budgets, Hold
from fleetgate.budget.presets import TRUNCATED_HEADER, Presets, Shaped

__all__ = ["TRUNCATED_HEADER", "AlertCallback", "Budgets", "Hold", "Presets", "Shaped"]
