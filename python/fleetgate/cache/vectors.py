"""A FAISS index of unit vectors under caller-chosen ids: exact search while small, HNSW
once large; deletions as tombstones where the index cannot delete, rebuilt away in the
background; safe for concurrent readers and writers."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import faiss
import numpy as np
import numpy.typing as npt

__all__ = ["IndexSettings", "VectorIndex"]

Vectors = npt.NDArray[np.float32]

#: A rebuild adds at most this many vectors while holding the lock (the rest before).
_CATCH_UP = 512


@dataclass(frozen=True)
class IndexSettings:
    #: Exact (flat) search below this many vectors; HNSW from here on.
    hnsw_from: int = 20_000
    #: HNSW: neighbours per node, and the search and construction breadths.
    m: int = 32
    ef_search: int = 64
    ef_construction: int = 80
    #: Rebuild once tombstones are this share of the index (HNSW only; flat deletes in place).
    rebuild_share: float = 0.2


class VectorIndex:
    """Inner-product search over unit vectors (so scores are cosine similarities).

    One lock guards the FAISS index: a search is tens to hundreds of microseconds, so
    readers wait at most that long for a writer. Building the HNSW graph (and rebuilding
    it without its tombstones) happens outside the lock on a snapshot; vectors added
    meanwhile are added to the new graph before it replaces the old one.
    """

    def __init__(self, dimension: int, settings: IndexSettings | None = None) -> None:
        self.dimension = dimension
        self.settings = settings or IndexSettings()
        self._lock = threading.Lock()
        self._base: faiss.Index = faiss.IndexFlatIP(dimension)
        self._index = faiss.IndexIDMap2(self._base)
        self._hnsw = False
        self._dead: set[int] = set()
        #: Vectors added while a rebuild runs (None: no rebuild running).
        self._during: list[tuple[npt.NDArray[np.int64], Vectors]] | None = None
        self._rebuilds = 0
        self._builder: threading.Thread | None = None

    def __len__(self) -> int:
        """Live vectors (tombstoned ones not counted)."""
        with self._lock:
            return int(self._index.ntotal) - len(self._dead)

    @property
    def kind(self) -> str:
        return "hnsw" if self._hnsw else "flat"

    @property
    def rebuilds(self) -> int:
        return self._rebuilds

    def add(self, ids: npt.NDArray[np.int64], vectors: Vectors) -> None:
        """Add unit `vectors` (n × dimension, float32) under `ids` (unique, never reused)."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1, self.dimension)
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if len(ids) != len(vectors):
            raise ValueError(f"{len(ids)} ids for {len(vectors)} vectors")
        with self._lock:
            self._index.add_with_ids(vectors, ids)
            if self._during is not None:
                self._during.append((ids, vectors))
            grow = not self._hnsw and self._during is None and self._index.ntotal >= self.settings.hnsw_from
        if grow:
            self._rebuild_later()

    def remove(self, ids: list[int]) -> None:
        """Delete `ids`: at once from a flat index, as tombstones from an HNSW graph (or
        while one is being built)."""
        if not ids:
            return
        with self._lock:
            if not self._hnsw and self._during is None:
                # (faiss's Python wrapper takes an id array where its stubs say IDSelector)
                self._index.remove_ids(np.asarray(ids, dtype=np.int64))  # type: ignore[arg-type]
                return
            self._dead.update(ids)
            stale = (self._hnsw and self._during is None
                     and len(self._dead) >= max(64, self.settings.rebuild_share * self._index.ntotal))
        if stale:
            self._rebuild_later()

    def search(self, vector: Vectors, k: int) -> list[tuple[int, float]]:
        """The `k` nearest live ids to one unit vector, with their cosine similarity, best first."""
        query = np.ascontiguousarray(vector, dtype=np.float32).reshape(1, self.dimension)
        with self._lock:
            dead = len(self._dead)
            scores, ids = self._index.search(query, k + min(dead, 4 * k))
            found = [(int(i), float(s)) for i, s in zip(ids[0], scores[0]) if i >= 0 and int(i) not in self._dead]
        return found[:k]

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for a running (re)build to finish; False if it is still running."""
        builder = self._builder
        if builder is not None:
            builder.join(timeout)
            return not builder.is_alive()
        return True

    def _rebuild_later(self) -> None:
        with self._lock:
            if self._during is not None:
                return
            self._during = []
            ids = faiss.vector_to_array(self._index.id_map).astype(np.int64)
            vectors = self._base.reconstruct_n(0, int(self._index.ntotal))
            self._builder = threading.Thread(target=self._rebuild, args=(ids, vectors, set(self._dead)),
                                             name="fleetgate-index-build", daemon=True)
        self._builder.start()

    def _rebuild(self, ids: npt.NDArray[np.int64], vectors: Vectors, dead: set[int]) -> None:
        """Replace the index with an HNSW graph of the live vectors of a snapshot (in a
        background thread, without holding the lock while the graph is built), then add
        what was added since: in rounds outside the lock while many wait, and the last
        few under it, so that readers never wait for more than `_CATCH_UP` insertions."""
        keep = np.fromiter((i not in dead for i in ids), dtype=bool, count=len(ids))
        try:
            base, index = self._graph()
            index.add_with_ids(vectors[keep], ids[keep])
            while True:
                with self._lock:
                    assert self._during is not None
                    added, self._during = self._during, []
                    if sum(len(more_ids) for more_ids, _ in added) <= _CATCH_UP:
                        for more_ids, more in added:
                            index.add_with_ids(more, more_ids)
                        self._base, self._index, self._hnsw = base, index, True
                        self._dead -= dead
                        self._rebuilds += 1
                        return
                for more_ids, more in added:
                    index.add_with_ids(more, more_ids)
        finally:
            with self._lock:
                self._during = None

    def _graph(self) -> tuple[faiss.Index, faiss.IndexIDMap2]:
        s = self.settings
        base = faiss.IndexHNSWFlat(self.dimension, s.m, faiss.METRIC_INNER_PRODUCT)
        base.hnsw.efConstruction = s.ef_construction
        base.hnsw.efSearch = s.ef_search
        return base, faiss.IndexIDMap2(base)
