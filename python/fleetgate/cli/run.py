"""``fleetgate run``: every request of a file through the gateway, live or through the Batch API."""

from __future__ import annotations

import click

from fleetgate.cli.batch import batch_jobs, progress_bar
from fleetgate.cli.shared import call_or_fail, gateway_for


@click.command()
@click.argument("input_path", metavar="INPUT.jsonl", type=click.Path(exists=True, dir_okay=False))
@click.option("--out", "output_path", required=True, type=click.Path(dir_okay=False),
              help="Results, one line per custom_id (Batch API output format); appended to on resume.")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False), help="A fleetgate TOML file.")
@click.option("--base-url", help="The upstream API (default: the config's, or the SDK's).")
@click.option("--redis", "redis_url", help="Share the quotas through this Redis (redis://… or redis+cluster://…).")
@click.option("--concurrency", default=32, show_default=True, type=click.IntRange(1, 4096),
              help="Requests in flight at most; the quotas set the pace.")
@click.option("--errors", "errors_path", type=click.Path(dir_okay=False),
              help="Where bad input lines are reported (default: OUTPUT.errors.jsonl).")
@click.option("--api-key", envvar="OPENAI_API_KEY", help="Defaults to $OPENAI_API_KEY.")
@click.option("--batch", "through_batch", is_flag=True,
              help="Send the run through the Batch API (half the price, within 24 h) instead of live calls.")
@click.option("--name", help="With --batch: the job's name (running again with it resumes the job).")
def run(input_path: str, output_path: str, config_path: str | None, base_url: str | None, redis_url: str | None,
        concurrency: int, errors_path: str | None, api_key: str | None, through_batch: bool,
        name: str | None) -> None:
    """Send every request of INPUT.jsonl through the gateway; resumable.

    \b
    Lines may target any endpoint the Batch API accepts, each body checked for it.
    Chat completions, responses and embeddings wait for the fleet's quotas and budgets;
    completions, moderations and images pass through the gateway untouched (the summary
    counts them as passed through ungated)."""
    if through_batch:
        jobs = batch_jobs(config_path, redis_url, base_url, api_key, None)
        done = progress_bar(jobs)
        try:
            report = call_or_fail(lambda: jobs.submit(input_path, name, skip_bad_lines=True))
        finally:
            done()
        summary = call_or_fail(lambda: jobs.collect(report.job.id, output_path, errors_path))
        click.echo(report.render())
        click.echo(f"{summary.answered} answers in {summary.output}, {summary.dead} dead letters in {summary.dead_letters}")
        return
    from fleetgate.run import run_file

    gate = gateway_for(config_path, redis_url, base_url)
    if not api_key:
        raise click.UsageError("no API key: pass --api-key or set OPENAI_API_KEY")
    summary = run_file(input_path, output_path, gateway=gate, concurrency=concurrency,
                       errors_path=errors_path, api_key=api_key)
    if summary.bad_lines:
        click.echo(f"{summary.bad_lines} bad input lines were skipped: see the errors file", err=True)
    click.echo(summary.render())
