"""``fleetgate cache``: the answer cache, evaluated on labelled prompt pairs."""

from __future__ import annotations

import click


@click.group()
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
