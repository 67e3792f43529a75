"""One structured log record per gated request, on the ``fleetgate.requests`` logger at
INFO: a JSON object with the request id, a hash of the prompt's template (its system
message or instructions — never the prompt), model, tokens, latency, status, which
cache layer, tier, degradation mode, route and deployment served it, the ``service_tier``
that served it upstream (as the answer reports it: ``default``, ``flex``, ``priority``...;
None when nothing was billed, or for a stream still open), and cost. API keys, prompts and
answers never appear; a user appears only as its pseudonym, a keyed hash (and so do a team
and a feature named sensitive in ``[privacy]``): the same one as in the user's quota and
budget names, on every pod that shares the key (:mod:`fleetgate.privacy`).

    logging.getLogger("fleetgate.requests").setLevel(logging.INFO)

Nothing is computed while the logger is not enabled for INFO.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from typing import Any

import httpx2

from fleetgate.estimate import usage_counts
from fleetgate.privacy import Privacy
from fleetgate.scope import Scope

__all__ = ["fixed_prompt", "log_request", "template_hash"]

log = logging.getLogger("fleetgate.requests")


def fixed_prompt(body: dict[str, Any]) -> list[Any]:
    """What stays the same across a template's requests: the system (or developer)
    messages of a chat, the instructions of a response."""
    if isinstance(body.get("messages"), list):
        return [m.get("content") for m in body["messages"] if isinstance(m, dict)
                and m.get("role") in ("system", "developer")]
    return [body.get("instructions")]


def template_hash(body: dict[str, Any], fixed: list[Any] | None = None) -> str:
    """A short hash of a template: its :func:`fixed_prompt` (given, or read from `body`)."""
    fixed = fixed_prompt(body) if fixed is None else fixed
    return hashlib.blake2b(json.dumps(fixed, sort_keys=True).encode(), digest_size=8).hexdigest()


def log_request(endpoint: str, body: dict[str, Any], sc: Scope, response: httpx2.Response, seconds: float,
                usage: dict[str, Any] | None, cost: float | None, model: str | None, *, privacy: Privacy,
                service_tier: str | None = None) -> None:
    """Log one record for an answered request (when INFO is enabled for the logger):
    `usage` and `cost` are what it was billed, by `model` at `service_tier` (None when it
    was not billed: a cache hit, a follower of an identical request, a refusal or a stream
    still open); `privacy` names its user (and a sensitive team or feature)."""
    if not log.isEnabledFor(logging.INFO):
        return
    headers = response.headers
    counts = usage_counts(usage) if usage else None
    record: dict[str, Any] = {
        "request_id": headers.get("x-request-id") or f"fg-{uuid.uuid4().hex[:16]}",
        "endpoint": endpoint,
        "template": template_hash(body),
        "model": model or str(body.get("model", "")),
        "stream": bool(body.get("stream")),
        "status": response.status_code,
        "latency_ms": round(seconds * 1000, 2),
        "prompt_tokens": counts.prompt if counts else None,
        "completion_tokens": counts.output if counts else None,
        "cached_tokens": counts.cached if counts else None,
        "cache_write_tokens": counts.written if counts else None,
        "cost_usd": cost,
        "service_tier": service_tier if usage else None,
        "cache": headers.get("x-fleetgate-cache"),
        "tier": headers.get("x-fleetgate-tier"),
        "mode": headers.get("x-fleetgate-mode"),
        "route": headers.get("x-fleetgate-route"),
        "deployment": headers.get("x-fleetgate-deployment"),
        "refused": headers.get("x-fleetgate") == "refused",
        "feature": privacy.label("feature", sc.feature),
        "team": privacy.label("team", sc.team),
        "user": privacy.label("user", sc.user),
    }
    log.info(json.dumps(record, separators=(",", ":")))

