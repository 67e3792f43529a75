"""``fleetgate run``: send a file of requests through the gateway at the highest rate the
quotas allow, and write one result per request.

The input is the Batch API's line format (``custom_id``, ``method``, ``url``, ``body``),
for any endpoint the Batch API accepts (:data:`fleetgate.endpoints.BATCH_ENDPOINTS`), each
line's body checked for its endpoint. Calls to the endpoints the gateway gates (chat
completions, responses, embeddings) wait for the fleet's quotas and budgets; the others
(completions, moderations, images) pass through the gateway untouched: sent as they are,
their cost counted from their usage where the price table lists the model, and counted in
the summary as passed through. The output is the Batch API's output format, one line per ``custom_id``, written as each
answer arrives. A run that is stopped and started again skips every ``custom_id`` already
in the output. Lines that cannot be sent are reported with their line numbers in an errors
file and do not stop the run.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import httpx2
import openai
from tqdm import tqdm

from fleetgate.endpoints import body_problem, gated, url_problem
from fleetgate.estimate import usage_counts
from fleetgate.gateway import Gateway
from fleetgate.path.call import Spent
from fleetgate.prices import PriceTable
from fleetgate.sdk import GatedAsyncOpenAI
from fleetgate.scope import Priority, scope
from fleetgate.summary import RequestTimes, RunSummary

__all__ = ["RunSummary", "read_requests", "run_file"]


@dataclass(frozen=True, slots=True)
class RequestLine:
    number: int
    custom_id: str
    url: str
    body: dict[str, Any]


@dataclass(frozen=True, slots=True)
class BadLine:
    number: int
    reason: str


def read_requests(path: Path) -> Iterator[RequestLine | BadLine]:
    """Every line of a Batch API input file, parsed, or the reason it cannot be sent."""
    seen: set[str] = set()
    with path.open(encoding="utf-8") as lines:
        for number, raw in enumerate(lines, start=1):
            if not raw.strip():
                continue
            try:
                item = json.loads(raw)
            except json.JSONDecodeError as e:
                yield BadLine(number, f"not valid JSON ({e.msg})")
                continue
            if not isinstance(item, dict):
                yield BadLine(number, "a line must be a JSON object")
                continue
            custom_id, url, body = item.get("custom_id"), item.get("url"), item.get("body")
            if not isinstance(custom_id, str) or not custom_id:
                yield BadLine(number, "missing a string custom_id")
            elif custom_id in seen:
                yield BadLine(number, f"custom_id {custom_id!r} appears more than once")
            elif item.get("method", "POST") != "POST":
                yield BadLine(number, "only the POST method is supported")
            elif (problem := url_problem(url)) is not None:
                yield BadLine(number, problem)
            elif not isinstance(body, dict) or not isinstance(body.get("model"), str):
                yield BadLine(number, "body must be a JSON object with a model")
            elif body.get("stream"):
                yield BadLine(number, "streaming requests cannot be run from a file")
            elif (problem := body_problem(str(url), body)) is not None:
                yield BadLine(number, problem)
            else:
                seen.add(custom_id)
                yield RequestLine(number, custom_id, str(url), body)


def finished_ids(path: Path) -> set[str]:
    """custom_ids already answered in an output file (a cut-off last line is ignored)."""
    done: set[str] = set()
    if not path.exists():
        return done
    with path.open(encoding="utf-8") as lines:
        for raw in lines:
            try:
                done.add(json.loads(raw)["custom_id"])
            except (json.JSONDecodeError, KeyError, TypeError):
                continue
    return done


def _usage(body: Any) -> dict[str, Any] | None:
    usage = body.get("usage") if isinstance(body, dict) else None
    return usage if isinstance(usage, dict) else None


#: What the gateway spent on each attempt of the request being sent (the SDK's retries
#: included), as the client's response hook sees them.
_attempts: ContextVar[list[Spent] | None] = ContextVar("fleetgate_run_attempts", default=None)


async def _note_attempt(response: httpx2.Response) -> None:
    attempts = _attempts.get()
    if attempts is not None and (spent := Spent.of(response)) is not None:
        attempts.append(spent)


def _client(gateway: Gateway, options: dict[str, Any]) -> openai.AsyncOpenAI:
    """The gateway's async client, with a hook that notes what each attempt spent."""
    http_client = openai.DefaultAsyncHttpx2Client(transport=gateway.async_transport(),
                                                  event_hooks={"response": [_note_attempt]})
    return GatedAsyncOpenAI(http_client=http_client, **{"base_url": gateway.config.base_url, **options})


async def _send(client: openai.AsyncOpenAI, line: RequestLine) -> tuple[int, str | None, Any, list[Spent]]:
    """The answer's status, request id and body, and what the gateway spent on each attempt
    (none when no attempt got an answer)."""
    attempts: list[Spent] = []
    token = _attempts.set(attempts)
    try:
        response = await client.post(line.url.removeprefix("/v1"), body=line.body, cast_to=httpx2.Response)
        return response.status_code, response.headers.get("x-request-id"), response.json(), attempts
    except openai.APIStatusError as e:
        return e.status_code, e.request_id, {"error": e.body}, attempts
    except openai.APIConnectionError as e:
        return 0, None, {"error": {"message": str(e), "type": "connection_error", "code": None}}, attempts
    finally:
        _attempts.reset(token)


async def _run(gateway: Gateway, lines: list[RequestLine], out: TextIO, summary: RunSummary,
               concurrency: int, prices: PriceTable, bar: tqdm[Any], client_options: dict[str, Any]) -> None:
    client = _client(gateway, client_options)
    queue: asyncio.Queue[RequestLine] = asyncio.Queue()
    for line in lines:
        queue.put_nowait(line)

    async def worker() -> None:
        while True:
            try:
                line = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            started = time.perf_counter()
            status, request_id, body, attempts = await _send(client, line)
            total_ms = (time.perf_counter() - started) * 1000
            summary.latencies_ms.append(total_ms)
            model = str(line.body["model"])
            waited: Counter[str] = Counter()
            for spent in attempts:
                waited.update({k: v * 1000 for k, v in spent.waited.items()})
                summary.quota_requests[model] += spent.sent
                summary.quota_tokens[model] += spent.quota_tokens
            summary.times.append(RequestTimes(total_ms, sum(a.upstream for a in attempts) * 1000, dict(waited)))
            summary.sent += 1
            if not gated(line.url):
                summary.passed_through[line.url] += 1
            ok = status == 200
            summary.succeeded += ok
            summary.failed += not ok
            usage = _usage(body) if ok else None
            if usage is not None:
                counts = usage_counts(usage)
                summary.tokens["input"] += counts.prompt
                summary.tokens["output"] += counts.output
                served = body.get("service_tier")  # the tier that served the answer, and billed it
                cost = prices.cost(model, usage, tier=served if isinstance(served, str) else None)
                if cost is None:
                    summary.unpriced += 1
                else:
                    summary.cost += cost
            record = {"id": f"fgrun_{line.number}", "custom_id": line.custom_id,
                      "response": {"status_code": status, "request_id": request_id, "body": body}
                      if status else None,
                      "error": None if status else body.get("error")}
            out.write(json.dumps(record) + "\n")
            out.flush()
            if not bar.disable:
                bar.set_postfix(upstream_429=gateway.stats["upstream_rate_limited"], errors=summary.failed,
                                refresh=False)
                bar.update(1)

    await asyncio.gather(*(worker() for _ in range(max(1, concurrency))))
    await client.close()


def run_file(
    input_path: str | Path,
    output_path: str | Path,
    *,
    gateway: Gateway,
    concurrency: int = 32,
    errors_path: str | Path | None = None,
    prices: PriceTable | None = None,
    progress: bool = True,
    **client_options: Any,
) -> RunSummary:
    """Run every request of `input_path` not yet answered in `output_path`."""
    input_path, output_path = Path(input_path), Path(output_path)
    errors_path = Path(errors_path) if errors_path else output_path.with_suffix(".errors.jsonl")
    done = finished_ids(output_path)
    summary = RunSummary()
    todo: list[RequestLine] = []
    bad: list[BadLine] = []
    for item in read_requests(input_path):
        if isinstance(item, BadLine):
            bad.append(item)
            continue
        summary.total += 1
        if item.custom_id in done:
            summary.skipped += 1
        else:
            todo.append(item)
    summary.bad_lines = len(bad)
    if bad:
        with errors_path.open("w", encoding="utf-8") as errors:
            for b in bad:
                errors.write(json.dumps({"line": b.number, "error": b.reason}) + "\n")
    summary.limits = {model: limits for model in sorted({line.body["model"] for line in todo})
                      if (limits := gateway.config.models.get(model, gateway.config.default_model_limits)) is not None}
    summary.started_at, started = time.time(), time.perf_counter()
    # A file run waits as long as the quotas make it (a week at most), not the gateway's
    # default deadline for interactive calls; a caller's own scope still applies.
    with output_path.open("a", encoding="utf-8") as out, tqdm(
        total=len(todo), disable=not progress, unit="req", dynamic_ncols=True, desc="fleetgate run"
    ) as bar, scope(priority=Priority.BATCH, deadline=7 * 86_400):
        asyncio.run(_run(gateway, todo, out, summary, concurrency, prices or gateway.prices, bar, client_options))
    summary.elapsed = time.perf_counter() - started
    summary.finished_at = summary.started_at + summary.elapsed
    summary.gateway = gateway.stats.snapshot()
    return summary
