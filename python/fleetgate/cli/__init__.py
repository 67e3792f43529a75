"""The ``fleetgate`` command: one module a command or command group, gathered here under
:func:`main` (the console script ``fleetgate = "fleetgate.cli:main"``). A command's module
is imported only when that command runs or help lists it, so ``fleetgate --help`` and
``fleetgate --version`` start at once."""

from __future__ import annotations

import importlib
from typing import Any

import click

from fleetgate.errors import ConfigError

__all__ = ["main"]

#: Command name → (its module, the click command's name there).
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("fleetgate.cli.demo", "demo"),
    "run": ("fleetgate.cli.run", "run"),
    "batch": ("fleetgate.cli.batch", "batch"),
    "costs": ("fleetgate.cli.costs", "costs"),
    "prices": ("fleetgate.cli.prices", "prices"),
    "fake-openai": ("fleetgate.cli.fake_openai", "fake_openai"),
    "metrics": ("fleetgate.cli.metrics", "metrics"),
    "cache": ("fleetgate.cli.cache", "cache"),
    "rollout": ("fleetgate.cli.rollout", "rollout"),
    "check": ("fleetgate.cli.check", "check"),
    "prompts": ("fleetgate.cli.prompts", "prompts"),
    "mode": ("fleetgate.cli.mode", "mode"),
    "serve": ("fleetgate.cli.serve", "serve"),
    "keys": ("fleetgate.cli.keys", "keys"),
}


class LazyGroup(click.Group):
    """A click group whose commands (:data:`COMMANDS`) are imported on first use, and that
    reports a config that does not load as the command's failure (its problems, one per
    line) rather than as a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ConfigError as e:
            failed = click.ClickException(str(e))
        raise failed

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in COMMANDS and cmd_name not in self.commands:
            module, attribute = COMMANDS[cmd_name]
            command = getattr(importlib.import_module(module), attribute)
            if not isinstance(command, click.Command) or command.name != cmd_name:
                raise TypeError(f"{module}.{attribute} is not the click command {cmd_name!r}: fix COMMANDS in "
                                f"{__name__}")
            self.add_command(command)
        return super().get_command(ctx, cmd_name)


def _print_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    from fleetgate._core import __version__

    click.echo(f"fleetgate, version {__version__}")
    ctx.exit()


@click.group(cls=LazyGroup)
@click.option("--version", is_flag=True, expose_value=False, is_eager=True, callback=_print_version,
              help="Show the version and exit.")
def main() -> None:
    """fleetgate: one OpenAI quota, shared exactly by every pod of a service."""
