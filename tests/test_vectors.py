"""The semantic layer's FAISS index: exact while small, HNSW once large, deletions, and
readers that keep searching while writers add and delete."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from fleetgate.cache.vectors import IndexSettings, VectorIndex

DIM = 16


def unit(n: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)  # type: ignore[no-any-return]


def test_exact_while_small_then_hnsw_with_the_same_answers() -> None:
    vectors = unit(3_000, 1)
    index = VectorIndex(DIM, IndexSettings(hnsw_from=1_000, ef_search=200))
    index.add(np.arange(500), vectors[:500])
    assert index.kind == "flat" and index.search(vectors[7], 1) == [(7, pytest.approx(1.0, abs=1e-5))]
    index.add(np.arange(500, 3_000), vectors[500:])
    assert index.wait(60) and index.kind == "hnsw" and len(index) == 3_000
    found = [index.search(v, 1)[0][0] for v in vectors[::10]]
    assert found == list(range(0, 3_000, 10))


@pytest.mark.parametrize("hnsw_from", [10**9, 200])
def test_deleted_vectors_are_never_found_and_tombstones_are_rebuilt_away(hnsw_from: int) -> None:
    vectors = unit(1_000, 2)
    index = VectorIndex(DIM, IndexSettings(hnsw_from=hnsw_from, ef_search=200, rebuild_share=0.2))
    index.add(np.arange(1_000), vectors)
    assert index.wait(60)
    gone = list(range(0, 1_000, 2))
    index.remove(gone)
    assert index.wait(60) and len(index) == 500
    for i in range(0, 1_000, 25):
        ids = [found for found, _ in index.search(vectors[i], 3)]
        assert not set(ids) & set(gone)
        if i % 2:
            assert ids[0] == i
    if hnsw_from == 200:
        assert index.rebuilds >= 2  # the first graph, then one without the tombstones


def test_readers_search_safely_while_writers_add_and_delete() -> None:
    """Readers never see a deleted vector, always find a kept one, and nothing breaks
    while a writer adds across the flat-to-HNSW switch and a deleter tombstones."""
    vectors = unit(6_000, 3)
    index = VectorIndex(DIM, IndexSettings(hnsw_from=1_500, ef_search=200, rebuild_share=0.1))
    index.add(np.arange(1_000), vectors[:1_000])
    kept = list(range(1, 1_000, 2))  # odd ids stay; even ids below 1,000 are deleted
    deleted: set[int] = set()
    deleted_lock = threading.Lock()
    stop = threading.Event()
    problems: list[str] = []
    searches = [0]

    def reader(seed: int) -> None:
        rng = np.random.default_rng(seed)
        while not stop.is_set():
            i = int(rng.choice(kept))
            with deleted_lock:
                gone_before = set(deleted)
            ids = [found for found, _ in index.search(vectors[i], 4)]
            if ids[:1] != [i]:
                problems.append(f"kept {i} not found first: {ids}")
            if set(ids) & gone_before:
                problems.append(f"deleted {set(ids) & gone_before} found")
            searches[0] += 1

    def writer() -> None:
        for start in range(1_000, 6_000, 250):
            index.add(np.arange(start, start + 250), vectors[start:start + 250])

    def deleter() -> None:
        for start in range(0, 1_000, 50):
            batch = list(range(start, start + 50, 2))
            index.remove(batch)
            with deleted_lock:
                deleted.update(batch)

    readers = [threading.Thread(target=reader, args=(s,)) for s in range(3)]
    for t in readers:
        t.start()
    writers = [threading.Thread(target=writer), threading.Thread(target=deleter)]
    for t in writers:
        t.start()
    for t in writers:
        t.join(120)
    assert index.wait(120)
    stop.set()
    for t in readers:
        t.join(60)
    assert not problems, problems[:5]
    assert searches[0] > 0 and index.kind == "hnsw" and len(index) == 6_000 - 500
