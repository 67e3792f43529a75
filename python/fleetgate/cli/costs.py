"""``fleetgate costs``: the fleet's spend from the ledger."""

from __future__ import annotations

from typing import Any

import click


@click.command()
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False), help="A fleetgate TOML file.")
@click.option("--redis", "redis_url", envvar="FLEETGATE_REDIS_URL", help="The Redis the fleet records its spend in.")
@click.option("--since", type=click.DateTime(["%Y-%m-%d"]), help="First day (default: 6 days before --until).")
@click.option("--until", type=click.DateTime(["%Y-%m-%d"]), help="Last day (default: today).")
@click.option("--by", type=click.Choice(["model", "feature", "user", "team", "day"]), default="model",
              show_default=True, help="What to sum spend by.")
def costs(config_path: str | None, redis_url: str | None, since: Any, until: Any, by: Any) -> None:
    """Print the fleet's spend from the ledger, in dollars, as a table."""
    from fleetgate.budget.report import format_table
    from fleetgate.errors import FleetgateError
    from fleetgate.gateway import Gateway

    overrides: dict[str, Any] = {"redis_url": redis_url} if redis_url else {}
    gate = Gateway.from_config(config_path, **overrides) if config_path else Gateway(**overrides)
    if gate.config.redis_url is None:
        raise click.UsageError("the fleet's ledger lives in Redis: pass --redis URL (or a --config with redis_url); "
                               "a gateway without Redis keeps its ledger in its own process (gate.costs())")
    try:
        rows = gate.costs(since.date() if since else None, until.date() if until else None, by)
    except FleetgateError as e:
        raise click.ClickException(str(e)) from e
    click.echo(format_table(rows, by) if rows else "no spend recorded in those days")
