"""``fleetgate serve``: the gateway as an OpenAI-compatible server (:mod:`fleetgate.serve`)."""

from __future__ import annotations

import click

from fleetgate.cli.shared import call_or_fail


@click.command()
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False),
              help="A fleetgate TOML file (default: the FLEETGATE_* environment alone).")
@click.option("--host", help="The address to listen on (default: [serve] host, 127.0.0.1).")
@click.option("--port", type=click.IntRange(0, 65_535), help="The port (default: [serve] port, 8400).")
@click.option("--workers", type=click.IntRange(1, 256), help="Worker processes (default: [serve] workers; "
                                                              "several share the quotas through Redis).")
def serve(config_path: str | None, host: str | None, port: int | None, workers: int | None) -> None:
    """Serve OpenAI's API (/v1/…) through the gateway, for clients in any language.

    Point any OpenAI client's base URL at http://HOST:PORT/v1 with a key made by
    `fleetgate keys create`. /healthz, /readyz and /metrics are beside it. SIGTERM drains:
    calls in flight finish within [serve] drain_seconds."""
    from fleetgate.serve.server import run

    call_or_fail(lambda: run(config_path, host=host, port=port, workers=workers))
