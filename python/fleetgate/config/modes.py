"""``[modes]``: the degradation modes, what enters each by itself, and how it is left."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["MODES", "ModeName", "ModeSettings", "ModeTrigger"]


#: The fleet's degradation modes, mildest first (see :mod:`fleetgate.modes`).
MODES = ("full", "reduced", "cached-only", "static", "maintenance")
ModeName = Literal["full", "reduced", "cached-only", "static", "maintenance"]


class ModeTrigger(BaseModel):
    """When a degradation mode is entered by itself: any one condition met is enough.
    Rates are over ``[modes] window_seconds`` of this pod's upstream calls."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    #: Share of upstream calls that failed (5xx, no answer; upstream 429s are quota, not health).
    error_rate: float | None = Field(default=None, gt=0, le=1)
    #: The 95th percentile of upstream calls' time (streams: to the first byte).
    p95_seconds: float | None = Field(default=None, gt=0)
    #: Circuit breakers open or isolated, across the fleet.
    open_breakers: int | None = Field(default=None, gt=0)
    #: Circuit breakers isolated (upstream said ``insufficient_quota``; only a reset ends it).
    isolated_breakers: int | None = Field(default=None, gt=0)
    #: Share of a global budget spent in its period.
    budget_share: float | None = Field(default=None, gt=0)


def _default_triggers() -> dict[ModeName, ModeTrigger]:
    return {
        "reduced": ModeTrigger(error_rate=0.1, open_breakers=1, budget_share=0.9),
        "cached-only": ModeTrigger(error_rate=0.3, budget_share=1.0),
        "static": ModeTrigger(error_rate=0.6),
        "maintenance": ModeTrigger(isolated_breakers=1),
    }


class ModeSettings(BaseModel):
    """``[modes]``: the fleet's degradation modes (:mod:`fleetgate.modes`), entered by
    themselves from signals or set by an operator (``fleetgate mode set``)."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    #: Enter and leave modes by themselves, from ``enter``'s triggers (the production
    #: environment preset turns this on; an operator's mode works either way).
    auto: bool = False
    #: Per mode, what enters it (modes left out are entered only by an operator).
    enter: dict[ModeName, ModeTrigger] = Field(default_factory=_default_triggers)
    #: A mode is left once its signals fell under this share of its triggers' thresholds...
    exit_ratio: float = Field(default=0.5, gt=0, le=1)
    #: ...and stayed there this long (hysteresis: no flapping at a threshold).
    exit_after_seconds: float = Field(default=30.0, ge=0)
    #: The span of upstream calls error rates and latency are measured over.
    window_seconds: float = Field(default=60.0, gt=0, le=3_600)
    #: Fewer upstream calls in the window than this say nothing about rates.
    min_requests: int = Field(default=20, gt=0)
    #: How often a pod judges its signals and reads the operator's mode from Redis: an
    #: operator's mode reaches every pod within this (at most a second).
    evaluate_every_seconds: float = Field(default=0.5, gt=0, le=1)
    #: In a mode entered by itself that sends nothing upstream (cached-only, static), one
    #: request per this interval still goes upstream, to see whether it recovered.
    probe_every_seconds: float = Field(default=1.0, gt=0)
    #: With Redis, the share of live pods whose own judgement moves every pod to a mode.
    quorum: float = Field(default=0.5, gt=0, le=1)
    #: Reduced mode: the most output tokens a request may ask for.
    reduced_max_output_tokens: int | None = Field(default=1024, gt=0)
    #: Features that are optional enrichments: refused (``ServiceDegraded``) from reduced on.
    optional_features: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _maintenance_ends(self) -> ModeSettings:
        rates = self.enter.get("maintenance")
        if rates is not None and (rates.error_rate is not None or rates.p95_seconds is not None):
            raise ValueError("[modes.enter.maintenance] cannot use error_rate or p95_seconds: maintenance sends "
                             "nothing upstream, so nothing would show recovery; use isolated_breakers or "
                             "open_breakers, or set maintenance by hand (fleetgate mode set)")
        return self
