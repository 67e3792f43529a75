"""``[server_context]``: reserving for the input OpenAI holds for a Responses call (the
context of its ``previous_response_id`` or ``conversation``), which its body does not
show (:mod:`fleetgate.chains`).

    [server_context]
    unknown = "count"               # a chain no pod has seen: ask OpenAI's counting endpoint
    unknown_chain_tokens = 32000    # or reserve this many ("allowance"); also when counting fails
    ttl_seconds = 86400             # how long the fleet remembers a chain
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["ServerContextSettings"]


class ServerContextSettings(BaseModel):
    """What a call continuing a Responses chain reserves for the context OpenAI holds.

    Every stored answer of the Responses API is remembered (in process and, with Redis,
    across the fleet) as the input tokens a call continuing it will carry: its input plus
    its output. A chain no pod has seen (another deployment made it, or its record
    expired) is ``unknown``: ``"count"`` (the default) asks OpenAI's input-token counting
    endpoint through the gateway's upstream, an exact count for one more round trip on
    those calls alone; ``"allowance"`` reserves ``unknown_chain_tokens`` without asking,
    which is also what a call reserves when counting fails. The default allowance, 32,000
    tokens, fits in one second's share of a 2M tokens-per-minute model quota (what a model's
    token bucket admits at once), so a call reserving it is admitted; a longer context is
    settled from the answer's usage, and what is reserved beyond the context is given back."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    #: false: calls reserve for their body alone (the held context is settled afterwards).
    enabled: bool = True
    unknown: Literal["count", "allowance"] = "count"
    unknown_chain_tokens: int = Field(default=32_000, ge=0)
    #: How long a chain's record lasts in Redis (a chain continued later is unknown).
    ttl_seconds: int = Field(default=86_400, gt=0)
    #: Chains remembered in process (least recently used dropped first).
    local_chains: int = Field(default=100_000, gt=0)
    #: How long counting may take before the allowance is reserved instead.
    count_timeout_seconds: float = Field(default=10.0, gt=0)
