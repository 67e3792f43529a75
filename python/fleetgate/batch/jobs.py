"""Batch jobs carried to completion: a file of requests (the Batch API's line format) is
checked, cut into batches within every limit, submitted as the enqueued-token limit and
the budgets allow, watched, collected, and its failed lines sent again, until every
request has exactly one result: an answer in the output, or its error in the dead
letters. Every step is written ahead in the job record (:mod:`fleetgate.batch.state`),
and each batch carries its job and chunk ids in its ``metadata``, so that a job survives
the process that started it: any pod can show, resume or cancel it, and a resumed job
finds the batches its predecessor created instead of creating them again.

    >>> jobs = gate.batches()                                  # doctest: +SKIP
    >>> job = jobs.submit("requests.jsonl", name="nightly")     # doctest: +SKIP
    >>> jobs.collect("nightly", "results.jsonl")                # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal

import openai

from fleetgate._core import BudgetReservation, Quota
from fleetgate.batch.results import Tally, parse_lines
from fleetgate.batch.split import Problem, split_file
from fleetgate.batch.state import Chunk, Job, JobStore, new_owner, store_for
from fleetgate.errors import BudgetExceeded, FleetgateError
from fleetgate.estimate import usage_counts
from fleetgate.scope import Scope

if TYPE_CHECKING:
    from fleetgate.gateway import Gateway

__all__ = ["BatchJobs", "BatchInputError", "CollectSummary", "JobBusy", "JobReport", "ResultsExpired"]

log = logging.getLogger("fleetgate.batch")

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,47}")
_ACTIVE = ("validating", "in_progress", "finalizing", "cancelling")
_ENDED = ("completed", "expired", "cancelled")


class BatchInputError(FleetgateError, ValueError):
    """The input has lines the Batch API would refuse; nothing was uploaded."""

    def __init__(self, problems: list[Problem], report: Path | None) -> None:
        self.problems = problems
        self.report = report
        shown = "; ".join(f"line {p.line}: {p.reason}" for p in problems[:5])
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        where = f"; all of them in {report}" if report else ""
        super().__init__(f"{len(problems)} input lines cannot be sent: {shown}{more}{where}. Fix them, or submit "
                         "with skip_bad_lines=True (--skip-bad-lines) to set them aside")


class JobBusy(FleetgateError):
    """Another process watches the job (it holds the job's lease)."""


class ResultsExpired(FleetgateError):
    """A batch's output file is gone (OpenAI deletes them after their expiry)."""


@dataclass(frozen=True, slots=True)
class JobReport:
    """What a job has done so far."""

    job: Job
    chunks: list[Chunk]
    #: Lines answered, dead-lettered, and still on their way.
    succeeded: int
    dead: int
    pending: int
    cost: float
    results_expire_at: float | None
    warnings: tuple[str, ...]

    @property
    def done(self) -> bool:
        return self.job.status in ("done", "cancelled")

    def render(self) -> str:
        job = self.job
        states: dict[str, int] = {}
        for c in self.chunks:
            states[c.state] = states.get(c.state, 0) + 1
        lines = [
            f"job {job.id}: {job.status}, {job.model} on {job.endpoint}, {job.lines} lines"
            + (f" ({job.rejected} rejected at submission)" if job.rejected else ""),
            f"  lines: {self.succeeded} answered, {self.dead} dead-lettered, {self.pending} on their way",
            "  batches: " + ", ".join(f"{n} {s}" for s, n in sorted(states.items())),
            f"  cost: ${self.cost:.4f} at the batch price",
        ]
        held = sorted({c.held for c in self.chunks if c.held and c.state == "uploaded"})
        if held:
            lines.append("  waiting: " + "; ".join(held))
        if self.results_expire_at is not None:
            lines.append("  results expire " + time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(self.results_expire_at)))
        lines += [f"  warning: {w}" for w in self.warnings]
        return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class CollectSummary:
    output: Path
    dead_letters: Path
    answered: int
    dead: int


def _jitter(seconds: float) -> float:
    return seconds * random.uniform(0.8, 1.2)


class BatchJobs:
    """Batch jobs of one gateway: its upstream, Redis (or this machine's record), budgets,
    prices and ``[batch]`` settings. Every method has an ``_async`` twin."""

    def __init__(self, gateway: Gateway, store: JobStore | None = None, *, directory: str | Path | None = None,
                 **client_options: Any) -> None:
        self.gateway = gateway
        self.settings = gateway.config.batch
        self.directory = Path(directory) if directory is not None else self.settings.state_directory()
        self.store = store or store_for(gateway.config.redis_url, self.directory)
        self.owner = new_owner()
        self._client_options = client_options
        self._client: openai.OpenAI | None = None
        self._holds: dict[tuple[str, str], BudgetReservation] = {}
        # Sliding windows: any burst within the minute's allowance goes at once.
        self._uploads = Quota("batch-uploads", requests_per_minute=self.settings.uploads_per_minute,
                              algorithm="sliding_window")
        self._creations = Quota("batch-creations", requests_per_minute=self.settings.creations_per_minute,
                                algorithm="sliding_window")
        self._found: dict[tuple[str, str, str], str] | None = None
        #: Unix seconds (replaceable, for tests).
        self.clock: Callable[[], float] = time.time
        #: Called with a :class:`JobReport` after each pass of :meth:`watch`.
        self.on_progress: Callable[[JobReport], object] | None = None

    @property
    def client(self) -> openai.OpenAI:
        if self._client is None:
            self._client = self.gateway.openai(**self._client_options)
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
        self.store.close()

    # -- submitting -------------------------------------------------------------------------

    def submit(self, input_path: str | Path, name: str | None = None, *, skip_bad_lines: bool = False,
               max_attempts: int | None = None, feature: str | None = None, user: str | None = None,
               team: str | None = None, wait: bool = True) -> JobReport:
        """Check `input_path`, record the job, upload its chunks and create as many batches
        as the limits allow; with `wait`, watch it to the end. Submitting a `name` that
        exists resumes that job instead (nothing is sent twice)."""
        job_id = name or time.strftime("job-%Y%m%d-%H%M%S-", time.gmtime()) + os.urandom(3).hex()
        if not _NAME.fullmatch(job_id):
            raise ValueError(f"job name {job_id!r}: use 1-48 letters, digits, '.', '_' or '-', starting with a "
                             "letter or digit")
        if self.store.job(job_id) is None:
            self._record(job_id, Path(input_path), skip_bad_lines, max_attempts or self.settings.max_attempts,
                         feature, user, team)
        else:
            log.info("fleetgate: job %s exists: resuming it", job_id)
        return self.watch(job_id, until="done" if wait else "submitted")

    def _record(self, job_id: str, input_path: Path, skip_bad_lines: bool, max_attempts: int,
                feature: str | None, user: str | None, team: str | None) -> None:
        settings = self.settings
        folder = self._folder(job_id)
        split = split_file(input_path, folder / "chunks", max_lines=settings.max_lines, max_bytes=settings.max_bytes,
                           max_tokens=settings.default_enqueued_tokens, model_tokens=settings.enqueued_tokens,
                           default_max_output=settings.assumed_max_output_tokens, prefix="c")
        report = folder / "rejected.jsonl"
        if split.problems:
            _write_problems(report, split.problems)
            if not skip_bad_lines:
                shutil.rmtree(folder / "chunks", ignore_errors=True)
                raise BatchInputError(split.problems, report)
            log.warning("fleetgate: job %s: %d input lines set aside, listed in %s", job_id, len(split.problems), report)
        if not split.chunks or split.endpoint is None or split.model is None:
            raise BatchInputError(split.problems or [Problem(0, "the file has no requests")], None)
        job = Job(id=job_id, endpoint=split.endpoint, model=split.model, input=str(input_path),
                  created_at=self.clock(), lines=split.lines, rejected=len(split.problems), max_attempts=max_attempts,
                  feature=feature or "", user=user or "", team=team or "")
        self._check_budget(job)
        chunks = [Chunk(id=f"c{c.index:05d}", attempt=1, lines=c.lines, bytes=c.bytes, tokens=c.tokens,
                        output_tokens=c.output_tokens) for c in split.chunks]
        if not self.store.create_job(job, chunks):
            raise JobBusy(f"job {job_id} was recorded by another process meanwhile: show it with status({job_id!r})")
        log.info("fleetgate: job %s recorded: %d lines in %d batches of %s", job_id, job.lines, len(chunks), job.model)

    def _folder(self, job_id: str) -> Path:
        return self.directory / job_id

    def _scope(self, job: Job) -> Scope:
        return Scope(feature=job.feature or None, user=job.user or None, team=job.team or None)

    def _check_budget(self, job: Job) -> None:
        """Refuse a job whose budget is already spent (a job larger than what is left
        waits for the budget batch by batch)."""
        budgets = self.gateway.budgets.applicable(self._scope(job))
        for budget in budgets:
            status = self.gateway.budgets.ledger.status(budget)
            if status.spent + status.reserved >= status.limit:
                raise BudgetExceeded(
                    f"budget {budget.name} is spent (${status.spent:.4f} of ${status.limit:.4f}) until "
                    f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(status.resets_at))}: the job was not submitted",
                    budget=budget.name, resets_at=status.resets_at, limit=status.limit, spent=status.spent)

    # -- watching ---------------------------------------------------------------------------

    def watch(self, job_id: str, *, until: str = "done", wait_for_lease: float = 0.0) -> JobReport:
        """Drive the job until it is done (or, with ``until="submitted"``, until every
        batch that may be created now has been). Raises :class:`JobBusy` if another
        process watches it for longer than `wait_for_lease` seconds."""
        job = self._job(job_id)
        deadline = time.monotonic() + wait_for_lease
        while (holder := self.store.take_lease(job.id, self.owner, self.settings.lease_seconds)) is not None:
            if time.monotonic() >= deadline:
                raise JobBusy(f"job {job.id} is watched by {holder}; it takes over when that lease lapses "
                              f"(within {self.settings.lease_seconds:.0f} s of its last renewal)")
            time.sleep(min(1.0, self.settings.lease_seconds / 4))
        self._found = None
        try:
            while True:
                report = self._pass(job.id)
                if self.on_progress is not None:
                    self.on_progress(report)
                if report.done or (until == "submitted" and not any(
                        c.state in ("intent", "uploading", "creating") or (c.state == "uploaded" and not c.held)
                        for c in report.chunks)):
                    return report
                self._sleep(report.chunks)
                if self.store.take_lease(job.id, self.owner, self.settings.lease_seconds) is not None:
                    raise JobBusy(f"job {job.id}: another process took over its lease; this one stops watching")
        finally:
            self.store.release_lease(job.id, self.owner)

    def _sleep(self, chunks: list[Chunk]) -> None:
        now = self.clock()
        waits = [c.not_before - now for c in chunks if c.state in ("created", "uploaded") and c.not_before > now]
        pause = min([*waits, self.settings.lease_seconds / 3, self.settings.poll_max_seconds])
        time.sleep(max(0.01, pause))

    def _job(self, job_id: str) -> Job:
        job = self.store.job(job_id)
        if job is None:
            raise FleetgateError(f"no batch job {job_id!r} in {self._where()}: list them with status()")
        return job

    def _where(self) -> str:
        return "Redis" if self.gateway.config.redis_url else str(self.directory)

    def _pass(self, job_id: str) -> JobReport:
        job = self._job(job_id)
        chunks = self.store.chunks(job.id)
        if job.status == "running" and self.store.cancel_requested(job.id):
            job.status = "cancelling"
            self.store.save_job(job)
            log.info("fleetgate: job %s: cancelling", job.id)
        if job.status in ("running", "cancelling"):
            for chunk in chunks:
                if not chunk.final:
                    self._step(job, chunk, chunks)
            chunks = self.store.chunks(job.id)  # with the retries just added
            if all(c.final for c in chunks):
                self._finish(job, chunks)
        for chunk in chunks:
            if chunk.state == "collected" and not chunk.billed:
                self._bill(job, chunk)
        return self.report(job, chunks)

    def _step(self, job: Job, chunk: Chunk, chunks: list[Chunk]) -> None:
        cancelling = job.status == "cancelling"
        if chunk.state == "uploading":
            self._reconcile_upload(job, chunk)
        if chunk.state == "creating":
            self._reconcile_creation(job, chunk)
        if cancelling and chunk.state in ("intent", "uploaded"):
            self._end_unsent(job, chunk, chunks, "cancelled",
                             {"code": "batch_cancelled", "message": "the job was cancelled"})
            return
        if chunk.state == "intent":
            self._upload(job, chunk, chunks)
        if chunk.state == "uploaded" and self.clock() >= chunk.not_before:
            self._create(job, chunk, chunks)
        if chunk.state == "created":
            if cancelling and chunk.batch_status in ("validating", "in_progress", "finalizing"):
                self._cancel_batch(chunk)
            if self.clock() >= chunk.not_before:
                self._poll(job, chunk, chunks)

    # -- uploading --------------------------------------------------------------------------

    def _filename(self, job: Job, chunk: Chunk) -> str:
        return f"fleetgate-{job.id}-{chunk.id}.jsonl"

    def _spool(self, job: Job, chunk: Chunk) -> Path:
        return self._folder(job.id) / "chunks" / f"{chunk.id}.jsonl"

    def _chunk_path(self, job: Job, chunk: Chunk, chunks: list[Chunk]) -> Path:
        """The chunk's lines on this machine: written at submission, or (for a retry)
        rebuilt from its parent's uploaded file."""
        path = self._spool(job, chunk)
        if path.exists():
            return path
        parent = next((c for c in chunks if c.id == chunk.parent), None)
        if parent is None or parent.file_id is None:
            raise FleetgateError(f"job {job.id}: the lines of {chunk.id} are on the machine that submitted the job "
                                 f"({path} is missing here): resume the job there")
        self._write_subset(parent.file_id, set(parent.retry_ids), path)
        return path

    def _write_subset(self, file_id: str, ids: set[str], path: Path) -> None:
        """The lines of uploaded file `file_id` whose custom_id is in `ids`, to `path`
        (written whole, then renamed)."""
        with _atomic(path, "wb") as out:
            for raw in self._file_lines(file_id):
                if raw.strip() and json.loads(raw).get("custom_id") in ids:
                    out.write(raw.rstrip(b"\r\n") + b"\n")

    def _file_lines(self, file_id: str) -> Iterator[bytes]:
        try:
            with self.client.files.with_streaming_response.content(file_id) as response:
                rest = b""
                for block in response.iter_bytes(1 << 20):
                    *lines, rest = (rest + block).split(b"\n")
                    yield from lines
                if rest:
                    yield rest
        except openai.NotFoundError as e:
            raise ResultsExpired(f"file {file_id} is gone from the API (expired or deleted)") from e

    def _upload(self, job: Job, chunk: Chunk, chunks: list[Chunk]) -> None:
        path = self._chunk_path(job, chunk, chunks)
        self._pace(self._uploads)
        chunk.state = "uploading"
        self.store.save_chunks(job.id, [chunk])
        with path.open("rb") as data:
            uploaded = self.client.files.create(file=(self._filename(job, chunk), data), purpose="batch")
        chunk.file_id, chunk.state = uploaded.id, "uploaded"
        self.store.save_chunks(job.id, [chunk])
        log.info("fleetgate: job %s: %s uploaded as %s", job.id, chunk.id, uploaded.id)

    def _reconcile_upload(self, job: Job, chunk: Chunk) -> None:
        """After a crash during an upload: the file, if it arrived, else upload again."""
        name = self._filename(job, chunk)
        found = [f for f in self.client.files.list(purpose="batch") if f.filename == name and f.bytes == chunk.bytes]
        for extra in found[1:]:
            self._delete_file(extra.id)
        chunk.state, chunk.file_id = ("uploaded", found[0].id) if found else ("intent", None)
        self.store.save_chunks(job.id, [chunk])

    def _pace(self, quota: Quota) -> None:
        """Wait for the fleet's turn to upload or create (OpenAI's own limits on these)."""
        self.gateway.limiter.acquire(quota, timeout=3600)

    # -- creating ---------------------------------------------------------------------------

    def _in_flight(self, chunks: list[Chunk]) -> int:
        return sum(c.tokens for c in chunks if c.state in ("creating", "created") and c.batch_status not in _ENDED)

    def _create(self, job: Job, chunk: Chunk, chunks: list[Chunk]) -> None:
        limit = self.settings.enqueued_limit(job.model)
        if self._in_flight(chunks) + chunk.tokens > limit:
            chunk.held = f"{chunk.id} waits for room under {job.model}'s enqueued-token limit ({limit:,})"
            return
        if not self._reserve(job, chunk):
            return
        self._pace(self._creations)
        chunk.tries += 1
        chunk.state, chunk.held = "creating", None
        self.store.save_chunks(job.id, [chunk])
        assert chunk.file_id is not None
        batch = self.client.batches.create(
            input_file_id=chunk.file_id, endpoint=job.endpoint,  # type: ignore[arg-type]
            completion_window="24h",
            metadata={"fleetgate_job": job.id, "fleetgate_chunk": chunk.id, "fleetgate_try": str(chunk.tries)},
            output_expires_after={"anchor": "created_at", "seconds": self.settings.output_expires_seconds},
        )
        self._created(job, chunk, batch.id, batch.status)

    def _created(self, job: Job, chunk: Chunk, batch_id: str, status: str) -> None:
        chunk.state, chunk.batch_id, chunk.batch_status = "created", batch_id, status
        chunk.poll_interval = self.settings.poll_min_seconds
        chunk.not_before = self.clock() + _jitter(chunk.poll_interval)
        self.store.save_chunks(job.id, [chunk])
        log.info("fleetgate: job %s: %s is batch %s (try %d)", job.id, chunk.id, batch_id, chunk.tries)

    def _reconcile_creation(self, job: Job, chunk: Chunk) -> None:
        """After a crash during a creation: the batch, if it was created, else create it
        again. Batches are found by the job and chunk ids in their metadata."""
        batch_id = self._batches_of(job).get((job.id, chunk.id, str(chunk.tries)))
        if batch_id is not None:
            self._created(job, chunk, batch_id, "validating")
        else:
            chunk.state, chunk.tries = "uploaded", chunk.tries - 1
            self.store.save_chunks(job.id, [chunk])

    def _batches_of(self, job: Job) -> dict[tuple[str, str, str], str]:
        """Batches created since the job was, by their fleetgate metadata (listed once per
        watch)."""
        if self._found is None:
            found: dict[tuple[str, str, str], str] = {}
            for batch in self.client.batches.list(limit=100):
                if batch.created_at < job.created_at - 300:
                    break  # newest first: the rest are older than the job
                meta = batch.metadata or {}
                if "fleetgate_job" in meta:
                    found[(meta["fleetgate_job"], meta.get("fleetgate_chunk", ""), meta.get("fleetgate_try", ""))] = batch.id
            self._found = found
        return self._found

    def _reserve(self, job: Job, chunk: Chunk) -> bool:
        """Hold the chunk's worst case at the batch price on its budgets; False (the chunk
        waits) when a budget refuses."""
        budgets = self.gateway.budgets.applicable(self._scope(job))
        if not budgets or (job.id, chunk.id) in self._holds:
            return True
        price = self.gateway.prices.price(job.model)
        if price is None:
            return True
        worst = price.dollars(chunk.tokens - chunk.output_tokens, chunk.output_tokens) * self.gateway.prices.batch_discount
        try:
            self._holds[job.id, chunk.id] = self.gateway.budgets.ledger.reserve(budgets, worst, lease=86_400)
        except BudgetExceeded as e:
            chunk.held = f"{chunk.id} waits for budget {e.budget} (until {time.strftime('%H:%M UTC', time.gmtime(e.resets_at))})"
            chunk.not_before = min(e.resets_at, self.clock() + self.settings.poll_max_seconds)
            return False
        return True

    # -- polling ----------------------------------------------------------------------------

    def _poll(self, job: Job, chunk: Chunk, chunks: list[Chunk]) -> None:
        assert chunk.batch_id is not None
        batch = self.client.batches.retrieve(chunk.batch_id)
        changed = batch.status != chunk.batch_status
        chunk.batch_status = batch.status
        if batch.status in _ENDED:
            self._collect(job, chunk, chunks, batch)
            return
        if batch.status == "failed":
            self._failed(job, chunk, chunks, batch)
            return
        chunk.poll_interval = self.settings.poll_min_seconds if changed else min(
            self.settings.poll_max_seconds, chunk.poll_interval * 2)
        chunk.not_before = self.clock() + _jitter(chunk.poll_interval)
        self.store.save_chunks(job.id, [chunk])

    def _failed(self, job: Job, chunk: Chunk, chunks: list[Chunk], batch: Any) -> None:
        errors = (batch.errors.data if batch.errors is not None else None) or []
        first = errors[0].model_dump() if errors else {"code": "batch_failed", "message": "the batch failed"}
        if first.get("code") == "token_limit_exceeded":
            # Held: created again once other batches of the model end.
            chunk.state, chunk.batch_id, chunk.batch_status = "uploaded", None, None
            chunk.held = f"{chunk.id} was refused for {job.model}'s enqueued-token limit; it is sent as others end"
            chunk.not_before = self.clock() + _jitter(max(self.settings.poll_min_seconds, 1.0) * min(2 ** chunk.tries, 64))
            self.store.save_chunks(job.id, [chunk])
            log.info("fleetgate: job %s: %s held (enqueued-token limit)", job.id, chunk.id)
            return
        self._release(job, chunk)
        self._end_unsent(job, chunk, chunks, "failed", first)
        log.warning("fleetgate: job %s: batch %s of %s failed (%s): its %d lines are dead-lettered", job.id,
                    chunk.batch_id, chunk.id, first.get("code"), chunk.lines)

    def _end_unsent(self, job: Job, chunk: Chunk, chunks: list[Chunk], state: str, error: dict[str, Any]) -> None:
        """Lines that will not be answered: every id of the chunk goes to the dead letters."""
        chunk.state, chunk.error = state, error  # type: ignore[assignment]
        chunk.missing_ids = sorted(self._ids(job, chunk, chunks))
        self.store.save_chunks(job.id, [chunk])

    def _cancel_batch(self, chunk: Chunk) -> None:
        assert chunk.batch_id is not None
        try:
            self.client.batches.cancel(chunk.batch_id)
        except openai.ConflictError:
            pass  # it ended meanwhile: collected as it ended
        chunk.batch_status = "cancelling"

    # -- collecting -------------------------------------------------------------------------

    def _ids(self, job: Job, chunk: Chunk, chunks: list[Chunk]) -> set[str]:
        """The ids the chunk was sent: from its lines here, else from its uploaded file."""
        if chunk.file_id is not None and not self._spool(job, chunk).exists():
            return {json.loads(raw)["custom_id"] for raw in self._file_lines(chunk.file_id) if raw.strip()}
        with self._chunk_path(job, chunk, chunks).open("rb") as lines:
            return {json.loads(raw)["custom_id"] for raw in lines if raw.strip()}

    def _collect(self, job: Job, chunk: Chunk, chunks: list[Chunk], batch: Any) -> None:
        """Join what the batch returned to what it was sent; record the cost of every
        answer; send the failures that may pass again as a new chunk."""
        sent = self._ids(job, chunk, chunks)
        tally = Tally()
        cost = 0.0
        prices, metrics = self.gateway.prices, self.gateway.metrics
        for file_id in (batch.output_file_id, batch.error_file_id):
            if not file_id:
                continue
            for line in parse_lines(self._file_lines(file_id)):
                if tally.add(line, sent) and line is not None and line.outcome == "ok":
                    usage = line.usage
                    line_cost = prices.cost(job.model, usage, batch=True) if usage else None
                    cost += line_cost or 0.0
                    if metrics is not None and isinstance(usage, dict):
                        metrics.billed(job.model, job.feature or None, usage_counts(usage), line_cost)
        missing = sent - tally.seen
        cancelled = job.status == "cancelling"
        again = set() if cancelled or chunk.attempt >= job.max_attempts else tally.retry | missing
        chunk.counts = {"ok": tally.ok, "dead": tally.dead + len(tally.retry - again), "retried": len(again),
                        "missing": len(missing), "unknown": len(tally.unknown), "duplicates": tally.duplicates,
                        "malformed": tally.malformed}
        chunk.retry_ids = sorted(again)
        chunk.missing_ids = sorted(missing - again)
        chunk.unknown_ids = sorted(set(tally.unknown))
        chunk.output_file_id, chunk.error_file_id = batch.output_file_id, batch.error_file_id
        chunk.results_expire_at = self._expiry(batch)
        chunk.cost, chunk.state, chunk.held = cost, "collected", None
        retry = [self._retry(job, chunk, again)] if again else []
        self.store.save_chunks(job.id, [chunk, *retry])
        if tally.unknown or tally.duplicates or tally.malformed:
            log.warning("fleetgate: job %s: batch %s returned %d lines for unknown ids, %d duplicates and %d "
                        "unreadable lines (ignored)", job.id, chunk.batch_id, len(tally.unknown), tally.duplicates,
                        tally.malformed)
        log.info("fleetgate: job %s: %s collected (%s): %s", job.id, chunk.id, batch.status,
                 ", ".join(f"{k} {v}" for k, v in chunk.counts.items() if v))

    def _retry(self, job: Job, chunk: Chunk, ids: set[str]) -> Chunk:
        """A new chunk of the lines `ids` of `chunk`, written here and sized as at submission."""
        assert chunk.file_id is not None
        retry = Chunk(id=f"{chunk.id.split('-')[0]}-r{chunk.attempt + 1}", attempt=chunk.attempt + 1, lines=len(ids),
                      bytes=0, tokens=0, output_tokens=0, parent=chunk.id)
        path = self._spool(job, retry)
        self._write_subset(chunk.file_id, ids, path)
        sized = split_file(path, None, max_lines=self.settings.max_lines, max_bytes=self.settings.max_bytes,
                           max_tokens=2**62, default_max_output=self.settings.assumed_max_output_tokens).chunks[0]
        retry.bytes, retry.tokens, retry.output_tokens = sized.bytes, sized.tokens, sized.output_tokens
        return retry

    def _expiry(self, batch: Any) -> float | None:
        for file_id in (batch.output_file_id, batch.error_file_id):
            if file_id:
                try:
                    expires = self.client.files.retrieve(file_id).expires_at
                except openai.NotFoundError:
                    continue
                if expires:
                    return float(expires)
        return None

    def _bill(self, job: Job, chunk: Chunk) -> None:
        """Spend the chunk's cost on its budgets (and the spend records), once."""
        hold = self._holds.pop((job.id, chunk.id), None)
        ledger = self.gateway.budgets.ledger
        if hold is None:  # reserved by a process that is gone: its hold lapses by itself
            hold = ledger.reserve(self.gateway.budgets.applicable(self._scope(job)), 0.0, lease=600)
        ledger.settle(hold, chunk.cost, model=job.model, feature=job.feature, user=job.user, team=job.team)
        chunk.billed = True
        self.store.save_chunks(job.id, [chunk])

    def _release(self, job: Job, chunk: Chunk) -> None:
        hold = self._holds.pop((job.id, chunk.id), None)
        if hold is not None:
            self.gateway.budgets.ledger.release(hold)

    def _finish(self, job: Job, chunks: list[Chunk]) -> None:
        for chunk in chunks:
            if chunk.file_id:
                self._delete_file(chunk.file_id)
        shutil.rmtree(self._folder(job.id) / "chunks", ignore_errors=True)
        job.status = "cancelled" if job.status == "cancelling" else "done"
        job.finished_at = self.clock()
        self.store.save_job(job)
        log.info("fleetgate: job %s %s", job.id, job.status)

    def _delete_file(self, file_id: str) -> None:
        try:
            self.client.files.delete(file_id)
        except openai.NotFoundError:
            pass  # already gone

    # -- reading ----------------------------------------------------------------------------

    def report(self, job: Job, chunks: list[Chunk]) -> JobReport:
        succeeded = sum(c.counts.get("ok", 0) for c in chunks if c.state == "collected")
        dead = sum(len(c.missing_ids) + c.counts.get("dead", 0) for c in chunks if c.final)
        pending = max(0, job.lines - succeeded - dead)
        expiries = [c.results_expire_at for c in chunks if c.state == "collected" and c.results_expire_at]
        expires = min(expiries) if expiries else None
        warnings = []
        if expires is not None and job.collected_at is None and expires - self.clock() < self.settings.warn_before_seconds:
            left = max(0.0, expires - self.clock()) / 3600
            warnings.append(f"results expire in {left:.0f} h and were not collected: collect the job now")
        return JobReport(job, chunks, succeeded, dead, pending, sum(c.cost for c in chunks), expires, tuple(warnings))

    def status(self, job_id: str | None = None) -> list[JobReport]:
        """One job's report, or every job's (oldest first)."""
        jobs = [self._job(job_id)] if job_id else self.store.jobs()
        reports = [self.report(job, self.store.chunks(job.id)) for job in jobs]
        for r in reports:
            for w in r.warnings:
                log.warning("fleetgate: job %s: %s", r.job.id, w)
        return reports

    def cancel(self, job_id: str) -> None:
        """Ask for the job to stop: its watcher (here or on another pod) cancels its
        batches, keeps what they answered, and dead-letters the rest."""
        job = self._job(job_id)
        if job.status in ("done", "cancelled"):
            raise FleetgateError(f"job {job_id} has ended ({job.status}): nothing to cancel")
        self.store.request_cancel(job.id)

    def collect(self, job_id: str, output: str | Path, dead_letters: str | Path | None = None) -> CollectSummary:
        """Write the job's answers to `output` (the Batch API's output format, one line per
        answered ``custom_id``) and every request that was not answered to `dead_letters`
        (default ``OUTPUT.dead.jsonl``) with its error and attempts."""
        job = self._job(job_id)
        if job.status not in ("done", "cancelled"):
            raise FleetgateError(f"job {job_id} is still {job.status}: watch it to the end first "
                                 f"(watch({job_id!r}) or `fleetgate batch resume {job_id}`)")
        output = Path(output)
        dead_path = Path(dead_letters) if dead_letters else output.with_suffix(".dead.jsonl")
        chunks = self.store.chunks(job.id)
        written: set[str] = set()
        answered = dead = 0
        with _atomic(output, "w") as out, _atomic(dead_path, "w") as graveyard:
            for chunk in chunks:
                skip = set(chunk.retry_ids) | set(chunk.unknown_ids)
                if chunk.state == "collected":
                    for file_id in (chunk.output_file_id, chunk.error_file_id):
                        if not file_id:
                            continue
                        try:
                            for line in parse_lines(self._file_lines(file_id)):
                                if line is None or line.custom_id in skip or line.custom_id in written:
                                    continue
                                written.add(line.custom_id)
                                if line.outcome == "ok":
                                    out.write(json.dumps(line.record) + "\n")
                                    answered += 1
                                else:
                                    graveyard.write(json.dumps({"custom_id": line.custom_id, "error": line.error,
                                                                "attempts": chunk.attempt, "batch_id": chunk.batch_id}) + "\n")
                                    dead += 1
                        except ResultsExpired as e:
                            raise ResultsExpired(f"job {job_id}: the results of {chunk.id} (batch {chunk.batch_id}) "
                                                 "have expired at OpenAI; they cannot be collected any more") from e
                error = chunk.error or {"code": "no_result", "message": "the batch returned no result for this request"}
                if chunk.state == "cancelled" or (chunk.state == "collected" and job.status == "cancelled"):
                    error = {"code": "batch_cancelled", "message": "the job was cancelled before this request ran"}
                for custom_id in chunk.missing_ids:
                    if custom_id not in written:
                        written.add(custom_id)
                        graveyard.write(json.dumps({"custom_id": custom_id, "error": error, "attempts": chunk.attempt,
                                                    "batch_id": chunk.batch_id}) + "\n")
                        dead += 1
        job.collected_at = self.clock()
        self.store.save_job(job)
        return CollectSummary(output, dead_path, answered, dead)

    # -- async twins ------------------------------------------------------------------------

    async def submit_async(self, input_path: str | Path, name: str | None = None, **options: Any) -> JobReport:
        return await asyncio.to_thread(self.submit, input_path, name, **options)

    async def watch_async(self, job_id: str, **options: Any) -> JobReport:
        return await asyncio.to_thread(self.watch, job_id, **options)

    async def status_async(self, job_id: str | None = None) -> list[JobReport]:
        return await asyncio.to_thread(self.status, job_id)

    async def cancel_async(self, job_id: str) -> None:
        await asyncio.to_thread(self.cancel, job_id)

    async def collect_async(self, job_id: str, output: str | Path,
                            dead_letters: str | Path | None = None) -> CollectSummary:
        return await asyncio.to_thread(self.collect, job_id, output, dead_letters)


@contextmanager
def _atomic(path: Path, mode: Literal["w", "wb"]) -> Iterator[IO[Any]]:
    """A file written whole or not at all: a temporary file, fsynced and renamed at the end."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(mode, dir=path.parent, delete=False, suffix=".partial") as out:
        try:
            yield out
            out.flush()
            os.fsync(out.fileno())
        except BaseException:
            out.close()
            os.unlink(out.name)
            raise
    os.replace(out.name, path)


def _write_problems(path: Path, problems: list[Problem]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as out:
        for p in problems:
            out.write(json.dumps({"line": p.line, "error": p.reason}) + "\n")
