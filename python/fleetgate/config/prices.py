"""``[prices]``: what each model's tokens cost, at each service tier."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["LongContextFields", "PriceFields", "PriceSettings", "RateFields", "TierFields"]


class RateFields(BaseModel):
    """Dollars per million tokens. Reasoning tokens are output."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    input: float = Field(ge=0)
    #: Prompt tokens read from the prompt cache (None: billed as input).
    cached_input: float | None = Field(default=None, ge=0)
    #: Prompt tokens written to the prompt cache, on models that bill writes (None: as input).
    cache_write: float | None = Field(default=None, ge=0)
    output: float = Field(default=0.0, ge=0)


class LongContextFields(RateFields):
    """The rates of a request whose prompt is longer than `above` tokens (the whole request)."""

    above: int = Field(gt=0)


class TierFields(RateFields):
    """One service tier's rates, and its long-context rates if the model has them."""

    long_context: LongContextFields | None = None


class PriceFields(TierFields):
    """One model's price: the standard rates, and those of the other service tiers it
    offers. An absent ``batch`` is the standard price times the table's ``batch_discount``;
    an absent ``flex`` is the batch price (OpenAI prices Flex as Batch); an absent
    ``priority`` is the standard price (the model serves priority requests at standard)."""

    flex: TierFields | None = None
    priority: TierFields | None = None
    batch: TierFields | None = None
    #: Where these figures come from, when not from the table's ``source``.
    source: str | None = None


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
