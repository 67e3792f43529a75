"""How much goes upstream: each quota's rates (``[models]``, ``per_user``, ``[features]``,
``[teams]``) and each model's calls in flight, by priority lane (``[lanes]``)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["LaneSettings", "QuotaLimits"]


class QuotaLimits(BaseModel):
    """Limits of one quota (see :class:`fleetgate.Quota`)."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    requests_per_minute: int | None = Field(default=None, gt=0)
    tokens_per_minute: int | None = Field(default=None, gt=0)
    algorithm: Literal["token_bucket", "sliding_window"] = "token_bucket"
    burst_seconds: float = Field(default=1.0, gt=0, le=60)


class LaneSettings(BaseModel):
    """Priority lanes per model (:class:`fleetgate.Lanes`): a cap on calls in flight, a
    strict realtime lane, interactive and batch lanes shared by weight."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    #: Calls in flight upstream per model at most (None: no cap and no queueing), and per
    #: model exceptions.
    concurrency: int | None = Field(default=None, gt=0)
    models: dict[str, int] = Field(default_factory=dict)
    #: Requests that may wait per lane and model; beyond it a call is refused (QueueFull).
    queue_limit: int = Field(default=1000, ge=0)
    interactive_weight: int = Field(default=4, gt=0, le=1_000_000)
    batch_weight: int = Field(default=1, gt=0, le=1_000_000)
