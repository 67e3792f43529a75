"""Sending a chunk: uploading its file and creating its batch, each paced by OpenAI's own
limits, within the model's enqueued-token limit and the job's budgets; and, after a crash
mid-step, finding what the step did at the API instead of doing it twice."""

from __future__ import annotations

import logging
import time

from fleetgate._core import Quota
from fleetgate.batch.base import ENDED, jitter
from fleetgate.batch.files import ChunkFiles
from fleetgate.batch.state import Chunk, Job
from fleetgate.errors import BudgetExceeded

__all__ = ["Sending"]

log = logging.getLogger("fleetgate.batch")


class Sending(ChunkFiles):
    """Gets a job's chunks to the Batch API."""

    def _upload(self, job: Job, chunk: Chunk, chunks: list[Chunk]) -> None:
        path = self._chunk_path(job, chunk, chunks)
        self._pace(self._uploads)
        chunk.state = "uploading"
        self.store.save_chunks(job.id, [chunk])
        with path.open("rb") as data:
            uploaded = self.client.files.create(file=(self._filename(job, chunk), data), purpose="batch",
                                                extra_headers=self._upstream(job))
        chunk.file_id, chunk.state = uploaded.id, "uploaded"
        self.store.save_chunks(job.id, [chunk])
        log.info("fleetgate: job %s: %s uploaded as %s", job.id, chunk.id, uploaded.id)

    def _reconcile_upload(self, job: Job, chunk: Chunk) -> None:
        """After a crash during an upload: the file, if it arrived, else upload again."""
        name = self._filename(job, chunk)
        found = [f for f in self.client.files.list(purpose="batch", extra_headers=self._upstream(job))
                 if f.filename == name and f.bytes == chunk.bytes]
        for extra in found[1:]:
            self._delete_file(extra.id)
        chunk.state, chunk.file_id = ("uploaded", found[0].id) if found else ("intent", None)
        self.store.save_chunks(job.id, [chunk])

    def _pace(self, quota: Quota) -> None:
        """Wait for the fleet's turn to upload or create (OpenAI's own limits on these)."""
        self.gateway.limiter.acquire(quota, timeout=3600)

    def _in_flight(self, chunks: list[Chunk]) -> int:
        return sum(c.tokens for c in chunks if c.state in ("creating", "created") and c.batch_status not in ENDED)

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
            extra_headers=self._upstream(job),
        )
        self._created(job, chunk, batch.id, batch.status)

    def _created(self, job: Job, chunk: Chunk, batch_id: str, status: str) -> None:
        chunk.state, chunk.batch_id, chunk.batch_status = "created", batch_id, status
        chunk.poll_interval = self.settings.poll_min_seconds
        chunk.not_before = self.clock() + jitter(chunk.poll_interval)
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
        watch, at the job's upstream)."""
        upstream = self._upstream(job)
        where = "@".join(upstream.values())  # model@deployment, "" for the client's base URL
        found = self._found.get(where)
        if found is None:
            found = {}
            for batch in self.client.batches.list(limit=100, extra_headers=upstream):
                if batch.created_at < job.created_at - 300:
                    break  # newest first: the rest are older than the job
                meta = batch.metadata or {}
                if "fleetgate_job" in meta:
                    found[(meta["fleetgate_job"], meta.get("fleetgate_chunk", ""), meta.get("fleetgate_try", ""))] = batch.id
            self._found[where] = found
        return found

    def _reserve(self, job: Job, chunk: Chunk) -> bool:
        """Hold the chunk's worst case at the batch price on its budgets; False (the chunk
        waits) when a budget refuses."""
        budgets = self.gateway.budgets.applicable(self._scope(job))
        if not budgets or (job.id, chunk.id) in self._holds:
            return True
        price = self.gateway.prices.price(job.model)
        if price is None:
            return True
        worst = price.worst(chunk.tokens - chunk.output_tokens, chunk.output_tokens, tier="batch")
        try:
            self._holds[job.id, chunk.id] = self.gateway.budgets.ledger.reserve(budgets, worst, lease=86_400)
        except BudgetExceeded as e:
            chunk.held = f"{chunk.id} waits for budget {e.budget} (until {time.strftime('%H:%M UTC', time.gmtime(e.resets_at))})"
            chunk.not_before = min(e.resets_at, self.clock() + self.settings.poll_max_seconds)
            return False
        return True
