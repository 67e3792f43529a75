"""The price table in use, as ``fleetgate prices`` prints it: one row per model and tier,
with input, cached input, cache write and output dollars per 1M tokens, the long-context
rates, and the source of any model whose figures do not come from the table's source.

    $ fleetgate prices --model 'gpt-6*' --tier default --tier priority
    prices: https://developers.openai.com/api/docs/pricing, read 2026-12-06 (dollars per 1M tokens; – : billed as input)
    model          tier       input  cached   write  output  long context
    gpt-6-astra    default    10.00    1.00   12.50   50.00  above 272000: 20.00 / 2.00 / 25.00 / 75.00
    ...
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from dataclasses import dataclass

from fleetgate.prices import TIERS, PriceTable, Rates

__all__ = ["PriceRow", "format_prices", "price_rows"]


@dataclass(frozen=True, slots=True)
class PriceRow:
    """One model at one tier: its rates, its long-context rates (above `above` prompt
    tokens; None: none), and its own source (None: the table's)."""

    model: str
    tier: str
    rates: Rates
    long: Rates | None
    above: int
    source: str | None


def price_rows(table: PriceTable, pattern: str | None = None, tiers: Iterable[str] = TIERS) -> list[PriceRow]:
    """The rows of `table` for the models matching `pattern` (a shell-style pattern such as
    ``gpt-5*``, or a name a snapshot or fine-tune of which is priced: ``gpt-4o-2024-08-06``
    shows ``gpt-4o``), at each of `tiers`, models in name order."""
    chosen = set(tiers)
    wanted = [t for t in TIERS if t in chosen]
    if pattern is None:
        names = sorted(table.models)
    else:
        names = sorted(name for name in table.models if fnmatch.fnmatchcase(name, pattern))
        if not names and (listed := table.priced_as(pattern)) is not None:
            names = [listed]
    rows = []
    for name in names:
        price = table.models[name]
        own = price.source if price.source and price.source != table.source else None
        for tier in wanted:
            tier_price = price.tiers[tier]
            rows.append(PriceRow(name, tier, tier_price.rates, tier_price.long, tier_price.above, own))
    return rows


def _dollars(value: float | None) -> str:
    if value is None:
        return "–"
    text = f"{value:.4f}".rstrip("0")
    return text + "0" * max(0, 2 - len(text.split(".")[1]))


def _long(row: PriceRow) -> str:
    if row.long is None:
        return ""
    r = row.long
    return (f"above {row.above}: {_dollars(r.input)} / {_dollars(r.cached_input)} / {_dollars(r.cache_write)} / "
            f"{_dollars(r.output)}")


def format_prices(table: PriceTable, rows: list[PriceRow], pattern: str | None = None) -> str:
    """`rows` as a table under a line naming the table's source and the day it was read
    (`pattern`: what the rows were chosen by, named when none matched)."""
    read = f", read {table.read.isoformat()}" if table.read else ""
    head = f"prices: {table.source or 'no source given'}{read} (dollars per 1M tokens; – : billed as input)"
    if not rows and pattern is None:
        return head + "\nthe table lists no model: add prices under [prices.models] or in a [prices] file"
    if not rows:
        return (head + f"\nno priced model matches {pattern!r}: calls to it are refused under a budget "
                       f'([budgets] unpriced = "refuse"); price it under [prices.models."{pattern}"]')
    width = max(len("model"), *(len(r.model) for r in rows))
    lines = [head, f"{'model':<{width}}  {'tier':<8} {'input':>8} {'cached':>8} {'write':>8} {'output':>8}  "
                   "long context (input / cached / write / output)"]
    previous = None
    for r in rows:
        line = (f"{r.model:<{width}}  {r.tier:<8} {_dollars(r.rates.input):>8} {_dollars(r.rates.cached_input):>8} "
                f"{_dollars(r.rates.cache_write):>8} {_dollars(r.rates.output):>8}  {_long(r)}")
        if r.source and r.model != previous:  # once per model, on its first row
            line += f"  [source: {r.source}]"
        previous = r.model
        lines.append(line.rstrip())
    return "\n".join(lines)
