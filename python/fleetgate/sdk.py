"""The openai SDK clients a gateway hands out: the SDK's own, except that a refusal by
the gateway raises the fleetgate exception behind it (``fleetgate.BudgetExceeded``,
``fleetgate.CircuitOpen``, ...), which is also the SDK's error for that status
(``openai.RateLimitError`` for a 429), so ``except`` clauses for either keep working."""

from __future__ import annotations

from typing import Any

import httpx2
import openai

from fleetgate.errors import REFUSAL_CODES, REFUSAL_PREFIX, BudgetExceeded, FleetgateError

__all__ = ["GatedAsyncOpenAI", "GatedOpenAI", "refusal_error"]

_BY_CODE = {code: (cls, names) for cls, (code, names) in REFUSAL_CODES.items()}


class GatedOpenAI(openai.OpenAI):
    """``openai.OpenAI`` whose errors for the gateway's refusals are fleetgate exceptions."""

    def _make_status_error(self, err_msg: str, *, body: object, response: httpx2.Response) -> openai.APIStatusError:
        return refusal_error(super()._make_status_error(err_msg, body=body, response=response))


class GatedAsyncOpenAI(openai.AsyncOpenAI):
    """``openai.AsyncOpenAI`` whose errors for the gateway's refusals are fleetgate exceptions."""

    def _make_status_error(self, err_msg: str, *, body: object, response: httpx2.Response) -> openai.APIStatusError:
        return refusal_error(super()._make_status_error(err_msg, body=body, response=response))


def refusal_error(error: openai.APIStatusError) -> openai.APIStatusError:
    """`error` as the fleetgate exception of the refusal it reports (both classes at once),
    or `error` itself when it is upstream's."""
    data: Any = error.body
    if not isinstance(data, dict) or data.get("type") != "fleetgate":
        return error
    found = _BY_CODE.get(str(data.get("code")))
    if found is None:
        return error
    cls, names = found
    both = _joined(cls, type(error))
    said = data.get("message")
    message = said.removeprefix(REFUSAL_PREFIX) if isinstance(said, str) and said else f"{cls.__name__}: {error}"
    raised = both.__new__(both, message)
    raised.__dict__.update(error.__dict__)
    # What the gateway raised, word for word (``__new__`` alone leaves an OSError's args
    # empty: DeadlineExpired and StoreUnavailable are ones).
    raised.args = (message,)
    raised.message = message
    carried = data.get("fleetgate")
    fields: dict[str, Any] = carried if isinstance(carried, dict) else {}
    for name in names:
        if name == "retry_after":
            if cls is not BudgetExceeded:  # a property there, from resets_at
                raised.__dict__[name] = _retry_after(error.response)
        elif name in fields:
            raised.__dict__[name] = fields[name]
    return raised


_JOINED: dict[tuple[type[FleetgateError], type[openai.APIStatusError]], type[openai.APIStatusError]] = {}


def _joined(cls: type[FleetgateError], sdk: type[openai.APIStatusError]) -> type[openai.APIStatusError]:
    """One class per pair, made once: the fleetgate exception and the SDK's error."""
    found = _JOINED.get((cls, sdk))
    if found is None:
        found = _JOINED[(cls, sdk)] = type(cls.__name__, (cls, sdk), {"__module__": cls.__module__,
                                                                      "__doc__": cls.__doc__})
    return found


def _retry_after(response: httpx2.Response) -> float | None:
    value = response.headers.get("retry-after-ms")
    try:
        return None if value is None else float(value) / 1000
    except ValueError:
        return None
