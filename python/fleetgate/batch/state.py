"""The write-ahead record of batch jobs: every step of every chunk (intent → uploading →
uploaded → creating → created → collected) is written before and after the call that
makes it, in Redis (shared by the fleet) or in a SQLite file (embedded), so that a
process that dies at any moment leaves enough behind for the next one to finish the job
without sending anything twice. One pod at a time watches a job, by lease."""

from __future__ import annotations

import builtins
import json
import os
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from fleetgate.errors import ConfigError

__all__ = ["Chunk", "Job", "JobStore", "RedisJobStore", "SqliteJobStore", "new_owner", "store_for"]

ChunkState = Literal["intent", "uploading", "uploaded", "creating", "created", "collected", "failed", "cancelled"]
#: States a chunk does not leave.
FINAL_STATES = ("collected", "failed", "cancelled")
JobStatus = Literal["running", "done", "cancelling", "cancelled"]


@dataclass
class Job:
    id: str
    endpoint: str
    model: str
    input: str
    created_at: float
    lines: int
    #: Input lines set aside as invalid (reported with their line numbers at submission).
    rejected: int = 0
    max_attempts: int = 3
    status: JobStatus = "running"
    feature: str = ""
    user: str = ""
    team: str = ""
    finished_at: float | None = None
    #: When its results were last written out by ``collect``.
    collected_at: float | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str | bytes) -> Job:
        return cls(**json.loads(text))


@dataclass
class Chunk:
    id: str
    attempt: int
    lines: int
    bytes: int
    tokens: int
    output_tokens: int
    #: The chunk whose failed lines this one retries.
    parent: str | None = None
    state: ChunkState = "intent"
    file_id: str | None = None
    #: Creations tried: a batch refused for the enqueued-token limit is tried again.
    tries: int = 0
    batch_id: str | None = None
    batch_status: str | None = None
    #: Unix seconds before which the chunk is not created (held) or its batch not polled.
    not_before: float = 0.0
    poll_interval: float = 0.0
    held: str | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    results_expire_at: float | None = None
    #: After collection: lines by outcome, and the ids that did not end here.
    counts: dict[str, int] = field(default_factory=dict)
    retry_ids: list[str] = field(default_factory=list)
    missing_ids: list[str] = field(default_factory=list)
    #: Ids the batch returned that it was not sent (reported, never written out).
    unknown_ids: list[str] = field(default_factory=list)
    cost: float = 0.0
    billed: bool = False
    #: Why the batch failed as a whole (then every line is dead-lettered with it).
    error: dict[str, Any] | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str | builtins.bytes) -> Chunk:
        return cls(**json.loads(text))

    @property
    def final(self) -> bool:
        return self.state in FINAL_STATES


def new_owner() -> str:
    """This process's name as a lease holder: host, pid and a random part."""
    return f"{socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex[:8]}"


def _dead_on_this_host(owner: str) -> bool:
    """Whether `owner` is a process of this host that no longer runs."""
    host, _, rest = owner.partition("/")
    pid = rest.partition("/")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class JobStore(Protocol):
    def create_job(self, job: Job, chunks: list[Chunk]) -> bool:
        """Record a new job and its first chunks at once; False if the id is taken."""
    def job(self, job_id: str) -> Job | None: ...
    def jobs(self) -> list[Job]: ...
    def save_job(self, job: Job) -> None: ...
    def chunks(self, job_id: str) -> list[Chunk]: ...
    def save_chunks(self, job_id: str, chunks: list[Chunk]) -> None:
        """Write every chunk of `chunks` at once (all or none)."""
    def request_cancel(self, job_id: str) -> None: ...
    def cancel_requested(self, job_id: str) -> bool: ...
    def take_lease(self, job_id: str, owner: str, seconds: float) -> str | None:
        """Take or renew the job's lease; None if `owner` holds it now, else the holder."""
    def release_lease(self, job_id: str, owner: str) -> None: ...
    def close(self) -> None: ...


class SqliteJobStore:
    """Jobs in a SQLite file (write-ahead log, synchronous commits), for one machine."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript("""
            CREATE TABLE IF NOT EXISTS jobs (id TEXT PRIMARY KEY, doc TEXT NOT NULL, created REAL NOT NULL);
            CREATE TABLE IF NOT EXISTS chunks (job TEXT NOT NULL, id TEXT NOT NULL, doc TEXT NOT NULL,
                                               PRIMARY KEY (job, id));
            CREATE TABLE IF NOT EXISTS cancels (job TEXT PRIMARY KEY);
            CREATE TABLE IF NOT EXISTS leases (job TEXT PRIMARY KEY, owner TEXT NOT NULL, expires REAL NOT NULL);
        """)

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One writing transaction: committed whole, or rolled back on any error."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def create_job(self, job: Job, chunks: list[Chunk]) -> bool:
        with self._transaction() as db:
            if db.execute("SELECT 1 FROM jobs WHERE id = ?", (job.id,)).fetchone():
                return False
            db.execute("INSERT INTO jobs VALUES (?, ?, ?)", (job.id, job.to_json(), job.created_at))
            db.executemany("INSERT INTO chunks VALUES (?, ?, ?)", [(job.id, c.id, c.to_json()) for c in chunks])
            return True

    def job(self, job_id: str) -> Job | None:
        with self._lock:
            row = self._db.execute("SELECT doc FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return Job.from_json(row[0]) if row else None

    def jobs(self) -> list[Job]:
        with self._lock:
            rows = self._db.execute("SELECT doc FROM jobs ORDER BY created").fetchall()
        return [Job.from_json(r[0]) for r in rows]

    def save_job(self, job: Job) -> None:
        with self._transaction() as db:
            db.execute("UPDATE jobs SET doc = ? WHERE id = ?", (job.to_json(), job.id))

    def chunks(self, job_id: str) -> list[Chunk]:
        with self._lock:
            rows = self._db.execute("SELECT doc FROM chunks WHERE job = ? ORDER BY id", (job_id,)).fetchall()
        return [Chunk.from_json(r[0]) for r in rows]

    def save_chunks(self, job_id: str, chunks: list[Chunk]) -> None:
        with self._transaction() as db:
            db.executemany("INSERT OR REPLACE INTO chunks VALUES (?, ?, ?)", [(job_id, c.id, c.to_json()) for c in chunks])

    def request_cancel(self, job_id: str) -> None:
        with self._transaction() as db:
            db.execute("INSERT OR IGNORE INTO cancels VALUES (?)", (job_id,))

    def cancel_requested(self, job_id: str) -> bool:
        with self._lock:
            return self._db.execute("SELECT 1 FROM cancels WHERE job = ?", (job_id,)).fetchone() is not None

    def take_lease(self, job_id: str, owner: str, seconds: float) -> str | None:
        now = time.time()
        with self._transaction() as db:
            row = db.execute("SELECT owner, expires FROM leases WHERE job = ?", (job_id,)).fetchone()
            if row is not None and row[0] != owner and row[1] > now and not _dead_on_this_host(row[0]):
                return str(row[0])
            db.execute("INSERT OR REPLACE INTO leases VALUES (?, ?, ?)", (job_id, owner, now + seconds))
            return None

    def release_lease(self, job_id: str, owner: str) -> None:
        with self._transaction() as db:
            db.execute("DELETE FROM leases WHERE job = ? AND owner = ?", (job_id, owner))

    def close(self) -> None:
        with self._lock:
            self._db.close()


_TAKE_LEASE = """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return holder end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return false
"""
_CREATE_JOB = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('SET', KEYS[1], ARGV[1])
for i = 2, #ARGV, 2 do redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1]) end
return 1
"""
_RELEASE_LEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 0
"""


def _escape(job_id: str) -> str:
    # A job's keys share one hash tag; its id cannot move them to another slot.
    return job_id.replace("{", "(").replace("}", ")")


class RedisJobStore:
    """Jobs in Redis (standalone or cluster), shared by every pod: a job's keys share a
    hash tag, so that its chunks are written together in one transaction."""

    def __init__(self, url: str) -> None:
        from fleetgate.redis_clients import redis_client

        self._redis: Any = redis_client(url)
        self._take = self._redis.register_script(_TAKE_LEASE)
        self._release = self._redis.register_script(_RELEASE_LEASE)
        self._create = self._redis.register_script(_CREATE_JOB)

    @staticmethod
    def _key(job_id: str, part: str) -> str:
        return f"fg:{{batch:{_escape(job_id)}}}:{part}"

    def create_job(self, job: Job, chunks: list[Chunk]) -> bool:
        fields = [x for c in chunks for x in (c.id, c.to_json())]
        if not self._create(keys=[self._key(job.id, "job"), self._key(job.id, "chunks")],
                            args=[job.to_json(), *fields]):
            return False
        self._redis.zadd("fg:batch:jobs", {job.id: job.created_at})
        return True

    def job(self, job_id: str) -> Job | None:
        raw = self._redis.get(self._key(job_id, "job"))
        return Job.from_json(raw) if raw else None

    def jobs(self) -> list[Job]:
        found = []
        for job_id in self._redis.zrange("fg:batch:jobs", 0, -1):
            job = self.job(job_id.decode() if isinstance(job_id, bytes) else job_id)
            if job is not None:
                found.append(job)
        return found

    def save_job(self, job: Job) -> None:
        self._redis.set(self._key(job.id, "job"), job.to_json())

    def chunks(self, job_id: str) -> list[Chunk]:
        raw = self._redis.hgetall(self._key(job_id, "chunks"))
        return sorted((Chunk.from_json(v) for v in raw.values()), key=lambda c: c.id)

    def save_chunks(self, job_id: str, chunks: list[Chunk]) -> None:
        if chunks:  # one HSET: all fields or none
            self._redis.hset(self._key(job_id, "chunks"), mapping={c.id: c.to_json() for c in chunks})

    def request_cancel(self, job_id: str) -> None:
        self._redis.set(self._key(job_id, "cancel"), "1")

    def cancel_requested(self, job_id: str) -> bool:
        return bool(self._redis.exists(self._key(job_id, "cancel")))

    def take_lease(self, job_id: str, owner: str, seconds: float) -> str | None:
        holder = self._take(keys=[self._key(job_id, "lease")], args=[owner, max(1, int(seconds * 1000))])
        if holder is None:
            return None
        return holder.decode() if isinstance(holder, bytes) else str(holder)

    def release_lease(self, job_id: str, owner: str) -> None:
        self._release(keys=[self._key(job_id, "lease")], args=[owner])

    def close(self) -> None:
        self._redis.close()


def store_for(redis_url: str | None, directory: Path) -> JobStore:
    """The fleet's job record in Redis, or this machine's in ``directory/jobs.sqlite``."""
    if redis_url:
        return RedisJobStore(redis_url)
    try:
        return SqliteJobStore(directory / "jobs.sqlite")
    except (OSError, sqlite3.Error) as e:
        raise ConfigError(f"cannot keep batch jobs in {directory}: {e}; set [batch] directory to a writable "
                          "folder") from e
