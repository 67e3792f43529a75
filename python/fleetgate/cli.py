"""The ``fleetgate`` command."""

from __future__ import annotations

import click

from fleetgate import __version__


@click.group()
@click.version_option(__version__, prog_name="fleetgate")
def main() -> None:
    """fleetgate: one OpenAI quota, shared exactly by every pod of a service."""


@main.command()
@click.option("--store", envvar="FLEETGATE_REDIS_URL", default=None, help="redis://… or redis+cluster://…; embedded when omitted.")
@click.option("--callers", default=16, show_default=True, type=click.IntRange(1, 1024), help="Concurrent callers.")
@click.option("--seconds", default=3.0, show_default=True, type=click.FloatRange(0.5, 600), help="How long to run.")
def demo(store: str | None, callers: int, seconds: float) -> None:
    """Many callers share one quota and get exactly its allowance."""
    from fleetgate.demo import run_limiter_demo

    run_limiter_demo(store=store, callers=callers, seconds=seconds)
