"""``fleetgate prices``: the price table a gateway with this config uses."""

from __future__ import annotations

import click

#: fleetgate.prices.TIERS, written out so that `fleetgate --help` imports no price machinery.
TIERS = ("default", "batch", "flex", "priority")


@click.command()
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False),
              help="A fleetgate TOML file: its [prices] file and [prices.models] (default: the shipped table).")
@click.option("--model", "pattern", help="Only models matching this pattern (gpt-5*), or the entry a snapshot "
                                         "or fine-tune is priced as.")
@click.option("--tier", "tiers", multiple=True, type=click.Choice(TIERS),
              help="Only this tier (repeatable; default: every tier).")
def prices(config_path: str | None, pattern: str | None, tiers: tuple[str, ...]) -> None:
    """Print the price table in use: per model and tier, input, cached input, cache write and
    output dollars per 1M tokens and the long-context rates, with the table's source and date."""
    from fleetgate.config import GatewayConfig
    from fleetgate.price_listing import format_prices, price_rows
    from fleetgate.prices import PriceTable

    settings = GatewayConfig.from_toml(config_path).prices if config_path else GatewayConfig().prices
    table = PriceTable.from_settings(settings)
    rows = price_rows(table, pattern, tiers or TIERS)
    click.echo(format_prices(table, rows, pattern))
    if pattern is not None and not rows:
        raise SystemExit(1)
