"""``[batch]``: the settings of jobs carried through the Batch API."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["BatchSettings"]


class BatchSettings(BaseModel):
    """``[batch]``: jobs carried through the Batch API (see :mod:`fleetgate.batch`)."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)
    #: Where jobs are recorded without Redis (``jobs.sqlite``) and their chunk files are
    #: kept until uploaded and done. Default: ``$XDG_STATE_HOME/fleetgate/batches``.
    directory: str | None = None
    #: The Batch API's limits per batch.
    max_lines: int = Field(default=50_000, gt=0, le=50_000)
    max_bytes: int = Field(default=200 * 1024 * 1024, gt=0, le=200 * 1024 * 1024)
    #: Tokens that may wait in unfinished batches of a model at once (your organization's
    #: batch queue limit, as OpenAI shows it), by model; ``default_enqueued_tokens`` for others.
    enqueued_tokens: dict[str, int] = Field(default_factory=dict)
    default_enqueued_tokens: int = Field(default=20_000_000, gt=0)
    #: Output tokens assumed for a request that sets no maximum.
    assumed_max_output_tokens: int = Field(default=1024, ge=0)
    #: Times a line is sent at most (the first and its retries) before it is dead-lettered.
    max_attempts: int = Field(default=3, ge=1, le=20)
    #: Polling a batch: the first interval, doubled while nothing changes up to the last.
    poll_min_seconds: float = Field(default=5.0, gt=0)
    poll_max_seconds: float = Field(default=300.0, gt=0)
    #: How long a pod watches a job after it last said so; another pod takes over after that.
    lease_seconds: float = Field(default=60.0, gt=0)
    #: Batch creations and file uploads per minute, for the whole fleet (OpenAI allows
    #: about 2,000 creations an hour).
    creations_per_minute: int = Field(default=30, gt=0)
    uploads_per_minute: int = Field(default=60, gt=0)
    #: How long OpenAI keeps output files (1 hour to 30 days).
    output_expires_seconds: int = Field(default=30 * 86_400, ge=3_600, le=30 * 86_400)
    #: Warn about a finished job whose results expire sooner than this and were not collected.
    warn_before_seconds: float = Field(default=3 * 86_400, ge=0)

    def enqueued_limit(self, model: str) -> int:
        return self.enqueued_tokens.get(model, self.default_enqueued_tokens)

    def state_directory(self) -> Path:
        if self.directory:
            return Path(self.directory)
        base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
        return Path(base) / "fleetgate" / "batches"
