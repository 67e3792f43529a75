"""Model prices as data (``prices.toml`` beside this file, or a file of your own), and the
cost of a response's ``usage``."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

__all__ = ["ModelPrice", "PriceTable", "default_prices"]


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """Dollars per million tokens."""

    input: float
    cached_input: float | None = None
    output: float = 0.0


@dataclass(frozen=True)
class PriceTable:
    models: dict[str, ModelPrice]
    batch_discount: float = 0.5

    @classmethod
    def load(cls, path: str | Path) -> PriceTable:
        data = tomllib.loads(Path(path).read_text())
        models = {name: ModelPrice(**fields) for name, fields in data.get("models", {}).items()}
        return cls(models, float(data.get("batch_discount", 0.5)))

    def price(self, model: str) -> ModelPrice | None:
        """The price of `model`, or of the longest listed name it starts with (dated snapshots)."""
        if model in self.models:
            return self.models[model]
        matches = [name for name in self.models if model.startswith(name + "-")]
        return self.models[max(matches, key=len)] if matches else None

    def cost(self, model: str, usage: dict[str, Any] | None, *, batch: bool = False) -> float | None:
        """Dollars for one response's usage (chat, responses or embeddings), or None when the
        model has no price."""
        price = self.price(model)
        if price is None or not isinstance(usage, dict):
            return None
        prompt = int(usage.get("prompt_tokens", usage.get("input_tokens", 0)) or 0)
        output = int(usage.get("completion_tokens", usage.get("output_tokens", 0)) or 0)
        details = usage.get("prompt_tokens_details") or usage.get("input_tokens_details") or {}
        cached = int(details.get("cached_tokens", 0) or 0) if price.cached_input is not None else 0
        dollars = ((prompt - cached) * price.input + cached * (price.cached_input or 0.0) + output * price.output) / 1e6
        return dollars * (self.batch_discount if batch else 1.0)


@lru_cache(maxsize=1)
def default_prices() -> PriceTable:
    """The table shipped with fleetgate (see ``prices.toml``)."""
    return PriceTable.load(Path(__file__).with_name("prices.toml"))
