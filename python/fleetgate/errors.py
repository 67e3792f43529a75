"""The exceptions fleetgate raises.

Every one derives from :class:`FleetgateError`; where a standard exception means the
same thing, it is a base too, so existing ``except`` clauses keep working::

    FleetgateError
    ├── ConfigError (ValueError)        bad input: a quota, a cost, a URL, an option
    ├── RateLimited                     acquire() found no room before its timeout
    ├── CircuitOpen                     a circuit breaker refused: upstream is failing
    └── StoreUnavailable (ConnectionError)
                                        Redis unreachable and the policy is fail-closed

The Rust core raises these through one mapping (``rust/python/src/error.rs``).
"""

from __future__ import annotations

__all__ = ["CircuitOpen", "ConfigError", "FleetgateError", "RateLimited", "StoreUnavailable"]


class FleetgateError(Exception):
    """Base class of every fleetgate error."""


class ConfigError(FleetgateError, ValueError):
    """An argument or setting can never be valid; the message names it and says why."""


class RateLimited(FleetgateError):
    """No room on a quota within the time allowed.

    Attributes:
        retry_after: seconds until the quota is expected to have room.
        quota: the name of the quota that refused.
    """

    def __init__(self, message: str, retry_after: float = 0.0, quota: str = "") -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.quota = quota


class StoreUnavailable(FleetgateError, ConnectionError):
    """The shared Redis store cannot be reached and the failure policy is fail-closed."""


class CircuitOpen(FleetgateError):
    """A circuit breaker refused the call.

    Attributes:
        breaker: the breaker's name (``"<endpoint>:<model>"`` in the gateway).
        reason: ``"open"`` (failing), ``"probes_out"`` (half-open, its probes are out),
            ``"isolated"`` (until reset: ``insufficient_quota`` or by hand) or ``"paused"``
            (upstream's ``rate_limit_exceeded``, until its reset).
        retry_after: seconds until it may admit again, or None when only a reset will.
    """

    def __init__(self, message: str, breaker: str = "", reason: str = "open", retry_after: float | None = None) -> None:
        super().__init__(message)
        self.breaker = breaker
        self.reason = reason
        self.retry_after = retry_after
