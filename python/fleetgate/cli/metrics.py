"""``fleetgate metrics``: the workers' Prometheus metrics served from one place."""

from __future__ import annotations

import click


@click.group()
def metrics() -> None:
    """Prometheus metrics."""


@metrics.command("serve")
@click.option("--host", default="0.0.0.0", show_default=True, help="Address to listen on.")
@click.option("--port", default=9464, show_default=True, type=click.IntRange(0, 65535), help="Port; 0 picks a free one.")
@click.option("--dir", "directory", envvar="PROMETHEUS_MULTIPROC_DIR", required=True,
              type=click.Path(exists=True, file_okay=False),
              help="The workers' multiprocess directory (default: $PROMETHEUS_MULTIPROC_DIR).")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False),
              help="The fleet's fleetgate TOML file: its named budgets are shown too, read from its ledger.")
def metrics_serve(host: str, port: int, directory: str, config_path: str | None) -> None:
    """Serve the metrics of every worker process writing to --dir at /metrics, until interrupted."""
    import signal

    from prometheus_client import start_http_server

    from fleetgate.metrics import BudgetCollector, registry_for

    extra = []
    if config_path is not None:
        from fleetgate.budget.guard import Budgets
        from fleetgate.config import GatewayConfig
        from fleetgate.prices import PriceTable
        from fleetgate.privacy import Privacy
        from fleetgate._core import Limiter

        config = GatewayConfig.from_toml(config_path)
        if config.budgets.limits:
            limiter = Limiter(config.redis_url, failure_policy=config.failure_policy)
            budgets = Budgets(config.budgets, PriceTable.from_settings(config.prices), limiter, lambda name: None,
                              privacy=Privacy.from_settings(config.privacy, config.redis_url))
            extra.append(BudgetCollector(budgets))
    stop_signals = {signal.SIGINT, signal.SIGTERM}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
    server, thread = start_http_server(port, host, registry_for(extra, directory))
    click.echo(f"fleetgate metrics at http://{host}:{server.server_port}/metrics (Ctrl-C to stop)")
    signal.sigwait(stop_signals)
    server.shutdown()
    thread.join()
