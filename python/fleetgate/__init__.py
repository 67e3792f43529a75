"""fleetgate: one OpenAI quota, shared exactly by every pod of a service.

>>> import fleetgate as fg
>>> limiter = fg.Limiter()                      # embedded; or fg.Limiter("redis://…")
>>> gpt = fg.Quota("gpt-4.1-mini", requests_per_minute=600, tokens_per_minute=200_000)
>>> decision = limiter.try_acquire(gpt, tokens=1_200)
>>> decision.allowed
True
>>> limiter.settle(decision.reservation, tokens=900)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fleetgate._lazy import lazy

# The errors and scopes are plain Python, imported now (`fleetgate.scope` is the function, not
# its module). Every other public name is loaded on first use (PEP 562): `import fleetgate`
# stays cheap, and a pytest run that only loads fleetgate's plugin pays for nothing more.
from fleetgate.errors import (
    BudgetExceeded,
    BypassWarning,
    CircuitOpen,
    ConfigError,
    ConfigProblem,
    DeadlineExpired,
    FleetgateError,
    InputTruncated,
    PartialResponseError,
    QueueFull,
    RateLimited,
    ServiceDegraded,
    StoreUnavailable,
    StructuredOutputError,
)
from fleetgate.scope import Priority, Scope, current_scope, scope

if TYPE_CHECKING:
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
    from fleetgate.config import GatewayConfig, ModelDeployment, QuotaLimits
    from fleetgate.gateway import Gateway
    from fleetgate.modes import ModeState, Modes
    from fleetgate.privacy import Privacy
    from fleetgate.stats import GatewayStats

# The module each lazily loaded name comes from.
_LAZY: dict[str, str] = {
    name: home
    for home, names in (
        ("fleetgate._core", ("Breaker", "Breakers", "Budget", "BudgetReservation", "BudgetStatus", "Decision",
                             "Flight", "Flights", "Lanes", "Ledger", "Limiter", "Quota", "Reservation", "Slot",
                             "__version__", "chat_prompt_tokens", "count_tokens", "encoding_for_model", "health",
                             "parse_duration", "truncate_tokens")),
        ("fleetgate.config", ("GatewayConfig", "ModelDeployment", "QuotaLimits")),
        ("fleetgate.gateway", ("Gateway",)),
        ("fleetgate.modes", ("ModeState", "Modes")),
        ("fleetgate.privacy", ("Privacy",)),
        ("fleetgate.stats", ("GatewayStats",)),
    )
    for name in names
}

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
    "ModelDeployment",
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


# Defined for the interpreter only: to a type checker the names above are plain imports, and
# a misspelt `fleetgate.X` stays an error instead of becoming Any.
if not TYPE_CHECKING:

    __getattr__ = lazy(__name__, _LAZY, globals())

    def __dir__() -> list[str]:
        # The public names, the dunders and the submodules loaded so far (not `lazy`).
        here = globals()
        loaded = {n for n, v in here.items() if n.startswith("_") or getattr(v, "__name__", "") == f"{__name__}.{n}"}
        return sorted(loaded | set(__all__))
