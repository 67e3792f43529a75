"""``fleetgate fake-openai``: a local OpenAI-compatible API."""

from __future__ import annotations

import click


@click.command("fake-openai")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (loopback by default).")
@click.option("--port", default=8089, show_default=True, type=click.IntRange(0, 65535), help="Port; 0 picks a free one.")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False),
              help="A TOML or JSON file of FakeConfig settings (limits, faults, batch timings).")
def fake_openai(host: str, port: int, config_path: str | None) -> None:
    """Serve a local OpenAI-compatible API until interrupted."""
    import signal

    from fleetgate.testing.fake_openai import FakeConfig, FakeOpenAI, load_config

    try:
        config = load_config(config_path) if config_path else FakeConfig()
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--config") from e
    stop_signals = {signal.SIGINT, signal.SIGTERM}
    # Blocked before the server thread starts, so only sigwait below receives them.
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
    with FakeOpenAI(config, host=host, port=port) as server:
        click.echo(f"fake OpenAI API at {server.base_url} (Ctrl-C to stop)")
        signal.sigwait(stop_signals)
