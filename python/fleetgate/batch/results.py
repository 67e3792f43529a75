"""Reading what a batch returned: its output and error files, streamed line by line, each
line classified and joined to its request by ``custom_id`` (never by position, since the
output's order is not the input's)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["Outcome", "ResultLine", "Tally", "classify", "parse_lines"]

Outcome = Literal["ok", "retry", "dead"]

#: Per-request statuses worth sending again: the request itself was fine.
RETRYABLE_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})
#: Per-line error codes worth sending again.
RETRYABLE_CODES = frozenset({"batch_expired", "batch_cancelled", "server_error", "rate_limit_exceeded", "timeout",
                             "internal_error"})


@dataclass(frozen=True, slots=True)
class ResultLine:
    custom_id: str
    outcome: Outcome
    #: The line as the Batch API wrote it.
    record: dict[str, Any]

    @property
    def usage(self) -> dict[str, Any] | None:
        body = (self.record.get("response") or {}).get("body")
        usage = body.get("usage") if isinstance(body, dict) else None
        return usage if isinstance(usage, dict) else None

    @property
    def error(self) -> dict[str, Any]:
        """The line's error: its ``error`` object, or its response's (a per-request 4xx/5xx)."""
        if isinstance(self.record.get("error"), dict):
            return dict(self.record["error"])
        response = self.record.get("response") or {}
        body = response.get("body")
        inner = body.get("error") if isinstance(body, dict) else None
        found = dict(inner) if isinstance(inner, dict) else {"message": "the request failed"}
        found.setdefault("status_code", response.get("status_code"))
        return found


def classify(record: dict[str, Any]) -> Outcome:
    """ok: answered (200); retry: failed for a reason that may pass (expiry, 429, 5xx);
    dead: failed for a reason that will not (a 4xx for this request)."""
    error = record.get("error")
    if isinstance(error, dict):
        return "retry" if error.get("code") in RETRYABLE_CODES else "dead"
    response = record.get("response")
    status = response.get("status_code") if isinstance(response, dict) else None
    if status == 200:
        return "ok"
    return "retry" if status in RETRYABLE_STATUS or status is None else "dead"


def parse_lines(lines: Iterable[bytes]) -> Iterator[ResultLine | None]:
    """Each line of an output or error file; None for one that is not a result line."""
    for raw in lines:
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except json.JSONDecodeError:
            yield None
            continue
        if not isinstance(record, dict) or not isinstance(record.get("custom_id"), str):
            yield None
            continue
        yield ResultLine(record["custom_id"], classify(record), record)


@dataclass
class Tally:
    """What one batch returned, joined to the ids it was sent."""

    ok: int = 0
    dead: int = 0
    retry: set[str] = field(default_factory=set)
    unknown: list[str] = field(default_factory=list)
    duplicates: int = 0
    malformed: int = 0
    seen: set[str] = field(default_factory=set)

    def add(self, line: ResultLine | None, sent: set[str]) -> bool:
        """Count `line`; whether it is the one result kept for its id."""
        if line is None:
            self.malformed += 1
            return False
        if line.custom_id not in sent:
            self.unknown.append(line.custom_id)
            return False
        if line.custom_id in self.seen:
            self.duplicates += 1
            return False
        self.seen.add(line.custom_id)
        if line.outcome == "ok":
            self.ok += 1
        elif line.outcome == "retry":
            self.retry.add(line.custom_id)
        else:
            self.dead += 1
        return True
