"""``fleetgate mode``: the fleet's degradation mode, set, cleared or shown."""

from __future__ import annotations

from typing import Any

import click

from fleetgate.cli.shared import REDIS, call_or_fail


@click.group()
def mode() -> None:
    """The fleet's degradation mode: full, reduced, cached-only, static or maintenance."""


def _mode_store(config_path: str | None, redis_url: str | None) -> Any:
    from fleetgate.modes import ModeStore

    if not redis_url and config_path:
        from fleetgate.config import GatewayConfig

        redis_url = GatewayConfig.from_toml(config_path).redis_url
    if not redis_url:
        raise click.UsageError("the fleet's mode lives in Redis: pass --redis URL (or a --config with redis_url); "
                               "in one process without Redis, call gate.modes.set(...)")
    return ModeStore(redis_url)


_MODE_CONFIG = click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False),
                            help="A fleetgate TOML file (for its redis_url).")


@mode.command("set")
@click.argument("name", metavar="MODE", type=click.Choice(["full", "reduced", "cached-only", "static", "maintenance"]))
@click.option("--for", "duration", help="How long it lasts (30m, 2h, 90s); until `fleetgate mode clear` without.")
@click.option("--reason", default="", help="Shown in every pod's log and in refusals.")
@_MODE_CONFIG
@REDIS
def mode_set(name: str, duration: str | None, reason: str, config_path: str | None, redis_url: str | None) -> None:
    """Put every pod in MODE (each honours it within a second). `full` pins full service
    against the pods' own judgement."""
    import getpass
    import socket

    from fleetgate import parse_duration

    seconds = None
    if duration is not None:
        try:
            seconds = parse_duration(duration)
        except ValueError as e:
            raise click.BadParameter(str(e), param_hint="--for") from e
    with _mode_store(config_path, redis_url) as store:
        state = call_or_fail(lambda: store.set(name, seconds, reason,
                                                by=f"{getpass.getuser()}@{socket.gethostname()}"))
    click.echo(f"fleet mode: {state.mode}" + (f" for {duration}" if duration else " until cleared")
               + f" ({state.reason})")


@mode.command("clear")
@_MODE_CONFIG
@REDIS
def mode_clear(config_path: str | None, redis_url: str | None) -> None:
    """Hand the mode back to each pod's own judgement."""
    with _mode_store(config_path, redis_url) as store:
        cleared = call_or_fail(store.clear)
    click.echo("the operator's mode is cleared" if cleared else "no operator's mode was set")


@mode.command("show")
@_MODE_CONFIG
@REDIS
def mode_show(config_path: str | None, redis_url: str | None) -> None:
    """The operator's mode (if any), and the mode each live pod serves in."""
    import time

    with _mode_store(config_path, redis_url) as store:
        operator = call_or_fail(store.read)
        pods = call_or_fail(store.pods)
    if operator is None:
        click.echo("operator: none (each pod judges its own mode)")
    else:
        left = f", {operator.until - time.time():.0f}s left" if operator.until is not None else ", until cleared"
        click.echo(f"operator: {operator.mode} (operator{left}): {operator.reason}")
    click.echo(f"pods: {len(pods)}")
    for pod in pods:
        click.echo(f"  {pod.pod}  {pod.mode} ({pod.source}{': ' + pod.reason if pod.reason else ''}), "
                   f"said {pod.age:.1f}s ago")
