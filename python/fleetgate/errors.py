"""The exceptions fleetgate raises.

Every one derives from :class:`FleetgateError`; where a standard exception means the
same thing, it is a base too, so existing ``except`` clauses keep working::

    FleetgateError
    ├── ConfigError (ValueError)        bad input: a config key, a quota, a cost, a URL
    ├── RateLimited                     no room on a quota before the deadline
    ├── CircuitOpen                     a circuit breaker refused: upstream is failing
    ├── QueueFull                       a priority lane is full: shed load
    ├── BudgetExceeded                  a dollar budget has no room for the call's worst case
    ├── DeadlineExpired (TimeoutError)  the deadline passed before a slot came: not sent
    ├── ServiceDegraded                 the fleet's degradation mode does not serve this call
    ├── StoreUnavailable (ConnectionError)
    │                                   Redis unreachable and the policy is fail-closed
    ├── StructuredOutputError (ValueError)
    │                                   no answer validated into the requested model
    └── PartialResponseError            a stream stopped before its end

Each one's ``str()`` says what went wrong and what to do. A config that does not load is
one ConfigError listing every problem (:class:`ConfigProblem`; see
:mod:`fleetgate.config.loader`). The Rust core raises these through one mapping
(``rust/python/src/error.rs``); the gateway's SDK clients raise a refusal's exception
again, with the message the request path raised (:mod:`fleetgate.sdk`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, NamedTuple

__all__ = ["REFUSAL_CODES", "REFUSAL_PREFIX", "BudgetExceeded", "BypassWarning", "CircuitOpen", "InputTruncated", "ConfigError", "ConfigProblem", "DeadlineExpired", "QueueFull", "FleetgateError", "RateLimited", "ServiceDegraded", "StoreUnavailable", "StructuredOutputError", "PartialResponseError"]


class FleetgateError(Exception):
    """Base class of every fleetgate error. Its ``str()`` is never empty: an error raised
    without a message says what its class means."""

    def __str__(self) -> str:
        said = super().__str__()
        if said:
            return said
        doc = " ".join((type(self).__doc__ or "").split("\n\n")[0].split())
        return f"{type(self).__name__}: {doc or 'no message'}"


class ConfigProblem(NamedTuple):
    """One thing wrong with a config: where the value came from (the file's path, the
    ``FLEETGATE_*`` variable, ``"argument"`` for a keyword argument), the key in TOML terms
    (``[cache.semantic] threshold``, ``budgets.limits[0].dollars``; ``""`` for the whole
    file) and what was expected. It never holds the value itself."""

    where: str
    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.key}: {self.message}" if self.key else f"{self.where}: {self.message}"


class ConfigError(FleetgateError, ValueError):
    """An argument or setting can never be valid; the message names it and says why.

    Attributes:
        problems: for a config that does not load, each problem
            (:class:`ConfigProblem`: ``where``, ``key``, ``message``), one per line of the
            message; empty for an error about a single argument.
    """

    problems: tuple[ConfigProblem, ...] = ()

    def __init__(self, message: str = "", problems: Sequence[ConfigProblem] = ()) -> None:
        self.problems = tuple(problems)
        if not message and self.problems:
            if len(self.problems) == 1:
                message = f"fleetgate config: {self.problems[0]}"
            else:
                message = "\n".join([f"fleetgate config: {len(self.problems)} problems",
                                     *(f"  {p}" for p in self.problems)])
        super().__init__(message)

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.args[0] if self.args else "", self.problems)


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


class BudgetExceeded(FleetgateError):
    """A dollar budget cannot hold the call's worst-case cost until its period ends.

    Attributes:
        budget: the budget's name (``"feature:support-chat"``, ``"global"``, ...).
        resets_at: when its period ends (Unix seconds); ``retry_after`` is the same, from now.
        limit: the budget's limit in dollars.
        spent: dollars spent and reserved in this period when it refused.
    """

    def __init__(self, message: str, budget: str = "", resets_at: float = 0.0, limit: float = 0.0,
                 spent: float = 0.0) -> None:
        super().__init__(message)
        self.budget = budget
        self.resets_at = resets_at
        self.limit = limit
        self.spent = spent

    @property
    def retry_after(self) -> float:
        """Seconds until the budget's period ends."""
        return max(0.0, self.resets_at - time.time())


class DeadlineExpired(FleetgateError, TimeoutError):
    """The request's deadline passed while it waited for a slot; it was never sent.

    Attributes:
        lane: the lane it waited in.
    """

    def __init__(self, message: str, lane: str = "") -> None:
        super().__init__(message)
        self.lane = lane


class ServiceDegraded(FleetgateError):
    """The fleet is in a degradation mode that does not serve this call: no cached answer
    in cached-only mode, no static answer configured, an optional feature in reduced
    mode, or the deadline passed while maintenance held it.

    Attributes:
        mode: the mode (``"reduced"``, ``"cached-only"``, ``"static"``, ``"maintenance"``).
        retry_after: seconds until the mode is expected to end (an operator's ``--for``),
            or None when it ends with its cause.
    """

    def __init__(self, message: str, mode: str = "", retry_after: float | None = None) -> None:
        super().__init__(message)
        self.mode = mode
        self.retry_after = retry_after


class StructuredOutputError(FleetgateError, ValueError):
    """No answer validated into the requested model (``gate.complete``).

    Attributes:
        raw: the last answer's text.
        attempts: every answer with why it did not validate
            (:class:`fleetgate.validate.Attempt`: ``text``, ``error``, ``finish_reason``).
    """

    def __init__(self, message: str, raw: str = "", attempts: list[Any] | None = None) -> None:
        super().__init__(message)
        self.raw = raw
        self.attempts = list(attempts or [])


class PartialResponseError(FleetgateError):
    """A stream stopped before its end: no chunk for the idle timeout, or the connection
    broke. Nothing is lost: `content` holds what arrived.

    Attributes:
        content: the text received so far.
        finish_reason: the last one seen (None: the stream never said).
    """

    def __init__(self, message: str, content: str = "", finish_reason: str | None = None) -> None:
        super().__init__(message)
        self.content = content
        self.finish_reason = finish_reason


class InputTruncated(UserWarning):
    """A warning: a preset cut the request's input to its token limit before sending it.

    Attributes:
        cut: input tokens removed.
        preset: the preset's name.
    """

    def __init__(self, message: str, cut: int = 0, preset: str = "") -> None:
        super().__init__(message)
        self.cut = cut
        self.preset = preset


class BypassWarning(UserWarning):
    """A warning: an SDK client from ``gate.openai()`` / ``gate.async_openai()`` was given
    an ``http_client`` that does not send through a fleetgate transport, so its calls
    bypass the gateway (no shared quota, budget, breaker, cache or stats). Give that client
    fleetgate's transport around your own instead: ``httpx2.Client(transport=gate.transport(inner))``
    (``httpx2.AsyncClient(transport=gate.async_transport(inner))`` for asyncio).
    ``warnings.simplefilter("error", fleetgate.BypassWarning)`` makes it an error."""


#: What the message of a gateway refusal's body starts with, before the error's own message
#: (which the gateway's SDK clients raise again, word for word).
REFUSAL_PREFIX = "fleetgate: "

#: The ``code`` of the error a gateway refusal answers with, per exception, and the
#: attributes that ride along with it (the gateway's SDK clients raise the exception again
#: from them).
REFUSAL_CODES: dict[type[FleetgateError], tuple[str, tuple[str, ...]]] = {
    BudgetExceeded: ("fleetgate_budget_exceeded", ("budget", "resets_at", "limit", "spent")),
    RateLimited: ("fleetgate_rate_limited", ("retry_after", "quota")),
    CircuitOpen: ("fleetgate_circuit_open", ("breaker", "reason", "retry_after")),
    QueueFull: ("fleetgate_queue_full", ("lane", "limit")),
    DeadlineExpired: ("fleetgate_deadline_expired", ("lane",)),
    StoreUnavailable: ("fleetgate_store_unavailable", ()),
    ConfigError: ("fleetgate_config", ()),
    ServiceDegraded: ("fleetgate_degraded", ("mode", "retry_after")),
}
