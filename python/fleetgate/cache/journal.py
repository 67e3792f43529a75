"""Where the semantic layer's entries are written down, so that other pods (and this pod
after a restart) can index them too: a Redis stream shared by the fleet, or a file on this
machine in embedded mode.

A record is one entry (``op = "put"``: its namespace, prompt, answer key, expiry, embedder
and vector) or the deletion of an answer (``op = "forget"``). The file carries the stored
answer in the record too, since embedded answers otherwise live only in memory.
"""

from __future__ import annotations

import base64
import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import redis

from fleetgate.redis_clients import redis_client
from fleetgate.errors import StoreUnavailable

__all__ = ["FileJournal", "Journal", "Record", "RedisJournal"]

#: The stream of entries (one key, so one cluster slot; trimmed to about `max_records`).
STREAM = "fg:{semcache}:entries"


@dataclass
class Record:
    op: str  # "put" or "forget"
    key: str  # the exact layer's key of the answer
    namespace: str = ""
    text: str = ""
    expires: float = 0.0  # wall clock, seconds since the epoch
    embedder: str = ""
    pod: str = ""
    vector: np.ndarray[Any, np.dtype[np.float32]] | None = None
    #: The stored answer itself (file journals only).
    answer: bytes | None = field(default=None, repr=False)

    def head(self) -> str:
        return json.dumps({"op": self.op, "key": self.key, "ns": self.namespace, "text": self.text,
                           "exp": self.expires, "emb": self.embedder, "pod": self.pod}, ensure_ascii=False)

    @classmethod
    def from_head(cls, head: str | bytes, vector: bytes | None, answer: bytes | None = None) -> Record:
        h = json.loads(head)
        return cls(h["op"], h["key"], h["ns"], h["text"], float(h["exp"]), h["emb"], h["pod"],
                   np.frombuffer(vector, dtype=np.float32).copy() if vector else None, answer)


class Journal(Protocol):
    def append(self, record: Record) -> None: ...

    def read(self, after: str, wait: float) -> tuple[list[Record], str]:
        """Records written after cursor `after` ("0": from the start), waiting up to `wait`
        seconds for one; and the cursor to read on from."""
        ...

    def close(self) -> None: ...


class RedisJournal:
    """The fleet's journal: a Redis stream, read by every pod (``XREAD BLOCK``)."""

    def __init__(self, url: str, max_records: int) -> None:
        self._client = redis_client(url)
        self._reader = redis_client(url, timeout=None)
        self._max = max_records

    def append(self, record: Record) -> None:
        fields: dict[str, str | bytes] = {"r": record.head()}
        if record.vector is not None:
            fields["v"] = np.ascontiguousarray(record.vector, dtype=np.float32).tobytes()
        try:
            self._client.xadd(STREAM, fields, maxlen=self._max, approximate=True)  # type: ignore[arg-type]
        except redis.RedisError as e:
            raise StoreUnavailable(f"the semantic cache's Redis is unavailable ({e}); check that Redis is "
                                   "reachable at redis_url") from e

    def read(self, after: str, wait: float) -> tuple[list[Record], str]:
        entries: list[tuple[Any, dict[bytes, bytes]]]
        try:
            if after == "0":  # warm start: from the stream's start, without waiting
                entries = self._reader.xrange(STREAM, "-", "+", count=10_000)  # type: ignore[assignment]
            else:
                found: Any = self._reader.xread({STREAM: after}, count=10_000, block=max(1, int(wait * 1000)))
                entries = found[0][1] if found else []
        except redis.RedisError as e:
            raise StoreUnavailable(f"the semantic cache's Redis is unavailable ({e}); check that Redis is "
                                   "reachable at redis_url") from e
        if not entries:
            return [], after if after != "0" else "0-0"
        records = [Record.from_head(f[b"r"], f.get(b"v")) for _, f in entries]
        last = entries[-1][0]
        return records, last.decode() if isinstance(last, bytes) else str(last)

    def close(self) -> None:
        self._client.close()
        self._reader.close()


class FileJournal:
    """This machine's journal: one JSON line per record, appended and flushed; read whole
    at start. Rewritten with only the live records when it has grown past twice them."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._path = Path(path)
        self._path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._file = self._path.open("a", encoding="utf-8")

    def append(self, record: Record) -> None:
        line = _line(record)
        with self._lock:
            self._file.write(line)
            self._file.flush()

    def read(self, after: str, wait: float) -> tuple[list[Record], str]:
        if after != "0":  # nobody else writes this file
            return [], after
        records = []
        with self._path.open(encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if not line.endswith("\n"):
                    break  # a record cut short by a crash: the ones before it stand
                try:
                    records.append(_record(line))
                except (ValueError, KeyError) as e:
                    raise StoreUnavailable(f"{self._path}:{number}: not a semantic cache record ({e}); "
                                           "move the file away to start with an empty cache") from e
        return records, "end"

    def rewrite(self, records: list[Record]) -> None:
        """Replace the file with `records` (written aside, then renamed over it)."""
        aside = self._path.with_suffix(self._path.suffix + ".new")
        with aside.open("w", encoding="utf-8") as f:
            f.writelines(_line(r) for r in records)
            f.flush()
            os.fsync(f.fileno())
        with self._lock:
            self._file.close()
            aside.replace(self._path)
            self._file = self._path.open("a", encoding="utf-8")

    def close(self) -> None:
        with self._lock:
            self._file.close()


def _line(record: Record) -> str:
    body = json.loads(record.head())
    if record.vector is not None:
        body["v"] = base64.b64encode(np.ascontiguousarray(record.vector, dtype=np.float32).tobytes()).decode()
    if record.answer is not None:
        body["a"] = base64.b64encode(record.answer).decode()
    return json.dumps(body, ensure_ascii=False) + "\n"


def _record(line: str) -> Record:
    body = json.loads(line)
    vector = base64.b64decode(body["v"]) if "v" in body else None
    answer = base64.b64decode(body["a"]) if "a" in body else None
    return Record.from_head(line, vector, answer)
