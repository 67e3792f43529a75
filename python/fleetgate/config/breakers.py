"""``[breakers]``: the circuit breakers' settings."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["BreakerSettings"]


class BreakerSettings(BaseModel):
    """Circuit breakers, one per (endpoint, model); see :class:`fleetgate.Breakers`."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    enabled: bool = True
    #: The last N calls judged; or, when set, the calls of the last ``window_seconds``.
    window: int = Field(default=50, gt=0, le=100_000)
    window_seconds: int | None = Field(default=None, gt=0, le=3_600)
    failure_rate: float = Field(default=0.5, gt=0, le=1)
    slow_rate: float = Field(default=1.0, gt=0, le=1)
    #: A call slower than this is slow (time to first byte for streams).
    slow_call_seconds: float = Field(default=30.0, gt=0)
    min_calls: int = Field(default=10, gt=0)
    half_open_probes: int = Field(default=3, gt=0)
    probe_max_wait_seconds: float = Field(default=30.0, gt=0)
    #: The first open period; doubled per consecutive trip up to ``open_max_seconds``.
    open_seconds: float = Field(default=5.0, gt=0)
    open_max_seconds: float = Field(default=300.0, gt=0)
    jitter: float = Field(default=0.2, ge=0, lt=1)
    #: How often a pod reads the fleet's breaker states from Redis.
    share_every_seconds: float = Field(default=0.25, gt=0, le=1)
