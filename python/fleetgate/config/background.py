"""``[background]``: Responses calls made with ``background: true``, whose cost is known only
when they end (see :mod:`fleetgate.background`)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["BackgroundSettings"]


class BackgroundSettings(BaseModel):
    """``[background]``: how background responses are watched until they end and settled."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    #: Background calls this pod watches at once; a call beyond it is refused before it is
    #: sent (``QueueFull``, lane ``background``), since its cost could not be followed.
    max_pending: int = Field(default=10_000, gt=0)
    #: Polling a background response: the first interval, doubled while it runs, up to the last.
    poll_min_seconds: float = Field(default=1.0, gt=0)
    poll_max_seconds: float = Field(default=30.0, gt=0)
    #: How long a background call's budget hold (and its record) lasts: the longest a
    #: background response may run. A call still unsettled then is settled at its worst case.
    lease_seconds: float = Field(default=3_600.0, gt=0, le=86_400)
    #: With Redis: how long a pod's claim on a pending call lasts without renewal; another
    #: pod takes the call over after that (its pod died).
    claim_seconds: float = Field(default=30.0, gt=0, le=3_600)

    @model_validator(mode="after")
    def _intervals(self) -> BackgroundSettings:
        if self.poll_max_seconds < self.poll_min_seconds:
            raise ValueError(f"[background] poll_max_seconds ({self.poll_max_seconds}) must be at least "
                             f"poll_min_seconds ({self.poll_min_seconds})")
        return self
