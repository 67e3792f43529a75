"""What upstream's answers say, read off the wire without reading more than needed: the
``x-ratelimit-*`` headers, how long a 429 asks to wait and why it refused, the ``usage``
of an answer read whole, and the usage a passing stream carries."""

from __future__ import annotations

import json
import re
from typing import Any

import httpx2

from fleetgate.estimate import usage_tokens

__all__ = ["EXHAUSTED", "UsageScanner", "error_code", "rate_limit_headers", "response_id_of", "retry_wait",
           "served_tier", "usage_of"]

#: What a 429 ``rate_limit_exceeded`` says of the model's quota: nothing left.
EXHAUSTED = {"x-ratelimit-remaining-requests": "0", "x-ratelimit-remaining-tokens": "0"}
_RATE_LIMIT_PREFIX = b"x-ratelimit-"


def rate_limit_headers(headers: httpx2.Headers) -> dict[str, str]:
    """The ``x-ratelimit-*`` headers, as ``headers.items()`` gives them (names in lower
    case, a repeated header's values joined by ", "), picked in one pass over the raw
    headers: the limiter reads only these, and decoding every header costs more. Headers
    are ASCII but for a rare server: then ``items()`` decodes them as it does."""
    found: dict[str, str] = {}
    try:
        for name, value in headers.raw:
            if name[:12].lower() == _RATE_LIMIT_PREFIX:
                key, text = name.lower().decode("ascii"), value.decode("ascii")
                found[key] = f"{found[key]}, {text}" if key in found else text
    except UnicodeDecodeError:
        return {key: value for key, value in headers.items() if key.startswith("x-ratelimit-")}
    return found


def retry_wait(response: httpx2.Response) -> float:
    """Seconds the server asks to wait: retry-after-ms, then retry-after (seconds)."""
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = response.headers.get(name)
        if value:
            try:
                return max(0.0, float(value) * scale)
            except ValueError:
                continue
    return 1.0


def error_code(response: httpx2.Response) -> str | None:
    try:
        error = response.json().get("error") or {}
    except (ValueError, AttributeError):
        return None
    code = error.get("code") if isinstance(error, dict) else None
    return code if isinstance(code, str) else None


_DECODER = json.JSONDecoder()


#: How far past a key its value is looked for (a usage object, an id: well under this).
_VALUE_WINDOW = 4096


def _top_level(body: bytes, key: bytes, at: int, kind: type) -> Any:
    """The top-level `key` of a JSON answer when it is a `kind` (else None): parsed alone
    from `at`, where the key is expected (its first or last occurrence, by where OpenAI
    puts it), so the answer, often most of the body, is not parsed; the whole body is
    parsed only when that fails."""
    if at >= 0:
        start = at + len(key)
        try:
            rest = body[start:start + _VALUE_WINDOW].decode(errors="replace").lstrip()
            if rest.startswith(":"):
                value, _ = _DECODER.raw_decode(rest[1:].lstrip())
                if isinstance(value, kind):
                    return value
        except ValueError:
            pass  # not where it usually is: parse the whole body below
    try:
        whole = json.loads(body)
    except ValueError:
        return None
    found = whole.get(key.strip(b'"').decode()) if isinstance(whole, dict) else None
    return found if isinstance(found, kind) else None


def response_id_of(body: bytes) -> str | None:
    """The top-level ``id`` of a JSON answer (OpenAI puts it first)."""
    value: str | None = _top_level(body, b'"id"', body.find(b'"id"'), str)
    return value


def usage_of(body: bytes) -> dict[str, Any] | None:
    """The top-level ``usage`` of a JSON answer (OpenAI puts it last)."""
    value: dict[str, Any] | None = _top_level(body, b'"usage"', body.rfind(b'"usage"'), dict)
    return value


_TIER_KEY = b'"service_tier"'
#: A ``service_tier`` value: a short JSON string of letters (``default``, ``flex``, ``priority``).
_TIER_VALUE = re.compile(rb'\s*:\s*"([a-z_]{1,32})"')


def served_tier(body: bytes) -> str | None:
    """The ``service_tier`` an answer reports (the tier that served it), or None. Read from
    its key on, without parsing the answer: chat puts it at the top level after the usage,
    the Responses API at the top level of the response. Text inside the answer cannot
    match, its quotes being escaped; the last one found is taken, as for the usage."""
    at = body.rfind(_TIER_KEY)
    if at < 0:
        return None
    found = _TIER_VALUE.match(body, at + len(_TIER_KEY))
    return found.group(1).decode() if found else None


class UsageScanner:
    """Watches a passing SSE stream for its usage, without holding it back."""

    __slots__ = ("_pending", "usage", "detail", "deltas", "tier", "response_id")

    def __init__(self) -> None:
        self._pending = b""
        self.usage: int | None = None
        #: The usage object itself (for its cost).
        self.detail: Any = None
        self.deltas = 0
        #: The ``service_tier`` the stream reports (the tier serving it), once seen.
        self.tier: str | None = None
        #: A Responses stream's response id (from its ``response.created`` event, or the
        #: event that carried its usage; None: another endpoint's).
        self.response_id: str | None = None

    def feed(self, chunk: bytes) -> None:
        data = self._pending + chunk
        lines = data.split(b"\n")
        self._pending = lines.pop()
        for line in lines:
            if not line.startswith(b"data: "):
                continue
            if b'"usage"' in line and b'"usage": null' not in line and b'"usage":null' not in line:
                try:
                    event = json.loads(line[6:])
                except ValueError:
                    continue
                response = event.get("response") or {}
                usage = event.get("usage") or response.get("usage")
                tokens = usage_tokens(usage)
                if tokens is not None:
                    self.usage, self.detail = tokens, usage
                    rid = response.get("id")
                    if isinstance(rid, str):
                        self.response_id = rid
                tier = event.get("service_tier") or response.get("service_tier")
                if isinstance(tier, str):
                    self.tier = tier
            else:
                if b'"delta"' in line:
                    self.deltas += 1
                elif self.response_id is None and b'"response.created"' in line:
                    self.response_id = _created_id(line[6:])
                if self.tier is None and _TIER_KEY in line:
                    self.tier = served_tier(line)


def _created_id(data: bytes) -> str | None:
    """The response id a ``response.created`` event carries."""
    try:
        event = json.loads(data)
    except ValueError:
        return None
    found = (event.get("response") or {}).get("id") if isinstance(event, dict) else None
    return found if isinstance(found, str) else None
