"""``fleetgate check``: a config and its surroundings checked before a deploy."""

from __future__ import annotations

from typing import Any

import click


@click.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="The fleetgate TOML file to check.")
@click.option("--env", type=click.Choice(["development", "dev", "staging", "production", "prod"]),
              help="The environment (default: $FLEETGATE_ENV, or the file's env).")
@click.option("--redis", "redis_url", help="Overrides the config's redis_url.")
@click.option("--timeout", default=5.0, show_default=True, type=click.FloatRange(0.1, 120),
              help="Seconds each reach for Redis or the upstream may take.")
def check(config_path: str | None, env: str | None, redis_url: str | None, timeout: float) -> None:
    """Before a deploy: the config valid, Redis and the upstream reachable, budgets and metrics
    on, every model it names or the fleet gated lately priced, no secret in the config file.
    One line per check; exits 1 on any problem (FAIL or WARN)."""
    from fleetgate.check import render, run_checks

    overrides: dict[str, Any] = {}
    if env:
        overrides["env"] = env
    if redis_url:
        overrides["redis_url"] = redis_url
    if not render(run_checks(config_path, timeout=timeout, **overrides), click.echo):
        raise SystemExit(1)
