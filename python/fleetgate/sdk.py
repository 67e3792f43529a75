"""The openai SDK clients a gateway hands out: the SDK's own, except that a refusal by
the gateway raises the fleetgate exception behind it (``fleetgate.BudgetExceeded``,
``fleetgate.CircuitOpen``, ...), which is also the SDK's error for that status
(``openai.RateLimitError`` for a 429), so ``except`` clauses for either keep working.

Given an ``http_client`` that does not send through a fleetgate transport (by
``gate.openai(http_client=...)``, ``.with_options(http_client=...)`` or
``.copy(http_client=...)``), they warn with :class:`fleetgate.BypassWarning`: that
client's calls would bypass the gateway."""

from __future__ import annotations

import os
import sys
import warnings
from functools import cached_property
from typing import Any

import httpx2
import openai

from fleetgate.errors import REFUSAL_CODES, REFUSAL_PREFIX, BudgetExceeded, BypassWarning, FleetgateError
from fleetgate.path import AsyncGateTransport, GateTransport
from fleetgate.path.socket_clients import AsyncGatedRealtime, AsyncGatedResponses, GatedRealtime, GatedResponses

__all__ = ["GatedAsyncOpenAI", "GatedOpenAI", "refusal_error", "sends_through_gateway"]

_BY_CODE = {code: (cls, names) for cls, (code, names) in REFUSAL_CODES.items()}


class GatedOpenAI(openai.OpenAI):
    """``openai.OpenAI`` whose errors for the gateway's refusals are fleetgate exceptions."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        _warn_if_bypassing(kwargs.get("http_client"), asynchronous=False)
        super().__init__(*args, **kwargs)

    def _make_status_error(self, err_msg: str, *, body: object, response: httpx2.Response) -> openai.APIStatusError:
        return refusal_error(super()._make_status_error(err_msg, body=body, response=response))

    @cached_property
    def responses(self) -> GatedResponses:  # connect(): WebSocket frames gated (fleetgate.path.socket_clients)
        return GatedResponses(self)

    @cached_property
    def realtime(self) -> GatedRealtime:
        return GatedRealtime(self)


class GatedAsyncOpenAI(openai.AsyncOpenAI):
    """``openai.AsyncOpenAI`` whose errors for the gateway's refusals are fleetgate exceptions."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        _warn_if_bypassing(kwargs.get("http_client"), asynchronous=True)
        super().__init__(*args, **kwargs)

    def _make_status_error(self, err_msg: str, *, body: object, response: httpx2.Response) -> openai.APIStatusError:
        return refusal_error(super()._make_status_error(err_msg, body=body, response=response))

    @cached_property
    def responses(self) -> AsyncGatedResponses:  # connect(): WebSocket frames gated (fleetgate.path.socket_clients)
        return AsyncGatedResponses(self)

    @cached_property
    def realtime(self) -> AsyncGatedRealtime:
        return AsyncGatedRealtime(self)


def sends_through_gateway(http_client: object) -> bool:
    """Whether every request `http_client` sends goes through a fleetgate transport: an
    ``httpx2.Client`` / ``httpx2.AsyncClient`` whose transport, and each mounted one, is
    ``gate.transport()`` / ``gate.async_transport()``. Any other client (a legacy ``httpx``
    one included) bypasses the gateway."""
    if not isinstance(http_client, (httpx2.Client, httpx2.AsyncClient)):
        return False
    gated = (GateTransport, AsyncGateTransport)
    mounted = getattr(http_client, "_mounts", {}).values()
    return isinstance(getattr(http_client, "_transport", None), gated) and all(
        transport is None or isinstance(transport, gated) for transport in mounted)


def _warn_if_bypassing(http_client: object, *, asynchronous: bool) -> None:
    if http_client is None or sends_through_gateway(http_client):
        return
    own = "httpx2.AsyncClient(transport=gate.async_transport(inner))" if asynchronous else \
        "httpx2.Client(transport=gate.transport(inner))"
    warnings.warn(
        f"this openai client was given an http_client ({type(http_client).__module__}.{type(http_client).__name__}) "
        "that does not send through a fleetgate transport: its calls bypass the gateway (no shared quota, "
        f"budget, breaker, cache or stats). Pass http_client={own} instead, with inner the httpx2 transport "
        "you need (proxy, TLS, pool), or leave http_client out to get the gateway's own.",
        BypassWarning, stacklevel=_caller_level())


_OURS = tuple(os.path.dirname(path) + os.sep for path in (__file__, openai.__file__ or ""))


def _caller_level() -> int:
    """The stacklevel of the first frame outside fleetgate and the openai SDK, so that a
    warning names the caller's line whichever way (constructor, copy, with_options) it came."""
    level, frame = 2, sys._getframe(2)
    while frame.f_back is not None and frame.f_code.co_filename.startswith(_OURS):
        level, frame = level + 1, frame.f_back
    return level


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
