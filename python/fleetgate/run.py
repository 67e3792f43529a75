"""``fleetgate run``: send a file of requests through the gateway at the highest rate the
quotas allow, and write one result per request.

The input is the Batch API's line format (``custom_id``, ``method``, ``url``, ``body``);
the output is the Batch API's output format, one line per ``custom_id``, written as each
answer arrives. A run that is stopped and started again skips every ``custom_id`` already
in the output. Lines that cannot be sent are reported with their line numbers in an errors
file and do not stop the run.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import httpx2
import openai
from tqdm import tqdm

from fleetgate.config import QuotaLimits
from fleetgate.estimate import usage_counts
from fleetgate.gateway import Gateway
from fleetgate.path.call import Spent
from fleetgate.prices import PriceTable, default_prices
from fleetgate.sdk import GatedAsyncOpenAI
from fleetgate.scope import Priority, scope

__all__ = ["QuotaUse", "RequestTimes", "RunSummary", "allowed_in", "read_requests", "run_file"]

ENDPOINTS = ("/v1/chat/completions", "/v1/responses", "/v1/embeddings")


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
            elif url not in ENDPOINTS:
                # Not echoed: a line's content stays out of reports (its number finds it).
                yield BadLine(number, f"url must be one of {', '.join(ENDPOINTS)}")
            elif not isinstance(body, dict) or not isinstance(body.get("model"), str):
                yield BadLine(number, "body must be a JSON object with a model")
            elif body.get("stream"):
                yield BadLine(number, "streaming requests cannot be run from a file")
            else:
                seen.add(custom_id)
                yield RequestLine(number, custom_id, url, body)


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


#: What each kind of wait is called in a summary (see :data:`fleetgate.path.call.WAITS`).
WAIT_LABELS = {"quota": "waiting for quota", "lane": "waiting for a lane slot",
               "retry": "waiting to retry after a 429", "paused": "waiting for a paused model",
               "budget": "waiting for a budget's next period", "maintenance": "waiting out maintenance"}
#: A run whose requests spent this share of their time waiting for quota, or that used a
#: limit this much, was paced by its quota.
PACED_BY_QUOTA = (0.1, 0.9)


def allowed_in(per_minute: int, seconds: float, limits: QuotaLimits) -> float:
    """How much a limit of `per_minute` lets through in a window of `seconds`: a token
    bucket, its rate for that time plus the burst a full bucket starts with
    (``burst_seconds`` of the rate); a sliding window, the whole limit in each minute the
    window touches."""
    if limits.algorithm == "sliding_window":
        return float(per_minute * max(1, math.ceil(seconds / 60)))
    return per_minute / 60 * (seconds + limits.burst_seconds)


@dataclass(frozen=True, slots=True)
class QuotaUse:
    """What a run counted against one model's limits, and the share of what the limits
    allowed over the run's window (:func:`allowed_in`); None for a limit not set.
    `waiting`: the share of the run's time its requests spent waiting for quota."""

    model: str
    limits: QuotaLimits
    seconds: float
    requests: int
    tokens: int
    waiting: float = 0.0

    @property
    def requests_share(self) -> float | None:
        rpm = self.limits.requests_per_minute
        return self.requests / allowed_in(rpm, self.seconds, self.limits) if rpm else None

    @property
    def tokens_share(self) -> float | None:
        tpm = self.limits.tokens_per_minute
        return self.tokens / allowed_in(tpm, self.seconds, self.limits) if tpm else None

    @property
    def binding(self) -> str | None:
        """``requests`` or ``tokens``: the limit used the most (None: no limit set)."""
        shares = [(share, name) for share, name in ((self.requests_share, "requests"), (self.tokens_share, "tokens"))
                  if share is not None]
        return max(shares)[1] if shares else None

    @property
    def bound(self) -> bool:
        """Whether the quota set the run's pace: its requests spent a good part of their
        time waiting for it, or its binding limit was all but used up
        (:data:`PACED_BY_QUOTA`)."""
        used = max((s for s in (self.requests_share, self.tokens_share) if s is not None), default=0.0)
        return self.waiting >= PACED_BY_QUOTA[0] or used >= PACED_BY_QUOTA[1]

    def render(self) -> str:
        parts = {}
        if self.limits.requests_per_minute and self.requests_share is not None:
            parts["requests"] = (f"requests {self.requests_share:.1%} of {self.limits.requests_per_minute:,}/min "
                                 f"({self.requests:,} sent upstream)")
        if self.limits.tokens_per_minute and self.tokens_share is not None:
            parts["tokens"] = (f"tokens {self.tokens_share:.1%} of {self.limits.tokens_per_minute:,}/min "
                               f"({self.tokens:,} counted)")
        binding = self.binding
        head = (f"{binding} bound the pace" if self.bound
                else f"neither limit bound the pace ({self.waiting:.0%} of the time spent waiting for quota: "
                     f"the concurrency or the latency set it)")
        order = sorted(parts, key=lambda name: name != binding)
        burst = ("the limit over any minute it touched" if self.limits.algorithm == "sliding_window"
                 else f"its rate for that time plus its {self.limits.burst_seconds:g} s burst")
        return (f"quota use, {self.model}: {head}: " + "; ".join(parts[name] for name in order) + "\n"
                f"  (use: what the run counted against the limit, over what the limit allows in the run's "
                f"{self.seconds:.1f} s: {burst})")


@dataclass(frozen=True, slots=True)
class RequestTimes:
    """Where one request of a run spent its time, in milliseconds: in all (as the run's
    client saw it), in upstream calls and waiting in the gateway, by what it waited for
    (every attempt's, the SDK's retries included)."""

    total_ms: float
    upstream_ms: float = 0.0
    waited_ms: dict[str, float] = field(default_factory=dict)

    @property
    def other_ms(self) -> float:
        """The rest: the gateway's and the SDK's own work, and the SDK's pauses between its
        retries."""
        return max(0.0, self.total_ms - self.upstream_ms - sum(self.waited_ms.values()))


def _percentile(values: Iterable[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


def _duration(ms: float) -> str:
    return f"{ms:.0f} ms" if ms < 1000 else f"{ms / 1000:.1f} s"


@dataclass
class RunSummary:
    """What a run did. `times` has one entry per request sent (`latencies_ms`, their
    totals); `quota_requests` and `quota_tokens`, by model, what the run counted against
    its models' limits (requests sent upstream, retries included, and tokens as OpenAI
    counts them); `limits`, the limits the gateway was given for those models;
    `started_at` and `finished_at`, the run's window (``time.time()``)."""

    total: int = 0
    skipped: int = 0
    sent: int = 0
    succeeded: int = 0
    failed: int = 0
    bad_lines: int = 0
    elapsed: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    times: list[RequestTimes] = field(default_factory=list)
    tokens: Counter[str] = field(default_factory=Counter)
    quota_requests: Counter[str] = field(default_factory=Counter)
    quota_tokens: Counter[str] = field(default_factory=Counter)
    limits: dict[str, QuotaLimits] = field(default_factory=dict)
    started_at: float = 0.0
    finished_at: float = 0.0
    cost: float = 0.0
    unpriced: int = 0
    gateway: dict[str, int] = field(default_factory=dict)

    @classmethod
    def merge(cls, parts: Iterable[RunSummary]) -> RunSummary:
        """One summary of runs made side by side (one per worker process): counts added
        up, the window from the first start to the last finish."""
        total = cls()
        parts = list(parts)
        for p in parts:
            for name in ("total", "skipped", "sent", "succeeded", "failed", "bad_lines", "cost", "unpriced"):
                setattr(total, name, getattr(total, name) + getattr(p, name))
            total.latencies_ms.extend(p.latencies_ms)
            total.times.extend(p.times)
            total.tokens.update(p.tokens)
            total.quota_requests.update(p.quota_requests)
            total.quota_tokens.update(p.quota_tokens)
            total.limits.update(p.limits)
            for k, v in p.gateway.items():
                total.gateway[k] = total.gateway.get(k, 0) + v
        if parts:
            total.started_at = min(p.started_at for p in parts)
            total.finished_at = max(p.finished_at for p in parts)
            total.elapsed = max(max(p.elapsed for p in parts), total.finished_at - total.started_at)
        return total

    def percentile(self, q: float) -> float:
        return _percentile(self.latencies_ms, q)

    def quota_use(self, limits: Mapping[str, QuotaLimits] | None = None) -> list[QuotaUse]:
        """What the run counted against each model's limits (`limits`, by default those
        the gateway was given), for the models it sent requests to."""
        limits = self.limits if limits is None else limits
        spent = sum(t.total_ms for t in self.times)
        waiting = sum(t.waited_ms.get("quota", 0.0) for t in self.times) / spent if spent else 0.0
        return [QuotaUse(model, limits[model], self.elapsed, self.quota_requests[model], self.quota_tokens[model],
                         waiting)
                for model in sorted(self.quota_requests) if model in limits
                and (limits[model].requests_per_minute or limits[model].tokens_per_minute)]

    def render(self, limits: Mapping[str, QuotaLimits] | None = None) -> str:
        """The summary, for people: `limits` (by model; by default the gateway's) are what
        the quota use is measured against."""
        rate = self.sent / self.elapsed if self.elapsed else 0.0
        lines = [
            f"requests: {self.sent} sent ({self.succeeded} ok, {self.failed} failed), "
            f"{self.skipped} already done, {self.bad_lines} bad lines",
            f"time: {self.elapsed:.1f} s, throughput {rate:.1f} requests/s ({rate * 60:.0f}/min)",
        ]
        uses = self.quota_use(limits)
        lines += [use.render() for use in uses]
        binding = uses[0].binding if len(uses) == 1 and uses[0].bound else None
        lines += self._latency_lines({"requests": "request ", "tokens": "token "}.get(binding or "", ""))
        lines += [
            f"tokens: {self.tokens['input']:,} in, {self.tokens['output']:,} out",
            f"cost: ${self.cost:.4f}" + (f" ({self.unpriced} responses of unpriced models)" if self.unpriced else ""),
            "gateway: " + ", ".join(f"{k} {v}" for k, v in sorted(self.gateway.items())),
        ]
        return "\n".join(lines)

    def _latency_lines(self, quota_kind: str) -> list[str]:
        def spread(values: list[float]) -> str:
            return ", ".join(f"p{round(q * 100)} {_duration(_percentile(values, q))}" for q in (0.5, 0.95, 0.99))

        def label(kind: str) -> str:
            return f"waiting for {quota_kind}quota" if kind == "quota" else WAIT_LABELS.get(kind, f"waiting ({kind})")

        lines = [f"latency: {spread(self.latencies_ms)}"]
        if not self.times:
            return lines
        kinds = sorted({k for t in self.times for k, ms in t.waited_ms.items() if ms > 0},
                       key=lambda k: list(WAIT_LABELS).index(k) if k in WAIT_LABELS else len(WAIT_LABELS))
        lines += [f"  {label(kind)}: {spread([t.waited_ms.get(kind, 0.0) for t in self.times])}" for kind in kinds]
        lines.append(f"  upstream: {spread([t.upstream_ms for t in self.times])}")
        ordered = sorted(self.times, key=lambda t: t.total_ms)
        p95 = ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]
        parts = [f"{label(kind)} {_duration(p95.waited_ms[kind])}" for kind in kinds if p95.waited_ms.get(kind, 0.0) >= 0.5]
        parts += [f"upstream {_duration(p95.upstream_ms)}", f"other {_duration(p95.other_ms)}"]
        lines.append(f"  the p95 request: {_duration(p95.total_ms)} = " + " + ".join(parts)
                     + " (other: the gateway's and the SDK's own work, the SDK's pauses between retries)")
        return lines


def _usage(body: Any) -> dict[str, Any] | None:
    usage = body.get("usage") if isinstance(body, dict) else None
    return usage if isinstance(usage, dict) else None


#: What the gateway spent on each attempt of the request being sent (the SDK's retries
#: included), as the client's response hook sees them.
_attempts: ContextVar[list[Spent] | None] = ContextVar("fleetgate_run_attempts", default=None)


async def _note_attempt(response: httpx2.Response) -> None:
    spent, attempts = response.extensions.get(Spent.KEY), _attempts.get()
    if isinstance(spent, Spent) and attempts is not None:
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
            ok = status == 200
            summary.succeeded += ok
            summary.failed += not ok
            usage = _usage(body) if ok else None
            if usage is not None:
                counts = usage_counts(usage)
                summary.tokens["input"] += counts.prompt
                summary.tokens["output"] += counts.output
                cost = prices.cost(model, usage)
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
        asyncio.run(_run(gateway, todo, out, summary, concurrency, prices or default_prices(), bar, client_options))
    summary.elapsed = time.perf_counter() - started
    summary.finished_at = summary.started_at + summary.elapsed
    summary.gateway = gateway.stats.snapshot()
    return summary
