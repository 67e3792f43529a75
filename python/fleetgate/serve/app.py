"""The ASGI application of ``fleetgate serve``: each ``/v1/…`` request is run through the
gateway's path exactly as a Python caller's is (the same
:class:`~fleetgate.path._async.transport.AsyncGateTransport`), so any language's OpenAI
client gets the same quotas, budgets, cache, breakers and answers, ``x-fleetgate-*``
headers and OpenAI-shaped refusals included.

- A caller presents a key fleetgate issued (:mod:`fleetgate.serve.keys`); the call is
  scoped to its user, team and feature, and refused (403) for a model it may not call (a
  key limited to some models makes no batches: their lines name models unread here);
  upstream is called with the server's key, which no answer carries. With ``[serve] auth
  = "pass_through"`` the caller's own key goes upstream and its ``x-fleetgate-user``,
  ``-team`` and ``-feature`` headers scope the call.
- A body larger than ``[serve] max_request_bytes`` is refused (413) as it arrives.
- Streams are passed on as they come, chunk by chunk; a client that leaves mid-stream
  closes the upstream stream, and the call is settled for what it used.
- ``/healthz``: the process answers. ``/readyz``: the gateway has warmed and its Redis
  answers (503 otherwise, saying why). ``/metrics``: the gateway's Prometheus metrics.

Errors of the server itself (a bad key, no upstream) are answered in OpenAI's error shape,
so every client raises what it would for OpenAI's own.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import httpx2

from fleetgate.deployments import CREDENTIALS
from fleetgate.errors import FleetgateError, StoreUnavailable
from fleetgate.path._async.transport import AsyncGateTransport
from fleetgate.scope import scope
from fleetgate.serve.keys import Caller, Keys

__all__ = ["ServeApp"]

log = logging.getLogger("fleetgate")

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

#: Headers of a caller's request not sent on: hop-by-hop, recomputed, or credentials (the
#: server's own key is sent; pass-through keeps the caller's authorization).
_NOT_FORWARDED = frozenset({b"host", b"content-length", b"connection", b"keep-alive", b"transfer-encoding",
                            b"upgrade", b"te", b"trailer", b"proxy-authorization"})
#: Headers of an answer not passed on (the server frames the body itself).
_NOT_RETURNED = frozenset({b"content-length", b"connection", b"keep-alive", b"transfer-encoding"})
_SCOPE_HEADERS = {b"x-fleetgate-user": "user", b"x-fleetgate-team": "team", b"x-fleetgate-feature": "feature"}
_UPSTREAM_FAILED = 502


class ServeApp:
    """``fleetgate serve``'s ASGI application, around `gateway` (a :class:`fleetgate.Gateway`)."""

    def __init__(self, gateway: Any) -> None:
        self.gateway = gateway
        self.settings = gateway.config.serve
        self.keys = Keys(self.settings, gateway.config.redis_url)
        self.transport = AsyncGateTransport(gateway)
        self.base = httpx2.URL((gateway.config.base_url or "https://api.openai.com/v1").rstrip("/"))
        key = os.environ.get(self.settings.api_key_env, "").strip()
        self._upstream_auth = [(b"authorization", f"Bearer {key}".encode())] if key else []
        self._metrics: Callable[[Scope, Receive, Send], Awaitable[None]] | None = (
            gateway.metrics_app("asgi") if gateway.metrics is not None else None)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await self._lifespan(receive, send)
            return
        if kind != "http":
            return
        path: str = scope["path"]
        if path.startswith("/v1/"):
            await self._proxied(scope, receive, send)
        elif path == "/healthz":
            await _answer(send, 200, b"ok\n", b"text/plain")
        elif path == "/readyz":
            await self._ready(send)
        elif path == "/metrics" and self._metrics is not None:
            await self._metrics(scope, receive, send)
        else:
            await _error(send, 404, "not_found", f"fleetgate serve has no {path}: OpenAI's API is under /v1/")

    # -- operations ------------------------------------------------------------------------

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await self.gateway.warmed_async()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.transport.aclose()
                self.keys.close()
                self.gateway.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _ready(self, send: Send) -> None:
        """Ready: warmed (the warm-up over), and Redis answering when there is one."""
        try:
            warm = await self.gateway.ready_async(timeout=0)
        except Exception as e:  # noqa: BLE001 - what failed to load is the answer
            await _answer(send, 503, f"its warm-up failed: {type(e).__name__}: {e}\n".encode(), b"text/plain")
            return
        if not warm:
            await _answer(send, 503, b"warming up\n", b"text/plain")
            return
        if self.gateway.config.redis_url is not None:
            try:
                await self.gateway.limiter.ping_async()
            except FleetgateError as e:
                await _answer(send, 503, f"Redis does not answer: {e}\n".encode(), b"text/plain")
                return
        await _answer(send, 200, b"ready\n", b"text/plain")

    # -- the API ---------------------------------------------------------------------------

    async def _proxied(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        caller, refused = await self._caller(headers)
        if refused is not None:
            await _error(send, *refused)
            return
        try:
            body = await _body(receive, self.settings.max_request_bytes)
        except _Disconnected:
            return  # the caller left before its request was whole: nothing is sent upstream
        if body is None:
            await _error(send, 413, "request_too_large", f"the request body is over [serve] max_request_bytes "
                                                         f"({self.settings.max_request_bytes:,} bytes)")
            return
        if caller is not None and caller.models:
            if scope["method"] == "POST" and scope["path"] == "/v1/batches":
                await _error(send, 403, "model_not_allowed", f"key {caller.name!r} may call only some models, and a "
                             "batch's lines name theirs where this server does not read them: make batches with a "
                             "key that may call any model")
                return
            model = _model_of(body)
            if model is not None and not caller.may_call(model):
                await _error(send, 403, "model_not_allowed", f"key {caller.name!r} may not call {model!r} (it may "
                                                             f"call {', '.join(caller.models)})")
                return
        request = self._request(scope, headers, body)
        who = caller or _declared(headers)
        try:
            with _scope_of(who):
                response = await self.transport.handle_async_request(request)
        except httpx2.TransportError as e:
            await _error(send, _UPSTREAM_FAILED, "upstream_unreachable",
                         f"fleetgate could not reach upstream ({type(e).__name__}: {e})")
            return
        try:
            await self._returned(response, send)
        finally:
            await response.aclose()

    async def _caller(self, headers: list[tuple[bytes, bytes]]) -> tuple[Caller | None, tuple[int, str, str] | None]:
        """Who is calling (None: pass-through), or why the call is refused (status, code, message)."""
        if self.settings.auth == "pass_through":
            return None, None
        auth = next((v for k, v in headers if k == b"authorization"), b"").decode("latin-1")
        key = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
        if not key:
            return None, (401, "missing_api_key", "present a key fleetgate issued: Authorization: Bearer fgk-…")
        try:
            caller = await self.keys.caller_async(key)
        except StoreUnavailable as e:
            return None, (503, "store_unavailable", str(e))
        if caller is None:
            return None, (401, "invalid_api_key", "the key presented is not one this fleet issued (or it was "
                                                  "revoked): ask for one made with `fleetgate keys create`")
        return caller, None

    def _request(self, scope: Scope, headers: list[tuple[bytes, bytes]], body: bytes) -> httpx2.Request:
        """The caller's request as sent upstream: the gateway's base URL, the server's key."""
        pass_through = self.settings.auth == "pass_through"
        sent = [(k, v) for k, v in headers if k not in _NOT_FORWARDED and (pass_through or k not in CREDENTIALS)]
        if not pass_through:
            sent += self._upstream_auth
        url = self.base.copy_with(path=self.base.path + scope["path"][3:],
                                  query=scope.get("query_string") or None)
        return httpx2.Request(scope["method"], url, headers=sent, content=body)

    async def _returned(self, response: httpx2.Response, send: Send) -> None:
        """`response` passed on: its status and headers, then its body: whole when the
        gateway read it (decoded), else as it comes (a stream, a file's content)."""
        headers = [(k, v) for k, v in response.headers.raw if k.lower() not in _NOT_RETURNED]
        try:
            body = response.content
        except httpx2.ResponseNotRead:
            await send({"type": "http.response.start", "status": response.status_code, "headers": headers})
            async for chunk in response.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
            return
        headers = [(k, v) for k, v in headers if k.lower() != b"content-encoding"]  # decoded when read
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": response.status_code, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def _scope_of(caller: Caller) -> scope:
    """The scope a caller's calls run in."""
    return scope(user=caller.user, team=caller.team, feature=caller.feature)


def _declared(headers: list[tuple[bytes, bytes]]) -> Caller:
    """Pass-through: the caller its ``x-fleetgate-user``, ``-team`` and ``-feature`` headers declare."""
    declared = {_SCOPE_HEADERS[k]: v.decode("latin-1") for k, v in headers if k in _SCOPE_HEADERS and v}
    return Caller("pass_through", declared.get("user"), declared.get("team"), declared.get("feature"))


def _model_of(body: bytes) -> str | None:
    """The ``model`` of a JSON body (None: none, or not JSON)."""
    try:
        model = json.loads(body).get("model")
    except (ValueError, AttributeError):
        return None
    return model if isinstance(model, str) else None


class _Disconnected(Exception):
    """The caller left before its request's body was whole."""


async def _body(receive: Receive, limit: int) -> bytes | None:
    """The request's body, or None once it is over `limit` bytes; _Disconnected when the
    caller leaves before it is whole."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Disconnected
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _answer(send: Send, status: int, body: bytes, content_type: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def _error(send: Send, status: int, code: str, message: str) -> None:
    """An error of the server itself, in OpenAI's shape."""
    body = json.dumps({"error": {"message": f"fleetgate serve: {message}", "type": "fleetgate", "param": None,
                                 "code": code}}).encode()
    await _answer(send, status, body, b"application/json")
