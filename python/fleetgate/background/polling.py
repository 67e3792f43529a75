"""Polling one background response (``GET /v1/responses/{id}`` through the gateway's
upstream, not gated), and what to do about what it says (:func:`decide`): poll again
later, or settle, and how:

- ``usage``: it ended (``completed``, ``incomplete``, ``failed``, ``cancelled``) and says
  what it used: priced at the service tier it reports;
- ``nothing``: it ended with no usage (cancelled or failed before it ran);
- ``worst``: the API no longer knows it (404: it is kept about 10 minutes after it ends),
  or it was still unsettled ``[background] lease_seconds`` after it was made (it cannot be
  polled, or never ends): its worst case is spent, never released.

A call is polled with the API key of the request that made it, held in its pod's memory
only; a pod that took it over polls with its own ``OPENAI_API_KEY``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Literal

import httpx2

from fleetgate.background.pending import PendingCall
from fleetgate.config.background import BackgroundSettings
from fleetgate.path.running import ACTIVE, ENDED

__all__ = ["SETTLED", "Decision", "How", "Polled", "Poller", "decide"]

#: How a background call was settled.
How = Literal["usage", "nothing", "worst"]
SETTLED: tuple[How, ...] = ("usage", "nothing", "worst")


@dataclass(frozen=True, slots=True)
class Polled:
    """What one poll found: the response's ``status`` (``missing``: the API does not know
    it; ``unreachable``: no answer, or an error that says nothing of the response), its
    usage and service tier once it ended, and a `reason` for an unreachable one."""

    status: str
    usage: dict[str, Any] | None = None
    tier: str | None = None
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Decision:
    """Poll again in `wait` seconds, or settle (`how` is not None)."""

    how: How | None
    wait: float = 0.0


def decide(polled: Polled, interval: float, settings: BackgroundSettings, overdue: bool) -> Decision:
    """What to do after a poll: `interval` is the wait before this poll, `overdue` whether
    the call outlived ``lease_seconds``."""
    if polled.status in ENDED:
        return Decision("usage" if polled.usage else "nothing")
    if polled.status == "missing" or overdue:
        return Decision("worst")
    return Decision(None, min(max(interval * 2, settings.poll_min_seconds), settings.poll_max_seconds))


class Poller:
    """Reads background responses through `transport` (the gateway's)."""

    def __init__(self, transport: httpx2.BaseTransport) -> None:
        self._http = httpx2.Client(transport=transport, timeout=httpx2.Timeout(30.0, connect=10.0))

    def poll(self, record: PendingCall, auth: dict[str, str]) -> Polled:
        """The response of `record` as the API shows it now; `auth`: the headers of the
        request that made it (its API key), when this pod has them."""
        headers = dict(auth)
        if "authorization" not in headers and "api-key" not in headers:
            key = os.environ.get("OPENAI_API_KEY")
            if not key:
                return Polled("unreachable", reason="no API key to poll it with: set OPENAI_API_KEY")
            headers["authorization"] = f"Bearer {key}"
        if record.project:
            headers["openai-project"] = record.project
        if record.organization:
            headers["openai-organization"] = record.organization
        try:
            answer = self._http.get(f"{record.url}/{record.response_id}", headers=headers)
        except httpx2.TransportError as e:
            return Polled("unreachable", reason=f"no answer: {type(e).__name__}")
        if answer.status_code == 404:
            return Polled("missing")
        if answer.status_code != 200:
            return Polled("unreachable", reason=f"HTTP {answer.status_code}")
        try:
            body = answer.json()
        except ValueError:
            return Polled("unreachable", reason="an answer that is not JSON")
        status = body.get("status") if isinstance(body, dict) else None
        if status in ACTIVE or status in ENDED:
            usage, tier = body.get("usage"), body.get("service_tier")
            return Polled(status, usage if isinstance(usage, dict) else None, tier if isinstance(tier, str) else None)
        return Polled("unreachable", reason=f"an unknown status {status!r}")

    def close(self) -> None:
        self._http.close()
