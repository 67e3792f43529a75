"""OpenAI's webhooks, received by the gateway: a background response that ended
(``response.completed``, ``response.failed``, ``response.cancelled``,
``response.incomplete``) is settled at once instead of at its next poll.

    receiver = gate.webhooks(secret="whsec_…")     # or OPENAI_WEBHOOK_SECRET
    event = receiver.handle(body, headers)          # in any web framework's handler

:meth:`Receiver.handle` checks the signature (Standard Webhooks: the ``webhook-id``,
``webhook-timestamp`` and ``webhook-signature`` headers, with the openai SDK's
``client.webhooks.unwrap``) and refuses a bad or stale one (older than five minutes)
with :class:`WebhookRejected`: answer it with 400. Other events are returned untouched,
for the application to act on.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

import openai
from openai.types.webhooks import (
    ResponseCancelledWebhookEvent,
    ResponseCompletedWebhookEvent,
    ResponseFailedWebhookEvent,
    ResponseIncompleteWebhookEvent,
)

from fleetgate.errors import ConfigError, FleetgateError

if TYPE_CHECKING:
    from openai.types.webhooks import UnwrapWebhookEvent

    from fleetgate.background import BackgroundCalls

__all__ = ["Receiver", "WebhookRejected"]

#: The events that say a background response ended.
_RESPONSE_EVENTS = (ResponseCompletedWebhookEvent, ResponseFailedWebhookEvent, ResponseCancelledWebhookEvent,
                    ResponseIncompleteWebhookEvent)

Headers = Mapping[str, str] | Iterable[tuple[bytes | str, bytes | str]]


class WebhookRejected(FleetgateError, ValueError):
    """A webhook that does not prove it comes from OpenAI (a signature that does not match,
    a timestamp older or newer than five minutes, a missing header): answer it with 400."""


class Receiver:
    """Receives OpenAI's webhooks for a gateway (``gate.webhooks(secret=…)``)."""

    def __init__(self, calls: BackgroundCalls, secret: str | None = None) -> None:
        """`secret`: the webhook endpoint's signing secret (``whsec_…``; default:
        ``OPENAI_WEBHOOK_SECRET``)."""
        found = secret or os.environ.get("OPENAI_WEBHOOK_SECRET")
        if not found:
            raise ConfigError("a webhook receiver needs the endpoint's signing secret (whsec_…): pass "
                              "gate.webhooks(secret=…) or set OPENAI_WEBHOOK_SECRET")
        self._secret = found
        self._calls = calls
        # Only its webhooks resource is used: it checks signatures and never sends anything.
        self._webhooks = openai.OpenAI(api_key="unused-webhooks-only", base_url="http://127.0.0.1:9/v1").webhooks

    def handle(self, body: bytes, headers: Headers) -> UnwrapWebhookEvent:
        """Check one webhook delivery (its raw `body` and its `headers`: a mapping, or
        ASGI's ``(name, value)`` byte pairs) and return its event; a response that ended is
        settled before this returns (its usage fetched) when this pod watches it, else its
        pod is told. Raises :class:`WebhookRejected` for a delivery that is not OpenAI's."""
        plain = _headers(headers)
        try:
            event = self._webhooks.unwrap(body, plain, secret=self._secret)
        except (openai.InvalidWebhookSignatureError, ValueError) as e:
            self._calls.stats.count("background_webhooks_rejected")
            raise WebhookRejected(
                f"webhook refused: {e}; answer it with 400. Check that the receiver has this endpoint's signing "
                "secret (whsec_…, shown once when the endpoint was made) and that the server's clock is right "
                "(a delivery more than five minutes old or early is refused as a replay)") from e
        self._calls.stats.count("background_webhooks")
        if isinstance(event, _RESPONSE_EVENTS):
            self._calls.ended(event.data.id)
        return event

    async def handle_async(self, body: bytes, headers: Headers) -> UnwrapWebhookEvent:
        """:meth:`handle` off the event loop (it may fetch the response's usage)."""
        return await asyncio.to_thread(self.handle, body, headers)


def _headers(headers: Headers) -> dict[str, str]:
    """`headers` as a plain mapping with lower-case names."""
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    found: dict[str, str] = {}
    for name, value in pairs:
        key = name.decode("latin-1") if isinstance(name, bytes) else name
        found[key.lower()] = value.decode("latin-1") if isinstance(value, bytes) else value
    return found
