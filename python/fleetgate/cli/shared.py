"""What several commands share: a gateway built from their options, fleetgate's errors said as
the command's failure, and the ``--redis`` option that overrides a config's."""

from __future__ import annotations

from typing import Any

import click


def gateway_for(config_path: str | None, redis_url: str | None, base_url: str | None) -> Any:
    """A gateway from the config file (if any), with the command line's upstream and Redis."""
    from fleetgate.gateway import Gateway

    overrides: dict[str, Any] = {}
    if base_url:
        overrides["base_url"] = base_url
    if redis_url:
        overrides["redis_url"] = redis_url
    return Gateway.from_config(config_path, **overrides) if config_path else Gateway(**overrides)


def call_or_fail(call: Any) -> Any:
    """`call()`, with a fleetgate error (or a bad value) said as the command's failure."""
    from fleetgate.errors import FleetgateError

    try:
        return call()
    except (FleetgateError, ValueError) as e:
        raise click.ClickException(str(e)) from e


REDIS = click.option("--redis", "redis_url", envvar="FLEETGATE_REDIS_URL", help="Overrides the config's redis_url.")
