"""Model prices as data (``prices.toml`` beside this file, or a file of your own), and the
cost of a response's ``usage``.

A price file::

    batch_discount = 0.5            # the Batch API costs half

    [models."gpt-4.1-mini"]         # dollars per million tokens
    input = 0.40
    cached_input = 0.10             # optional: cached prompt tokens
    output = 1.60                   # reasoning tokens are billed as output

A dated snapshot (``gpt-4.1-mini-2025-04-14``) and a fine-tune (``ft:gpt-4.1-mini:…``) take
the price of the model they are named after unless the file lists them.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fleetgate.config import PriceFields, PriceSettings
from fleetgate.errors import ConfigError
from fleetgate.estimate import UsageCounts, usage_counts

__all__ = ["ModelPrice", "PriceTable", "default_prices"]


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """Dollars per million tokens."""

    input: float
    cached_input: float | None = None
    output: float = 0.0

    def dollars(self, prompt: int, output: int, cached: int = 0) -> float:
        """The cost of `prompt` input tokens (`cached` of them from the prompt cache) and
        `output` output tokens."""
        cached = min(cached, prompt) if self.cached_input is not None else 0
        return ((prompt - cached) * self.input + cached * (self.cached_input or 0.0) + output * self.output) / 1e6


class _PriceFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    batch_discount: float = Field(default=0.5, gt=0, le=1)
    models: dict[str, PriceFields] = Field(default_factory=dict)


@dataclass(frozen=True)
class PriceTable:
    models: dict[str, ModelPrice]
    batch_discount: float = 0.5

    @classmethod
    def load(cls, path: str | Path) -> PriceTable:
        """Read a price file. Raises ConfigError naming the model and the field at fault."""
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
        return cls({name: _price(f) for name, f in parsed.models.items()}, parsed.batch_discount)

    @classmethod
    def from_settings(cls, settings: PriceSettings) -> PriceTable:
        """The table a gateway's ``[prices]`` describe."""
        base = cls.load(settings.file) if settings.file is not None else default_prices()
        if not settings.models and settings.batch_discount is None:
            return base
        models = {**base.models, **{name: _price(f) for name, f in settings.models.items()}}
        discount = settings.batch_discount if settings.batch_discount is not None else base.batch_discount
        return cls(models, discount)

    def price(self, model: str) -> ModelPrice | None:
        """The price of `model`, or of the model a snapshot or fine-tune is named after."""
        found = self.models.get(model)
        if found is not None:
            return found
        listed = self.priced_as(model)
        return None if listed is None else self.models[listed]

    def priced_as(self, model: str) -> str | None:
        """The listed model `model` is priced as: itself, or the model a snapshot
        (``gpt-4.1-2025-04-14``) or fine-tune (``ft:gpt-4.1:org::id``) is named after."""
        name = model.split(":")[1] if model.startswith("ft:") and model.count(":") >= 1 else model
        if name in self.models:
            return name
        matches = [listed for listed in self.models if name.startswith(listed + "-")]
        return max(matches, key=len) if matches else None

    def cost(self, model: str, usage: dict[str, Any] | None, *, batch: bool = False) -> float | None:
        """Dollars for one response's usage (chat, responses or embeddings), or None when the
        model has no price or there is no usage."""
        if not isinstance(usage, dict):
            return None
        return self.counts_cost(model, usage_counts(usage), batch=batch)

    def counts_cost(self, model: str, counts: UsageCounts, *, batch: bool = False) -> float | None:
        """Dollars for a response's token counts (:func:`~fleetgate.estimate.usage_counts`
        of its usage), or None when the model has no price."""
        price = self.price(model)
        if price is None:
            return None
        return price.dollars(counts.prompt, counts.output, counts.cached) * (self.batch_discount if batch else 1.0)


def _price(fields: PriceFields) -> ModelPrice:
    return ModelPrice(fields.input, fields.cached_input, fields.output)


def _describe(error: ValidationError) -> str:
    """A price file's errors, each naming the model and field: ``model "gpt-x", field
    "input": Input should be a valid number``."""
    parts = []
    for e in error.errors():
        loc = [str(x) for x in e["loc"]]
        if loc[:1] == ["models"] and len(loc) >= 3:
            where = f'model "{loc[1]}", field "{loc[2]}"'
        elif loc[:1] == ["models"] and len(loc) == 2:
            where = f'model "{loc[1]}"'
        else:
            where = f'"{".".join(loc)}"'
        parts.append(f"{where}: {e['msg']}")
    return "; ".join(parts)


@lru_cache(maxsize=1)
def default_prices() -> PriceTable:
    """The table shipped with fleetgate (see ``prices.toml``)."""
    return PriceTable.load(Path(__file__).with_name("prices.toml"))
