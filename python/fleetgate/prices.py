"""Model prices as data (``prices.toml`` beside this file, or a file of your own), and the
cost of a response's ``usage`` at the service tier that served it.

A price file::

    batch_discount = 0.5            # the Batch API costs half

    [models."gpt-5.5"]              # dollars per million tokens
    input = 5.00
    cached_input = 0.50             # optional: prompt tokens read from the prompt cache
    cache_write = 6.25              # optional: prompt tokens written to it (models that bill writes)
    output = 30.00                  # reasoning tokens are billed as output
    long_context = { above = 272000, input = 10.00, cached_input = 1.00, output = 45.00 }
    flex = { input = 2.50, cached_input = 0.25, output = 15.00 }
    priority = { input = 12.50, cached_input = 1.25, output = 75.00 }

An absent ``batch`` is the standard price times ``batch_discount``; an absent ``flex`` is
the batch price; an absent ``priority`` is the standard price. A dated snapshot
(``gpt-4.1-mini-2025-04-14``, ``gpt-4-0613``) takes the price of the model it is named after
unless the file lists it; a name that only starts like a listed one
(``gpt-4o-realtime-preview``) has no price, rather than a neighbour's. A fine-tune
(``ft:gpt-4.1-mini:…``) takes the price listed as ``ft:gpt-4.1-mini`` (fine-tuned models
cost more than their base), else its base model's.

A file says where its prices come from and when they were read (``source``, ``read``); a
model whose figures come from elsewhere says so in its own ``source``.

A request's ``service_tier`` is priced as :func:`price_tier` says: ``flex``, ``priority``
(also ``fast``), or the standard price (``auto``, ``default``, ``scale``). The response's
``service_tier`` is the tier that served it, and the one to settle with.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from datetime import date
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fleetgate.config import PriceFields, PriceSettings, RateFields, TierFields
from fleetgate.errors import ConfigError
from fleetgate.estimate import UsageCounts, usage_counts

__all__ = ["TIERS", "ModelPrice", "PriceTable", "Rates", "TierPrice", "default_prices", "price_tier"]

#: The tiers OpenAI prices apart: standard, the Batch API, Flex processing, Priority ("fast").
TIERS = ("default", "batch", "flex", "priority")
_TIER_NAMES = {"flex": "flex", "priority": "priority", "fast": "priority", "batch": "batch"}


def price_tier(service_tier: str | None) -> str:
    """The tier a ``service_tier`` (asked or answered) is priced at: ``flex``,
    ``priority`` (``fast`` is its other name), ``batch``, else ``default`` (``auto``,
    ``default``, ``scale``, or none given)."""
    return _TIER_NAMES.get(service_tier or "", "default")


@dataclass(frozen=True, slots=True)
class Rates:
    """Dollars per million tokens: `input`, prompt tokens read from the prompt cache
    (`cached_input`; None: as input), prompt tokens written to it (`cache_write`; None: as
    input), and `output` (reasoning included)."""

    input: float
    cached_input: float | None = None
    cache_write: float | None = None
    output: float = 0.0

    def dollars(self, prompt: int, output: int, cached: int = 0, written: int = 0) -> float:
        """The cost of `prompt` input tokens (`cached` of them read from the prompt cache,
        `written` written to it) and `output` output tokens."""
        cached = min(cached, prompt) if self.cached_input is not None else 0
        written = min(written, prompt - cached) if self.cache_write is not None else 0
        plain = prompt - cached - written
        return (plain * self.input + cached * (self.cached_input or 0.0) + written * (self.cache_write or 0.0)
                + output * self.output) / 1e6

    def worst(self, prompt: int, output: int) -> float:
        """The most `prompt` input and `output` output tokens can cost: every prompt token
        at the dearer of input and a cache write."""
        return (prompt * max(self.input, self.cache_write or 0.0) + output * self.output) / 1e6

    def scaled(self, factor: float) -> Rates:
        return Rates(self.input * factor, None if self.cached_input is None else self.cached_input * factor,
                     None if self.cache_write is None else self.cache_write * factor, self.output * factor)


@dataclass(frozen=True, slots=True)
class TierPrice:
    """One tier's rates, and the rates of a request whose prompt is over `above` tokens
    (`long`; None: the model has no long-context price)."""

    rates: Rates
    long: Rates | None = None
    above: int = 0

    def rates_for(self, prompt: int) -> Rates:
        return self.long if self.long is not None and prompt > self.above else self.rates

    def scaled(self, factor: float) -> TierPrice:
        return TierPrice(self.rates.scaled(factor), None if self.long is None else self.long.scaled(factor), self.above)


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """A model's standard rates (dollars per million tokens) and the tiers it is priced
    at: each of :data:`TIERS` (those not given derived as :class:`PriceFields` says)."""

    input: float
    cached_input: float | None = None
    output: float = 0.0
    cache_write: float | None = None
    tiers: dict[str, TierPrice] = field(default_factory=dict, compare=False, hash=False)
    #: Where these figures come from (None: the table's source).
    source: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        standard = self.tiers.get("default") or TierPrice(Rates(self.input, self.cached_input, self.cache_write,
                                                                 self.output))
        batch = self.tiers.get("batch") or standard.scaled(0.5)
        object.__setattr__(self, "tiers", {"default": standard, "batch": batch,
                                           "flex": self.tiers.get("flex") or batch,
                                           "priority": self.tiers.get("priority") or standard})

    def rates(self, prompt: int, tier: str = "default") -> Rates:
        """The rates of a request of `prompt` input tokens at `tier` (one of :data:`TIERS`)."""
        return self.tiers[tier].rates_for(prompt)

    def dollars(self, prompt: int, output: int, cached: int = 0, written: int = 0, *, tier: str = "default") -> float:
        """The cost of `prompt` input tokens (`cached` read from the prompt cache,
        `written` written to it) and `output` output tokens at `tier`."""
        return self.rates(prompt, tier).dollars(prompt, output, cached, written)

    def worst(self, prompt: int, output: int, *, tier: str = "default") -> float:
        """The most such a request can cost at `tier`: no prompt token cached, every one
        possibly written to the cache, and all the output it may produce."""
        return self.rates(prompt, tier).worst(prompt, output)


class _PriceFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    batch_discount: float = Field(default=0.5, gt=0, le=1)
    source: str | None = None
    read: date | None = None
    models: dict[str, PriceFields] = Field(default_factory=dict)


#: The table fleetgate ships.
_SHIPPED = Path(__file__).with_name("prices.toml")

#: What may follow a model's name in a dated snapshot of it: ``-2025-04-14``, ``-0613``, ``-20250414``.
_SNAPSHOT = re.compile(r"-(?:\d{4}-\d{2}-\d{2}|\d{4}|\d{8})")


@dataclass(frozen=True)
class PriceTable:
    """Model prices, where they come from (`source`, a URL or file) and the day they were
    read (`read`)."""

    models: dict[str, ModelPrice]
    batch_discount: float = 0.5
    source: str | None = None
    read: date | None = None

    @classmethod
    def load(cls, path: str | Path, *, batch_discount: float | None = None) -> PriceTable:
        """Read a price file (`batch_discount`: in place of the file's). Raises
        ConfigError naming the model and the field at fault."""
        p = Path(path)
        try:
            data = tomllib.loads(p.read_text())
        except OSError as e:
            raise ConfigError(f"price file {p}: cannot read it ({e})") from e
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"price file {p}: not valid TOML ({e})") from e
        try:
            parsed = _PriceFile.model_validate(data)
        except ValidationError as e:
            raise ConfigError(f"price file {p}: {_describe(e)}") from e
        discount = parsed.batch_discount if batch_discount is None else batch_discount
        return cls({name: _price(f, discount) for name, f in parsed.models.items()}, discount,
                   parsed.source or str(p), parsed.read)

    @classmethod
    def from_settings(cls, settings: PriceSettings) -> PriceTable:
        """The table a gateway's ``[prices]`` describe."""
        if settings.file is None and settings.batch_discount is None:
            base = default_prices()
        else:  # the discount prices every model's batch tier, so the file is read with it
            base = cls.load(settings.file or _SHIPPED, batch_discount=settings.batch_discount)
        if not settings.models:
            return base
        models = {**base.models, **{name: _price(f, base.batch_discount, "[prices.models]")
                                    for name, f in settings.models.items()}}
        return cls(models, base.batch_discount, base.source, base.read)

    def price(self, model: str) -> ModelPrice | None:
        """The price of `model`, or of the model a snapshot or fine-tune is named after."""
        found = self.models.get(model)
        if found is not None:
            return found
        listed = self.priced_as(model)
        return None if listed is None else self.models[listed]

    def priced_as(self, model: str) -> str | None:
        """The listed model `model` is priced as: itself, the model a dated snapshot
        (``gpt-4.1-2025-04-14``) is named after, or for a fine-tune (``ft:gpt-4.1:org::id``)
        ``ft:<base>`` if listed, else the base."""
        if model in self.models:
            return model
        if model.startswith("ft:"):
            base = self._listed(model.split(":")[1])
            if base is None:
                return None
            return f"ft:{base}" if f"ft:{base}" in self.models else base
        return self._listed(model)

    def _listed(self, name: str) -> str | None:
        """`name` if listed, else the listed model `name` is a dated snapshot of."""
        if name in self.models:
            return name
        family, dash, _ = name.rpartition("-")
        while dash:
            if family in self.models and _SNAPSHOT.fullmatch(name[len(family):]):
                return family
            family, dash, _ = family.rpartition("-")
        return None

    def source_of(self, model: str) -> str | None:
        """Where the price `model` is charged at comes from: the model's own source, else
        the table's."""
        listed = self.priced_as(model)
        if listed is None:
            return None
        return self.models[listed].source or self.source

    def cost(self, model: str, usage: dict[str, Any] | None, *, tier: str | None = None) -> float | None:
        """Dollars for one response's usage (chat, responses or embeddings) at the
        ``service_tier`` that served it (`tier`; ``"batch"``: a Batch API line), or None
        when the model has no price or there is no usage."""
        if not isinstance(usage, dict):
            return None
        return self.counts_cost(model, usage_counts(usage), tier=tier)

    def counts_cost(self, model: str, counts: UsageCounts, *, tier: str | None = None) -> float | None:
        """Dollars for a response's token counts (:func:`~fleetgate.estimate.usage_counts`
        of its usage) at `tier` (a ``service_tier``; ``"batch"``: a Batch API line), or
        None when the model has no price."""
        price = self.price(model)
        if price is None:
            return None
        return price.dollars(counts.prompt, counts.output, counts.cached, counts.written, tier=price_tier(tier))


def _rates(fields: RateFields) -> Rates:
    return Rates(fields.input, fields.cached_input, fields.cache_write, fields.output)


def _tier(fields: TierFields) -> TierPrice:
    long = fields.long_context
    return TierPrice(_rates(fields), None if long is None else _rates(long), 0 if long is None else long.above)


def _price(fields: PriceFields, batch_discount: float, source: str | None = None) -> ModelPrice:
    standard = _tier(fields)
    tiers = {"default": standard, "batch": _tier(fields.batch) if fields.batch else standard.scaled(batch_discount)}
    if fields.flex is not None:
        tiers["flex"] = _tier(fields.flex)
    if fields.priority is not None:
        tiers["priority"] = _tier(fields.priority)
    return ModelPrice(fields.input, fields.cached_input, fields.output, fields.cache_write, tiers,
                      fields.source or source)


def _describe(error: ValidationError) -> str:
    """A price file's errors, each naming the model and field: ``model "gpt-x", field
    "input": Input should be a valid number``."""
    parts = []
    for e in error.errors():
        loc = [str(x) for x in e["loc"]]
        if loc[:1] == ["models"] and len(loc) >= 3:
            where = f'model "{loc[1]}", field "{".".join(loc[2:])}"'
        elif loc[:1] == ["models"] and len(loc) == 2:
            where = f'model "{loc[1]}"'
        else:
            where = f'"{".".join(loc)}"'
        parts.append(f"{where}: {e['msg']}")
    return "; ".join(parts)


@lru_cache(maxsize=1)
def default_prices() -> PriceTable:
    """The table shipped with fleetgate (see ``prices.toml``)."""
    return PriceTable.load(_SHIPPED)
