"""The exceptions fleetgate raises.

Every one derives from :class:`FleetgateError`; where a standard exception means the
same thing, it is a base too, so existing ``except`` clauses keep working::

    FleetgateError
    ├── ConfigError (ValueError)        bad input: a quota, a cost, a URL, an option
    ├── RateLimited                     acquire() found no room before its timeout
    ├── CircuitOpen                     a circuit breaker refused: upstream is failing
    ├── QueueFull                       a priority lane is full: shed load
    ├── DeadlineExpired (TimeoutError)  the deadline passed before a slot came: not sent
    └── StoreUnavailable (ConnectionError)
                                        Redis unreachable and the policy is fail-closed

The Rust core raises these through one mapping (``rust/python/src/error.rs``).
"""

from __future__ import annotations

__all__ = ["CircuitOpen", "ConfigError", "DeadlineExpired", "QueueFull", "FleetgateError", "RateLimited", "StoreUnavailable"]


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


class QueueFull(FleetgateError):
    """Every slot of a model is busy and the request's lane already holds ``limit`` waiting
    requests: shed load, or raise ``queue_limit`` or the concurrency.

    Attributes:
        lane: ``"realtime"``, ``"interactive"`` or ``"batch"``.
        limit: the lane's queue limit.
    """

    def __init__(self, message: str, lane: str = "", limit: int = 0) -> None:
        super().__init__(message)
        self.lane = lane
        self.limit = limit


class DeadlineExpired(FleetgateError, TimeoutError):
    """The request's deadline passed while it waited for a slot; it was never sent.

    Attributes:
        lane: the lane it waited in.
    """

    def __init__(self, message: str, lane: str = "") -> None:
        super().__init__(message)
        self.lane = lane
