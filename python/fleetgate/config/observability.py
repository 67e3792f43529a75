"""What fleetgate says of itself: ``[metrics]``, ``[tracing]`` and ``[logging]``."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["LoggingSettings", "MetricsSettings", "TracingSettings"]


class MetricsSettings(BaseModel):
    """``[metrics]``: Prometheus metrics (see :mod:`fleetgate.metrics`)."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)
    enabled: bool = True
    #: Features shown by name in labels, besides those configured elsewhere (quotas,
    #: presets, budgets, rollouts); any other feature is ``other``.
    features: list[str] = Field(default_factory=list)


class TracingSettings(BaseModel):
    """``[tracing]``: OpenTelemetry spans (see :mod:`fleetgate.tracing`)."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)
    #: Spans of gated requests, when ``opentelemetry-api`` is installed.
    enabled: bool = True


class LoggingSettings(BaseModel):
    """``[logging]``: how much fleetgate says (None: as the application set its loggers)."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)
    #: The level of the ``fleetgate`` logger (mode changes, breakers, budget alerts, failures).
    level: Literal["debug", "info", "warning", "error"] | None = None
    #: One record per gated request on ``fleetgate.requests`` (INFO; see :mod:`fleetgate.records`).
    requests: bool | None = None
