"""The semantic layer: answers to prompts that mean the same, found by embedding the last
user message and searching a FAISS index of earlier ones.

A request's *namespace* holds everything but that last message: who may share (API key
and upstream, and the user, team or feature the settings name), the endpoint, the model,
the instructions and earlier messages, every sampling parameter, and the embedder. Only
entries of the same namespace are compared, each namespace in its own index, so nothing
crosses users, tenants, models or system prompts. A candidate above the similarity
threshold must still pass the near-miss guards (:mod:`fleetgate.cache.guards`).

The answers themselves stay in the exact layer's store; an entry points at one by its
key. Entries are journaled (:mod:`fleetgate.cache.journal`) so that every pod indexes
them within ``poll_seconds``, and a new pod (or, embedded, a restart) starts warm.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import httpx2
import numpy as np

from fleetgate.cache.embedders import Embedder, Vectors
from fleetgate.cache.guards import Prompt, changed_terms, near_miss
from fleetgate.cache.journal import FileJournal, Journal, Record, RedisJournal
from fleetgate.cache.vectors import IndexSettings, VectorIndex
from fleetgate.redis_clients import redacted_url
from fleetgate.config import SemanticSettings
from fleetgate.errors import StoreUnavailable
from fleetgate.outage import Outage
from fleetgate.scope import Scope
from fleetgate.sharing import NOT_IN_KEY, digest, namespace_of

if TYPE_CHECKING:
    from fleetgate.cache.store import AnswerStore
    from fleetgate.stats import GatewayStats

__all__ = ["Match", "SemanticCache", "SemanticQuery"]

log = logging.getLogger("fleetgate")

#: Entries waiting to be embedded and indexed, at most.
_MAX_PENDING = 1_000



@dataclass
class SemanticQuery:
    """A request as the semantic layer sees it: its namespace and its last user message."""

    namespace: str
    text: str
    #: The message's vector, once embedded (by a lookup; reused when the answer is stored).
    vector: Vectors | None = None

    @cached_property
    def prompt(self) -> Prompt:
        """The message as the guards read it: built only when a candidate is close enough,
        or when its answer is stored."""
        return Prompt.of(self.text)


@dataclass(frozen=True)
class Match:
    key: str
    similarity: float


@dataclass
class _Entry:
    namespace: str
    key: str
    prompt: Prompt
    expires: float
    vector: Vectors = field(repr=False)


class SemanticCache:
    """One pod's view of the fleet's semantic entries."""

    def __init__(self, settings: SemanticSettings, embedder: Embedder, stats: GatewayStats,
                 redis_url: str | None, store: AnswerStore, on_guarded: Callable[[str], object] | None = None) -> None:
        """`on_guarded(guard)` hears of each near-miss a guard refused (the metrics count them)."""
        self.settings = settings
        self.embedder = embedder
        self.stats = stats
        self._on_guarded = on_guarded
        self._store = store
        self._pod = os.urandom(8).hex()
        self._lock = threading.Lock()
        self._indexes: dict[str, VectorIndex] = {}
        self._entries: OrderedDict[int, _Entry] = OrderedDict()  # oldest first
        self._by_key: dict[str, list[int]] = {}
        self._next_id = 0
        self._index_settings = IndexSettings(hnsw_from=settings.hnsw_from)
        self._stop = threading.Event()
        self.ready = threading.Event()  # set once the journal has been read (warm start)
        self._journal: Journal | None
        self._outage = Outage(f"the semantic cache's Redis at {redacted_url(redis_url)}" if redis_url
                              else "the semantic cache's journal")
        if redis_url is not None:
            self._journal = RedisJournal(redis_url, settings.max_entries)
        elif settings.path is not None:
            self._journal = FileJournal(settings.path)
        else:
            self._journal = None
        self._follower: threading.Thread | None = None
        #: Entries are embedded and indexed off the request path, in order.
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fleetgate-semantic-add")
        self._pending = 0
        if self._journal is None:
            self.ready.set()
        elif isinstance(self._journal, FileJournal):
            self._warm_from_file(self._journal)
            self.ready.set()
        else:
            self._follower = threading.Thread(target=self._follow, name="fleetgate-semantic-sync", daemon=True)
            self._follower.start()

    # -- requests ---------------------------------------------------------------------------

    def query(self, endpoint: str, body: dict[str, Any], request: httpx2.Request, sc: Scope) -> SemanticQuery | None:
        """The request's namespace and last user message; None when it has none to match
        on (no text from the user last, or a scope without the part the namespace names)."""
        sharing = namespace_of(self.settings.namespace, request, sc)
        if sharing is None:
            return None
        split = _split(endpoint, body)
        if split is None:
            return None
        context, text = split
        # Fields that do not change the answer are left out as in the exact layer (``stream``
        # stays: a stream is replayed as a stream).
        namespace = digest(sharing, endpoint, self.embedder.name, json.dumps(context, sort_keys=True, ensure_ascii=False))
        return SemanticQuery(namespace, text)

    def find(self, query: SemanticQuery) -> Match | None:
        """An earlier answer's key that may serve `query`, or None."""
        index = self._indexes.get(query.namespace)
        if index is None or len(index) == 0:
            self.stats.count("semantic_misses")
            return None
        vector = self._vector(query)
        now = time.time()
        for entry_id, similarity in index.search(vector, self.settings.candidates):
            if similarity < self.settings.threshold:
                break
            entry = self._entries.get(entry_id)
            if entry is None or entry.expires <= now:
                continue
            reason = near_miss(query.prompt, entry.prompt) or self._changed_terms(query.prompt, entry.prompt)
            if reason is not None:
                self.stats.count(f"semantic_guarded_{reason}")
                if self._on_guarded is not None:
                    self._on_guarded(reason)
                continue
            self.stats.count("semantic_hits")
            return Match(entry.key, similarity)
        self.stats.count("semantic_misses")
        return None

    def add(self, query: SemanticQuery, key: str, ttl: float, answer: bytes | None = None) -> None:
        """Index the answer stored under `key` for `query`'s prompt, here and (journaled)
        on every pod. `answer` is the stored answer, kept with a file journal."""
        vector = self._vector(query)
        record = Record("put", key, query.namespace, query.text, time.time() + ttl, self.embedder.name,
                        self._pod, vector, answer if isinstance(self._journal, FileJournal) else None)
        self._apply(record)
        if self._journal is not None:
            self._journal.append(record)

    def add_later(self, query: SemanticQuery, key: str, ttl: float, answer: bytes | None = None) -> None:
        """`add`, in the semantic layer's own thread (a failure is logged). When more than
        `_MAX_PENDING` wait, the entry is dropped (counted in ``semantic_dropped``): a pod
        that answers faster than it can embed keeps its memory bounded."""
        with self._lock:
            if self._pending >= _MAX_PENDING:
                self.stats.count("semantic_dropped")
                return
            self._pending += 1
        self._writer.submit(self._add_pending, query, key, ttl, answer).add_done_callback(_log_failure)

    def _add_pending(self, query: SemanticQuery, key: str, ttl: float, answer: bytes | None) -> None:
        try:
            self.add(query, key, ttl, answer)
        finally:
            with self._lock:
                self._pending -= 1

    def flush(self) -> None:
        """Wait until every `add_later` so far is done."""
        self._writer.submit(lambda: None).result()

    def forget(self, key: str) -> None:
        """Stop serving the answer under `key` by meaning, on every pod."""
        record = Record("forget", key, pod=self._pod)
        self._apply(record)
        if self._journal is not None:
            self._journal.append(record)

    def __len__(self) -> int:
        return len(self._entries)

    def entries(self) -> list[tuple[str, str]]:
        """(answer key, prompt) of every entry this pod holds, oldest first."""
        with self._lock:
            return [(e.key, e.prompt.text) for e in self._entries.values()]

    def close(self) -> None:
        self._writer.shutdown(wait=True)
        self._stop.set()
        if self._follower is not None:
            self._follower.join(timeout=2 * self.settings.poll_seconds + 2)
        if self._journal is not None:
            self._journal.close()

    # -- the index ---------------------------------------------------------------------------

    def _vector(self, query: SemanticQuery) -> Vectors:
        if query.vector is None:
            query.vector = self.embedder.embed([query.text])[0]
        return query.vector

    def _changed_terms(self, a: Prompt, b: Prompt) -> str | None:
        """"entity" when a word took the place of an unrelated one ("Python" / "Ruby")."""
        pairs = changed_terms(a, b)
        if not pairs:
            return None
        vectors = self.embedder.embed([w for pair in pairs for w in pair])
        for i in range(len(pairs)):
            if float(vectors[2 * i] @ vectors[2 * i + 1]) < self.settings.term_similarity:
                return "entity"
        return None

    def _apply(self, record: Record) -> None:
        """Make a journal record true in this pod's index."""
        if record.op == "forget":
            self._remove(self._by_key.get(record.key, []))
            return
        if record.embedder != self.embedder.name or record.vector is None:
            self.stats.count("semantic_other_embedder")  # another embedder's vectors do not compare
            return
        if record.expires <= time.time():
            return
        with self._lock:
            entry_id, self._next_id = self._next_id, self._next_id + 1
            self._entries[entry_id] = _Entry(record.namespace, record.key, Prompt.of(record.text), record.expires,
                                             record.vector)
            self._by_key.setdefault(record.key, []).append(entry_id)
            index = self._indexes.get(record.namespace)
            if index is None:
                index = self._indexes[record.namespace] = VectorIndex(len(record.vector), self._index_settings)
        index.add(np.array([entry_id], dtype=np.int64), record.vector)
        self._evict()

    def _evict(self) -> None:
        """Drop entries past the size cap, oldest first, and expired ones at the front."""
        now = time.time()
        gone = []
        with self._lock:
            over = len(self._entries) - self.settings.max_entries
            for entry_id, entry in self._entries.items():
                if over <= 0 and entry.expires > now:
                    break
                gone.append(entry_id)
                over -= 1
        self._remove(gone)

    def _remove(self, ids: list[int]) -> None:
        by_index: dict[str, list[int]] = {}
        with self._lock:
            for entry_id in list(ids):
                entry = self._entries.pop(entry_id, None)
                if entry is None:
                    continue
                by_index.setdefault(entry.namespace, []).append(entry_id)
                siblings = self._by_key.get(entry.key, [])
                if entry_id in siblings:
                    siblings.remove(entry_id)
                if not siblings:
                    self._by_key.pop(entry.key, None)
        for namespace, gone in by_index.items():
            self._indexes[namespace].remove(gone)

    # -- the journal -------------------------------------------------------------------------

    def _follow(self) -> None:
        """Read the fleet's journal: all of it first (warm start), then as it grows."""
        assert self._journal is not None
        cursor = "0"
        while not self._stop.is_set():
            try:
                records, cursor = self._journal.read(cursor, self.settings.poll_seconds)
            except StoreUnavailable as e:  # said once per outage
                self._outage.failed(e.__cause__ or e, "other pods' semantic entries wait until it is back")
                self.stats.count("cache_errors")
                self._stop.wait(self.settings.poll_seconds)
                continue
            self._outage.answered("other pods' semantic entries are read again")
            for record in records:
                if record.pod != self._pod:
                    self._apply(record)
            if not records:
                self.ready.set()

    def _warm_from_file(self, journal: FileJournal) -> None:
        """Read the file back: entries and their answers; then rewrite it if mostly dead."""
        records, _ = journal.read("0", 0)
        for record in records:
            if record.op == "put" and record.answer is not None and record.expires > time.time():
                self._store.put(record.key, record.answer, record.expires - time.time())
            self._apply(record)
        if len(records) > 2 * len(self._entries) + 100:
            journal.rewrite([self._file_record(e) for e in self._entries.values()])

    def _file_record(self, entry: _Entry) -> Record:
        return Record("put", entry.key, entry.namespace, entry.prompt.text, entry.expires, self.embedder.name,
                      self._pod, entry.vector, self._store.get(entry.key))


def _log_failure(done: Future[None]) -> None:
    if not done.cancelled() and done.exception() is not None:
        log.error("fleetgate: indexing a semantic cache entry failed", exc_info=done.exception())


def _split(endpoint: str, body: dict[str, Any]) -> tuple[dict[str, Any], str] | None:
    """(everything but the last user message's text, that text) of a chat completion or a
    response; None when the request does not end with a user's text."""
    context = {k: v for k, v in body.items() if k not in NOT_IN_KEY}
    if endpoint.endswith("/chat/completions"):
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages or not isinstance(messages[-1], dict):
            return None
        last = messages[-1]
        text = _text(last.get("content")) if last.get("role") == "user" else None
        if text is None:
            return None
        context["messages"] = [*messages[:-1], {k: v for k, v in last.items() if k != "content"}]
        return context, text
    if endpoint.endswith("/responses"):
        given = body.get("input")
        if isinstance(given, str):
            context.pop("input")
            return context, given
        if isinstance(given, list) and given and isinstance(given[-1], dict) and given[-1].get("role") == "user":
            text = _text(given[-1].get("content"))
            if text is None:
                return None
            context["input"] = [*given[:-1], {k: v for k, v in given[-1].items() if k != "content"}]
            return context, text
    return None


def _text(content: Any) -> str | None:
    """A message's content when it is text only (a string, or text parts)."""
    if isinstance(content, str):
        return content if content.strip() else None
    if isinstance(content, list) and content:
        parts = [p.get("text") for p in content if isinstance(p, dict) and p.get("type") in ("text", "input_text")]
        if len(parts) == len(content) and all(isinstance(p, str) for p in parts):
            return "\n".join(parts)  # type: ignore[arg-type]
    return None
