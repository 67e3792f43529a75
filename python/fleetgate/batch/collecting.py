"""Collecting a chunk: polling its batch, joining what it returned to what it was sent,
sending its failures again as a new chunk, billing its cost; and, at the end, writing the
job's answers and dead letters."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import openai

from fleetgate.batch.base import ENDED, jitter
from fleetgate.batch.errors import ResultsExpired
from fleetgate.batch.files import ChunkFiles, atomic
from fleetgate.batch.report import CollectSummary
from fleetgate.batch.results import Tally, parse_lines
from fleetgate.batch.split import split_file
from fleetgate.batch.state import Chunk, Job
from fleetgate.errors import FleetgateError
from fleetgate.estimate import usage_counts

__all__ = ["Collecting"]

log = logging.getLogger("fleetgate.batch")


class Collecting(ChunkFiles):
    """Brings a job's answers back."""

    def _poll(self, job: Job, chunk: Chunk, chunks: list[Chunk]) -> None:
        assert chunk.batch_id is not None
        batch = self.client.batches.retrieve(chunk.batch_id)
        changed = batch.status != chunk.batch_status
        chunk.batch_status = batch.status
        if batch.status in ENDED:
            self._collect(job, chunk, chunks, batch)
            return
        if batch.status == "failed":
            self._failed(job, chunk, chunks, batch)
            return
        chunk.poll_interval = self.settings.poll_min_seconds if changed else min(
            self.settings.poll_max_seconds, chunk.poll_interval * 2)
        chunk.not_before = self.clock() + jitter(chunk.poll_interval)
        self.store.save_chunks(job.id, [chunk])

    def _failed(self, job: Job, chunk: Chunk, chunks: list[Chunk], batch: Any) -> None:
        errors = (batch.errors.data if batch.errors is not None else None) or []
        first = errors[0].model_dump() if errors else {"code": "batch_failed", "message": "the batch failed"}
        if first.get("code") == "token_limit_exceeded":
            # Held: created again once other batches of the model end.
            chunk.state, chunk.batch_id, chunk.batch_status = "uploaded", None, None
            chunk.held = f"{chunk.id} was refused for {job.model}'s enqueued-token limit; it is sent as others end"
            chunk.not_before = self.clock() + jitter(max(self.settings.poll_min_seconds, 1.0) * min(2 ** chunk.tries, 64))
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
                    line_cost = prices.cost(job.model, usage, tier="batch") if usage else None
                    cost += line_cost or 0.0
                    if metrics is not None and isinstance(usage, dict):
                        metrics.billed(job.model, job.feature or None, usage_counts(usage), line_cost,
                                       service_tier="batch")
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
        label = self.gateway.privacy.label  # the spend records name users as the request path does
        ledger.settle(hold, chunk.cost, model=job.model, feature=label("feature", job.feature or None) or "",
                      user=label("user", job.user or None) or "", team=label("team", job.team or None) or "")
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
        with atomic(output, "w") as out, atomic(dead_path, "w") as graveyard:
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
                                                 "have expired at OpenAI; they cannot be collected any more: submit its requests "
                                                 "again") from e
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
