"""``fleetgate costs``: the fleet's spend from the ledger; ``fleetgate costs reconcile``: the
ledger against what OpenAI billed (its Usage and Costs APIs)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from fleetgate.cli.shared import call_or_fail, gateway_for

if TYPE_CHECKING:
    from fleetgate.gateway import Gateway

_CONFIG = click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False),
                       help="A fleetgate TOML file.")
_REDIS = click.option("--redis", "redis_url", envvar="FLEETGATE_REDIS_URL",
                      help="The Redis the fleet records its spend in.")


@click.group(invoke_without_command=True)
@_CONFIG
@_REDIS
@click.option("--since", type=click.DateTime(["%Y-%m-%d"]), help="First day (default: 6 days before --until).")
@click.option("--until", type=click.DateTime(["%Y-%m-%d"]), help="Last day (default: today).")
@click.option("--by", type=click.Choice(["model", "feature", "user", "team", "day"]), default="model",
              show_default=True, help="What to sum spend by.")
@click.pass_context
def costs(ctx: click.Context, config_path: str | None, redis_url: str | None, since: Any, until: Any, by: Any) -> None:
    """Print the fleet's spend from the ledger, in dollars, as a table."""
    ctx.obj = {"config_path": config_path, "redis_url": redis_url}
    if ctx.invoked_subcommand is not None:
        return
    from fleetgate.budget.report import format_table

    gate = _fleet_gateway(config_path, redis_url)
    rows = call_or_fail(lambda: gate.costs(since.date() if since else None, until.date() if until else None, by))
    click.echo(format_table(rows, by) if rows else "no spend recorded in those days")


@costs.command()
@_CONFIG
@_REDIS
@click.option("--since", required=True, type=click.DateTime(["%Y-%m-%d"]), help="First day (UTC).")
@click.option("--until", type=click.DateTime(["%Y-%m-%d"]),
              help="Last day (UTC; default: yesterday, the last whole day).")
@click.option("--project", help="The OpenAI project to compare with (default: the config's openai_project, else "
                                "OPENAI_PROJECT_ID; neither: the whole organization).")
@click.option("--tolerance", type=click.FloatRange(min=0), default=0.01, show_default=True,
              help="The share of a day's spend on a model the two sides may differ by.")
@click.pass_context
def reconcile(ctx: click.Context, config_path: str | None, redis_url: str | None, since: Any, until: Any,
              project: str | None, tolerance: float) -> None:
    """Compare the ledger with what OpenAI billed, per day, project and model; exit 1 when
    a difference is over the tolerance. Needs an admin key in OPENAI_ADMIN_KEY."""
    group = ctx.obj or {}
    gate = _fleet_gateway(config_path or group.get("config_path"), redis_url or group.get("redis_url"))
    report = call_or_fail(lambda: gate.reconcile(since.date(), until.date() if until else None, project=project,
                                                 tolerance=tolerance))
    if not report.rows:
        click.echo(f"no spend from {report.since} to {report.until}, in the ledger or at OpenAI ({report.project})")
        return
    click.echo(report.table())
    differing = report.differing()
    if differing:
        click.echo(f"{len(differing)} of {len(report.rows)} rows differ by more than {tolerance:.2%}: spend the ledger "
                   "did not record (calls made around the gateway, or from pods without it), or prices that differ "
                   "from OpenAI's ([prices])", err=True)
        ctx.exit(1)
    click.echo(f"the ledger matches OpenAI within {tolerance:.2%} on every day and model")


def _fleet_gateway(config_path: str | None, redis_url: str | None) -> Gateway:
    """The gateway whose ledger the commands read: it must keep it in Redis."""
    gate: Gateway = call_or_fail(lambda: gateway_for(config_path, redis_url, None))
    if gate.config.redis_url is None:
        raise click.UsageError("the fleet's ledger lives in Redis: pass --redis URL (or a --config with redis_url); "
                               "a gateway without Redis keeps its ledger in its own process (gate.costs())")
    return gate
