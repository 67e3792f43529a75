"""``fleetgate batch``: Batch API jobs submitted, watched, retried and collected."""

from __future__ import annotations

from typing import Any

import click

from fleetgate.cli.shared import call_or_fail, gateway_for


@click.group()
def batch() -> None:
    """Batch API jobs: submitted, watched, retried and collected until every request has one result."""


def batch_jobs(config_path: str | None, redis_url: str | None, base_url: str | None, api_key: str | None,
               directory: str | None) -> Any:
    gate = gateway_for(config_path, redis_url, base_url)
    return gate.batches(directory=directory, **({"api_key": api_key} if api_key else {}))


def _batch_options(command: Any) -> Any:
    for option in reversed([
        click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False),
                     help="A fleetgate TOML file ([batch] settings, budgets, prices)."),
        click.option("--redis", "redis_url", envvar="FLEETGATE_REDIS_URL",
                     help="The fleet's job record (default: a SQLite file in --dir)."),
        click.option("--base-url", help="The upstream API (default: the config's, or the SDK's)."),
        click.option("--api-key", envvar="OPENAI_API_KEY", help="Defaults to $OPENAI_API_KEY."),
        click.option("--dir", "directory", envvar="FLEETGATE_BATCH_DIR", type=click.Path(file_okay=False),
                     help="Where jobs are kept without Redis, and chunk files until sent ([batch] directory)."),
    ]):
        command = option(command)
    return command


def progress_bar(jobs: Any) -> Any:
    from tqdm import tqdm

    bar: Any = None

    def show(report: Any) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=report.job.lines, unit="line", desc=f"batch {report.job.id}", dynamic_ncols=True)
        bar.n = report.succeeded + report.dead
        bar.set_postfix(dead=report.dead, cost=f"${report.cost:.4f}", refresh=False)
        bar.refresh()

    jobs.on_progress = show
    return lambda: bar.close() if bar is not None else None


@batch.command("submit")
@click.argument("input_path", metavar="INPUT.jsonl", type=click.Path(exists=True, dir_okay=False))
@click.option("--name", help="The job's name (default: generated); submitting a name again resumes that job.")
@click.option("--skip-bad-lines", is_flag=True, help="Set invalid lines aside (listed in the job's rejected.jsonl) "
                                                       "instead of refusing the file.")
@click.option("--max-attempts", type=click.IntRange(1, 20), help="Sends per line at most ([batch] max_attempts).")
@click.option("--feature", help="The feature whose budgets the job spends from.")
@click.option("--detach", is_flag=True, help="Return once the batches are sent; watch with `fleetgate batch resume`.")
@_batch_options
def batch_submit(input_path: str, name: str | None, skip_bad_lines: bool, max_attempts: int | None,
                 feature: str | None, detach: bool, **common: Any) -> None:
    """Check INPUT.jsonl, send it as batches, and watch them to the end (unless --detach).

    \b
    One endpoint per file, any the Batch API accepts: /v1/responses, /v1/chat/completions,
    /v1/embeddings, /v1/completions, /v1/moderations, /v1/images/generations,
    /v1/images/edits (/v1/videos no longer: the Videos API shut down on 2026-09-24).
    Each body is checked for its endpoint; embeddings batches hold at most 50,000 inputs."""
    jobs = batch_jobs(**common)
    done = progress_bar(jobs) if not detach else (lambda: None)
    try:
        report = call_or_fail(lambda: jobs.submit(input_path, name, skip_bad_lines=skip_bad_lines,
                                                 max_attempts=max_attempts, feature=feature, wait=not detach))
    finally:
        done()
    click.echo(report.render())


@batch.command("resume")
@click.argument("job")
@click.option("--wait-for-lease", default=0.0, type=click.FloatRange(0), show_default=True,
              help="Seconds to wait while another process watches the job.")
@_batch_options
def batch_resume(job: str, wait_for_lease: float, **common: Any) -> None:
    """Watch JOB to the end from here (after a crash, or a --detach submission)."""
    jobs = batch_jobs(**common)
    done = progress_bar(jobs)
    try:
        report = call_or_fail(lambda: jobs.watch(job, wait_for_lease=wait_for_lease))
    finally:
        done()
    click.echo(report.render())


@batch.command("status")
@click.argument("job", required=False)
@_batch_options
def batch_status(job: str | None, **common: Any) -> None:
    """Show JOB, or every job."""
    reports = call_or_fail(lambda: batch_jobs(**common).status(job))
    click.echo("\n".join(r.render() for r in reports) if reports else "no batch jobs")


@batch.command("collect")
@click.argument("job")
@click.option("--out", "output_path", required=True, type=click.Path(dir_okay=False),
              help="The answers, one line per custom_id (Batch API output format).")
@click.option("--dead-letters", type=click.Path(dir_okay=False),
              help="Requests not answered, with their errors (default: OUTPUT.dead.jsonl).")
@_batch_options
def batch_collect(job: str, output_path: str, dead_letters: str | None, **common: Any) -> None:
    """Write JOB's answers to --out and the requests it could not answer to the dead letters."""
    summary = call_or_fail(lambda: batch_jobs(**common).collect(job, output_path, dead_letters))
    click.echo(f"{summary.answered} answers in {summary.output}, {summary.dead} dead letters in {summary.dead_letters}")


@batch.command("cancel")
@click.argument("job")
@_batch_options
def batch_cancel(job: str, **common: Any) -> None:
    """Cancel JOB: its watcher cancels its batches and keeps what they answered."""
    call_or_fail(lambda: batch_jobs(**common).cancel(job))
    click.echo(f"job {job}: cancellation requested; its watcher stops its batches")
