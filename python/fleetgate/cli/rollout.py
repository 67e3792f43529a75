"""``fleetgate rollout``: canary rollouts shown, or steered by hand."""

from __future__ import annotations

from typing import Any

import click

from fleetgate.cli.shared import REDIS


@click.group()
def rollout() -> None:
    """Canary rollouts ([routing.rollouts] of a config): show them, or steer one by hand."""


def _rollouts(config_path: str, redis_url: str | None) -> Any:
    from fleetgate.config import GatewayConfig
    from fleetgate.router import Rollouts

    config = GatewayConfig.from_toml(config_path, **({"redis_url": redis_url} if redis_url else {}))
    if config.redis_url is None:
        raise click.UsageError("a fleet's rollouts live in Redis: pass --redis URL (or a --config with redis_url)")
    # An operator's view: it reads and steers, and never judges a step itself.
    return Rollouts(config.routing.rollouts, config.redis_url, judge=False)


_CONFIG = click.option("--config", "config_path", required=True, type=click.Path(exists=True, dir_okay=False),
                       help="The fleet's fleetgate TOML file.")


@rollout.command("show")
@_CONFIG
@REDIS
def rollout_show(config_path: str, redis_url: str | None) -> None:
    """Each rollout's state, share and the figures of its current step."""
    rollouts = _rollouts(config_path, redis_url)
    for name in rollouts.rules:
        state = rollouts.state(name)
        click.echo(f"{name}: {state.status}, canary at {rollouts.share(name, state):.0%} (step {state.step}, "
                   f"version {state.version}){': ' + state.reason if state.reason else ''}")
        for side in ("baseline", "canary"):
            click.echo(f"  {side}: {rollouts.figures(name, side).describe()}")
    rollouts.close()


@rollout.command("set")
@_CONFIG
@REDIS
@click.argument("name")
@click.argument("action", type=click.Choice(["pause", "resume", "promote", "rollback", "pin"]))
@click.option("--step", type=int, help="With pin: the step (an index of the rollout's steps) to hold.")
def rollout_set(config_path: str, redis_url: str | None, name: str, action: str, step: int | None) -> None:
    """Pause, resume, pin at a step, or force a promotion or a rollback, for every pod."""
    from fleetgate.errors import FleetgateError

    rollouts = _rollouts(config_path, redis_url)
    try:
        if action == "pin":
            if step is None:
                raise click.UsageError("pin needs --step N")
            state = rollouts.pin(name, step)
        elif action in ("promote", "rollback"):
            state = rollouts.force(name, action)
        else:
            state = getattr(rollouts, action)(name)
    except FleetgateError as e:
        raise click.ClickException(str(e)) from e
    finally:
        rollouts.close()
    click.echo(f"{name}: {state.status}, canary at {rollouts.share(name, state):.0%}")
