"""The fake's API key: one server stands for one deployment, which accepts one key
(``FakeConfig.api_key``). Every request is checked before it is routed to a handler:

1. Open routes pass unchecked: ``/fleetgate/…`` (the test's introspection) and the
   organization's Usage and Costs APIs (``/v1/organization/…``, read with an admin key,
   which :mod:`~fleetgate.testing.fake_openai.usage_api` checks itself).
2. The key a request carries is its ``Authorization: Bearer <key>`` (OpenAI's shape) or
   its ``api-key: <key>`` (Azure's). With no ``api_key`` configured any key, or none, is
   accepted, until the key is revoked.
3. A request without the key, with another one, or with any key once it was revoked
   (:meth:`KeyCheck.revoke`) is answered 401 as OpenAI answers it: ``invalid_api_key``
   and the key shown masked (a few characters at each end), or "You didn't provide an
   API key" when it carries none. On Azure's URL shape (``/openai/…``) the 401 is
   Azure's (``{"error": {"code": "401", "message": …}}``), which shows no key at all.

WebSocket routes are checked alike, at the handshake (before the socket is upgraded).
"""

from __future__ import annotations

import threading

from aiohttp import web

from fleetgate.testing.fake_openai.api import ApiError
from fleetgate.testing.fake_openai.azure import AZURE_PREFIX, AzureError

__all__ = ["KeyCheck", "mask", "presented_key"]

#: Routes no key is asked for.
_OPEN_PREFIXES = ("/fleetgate/", "/v1/organization/")
#: Characters of a key shown at each end when it is refused, at most.
_SHOWN_HEAD, _SHOWN_TAIL = 5, 3


def presented_key(request: web.Request) -> str | None:
    """The key `request` carries (``Authorization: Bearer`` first, then ``api-key``), or None."""
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer ") and auth[7:].strip():
        return auth[7:].strip()
    return request.headers.get("api-key", "").strip() or None


def mask(key: str) -> str:
    """`key` as OpenAI shows a refused key: its first and last few characters only (fewer
    for a short key, so that most of it is always hidden)."""
    head, tail = min(_SHOWN_HEAD, len(key) // 4), min(_SHOWN_TAIL, len(key) // 4)
    return f"{key[:head]}***{key[len(key) - tail:] if tail else ''}"


def _refusal(request: web.Request, key: str | None) -> ApiError:
    if request.path.startswith(AZURE_PREFIX):
        if key is None:
            return AzureError(401, "401", "Access denied due to missing subscription key. Make sure to include "
                                          "subscription key when making requests to an API.")
        return AzureError(401, "401", "Access denied due to invalid subscription key or wrong API endpoint. Make sure "
                                      "to provide a valid key for an active subscription and use a correct regional "
                                      "API endpoint for your resource.")
    if key is None:
        return ApiError(401, "You didn't provide an API key. You need to provide your API key in an Authorization "
                             "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY), or as the password "
                             "field (with blank username) if you're accessing the API from your browser and are "
                             "prompted for a username and password. You can obtain an API key from "
                             "https://platform.openai.com/account/api-keys.")
    return ApiError(401, f"Incorrect API key provided: {mask(key)}. You can find your API key at "
                         "https://platform.openai.com/account/api-keys.", code="invalid_api_key")


class KeyCheck:
    """The key one server accepts, and whether it was revoked. Revoking and restoring are
    safe from any thread (the test's), while the server's loop checks requests."""

    def __init__(self, key: str | None) -> None:
        self.key = key
        self._revoked = threading.Event()

    def revoke(self) -> None:
        self._revoked.set()

    def restore(self) -> None:
        self._revoked.clear()

    def refusal(self, request: web.Request) -> ApiError | None:
        """The 401 that refuses `request` (None: it may pass)."""
        if request.path.startswith(_OPEN_PREFIXES):
            return None
        key = presented_key(request)
        if self._revoked.is_set() or (self.key is not None and key != self.key):
            return _refusal(request, key)
        return None
