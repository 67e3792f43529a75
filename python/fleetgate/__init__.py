"""fleetgate: one OpenAI quota, shared exactly by every pod of a service.

>>> import fleetgate as fg
>>> limiter = fg.Limiter()                      # embedded; or fg.Limiter("redis://…")
>>> gpt = fg.Quota("gpt-4.1-mini", requests_per_minute=600, tokens_per_minute=200_000)
>>> decision = limiter.try_acquire(gpt, tokens=1_200)
>>> decision.allowed
True
>>> limiter.settle(decision.reservation, tokens=900)
"""

from fleetgate._core import (
    Breaker,
    Breakers,
    Budget,
    BudgetReservation,
    BudgetStatus,
    Decision,
    Flight,
    Flights,
    Lanes,
    Ledger,
    Limiter,
    Quota,
    Reservation,
    Slot,
    __version__,
    chat_prompt_tokens,
    count_tokens,
    encoding_for_model,
    health,
    parse_duration,
    truncate_tokens,
)
from fleetgate.config import GatewayConfig, QuotaLimits
from fleetgate.errors import (
    PartialResponseError,
    StructuredOutputError,
    BudgetExceeded,
    BypassWarning,
    CircuitOpen,
    ConfigError,
    ConfigProblem,
    DeadlineExpired,
    FleetgateError,
    InputTruncated,
    QueueFull,
    RateLimited,
    ServiceDegraded,
    StoreUnavailable,
)
from fleetgate.gateway import Gateway
from fleetgate.stats import GatewayStats
from fleetgate.modes import ModeState, Modes
from fleetgate.privacy import Privacy
from fleetgate.scope import Priority, Scope, current_scope, scope

__all__ = [
    "PartialResponseError",
    "StructuredOutputError",
    "Breaker",
    "Breakers",
    "Budget",
    "BudgetExceeded",
    "BudgetReservation",
    "BudgetStatus",
    "BypassWarning",
    "CircuitOpen",
    "ConfigError",
    "ConfigProblem",
    "DeadlineExpired",
    "Decision",
    "FleetgateError",
    "Flight",
    "Flights",
    "Gateway",
    "GatewayConfig",
    "GatewayStats",
    "InputTruncated",
    "Lanes",
    "Ledger",
    "Limiter",
    "ModeState",
    "Modes",
    "Priority",
    "Privacy",
    "QueueFull",
    "Quota",
    "QuotaLimits",
    "RateLimited",
    "Reservation",
    "Scope",
    "ServiceDegraded",
    "Slot",
    "StoreUnavailable",
    "__version__",
    "chat_prompt_tokens",
    "count_tokens",
    "current_scope",
    "encoding_for_model",
    "health",
    "parse_duration",
    "scope",
    "truncate_tokens",
]
