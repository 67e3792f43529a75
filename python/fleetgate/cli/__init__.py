"""The ``fleetgate`` command: one module a command or command group, gathered here under
:func:`main` (the console script ``fleetgate = "fleetgate.cli:main"``)."""

from __future__ import annotations

from typing import Any

import click

from fleetgate import __version__
from fleetgate.errors import ConfigError
from fleetgate.cli import batch, cache, check, costs, demo, fake_openai, metrics, mode, prompts, rollout, run

__all__ = ["main"]


class _Commands(click.Group):
    """The commands, with a config that does not load said as the command's failure (its
    problems, one per line) rather than as a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ConfigError as e:
            failed = click.ClickException(str(e))
        raise failed


@click.group(cls=_Commands)
@click.version_option(__version__, prog_name="fleetgate")
def main() -> None:
    """fleetgate: one OpenAI quota, shared exactly by every pod of a service."""


for command in (demo.demo, run.run, batch.batch, costs.costs, fake_openai.fake_openai, metrics.metrics, cache.cache,
                rollout.rollout, check.check, prompts.prompts, mode.mode):
    main.add_command(command)
