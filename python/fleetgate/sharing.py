"""What the layers that share answers between callers (deduplication and the cache) agree
on: who may share one (callers with the same API key and upstream, and, when a setting
narrows it, the same user, team or feature of the scope), and which requests are
deterministic."""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

import httpx2

from fleetgate.scope import Scope

__all__ = ["NOT_IN_KEY", "Sharing", "deterministic", "digest", "identity", "is_read", "namespace_of"]

Sharing = Literal["global", "user", "team", "feature"]

#: Body fields that do not change the answer (how it is delivered, or who asked).
NOT_IN_KEY = frozenset({"stream_options", "user", "metadata", "store", "service_tier", "safety_identifier",
                        "prompt_cache_key"})


def digest(*parts: str) -> str:
    """One key from `parts` (each ended by a NUL, so that no two splits of one text meet)."""
    hashed = hashlib.blake2b(digest_size=20)
    for part in parts:
        hashed.update(part.encode())
        hashed.update(b"\0")
    return hashed.hexdigest()


def identity(endpoint: str, body: dict[str, Any]) -> str:
    """What makes a request's answer what it is: its endpoint and its body less the fields
    that do not change the answer (key order and whitespace aside). The cache keys answers
    by it and deduplication collapses calls by it, so the two never disagree on which
    requests are the same."""
    kept = {k: v for k, v in body.items() if k not in NOT_IN_KEY}
    return digest(endpoint, json.dumps(kept, sort_keys=True, separators=(",", ":"), ensure_ascii=False))


def namespace_of(sharing: Sharing, request: httpx2.Request, sc: Scope) -> str | None:
    """The namespace `request` may share answers in, or None when the scope lacks the part
    `sharing` names (nothing to share within). Credentials appear only hashed."""
    part = {"global": "", "user": sc.user, "team": sc.team, "feature": sc.feature}[sharing]
    if part is None:
        return None
    credential = request.headers.get("authorization", "")
    account = hashlib.blake2b(f"{credential}\0{request.url.host}".encode(), digest_size=16).hexdigest()
    return f"{account}\0{sharing}\0{part}"


def deterministic(body: dict[str, Any]) -> bool:
    """Whether a request asks for one answer that does not vary: temperature 0, one choice."""
    return body.get("temperature") == 0 and body.get("n", 1) == 1


def is_read(response: httpx2.Response) -> bool:
    """Whether a response's body has been read whole (else it is a stream still to read)."""
    try:
        response.content  # noqa: B018 - raises until the body has been read
    except httpx2.ResponseNotRead:
        return False
    return True
