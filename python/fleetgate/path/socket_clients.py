"""The openai SDK's WebSocket connections, gated: ``client.responses.connect()`` and
``client.realtime.connect()`` of the clients ``gate.openai()`` and ``gate.async_openai()``
hand out. The SDK's own classes do the work; an open connection is made a subclass that
asks a :class:`~fleetgate.path.sockets.SocketMeter` before each ``response.create`` frame
leaves (waiting as its caller does: in the thread, or awaited) and shows it every event
that comes back. See :mod:`fleetgate.path.sockets` for what a frame goes through.

Frames queued with the connection manager's ``send`` before the socket opens are gated
when queued; the async manager's ``send`` is not awaited, so it does not wait for quota
(no room: ``RateLimited`` at once). A connection whose client does not send through the
gateway (its own ``http_client``: see :class:`fleetgate.BypassWarning`) is the SDK's,
ungated.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import threading
from collections.abc import Callable
from typing import Any

import openai
from openai.resources.realtime.realtime import (
    AsyncRealtime,
    AsyncRealtimeConnection,
    AsyncRealtimeConnectionManager,
    Realtime,
    RealtimeConnection,
    RealtimeConnectionManager,
)
from openai.resources.responses.responses import (
    AsyncResponses,
    AsyncResponsesConnection,
    AsyncResponsesConnectionManager,
    Responses,
    ResponsesConnection,
    ResponsesConnectionManager,
)

from fleetgate.path._async.transport import AsyncGateTransport
from fleetgate.path._sync.transport import GateTransport
from fleetgate.path.services import Services
from fleetgate.path.sockets import SocketMeter

__all__ = ["AsyncGatedRealtime", "AsyncGatedResponses", "GatedRealtime", "GatedResponses", "gateway_of"]


def gateway_of(client: openai.OpenAI | openai.AsyncOpenAI) -> Services | None:
    """The gateway `client` sends through (None: its own ``http_client`` bypasses it)."""
    transport = getattr(client._client, "_transport", None)
    return transport.gateway if isinstance(transport, (GateTransport, AsyncGateTransport)) else None


def _event_dict(event: Any) -> dict[str, Any]:
    """A client event (a dict or the SDK's model) as the JSON object it is sent as: the
    parameters a resource method left out (the SDK's ``omit`` / ``NOT_GIVEN``) left out."""
    if isinstance(event, openai.BaseModel):
        found = json.loads(event.to_json(use_api_names=True, exclude_unset=True))
        return found if isinstance(found, dict) else {}
    return _given(event) if isinstance(event, dict) else {}


def _given(value: Any) -> Any:
    """`value` without the SDK's markers of parameters not given, at any depth."""
    if isinstance(value, dict):
        return {k: _given(v) for k, v in value.items() if not isinstance(v, (openai.Omit, openai.NotGiven))}
    if isinstance(value, list):
        return [_given(v) for v in value]
    return value


def _raw_dict(data: bytes | str) -> dict[str, Any]:
    try:
        found = json.loads(data)
    except ValueError:
        return {}
    return found if isinstance(found, dict) else {}


# -- the connections: the SDK's own, gated -----------------------------------------------

class _Gated:
    """What a gated sync connection adds to the SDK's (mixed in before its class)."""

    _fleetgate: SocketMeter
    _fleetgate_sending: threading.Lock

    def send(self, event: Any) -> None:
        meter = self._fleetgate
        frame = meter.admit(_event_dict(event))
        if frame is None:
            super().send(event)  # type: ignore[misc]
            return
        with self._fleetgate_sending:  # answers come back in the order frames went out
            meter.sending(frame)
            try:
                super().send(frame.plan.event)  # type: ignore[misc]
            except BaseException:
                meter.unsent(frame)
                raise

    def send_raw(self, data: bytes | str) -> None:
        meter = self._fleetgate
        frame = meter.admit(_raw_dict(data))
        if frame is None:
            super().send_raw(data)  # type: ignore[misc]
            return
        with self._fleetgate_sending:
            meter.sending(frame)
            try:
                super().send_raw(json.dumps(frame.plan.event))  # type: ignore[misc]
            except BaseException:
                meter.unsent(frame)
                raise

    def recv_bytes(self) -> bytes:
        message: bytes = super().recv_bytes()  # type: ignore[misc]
        adopted = self._fleetgate.observe(message)
        if adopted is not None:
            self._fleetgate.count(adopted)
        return message

    def close(self, *, code: int = 1000, reason: str = "") -> None:
        try:
            super().close(code=code, reason=reason)  # type: ignore[misc]
        finally:
            self._fleetgate_lost()

    def _reconnect(self, exc: Exception) -> bool:
        self._fleetgate_lost()  # what was in flight on the old socket is not answered on the new
        found: bool = super()._reconnect(exc)  # type: ignore[misc]
        return found

    def _fleetgate_lost(self) -> None:
        meter = self._fleetgate
        for adopted in meter.lost():
            meter.count(adopted)


class _AsyncGated:
    """What a gated async connection adds to the SDK's (mixed in before its class)."""

    _fleetgate: SocketMeter
    _fleetgate_sending: asyncio.Lock

    async def send(self, event: Any) -> None:
        meter = self._fleetgate
        frame = await meter.admit_async(_event_dict(event))
        if frame is None:
            await super().send(event)  # type: ignore[misc]
            return
        async with self._fleetgate_sending:
            meter.sending(frame)
            try:
                await super().send(frame.plan.event)  # type: ignore[misc]
            except BaseException:
                meter.unsent(frame)
                raise

    async def send_raw(self, data: bytes | str) -> None:
        meter = self._fleetgate
        frame = await meter.admit_async(_raw_dict(data))
        if frame is None:
            await super().send_raw(data)  # type: ignore[misc]
            return
        async with self._fleetgate_sending:
            meter.sending(frame)
            try:
                await super().send_raw(json.dumps(frame.plan.event))  # type: ignore[misc]
            except BaseException:
                meter.unsent(frame)
                raise

    async def recv_bytes(self) -> bytes:
        message: bytes = await super().recv_bytes()  # type: ignore[misc]
        adopted = self._fleetgate.observe(message)
        if adopted is not None:
            await self._fleetgate.count_async(adopted)
        return message

    async def close(self, *, code: int = 1000, reason: str = "") -> None:
        try:
            await super().close(code=code, reason=reason)  # type: ignore[misc]
        finally:
            await self._fleetgate_lost()

    async def _reconnect(self, exc: Exception) -> bool:
        await self._fleetgate_lost()
        found: bool = await super()._reconnect(exc)  # type: ignore[misc]
        return found

    async def _fleetgate_lost(self) -> None:
        """:meth:`SocketMeter.lost`, what the server started counted off the event loop."""
        meter = self._fleetgate
        for adopted in meter.lost():
            await meter.count_async(adopted)


class GatedResponsesConnection(_Gated, ResponsesConnection):
    """``client.responses.connect()``'s connection, its ``response.create`` frames gated."""


class GatedRealtimeConnection(_Gated, RealtimeConnection):
    """``client.realtime.connect()``'s connection, its ``response.create`` frames gated."""


class AsyncGatedResponsesConnection(_AsyncGated, AsyncResponsesConnection):
    """The async ``client.responses.connect()``'s connection, gated."""


class AsyncGatedRealtimeConnection(_AsyncGated, AsyncRealtimeConnection):
    """The async ``client.realtime.connect()``'s connection, gated."""


# -- the managers: the SDK's, gating frames queued before the socket opens -----------------

class _ManagerGate:
    """What a gated manager adds to the SDK's (mixed in before its class): frames sent
    before the socket opens are admitted too, and the connection it opens is gated."""

    _fleetgate: SocketMeter
    #: The gated class of the connection it opens.
    _connection: type
    #: Whether a frame queued before the socket opens may wait for quota (an async
    #: manager's ``send`` is not awaited: it admits at once or refuses).
    _waits = True

    def __init__(self, meter: SocketMeter, **options: Any) -> None:
        super().__init__(**options)
        self._fleetgate = meter

    def send(self, event: Any) -> None:
        frame = self._fleetgate.admit(_event_dict(event), wait=self._waits)
        if frame is None:
            return super().send(event)  # type: ignore[misc, no-any-return]
        self._fleetgate.sending(frame)
        super().send(frame.plan.event)  # type: ignore[misc]

    def _gate(self, opened: Any, lock: threading.Lock | asyncio.Lock) -> Any:
        """The SDK's `opened` connection, made the gated class of the same layout (its
        resources, handlers and send queue stay as they are)."""
        opened.__class__ = self._connection
        opened._fleetgate, opened._fleetgate_sending = self._fleetgate, lock
        return opened


class _SyncManagerGate(_ManagerGate):
    def __enter__(self) -> Any:
        try:
            connection = super().__enter__()  # type: ignore[misc]
        except BaseException:
            self._fleetgate.abandon()
            raise
        return self._gate(connection, threading.Lock())

    enter = __enter__


class _AsyncManagerGate(_ManagerGate):
    _waits = False

    async def __aenter__(self) -> Any:
        try:
            connection = await super().__aenter__()  # type: ignore[misc]
        except BaseException:
            self._fleetgate.abandon()
            raise
        return self._gate(connection, asyncio.Lock())

    enter = __aenter__


class _GatedResponsesManager(_SyncManagerGate, ResponsesConnectionManager):
    _connection = GatedResponsesConnection


class _GatedRealtimeManager(_SyncManagerGate, RealtimeConnectionManager):
    _connection = GatedRealtimeConnection


class _AsyncGatedResponsesManager(_AsyncManagerGate, AsyncResponsesConnectionManager):
    _connection = AsyncGatedResponsesConnection


class _AsyncGatedRealtimeManager(_AsyncManagerGate, AsyncRealtimeConnectionManager):
    _connection = AsyncGatedRealtimeConnection


# -- the resources ``client.responses`` and ``client.realtime`` ----------------------------

def _options(connect: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    """The arguments of an SDK ``connect(*args, **kwargs)`` call by name, as its manager
    takes them (checked as the SDK's own signature checks them)."""
    bound = inspect.signature(connect).bind(None, *args, **kwargs)
    bound.apply_defaults()
    return {name: value for name, value in bound.arguments.items() if name != "self"}


def _session_model(options: dict[str, Any]) -> str | None:
    model = options.get("model")
    return model if isinstance(model, str) and model else None


class GatedResponses(Responses):
    """``client.responses`` of a gated client: ``connect()`` gates its frames."""

    def connect(self, *args: Any, **kwargs: Any) -> ResponsesConnectionManager:
        gate = gateway_of(self._client)
        if gate is None:
            return super().connect(*args, **kwargs)
        return _GatedResponsesManager(SocketMeter(gate, "/responses"), client=self._client,
                                      **_options(Responses.connect, args, kwargs))


class AsyncGatedResponses(AsyncResponses):
    """``client.responses`` of a gated async client: ``connect()`` gates its frames."""

    def connect(self, *args: Any, **kwargs: Any) -> AsyncResponsesConnectionManager:
        gate = gateway_of(self._client)
        if gate is None:
            return super().connect(*args, **kwargs)
        return _AsyncGatedResponsesManager(SocketMeter(gate, "/responses"), client=self._client,
                                           **_options(AsyncResponses.connect, args, kwargs))


class GatedRealtime(Realtime):
    """``client.realtime`` of a gated client: ``connect()`` gates its frames."""

    def connect(self, *args: Any, **kwargs: Any) -> RealtimeConnectionManager:
        gate = gateway_of(self._client)
        if gate is None:
            return super().connect(*args, **kwargs)
        options = _options(Realtime.connect, args, kwargs)
        return _GatedRealtimeManager(SocketMeter(gate, "/realtime", _session_model(options)), client=self._client,
                                     **options)


class AsyncGatedRealtime(AsyncRealtime):
    """``client.realtime`` of a gated async client: ``connect()`` gates its frames."""

    def connect(self, *args: Any, **kwargs: Any) -> AsyncRealtimeConnectionManager:
        gate = gateway_of(self._client)
        if gate is None:
            return super().connect(*args, **kwargs)
        options = _options(AsyncRealtime.connect, args, kwargs)
        return _AsyncGatedRealtimeManager(SocketMeter(gate, "/realtime", _session_model(options)),
                                          client=self._client, **options)
