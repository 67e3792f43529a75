"""``[routing]``: complexity tiers and rollouts, with the deployments a rollout compares."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["DeploymentSettings", "RolloutSettings", "RoutingSettings", "TierSettings"]


class DeploymentSettings(BaseModel):
    """One named configuration of a rollout: what its requests are sent as (None: as asked)."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    model: str | None = None
    #: Replaces the system message (chat) or ``instructions`` (responses).
    instructions: str | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    max_output_tokens: int | None = Field(default=None, gt=0)
    #: Shown in ``x-fleetgate-deployment`` and in every decision's log line.
    version: str = "1"


class RolloutSettings(BaseModel):
    """A canary: `canary` takes a growing share of `baseline`'s traffic, promoted step by
    step while its gates hold, rolled back when one is clearly broken."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    #: Which requests take part: those of this scope feature, or asking for this model.
    feature: str | None = None
    model: str | None = None
    baseline: DeploymentSettings = Field(default_factory=DeploymentSettings)
    canary: DeploymentSettings
    #: Who stays on one side: the scope's user (or, without one, the conversation:
    #: ``metadata.conversation_id``, else the first user message).
    sticky_by: Literal["user", "conversation"] = "user"
    #: Canary shares, step by step; the last (1.0) is full promotion.
    steps: list[float] = Field(default_factory=lambda: [0.01, 0.05, 0.1, 0.25, 0.5, 1.0], min_length=1)
    #: Canary requests a step needs before it can be promoted.
    min_requests: int = Field(default=1_000, gt=0)
    #: Canary requests after which a clearly broken bound rolls it back.
    early_requests: int = Field(default=100, gt=0)
    max_error_ratio: float = Field(default=1.5, gt=0)  # × the baseline's error rate
    #: +20%, on latency less a call's waits (for quota, a lane, a retry-after or a paused model).
    max_p95_increase: float = Field(default=0.2, ge=0)
    max_cost_increase: float = Field(default=0.1, ge=0)  # +10%
    #: "Clearly broken": this many times over a bound's margin.
    clearly: float = Field(default=2.0, ge=1)
    #: Answers shorter than this many characters count as "too short".
    too_short_chars: int = Field(default=2, ge=0)


class TierSettings(BaseModel):
    """A complexity tier: requests the classifier puts here are sent to `model`."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    name: str
    model: str


class RoutingSettings(BaseModel):
    """Model routing (:mod:`fleetgate.router`): complexity tiers and rollouts."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    #: Cheapest first; the last is the top tier. Empty: no complexity routing.
    tiers: list[TierSettings] = Field(default_factory=list)
    #: Requests for these models are routed by complexity (empty: requests for the top tier's).
    route_models: list[str] = Field(default_factory=list)
    #: "heuristic", or "nearest" (a labelled examples file: `examples`).
    classifier: Literal["heuristic", "nearest"] = "heuristic"
    #: JSONL of {"text", "tier"} for the "nearest" classifier.
    examples: str | None = None
    rollouts: dict[str, RolloutSettings] = Field(default_factory=dict)
