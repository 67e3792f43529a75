"""``[dedup]``: the settings of collapsing identical in-flight requests."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["DedupSettings"]


class DedupSettings(BaseModel):
    """Collapsing identical in-flight requests into one upstream call (:mod:`fleetgate.dedup`)."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    enabled: bool = True
    #: Which requests may share an answer: "deterministic" (``temperature`` 0 and one
    #: choice), "always", or "never" (a scope's ``dedup=True`` still collapses).
    when: Literal["deterministic", "always", "never"] = "deterministic"
    #: Who may share: everyone with the same API key ("global"), or only the same user,
    #: team or feature of the scope.
    namespace: Literal["global", "user", "team", "feature"] = "global"
    #: Share answers between the pods of the fleet too (needs ``redis_url``): one pod makes
    #: the call, the others wait for its answer (polling every ``poll_seconds``).
    across_pods: bool = False
    poll_seconds: float = Field(default=0.02, gt=0, le=1)
    #: How long a shared answer stays readable for pods that asked late.
    keep_seconds: float = Field(default=10.0, gt=0, le=3_600)
