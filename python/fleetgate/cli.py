"""The ``fleetgate`` command."""

from __future__ import annotations

from typing import Any

import click

from fleetgate import __version__


@click.group()
@click.version_option(__version__, prog_name="fleetgate")
def main() -> None:
    """fleetgate: one OpenAI quota, shared exactly by every pod of a service."""


@main.command()
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


@main.command()
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
    """Send every request of INPUT.jsonl through the gateway; resumable."""
    if through_batch:
        jobs = _jobs(config_path, redis_url, base_url, api_key, None)
        done = _progress(jobs)
        try:
            report = _call_or_fail(lambda: jobs.submit(input_path, name, skip_bad_lines=True))
        finally:
            done()
        summary = _call_or_fail(lambda: jobs.collect(report.job.id, output_path, errors_path))
        click.echo(report.render())
        click.echo(f"{summary.answered} answers in {summary.output}, {summary.dead} dead letters in {summary.dead_letters}")
        return
    from fleetgate.run import run_file

    gate = _gateway(config_path, redis_url, base_url)
    if not api_key:
        raise click.UsageError("no API key: pass --api-key or set OPENAI_API_KEY")
    summary = run_file(input_path, output_path, gateway=gate, concurrency=concurrency,
                       errors_path=errors_path, api_key=api_key)
    if summary.bad_lines:
        click.echo(f"{summary.bad_lines} bad input lines were skipped: see the errors file", err=True)
    models = {limits.requests_per_minute for limits in gate.config.models.values() if limits.requests_per_minute}
    click.echo(summary.render(quota_rpm=models.pop() if len(models) == 1 else None))


@main.group()
def batch() -> None:
    """Batch API jobs: submitted, watched, retried and collected until every request has one result."""


def _gateway(config_path: str | None, redis_url: str | None, base_url: str | None) -> Any:
    """A gateway from the config file (if any), with the command line's upstream and Redis."""
    from fleetgate.gateway import Gateway

    overrides: dict[str, Any] = {}
    if base_url:
        overrides["base_url"] = base_url
    if redis_url:
        overrides["redis_url"] = redis_url
    return Gateway.from_config(config_path, **overrides) if config_path else Gateway(**overrides)


def _jobs(config_path: str | None, redis_url: str | None, base_url: str | None, api_key: str | None,
          directory: str | None) -> Any:
    gate = _gateway(config_path, redis_url, base_url)
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


def _call_or_fail(call: Any) -> Any:
    """`call()`, with a fleetgate error (or a bad value) said as the command's failure."""
    from fleetgate.errors import FleetgateError

    try:
        return call()
    except (FleetgateError, ValueError) as e:
        raise click.ClickException(str(e)) from e


def _progress(jobs: Any) -> Any:
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
    """Check INPUT.jsonl, send it as batches, and watch them to the end (unless --detach)."""
    jobs = _jobs(**common)
    done = _progress(jobs) if not detach else (lambda: None)
    try:
        report = _call_or_fail(lambda: jobs.submit(input_path, name, skip_bad_lines=skip_bad_lines,
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
    jobs = _jobs(**common)
    done = _progress(jobs)
    try:
        report = _call_or_fail(lambda: jobs.watch(job, wait_for_lease=wait_for_lease))
    finally:
        done()
    click.echo(report.render())


@batch.command("status")
@click.argument("job", required=False)
@_batch_options
def batch_status(job: str | None, **common: Any) -> None:
    """Show JOB, or every job."""
    reports = _call_or_fail(lambda: _jobs(**common).status(job))
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
    summary = _call_or_fail(lambda: _jobs(**common).collect(job, output_path, dead_letters))
    click.echo(f"{summary.answered} answers in {summary.output}, {summary.dead} dead letters in {summary.dead_letters}")


@batch.command("cancel")
@click.argument("job")
@_batch_options
def batch_cancel(job: str, **common: Any) -> None:
    """Cancel JOB: its watcher cancels its batches and keeps what they answered."""
    _call_or_fail(lambda: _jobs(**common).cancel(job))
    click.echo(f"job {job}: cancellation requested; its watcher stops its batches")


@main.command()
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False), help="A fleetgate TOML file.")
@click.option("--redis", "redis_url", envvar="FLEETGATE_REDIS_URL", help="The Redis the fleet records its spend in.")
@click.option("--since", type=click.DateTime(["%Y-%m-%d"]), help="First day (default: 6 days before --until).")
@click.option("--until", type=click.DateTime(["%Y-%m-%d"]), help="Last day (default: today).")
@click.option("--by", type=click.Choice(["model", "feature", "user", "team", "day"]), default="model",
              show_default=True, help="What to sum spend by.")
def costs(config_path: str | None, redis_url: str | None, since: Any, until: Any, by: Any) -> None:
    """Print the fleet's spend from the ledger, in dollars, as a table."""
    from fleetgate.budget.report import format_table
    from fleetgate.errors import FleetgateError
    from fleetgate.gateway import Gateway

    overrides: dict[str, Any] = {"redis_url": redis_url} if redis_url else {}
    gate = Gateway.from_config(config_path, **overrides) if config_path else Gateway(**overrides)
    if gate.config.redis_url is None:
        raise click.UsageError("the fleet's ledger lives in Redis: pass --redis URL (or a --config with redis_url); "
                               "a gateway without Redis keeps its ledger in its own process (gate.costs())")
    try:
        rows = gate.costs(since.date() if since else None, until.date() if until else None, by)
    except FleetgateError as e:
        raise click.ClickException(str(e)) from e
    click.echo(format_table(rows, by) if rows else "no spend recorded in those days")


@main.command("fake-openai")
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


@main.group()
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
        from fleetgate._core import Limiter

        config = GatewayConfig.from_toml(config_path)
        if config.budgets.limits:
            limiter = Limiter(config.redis_url, failure_policy=config.failure_policy)
            budgets = Budgets(config.budgets, PriceTable.from_settings(config.prices), limiter, lambda name: None)
            extra.append(BudgetCollector(budgets))
    stop_signals = {signal.SIGINT, signal.SIGTERM}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
    server, thread = start_http_server(port, host, registry_for(extra, directory))
    click.echo(f"fleetgate metrics at http://{host}:{server.server_port}/metrics (Ctrl-C to stop)")
    signal.sigwait(stop_signals)
    server.shutdown()
    thread.join()


@main.group()
def cache() -> None:
    """The answer cache."""


@cache.command("evaluate")
@click.argument("pairs_path", metavar="PAIRS.jsonl", type=click.Path(exists=True, dir_okay=False))
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False),
              help="A fleetgate TOML file whose [cache.semantic] settings to evaluate (default: the defaults).")
@click.option("--threshold", type=click.FloatRange(0, 1, min_open=True), help="Override the similarity threshold.")
@click.option("--show-wrong", is_flag=True, help="List the pairs that went the wrong way.")
def cache_evaluate(pairs_path: str, config_path: str | None, threshold: float | None, show_wrong: bool) -> None:
    """Per category of labelled prompt pairs, the share the semantic layer serves: should-hit
    pairs served, and traps (should-miss) served wrongly. Exits 1 if traps served wrongly
    exceed 5% or should-hit pairs served fall under 35% in any category."""
    from fleetgate.cache.evaluate import evaluate, read_pairs
    from fleetgate.config import GatewayConfig, SemanticSettings
    from fleetgate.gateway import Gateway

    settings = GatewayConfig.from_toml(config_path).cache.semantic if config_path else SemanticSettings()
    if threshold is not None:
        settings = settings.model_copy(update={"threshold": threshold})
    try:
        pairs = read_pairs(pairs_path)
    except ValueError as e:
        raise click.ClickException(str(e)) from e
    embedder = Gateway(cache={"enabled": False}).embedder_for(settings)
    results = evaluate(pairs, embedder, settings)
    click.echo(f"embedder {embedder.name}, threshold {settings.threshold}, {len(pairs)} pairs\n")
    click.echo(f"{'category':<12} {'expect':<6} {'pairs':>5}  {'served':>7}  {'verdict':<24} why not served")
    failed = False
    for r in results:
        if r.expect == "hit":
            ok = r.share_served >= 0.35
            verdict = f"should-hit served {r.share_served:.1%}"
        else:
            ok = r.share_served <= 0.05
            verdict = f"traps served {r.share_served:.1%}"
        failed |= not ok
        why = ", ".join(f"{k} {v}" for k, v in sorted(r.refused.items(), key=lambda kv: -kv[1]))
        click.echo(f"{r.category:<12} {r.expect:<6} {r.pairs:>5}  {r.served:>7}  {verdict:<24} {why}"
                   + ("" if ok else "   ← over the bound"))
        if show_wrong and r.wrong:
            click.echo(f"{'':<12} wrong: {' '.join(r.wrong)}")
    traps = [r for r in results if r.expect == "miss"]
    hits = [r for r in results if r.expect == "hit"]
    if traps:
        click.echo(f"\nall traps: {sum(r.served for r in traps)} of {sum(r.pairs for r in traps)} served wrongly; "
                   f"all should-hit: {sum(r.served for r in hits)} of {sum(r.pairs for r in hits)} served")
    if failed:
        raise SystemExit(1)


@main.group()
def rollout() -> None:
    """Canary rollouts ([routing.rollouts] of a config): show them, or steer one by hand."""


def _rollouts(config_path: str, redis_url: str | None) -> Any:
    from fleetgate.config import GatewayConfig
    from fleetgate.router import Rollouts

    config = GatewayConfig.from_toml(config_path, **({"redis_url": redis_url} if redis_url else {}))
    if config.redis_url is None:
        raise click.UsageError("a fleet's rollouts live in Redis: pass --redis URL (or a --config with redis_url)")
    # An operator's view: it reads and steers, and never judges a step itself.
    return Rollouts(config.routing.rollouts, config.redis_url, judge=False)


_CONFIG = click.option("--config", "config_path", required=True, type=click.Path(exists=True, dir_okay=False),
                       help="The fleet's fleetgate TOML file.")
_REDIS = click.option("--redis", "redis_url", envvar="FLEETGATE_REDIS_URL", help="Overrides the config's redis_url.")


@rollout.command("show")
@_CONFIG
@_REDIS
def rollout_show(config_path: str, redis_url: str | None) -> None:
    """Each rollout's state, share and the figures of its current step."""
    rollouts = _rollouts(config_path, redis_url)
    for name in rollouts.rules:
        state = rollouts.state(name)
        click.echo(f"{name}: {state.status}, canary at {rollouts.share(name, state):.0%} (step {state.step}, "
                   f"version {state.version}){': ' + state.reason if state.reason else ''}")
        for side in ("baseline", "canary"):
            click.echo(f"  {side}: {rollouts.figures(name, side).describe()}")
    rollouts.close()


@rollout.command("set")
@_CONFIG
@_REDIS
@click.argument("name")
@click.argument("action", type=click.Choice(["pause", "resume", "promote", "rollback", "pin"]))
@click.option("--step", type=int, help="With pin: the step (an index of the rollout's steps) to hold.")
def rollout_set(config_path: str, redis_url: str | None, name: str, action: str, step: int | None) -> None:
    """Pause, resume, pin at a step, or force a promotion or a rollback, for every pod."""
    from fleetgate.errors import FleetgateError

    rollouts = _rollouts(config_path, redis_url)
    try:
        if action == "pin":
            if step is None:
                raise click.UsageError("pin needs --step N")
            state = rollouts.pin(name, step)
        elif action in ("promote", "rollback"):
            state = rollouts.force(name, action)
        else:
            state = getattr(rollouts, action)(name)
    except FleetgateError as e:
        raise click.ClickException(str(e)) from e
    finally:
        rollouts.close()
    click.echo(f"{name}: {state.status}, canary at {rollouts.share(name, state):.0%}")


@main.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="The fleetgate TOML file to check.")
@click.option("--env", type=click.Choice(["development", "dev", "staging", "production", "prod"]),
              help="The environment (default: $FLEETGATE_ENV, or the file's env).")
@click.option("--redis", "redis_url", help="Overrides the config's redis_url.")
@click.option("--timeout", default=5.0, show_default=True, type=click.FloatRange(0.1, 120),
              help="Seconds each reach for Redis or the upstream may take.")
def check(config_path: str | None, env: str | None, redis_url: str | None, timeout: float) -> None:
    """Before a deploy: the config valid, Redis and the upstream reachable, budgets and metrics
    on, no secret in the config file. One line per check; exits 1 on any problem."""
    from fleetgate.check import render, run_checks

    overrides: dict[str, Any] = {}
    if env:
        overrides["env"] = env
    if redis_url:
        overrides["redis_url"] = redis_url
    if not render(run_checks(config_path, timeout=timeout, **overrides), click.echo):
        raise SystemExit(1)


@main.group()
def prompts() -> None:
    """Prompt compression and the prompt-cache layout report, on files."""


@prompts.command("compress")
@click.argument("path", metavar="PROMPT.txt", type=click.File())
@click.option("--model", default="gpt-4.1-mini", show_default=True, help="The model whose tokens are counted.")
def prompts_compress(path: Any, model: str) -> None:
    """Print PROMPT.txt (instructions or a system prompt) as [prompts] compression would
    send it; the tokens saved go to standard error."""
    from fleetgate.prompts import Compressor

    done = Compressor(model).compress(path.read())
    click.echo(done.text, nl=False)
    click.echo(f"{done.tokens_before:,} → {done.tokens_after:,} tokens ({done.saved:,} saved)", err=True)


@prompts.command("layout")
@click.argument("path", metavar="REQUESTS.jsonl", type=click.File())
@click.option("--model", default="gpt-4.1-mini", show_default=True, help="The model whose tokens are counted.")
def prompts_layout(path: Any, model: str) -> None:
    """How well each template of REQUESTS.jsonl (request bodies, or Batch API lines) would
    use OpenAI's prompt caching, with advice. Templates are told apart by their
    `metadata.template`, else by the hash of their system message or instructions."""
    import json

    from fleetgate.prompts import LayoutTracker, render_report
    from fleetgate.records import template_hash

    tracker = LayoutTracker(samples=64, model=model, seed=0)
    for number, line in enumerate(path, 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            body = item.get("body", item) if isinstance(item, dict) else None
            if not isinstance(body, dict):
                raise ValueError("not a JSON object")
        except ValueError as e:
            raise click.ClickException(f"{path.name} line {number}: {e}") from e
        endpoint = "/responses" if "input" in body or str(item.get("url", "")).endswith("/responses") \
            else "/chat/completions"
        metadata = body.get("metadata")
        named = metadata.get("template") if isinstance(metadata, dict) else None
        tracker.observe(str(named) if named else template_hash(body), endpoint, body)
    click.echo(render_report(tracker.report()))


@main.group()
def mode() -> None:
    """The fleet's degradation mode: full, reduced, cached-only, static or maintenance."""


def _mode_store(config_path: str | None, redis_url: str | None) -> Any:
    from fleetgate.modes import ModeStore

    if not redis_url and config_path:
        from fleetgate.config import GatewayConfig

        redis_url = GatewayConfig.from_toml(config_path).redis_url
    if not redis_url:
        raise click.UsageError("the fleet's mode lives in Redis: pass --redis URL (or a --config with redis_url); "
                               "in one process without Redis, call gate.modes.set(...)")
    return ModeStore(redis_url)


_MODE_CONFIG = click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False),
                            help="A fleetgate TOML file (for its redis_url).")


@mode.command("set")
@click.argument("name", metavar="MODE", type=click.Choice(["full", "reduced", "cached-only", "static", "maintenance"]))
@click.option("--for", "duration", help="How long it lasts (30m, 2h, 90s); until `fleetgate mode clear` without.")
@click.option("--reason", default="", help="Shown in every pod's log and in refusals.")
@_MODE_CONFIG
@_REDIS
def mode_set(name: str, duration: str | None, reason: str, config_path: str | None, redis_url: str | None) -> None:
    """Put every pod in MODE (each honours it within a second). `full` pins full service
    against the pods' own judgement."""
    import getpass
    import socket

    from fleetgate import parse_duration

    seconds = None
    if duration is not None:
        try:
            seconds = parse_duration(duration)
        except ValueError as e:
            raise click.BadParameter(str(e), param_hint="--for") from e
    with _mode_store(config_path, redis_url) as store:
        state = _call_or_fail(lambda: store.set(name, seconds, reason,
                                                by=f"{getpass.getuser()}@{socket.gethostname()}"))
    click.echo(f"fleet mode: {state.mode}" + (f" for {duration}" if duration else " until cleared")
               + f" ({state.reason})")


@mode.command("clear")
@_MODE_CONFIG
@_REDIS
def mode_clear(config_path: str | None, redis_url: str | None) -> None:
    """Hand the mode back to each pod's own judgement."""
    with _mode_store(config_path, redis_url) as store:
        cleared = _call_or_fail(store.clear)
    click.echo("the operator's mode is cleared" if cleared else "no operator's mode was set")


@mode.command("show")
@_MODE_CONFIG
@_REDIS
def mode_show(config_path: str | None, redis_url: str | None) -> None:
    """The operator's mode (if any), and the mode each live pod serves in."""
    import time

    with _mode_store(config_path, redis_url) as store:
        operator = _call_or_fail(store.read)
        pods = _call_or_fail(store.pods)
    if operator is None:
        click.echo("operator: none (each pod judges its own mode)")
    else:
        left = f", {operator.until - time.time():.0f}s left" if operator.until is not None else ", until cleared"
        click.echo(f"operator: {operator.mode} (operator{left}): {operator.reason}")
    click.echo(f"pods: {len(pods)}")
    for pod in pods:
        click.echo(f"  {pod.pod}  {pod.mode} ({pod.source}{': ' + pod.reason if pod.reason else ''}), "
                   f"said {pod.age:.1f}s ago")


if __name__ == "__main__":
    main()
