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

A file targets one endpoint, any the Batch API accepts
(:data:`fleetgate.endpoints.BATCH_ENDPOINTS`: responses, chat completions, embeddings,
completions, moderations, image generations and edits); each body is checked for it.

:class:`BatchJobs` is the public face and the loop that drives each chunk through its
states (``watch``); the steps it takes are one module each: :mod:`~fleetgate.batch.sending`
(upload, create), :mod:`~fleetgate.batch.collecting` (poll, collect, retry, bill, write the
results) and :mod:`~fleetgate.batch.files` (the chunk files), over the state they share in
:mod:`~fleetgate.batch.base`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

from fleetgate.batch.collecting import Collecting
from fleetgate.batch.errors import BatchInputError, JobBusy, ResultsExpired
from fleetgate.batch.report import CollectSummary, JobReport
from fleetgate.batch.sending import Sending
from fleetgate.batch.split import Problem, split_file
from fleetgate.batch.state import Chunk, Job
from fleetgate.errors import BudgetExceeded, ConfigError, FleetgateError

__all__ = ["BatchJobs", "BatchInputError", "CollectSummary", "JobBusy", "JobReport", "ResultsExpired"]

log = logging.getLogger("fleetgate.batch")

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,47}")
_ACTIVE = ("validating", "in_progress", "finalizing", "cancelling")


class BatchJobs(Sending, Collecting):
    """Batch jobs of one gateway: its upstream, Redis (or this machine's record), budgets,
    prices and ``[batch]`` settings. Every method has an ``_async`` twin."""

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

    def _check_budget(self, job: Job) -> None:
        """Refuse a job whose budget is already spent (a job larger than what is left
        waits for the budget batch by batch), or whose model has no price when budgets
        apply and ``[budgets] unpriced = "refuse"`` (image models are priced only when the
        price table lists them)."""
        budgets = self.gateway.budgets.applicable(self._scope(job))
        if budgets and self.gateway.prices.price(job.model) is None \
                and self.gateway.budgets.settings.unpriced == "refuse":
            raise ConfigError(
                f"model {job.model!r} has no price, so no budget can hold the job's batches: add it under "
                f'[prices.models."{job.model}"] (input and output dollars per 1M tokens; image models bill their '
                'image tokens as output), or set [budgets] unpriced = "allow": the job was not submitted')
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
                raise JobBusy(f"job {job.id} is watched by {holder}, whose lease lapses within "
                              f"{self.settings.lease_seconds:.0f} s of its last renewal; leave the job to it, or "
                              "watch with wait_for_lease=<seconds> to take over once the lease lapses")
            time.sleep(min(1.0, self.settings.lease_seconds / 4))
        self._found = {}
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


def _write_problems(path: Path, problems: list[Problem]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as out:
        for p in problems:
            out.write(json.dumps({"line": p.line, "error": p.reason}) + "\n")
