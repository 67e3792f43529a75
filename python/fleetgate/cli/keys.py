"""``fleetgate keys``: the keys callers of ``fleetgate serve`` present, made, listed and
revoked for the whole fleet (in Redis), or printed for a config (:mod:`fleetgate.serve.keys`)."""

from __future__ import annotations

import json
import time
from typing import Any

import click

from fleetgate.cli.shared import REDIS, call_or_fail

_CONFIG = click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False),
                       help="A fleetgate TOML file (its redis_url and [serve] keys).")


@click.group()
def keys() -> None:
    """Keys for `fleetgate serve`: made, listed and revoked for the whole fleet."""


def _keys(config_path: str | None, redis_url: str | None) -> Any:
    from fleetgate.config import GatewayConfig
    from fleetgate.serve.keys import Keys

    overrides = {"redis_url": redis_url} if redis_url else {}
    config = GatewayConfig.from_toml(config_path, **overrides) if config_path else GatewayConfig(**overrides)
    return Keys(config.serve, config.redis_url)


@keys.command("create")
@click.argument("name")
@click.option("--user", help="The user its calls are scoped to (their per-user quota and budget).")
@click.option("--team", help="The team its calls are scoped to.")
@click.option("--feature", help="The feature its calls are scoped to.")
@click.option("--model", "models", multiple=True, help="A model it may call (repeat; none: any).")
@click.option("--print", "for_config", is_flag=True,
              help="Keep it nowhere: print the key and the [[serve.keys]] entry to add to a config.")
@_CONFIG
@REDIS
def keys_create(name: str, user: str | None, team: str | None, feature: str | None, models: tuple[str, ...],
                for_config: bool, config_path: str | None, redis_url: str | None) -> None:
    """Make a key NAME; it is shown once, here (only its hash is kept)."""
    from fleetgate.serve.keys import key_hash, new_key

    if for_config:
        key = new_key()
        # A JSON string or array is a TOML basic string or array.
        entry = {"name": name, "hash": key_hash(key), "user": user, "team": team, "feature": feature,
                 "models": list(models) or None}
        click.echo(f"key: {key}\n\n[[serve.keys]]")
        for field, value in entry.items():
            if value:
                click.echo(f"{field} = {json.dumps(value)}")
        return
    store = _keys(config_path, redis_url)
    key = call_or_fail(lambda: store.create(name, user=user, team=team, feature=feature, models=list(models)))
    click.echo(f"key {name!r} made for the fleet; it is shown once:\n{key}")


@keys.command("list")
@_CONFIG
@REDIS
def keys_list(config_path: str | None, redis_url: str | None) -> None:
    """Every key: its name, where it is kept, its scope and the models it may call."""
    found = call_or_fail(lambda: _keys(config_path, redis_url).listed())
    if not found:
        click.echo("no keys: make one with `fleetgate keys create NAME`")
    for c in found:
        made = time.strftime("%Y-%m-%d", time.gmtime(c.created)) if c.created else "-"
        scope = ", ".join(f"{k} {v}" for k, v in (("user", c.user), ("team", c.team), ("feature", c.feature)) if v)
        click.echo(f"{c.name:<24} {c.source:<6} made {made}  {scope or 'no scope'}; "
                   f"models: {', '.join(c.models) or 'any'}")


@keys.command("revoke")
@click.argument("name")
@_CONFIG
@REDIS
def keys_revoke(name: str, config_path: str | None, redis_url: str | None) -> None:
    """Revoke the fleet's key NAME (servers stop taking it within [serve] key_cache_seconds)."""
    if not call_or_fail(lambda: _keys(config_path, redis_url).revoke(name)):
        raise click.ClickException(f"the fleet has no key named {name!r} (a key listed in a config is removed "
                                   "from the config)")
    click.echo(f"key {name!r} revoked")

