"""How much goes upstream: each quota's rates (``[models]``, ``per_user``, ``[features]``,
``[teams]``) and each model's calls in flight, by priority lane (``[lanes]``)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from fleetgate._core import Quota

__all__ = ["LaneSettings", "MODEL_BURST_SECONDS", "QuotaLimits", "SCOPE_BURST_SECONDS"]


#: A model's token bucket holds one second's share of its rates, as OpenAI slices its limits.
MODEL_BURST_SECONDS = 1.0
#: A user's, feature's or team's holds the whole minute's: ``requests_per_minute = 5``
#: admits five calls at once, then one every 12 seconds (as ``limits``' windows do).
SCOPE_BURST_SECONDS = 60.0


class QuotaLimits(BaseModel):
    """Limits of one quota (see :class:`fleetgate.Quota`).

    What a ``token_bucket`` quota admits at once is ``burst_seconds`` of its rates; the
    rest comes at the rate, spread over the minute. Unset (None), it is one second's share
    for a model (``[models]``, ``default_model_limits``: as OpenAI slices its limits) and the
    whole minute for ``per_user``, ``[features]`` and ``[teams]``: with
    ``requests_per_minute = 5``, a user's first five calls go at once and the sixth waits
    about 12 s. Set ``burst_seconds = 1`` for a user, feature or team to spread its calls
    evenly instead. A ``sliding_window`` admits its whole limit in any 60 seconds and takes
    no ``burst_seconds``.

        per_user = fg.QuotaLimits(requests_per_minute=5)                     # 5 at once
        per_user = fg.QuotaLimits(requests_per_minute=5, burst_seconds=12)   # 1 at once, 1 per 12 s
    """

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    requests_per_minute: int | None = Field(default=None, gt=0)
    tokens_per_minute: int | None = Field(default=None, gt=0)
    algorithm: Literal["token_bucket", "sliding_window"] = "token_bucket"
    burst_seconds: float | None = Field(default=None, gt=0, le=60)

    @model_validator(mode="after")
    def _burst_for_buckets_only(self) -> QuotaLimits:
        if self.algorithm == "sliding_window" and self.burst_seconds is not None:
            raise ValueError("burst_seconds applies to the token_bucket algorithm only: a sliding window admits "
                             "its whole limit in any 60 seconds; remove burst_seconds or use token_bucket")
        return self

    def with_headroom(self, headroom: float) -> QuotaLimits:
        """These limits less `headroom` (a share): the margin a model's quota keeps for what
        no client can count exactly (the jitter between deciding and arriving upstream,
        and OpenAI's own estimate)."""
        def less(value: int | None) -> int | None:
            return None if value is None else max(1, int(value * (1 - headroom)))
        return self.model_copy(update={"requests_per_minute": less(self.requests_per_minute),
                                       "tokens_per_minute": less(self.tokens_per_minute)})

    def quota(self, name: str, kind: str) -> Quota | None:
        """The quota `name` of `kind` (``model``, ``user``, ``feature`` or ``team``: its
        burst, see :meth:`burst_for`) with these limits; None when they limit nothing."""
        if self.requests_per_minute is None and self.tokens_per_minute is None:
            return None
        return Quota(name, self.requests_per_minute, self.tokens_per_minute, algorithm=self.algorithm,
                     burst_seconds=self.burst_for(kind))

    def burst_for(self, kind: str) -> float:
        """The burst in seconds of a quota of `kind` (``model``, ``user``, ``feature`` or
        ``team``) with these limits: ``burst_seconds``, or the kind's default when unset."""
        if self.burst_seconds is not None:
            return self.burst_seconds
        if kind == "model" or self.algorithm == "sliding_window":
            return MODEL_BURST_SECONDS
        return SCOPE_BURST_SECONDS


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
