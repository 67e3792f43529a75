"""Serving :class:`~fleetgate.serve.app.ServeApp` over HTTP with uvicorn.

Why uvicorn: with httptools and uvloop it is among the fastest HTTP/1.1 servers per core for
Python ASGI applications, the most widely run in production, and it has what a gateway in
a container needs: keep-alive toward clients, several worker processes under one
supervisor, and a graceful shutdown on SIGTERM that stops accepting and lets requests in
flight (streams too) finish within a deadline (``[serve] drain_seconds``). The request
path itself is fleetgate's (Rust core, one Redis round trip per decision); the server only
frames HTTP.

Several workers share the fleet's quotas, budgets and breakers through Redis (required:
without it each worker would hold a whole quota of its own); their metrics are gathered
through ``PROMETHEUS_MULTIPROC_DIR`` (a directory made for the run when it is not set).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from fleetgate.config import GatewayConfig
from fleetgate.errors import ConfigError
from fleetgate.serve.app import ServeApp

__all__ = ["CONFIG_ENV", "create", "run"]

#: Where each worker finds the config file the server was started with.
CONFIG_ENV = "FLEETGATE_SERVE_CONFIG"


def create() -> ServeApp:
    """The application of one worker: a gateway from ``$FLEETGATE_SERVE_CONFIG`` (or the
    environment alone), served."""
    from fleetgate.gateway import Gateway

    path = os.environ.get(CONFIG_ENV)
    return ServeApp(Gateway.from_config(path) if path else Gateway())


def run(config_path: str | Path | None = None, *, host: str | None = None, port: int | None = None,
        workers: int | None = None) -> None:
    """Serve until SIGTERM or SIGINT: the config's ``[serve]`` settings, the arguments
    given overriding them. ConfigError: several workers without Redis, or uvicorn missing."""
    try:
        import uvicorn
    except ImportError as e:
        raise ConfigError("fleetgate serve runs on uvicorn: pip install 'fleetgate[serve]'") from e
    config = GatewayConfig.from_toml(config_path) if config_path else GatewayConfig()
    settings = config.serve
    workers = workers or settings.workers
    if workers > 1 and config.redis_url is None:
        raise ConfigError(f"{workers} workers would each hold every quota and budget whole: set redis_url (or "
                          "FLEETGATE_REDIS_URL) so that they share them, or run one worker")
    if config_path is not None:
        os.environ[CONFIG_ENV] = str(Path(config_path).resolve())
    if workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="fleetgate-metrics-")
    uvicorn.run("fleetgate.serve.server:create", factory=True, host=host or settings.host,
                port=settings.port if port is None else port, workers=workers, lifespan="on",
                loop=_best("uvloop", "auto"), http=_best("httptools", "auto"),
                timeout_graceful_shutdown=int(settings.drain_seconds) or None,
                timeout_keep_alive=int(settings.keep_alive_seconds), access_log=False, log_level="warning")


def _best(module: str, otherwise: str) -> str:
    """`module` when it is installed (the ``serve`` extra installs it), else `otherwise`."""
    import importlib.util

    return module if importlib.util.find_spec(module) is not None else otherwise
