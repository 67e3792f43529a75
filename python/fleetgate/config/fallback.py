"""``[fallback]``: the fallback ladder's settings."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["FallbackSettings"]


class FallbackSettings(BaseModel):
    """The fallback ladder (:mod:`fleetgate.fallback`): what serves when the primary cannot."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    #: A cheaper model per model: ``{"gpt-4.1" = "gpt-4.1-mini"}``.
    models: dict[str, str] = Field(default_factory=dict)
    #: An answer to give when nothing upstream can serve (chat completions and responses).
    static_answer: str | None = None
    #: A JSONL file (Batch API format) to queue requests in for later.
    defer_to: Path | None = None
    #: A ``service_tier: "flex"`` call Flex has no capacity for: sent again on the standard
    #: tier (``"default"``) within its deadline, or handed the 429 (``"none"``).
    flex_fallback: Literal["default", "none"] = "default"
