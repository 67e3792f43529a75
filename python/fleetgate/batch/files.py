"""A job's chunk files: spooled on this machine at submission, uploaded to the Files API,
read back from it (for retries, and to know the ids a chunk was sent) and deleted at the end."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Literal

import openai

from fleetgate.batch.base import JobsBase
from fleetgate.batch.errors import ResultsExpired
from fleetgate.batch.state import Chunk, Job
from fleetgate.errors import FleetgateError

__all__ = ["ChunkFiles", "atomic"]


class ChunkFiles(JobsBase):
    """Where a job's chunks are, here and at the API."""

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
        with atomic(path, "wb") as out:
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
            raise ResultsExpired(f"file {file_id} is gone from the API (expired or deleted); its requests' answers "
                                 "cannot be read any more: submit those requests again") from e

    def _ids(self, job: Job, chunk: Chunk, chunks: list[Chunk]) -> set[str]:
        """The ids the chunk was sent: from its lines here, else from its uploaded file."""
        if chunk.file_id is not None and not self._spool(job, chunk).exists():
            return {json.loads(raw)["custom_id"] for raw in self._file_lines(chunk.file_id) if raw.strip()}
        with self._chunk_path(job, chunk, chunks).open("rb") as lines:
            return {json.loads(raw)["custom_id"] for raw in lines if raw.strip()}

    def _delete_file(self, file_id: str) -> None:
        try:
            self.client.files.delete(file_id)
        except openai.NotFoundError:
            pass  # already gone


@contextmanager
def atomic(path: Path, mode: Literal["w", "wb"]) -> Iterator[IO[Any]]:
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
