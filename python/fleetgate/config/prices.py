"""``[prices]``: what each model's tokens cost."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["PriceFields", "PriceSettings"]


class PriceFields(BaseModel):
    """One model's price, in dollars per million tokens. Reasoning tokens are output."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    input: float = Field(ge=0)
    cached_input: float | None = Field(default=None, ge=0)
    output: float = Field(default=0.0, ge=0)


class PriceSettings(BaseModel):
    """Model prices (:mod:`fleetgate.prices`): the table fleetgate ships, or ``file``,
    with ``models`` added on top."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    #: A price file of your own (same format as the shipped ``prices.toml``) in place of it.
    file: Path | None = None
    #: Prices added to (or replacing entries of) the table.
    models: dict[str, PriceFields] = Field(default_factory=dict)
    #: What the Batch API costs, as a share of the synchronous price (None: the table's).
    batch_discount: float | None = Field(default=None, gt=0, le=1)
