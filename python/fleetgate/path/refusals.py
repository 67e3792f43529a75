"""The gateway's refusals as HTTP answers: one table from each fleetgate error to the
status, error ``code`` and attributes the caller's SDK receives.

A refusal is marked ``x-fleetgate: refused`` from the start (so is a follower's copy of a
refused call's answer) and looks like an OpenAI error (``{"error": {"message", "type", "param",
"code"}}``) with ``type = "fleetgate"`` and the error's attributes under
``error.fleetgate``; the gateway's own SDK clients raise the fleetgate exception again from
them (:mod:`fleetgate.sdk`). It carries ``x-should-retry: false`` (the gateway already
waited as long as the deadline allowed: the SDK must not retry on top) and, when the error
knows one, ``retry-after-ms``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import httpx2

from fleetgate.errors import (
    REFUSAL_CODES,
    REFUSAL_PREFIX,
    BudgetExceeded,
    CircuitOpen,
    ConfigError,
    DeadlineExpired,
    FleetgateError,
    QueueFull,
    RateLimited,
    ServiceDegraded,
    StoreUnavailable,
)
from fleetgate.fallback import TIER_HEADER

__all__ = ["REFUSALS", "REFUSED_HEADER", "Refusal", "refuse", "refusal", "refusal_of"]

#: The header that marks the gateway's own refusals.
REFUSED_HEADER = "x-fleetgate"

if TYPE_CHECKING:
    from fleetgate.path.call import Call


class Refusal(NamedTuple):
    status: int
    code: str
    #: The error's attributes that ride along in the body (``retry_after`` rides as a header).
    fields: tuple[str, ...]


def _row(error: type[FleetgateError], status: int) -> Refusal:
    code, fields = REFUSAL_CODES[error]
    return Refusal(status, code, tuple(f for f in fields if f != "retry_after"))


#: Each refusal, by the error behind it. A circuit paused by upstream's own 429 is a rate
#: limit to the caller (see :func:`refusal_of`).
REFUSALS: dict[type[FleetgateError], Refusal] = {
    RateLimited: _row(RateLimited, 429),
    BudgetExceeded: _row(BudgetExceeded, 429),
    CircuitOpen: _row(CircuitOpen, 503),
    QueueFull: _row(QueueFull, 503),
    ServiceDegraded: _row(ServiceDegraded, 503),
    StoreUnavailable: _row(StoreUnavailable, 503),
    DeadlineExpired: _row(DeadlineExpired, 504),
    ConfigError: _row(ConfigError, 400),
}


def refusal_of(error: FleetgateError) -> Refusal:
    """The row of `error` (of its nearest class in the table; a rate limit otherwise)."""
    if isinstance(error, CircuitOpen) and error.reason == "paused":  # upstream's quota
        return REFUSALS[RateLimited]
    for cls in type(error).__mro__:
        found = REFUSALS.get(cls)
        if found is not None:
            return found
    return REFUSALS[RateLimited]


def refusal(request: httpx2.Request, error: FleetgateError) -> httpx2.Response:
    """`error` as the answer the caller's SDK gets."""
    status, code, names = refusal_of(error)
    headers = {"x-should-retry": "false", REFUSED_HEADER: "refused", TIER_HEADER: "refused"}
    retry_after = getattr(error, "retry_after", None)
    if isinstance(retry_after, (int, float)):
        headers["retry-after-ms"] = str(max(1, int(retry_after * 1000)))
    fields = {name: getattr(error, name, None) for name in names}
    body = {"error": {"message": f"{REFUSAL_PREFIX}{error}", "type": "fleetgate", "param": None, "code": code,
                      "fleetgate": fields}}
    return httpx2.Response(status, headers=headers, json=body, request=request)


def refuse(call: Call, error: FleetgateError) -> httpx2.Response:
    """`call` refused with `error`: the answer, and the call marked refused."""
    call.tier = "refused"
    return refusal(call.request, error)
