"""``fleetgate prompts``: prompt compression and the prompt-cache layout report, on files."""

from __future__ import annotations

from typing import Any

import click


@click.group()
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
