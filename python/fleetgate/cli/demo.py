"""``fleetgate demo``: a workload through the gateway against a local fake OpenAI."""

from __future__ import annotations

import click


@click.command()
@click.option("--requests", default=240, show_default=True, type=click.IntRange(1, 100_000), help="Requests to send.")
@click.option("--redis", "redis_url", envvar="FLEETGATE_REDIS_URL", default=None,
              help="Share the quota through this Redis; embedded when omitted.")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 64),
              help="Processes sharing the quota (needs --redis when more than 1).")
def demo(requests: int, redis_url: str | None, workers: int) -> None:
    """Run a workload through the gateway against a local fake OpenAI."""
    from fleetgate.demo import run_demo

    if workers > 1 and not redis_url:
        raise click.UsageError("several workers share a quota through Redis: pass --redis URL")
    run_demo(requests=requests, redis_url=redis_url, workers=workers)
