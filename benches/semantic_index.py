"""Semantic-cache lookups: `fleetgate.cache.vectors.VectorIndex` (HNSW once past
`hnsw_from`) at 100,000 and 1,000,000 entries of dimension 384, against exact FAISS search
(IndexFlatIP), a numpy matrix-vector scan, and a plain Python scan. For each size it
reports the build time, single-query lookup latency (p50 / p99 / max), recall@1 against
exact search, and memory per entry.

    python benches/semantic_index.py [--sizes 100000,1000000] [--queries 2000] [--rounds 3]
        [--m 32] [--ef-search 64[,80,96]] [--ef-construction 80] [--json results.json]

Data (fixed seed, per size n): n // 50 cluster centres drawn uniformly on the unit sphere
in 384-d; every entry picks a centre uniformly at random (clusters of ~50) and is
centre + N(0, (spread / sqrt(384))^2) per coordinate, normalised (--spread 0.75: an
entry's cosine to its centre is ~0.8, to another entry of its cluster ~0.64, to other
clusters ~0). Real sentence embeddings are clustered like this; uniform random vectors
in 384-d would be an unrealistic worst case. Queries (--queries, shuffled): half are
near-duplicates of stored entries (entry + N(0, (0.1 / sqrt(384))^2), normalised: cosine
~0.995 to that entry, a lookup that should hit), half are fresh draws from random
clusters, made like entries (a miss: the nearest entry is only ~0.64 away, and several
cluster members are nearly as near).

How: the VectorIndex is filled by `add` in batches of 10,000 from an empty index with
`hnsw_from` = min(--hnsw-from, n // 2), so it crosses to HNSW in a background thread;
the build time runs from the first `add` to `wait()` returning. While it builds, a probe
search runs every --probe-every seconds and the longest one is reported: how long a lookup
can take during the build (the flat index still answers then, and a writer holding the
lock stalls it). The probes compete with the build for the 2 cores, so at 1M (a flat
search there is ~150 ms) they add to the build time (--probe-every 0: no probes).
Lookups are `index.search(q, k=4)` called one at a time from Python as the cache calls
it, each timed with perf_counter_ns after --warmup untimed ones; all queries are timed
--rounds times and p50 / p99 are the median over rounds of each round's (a shared 2-core
VM has hiccups that can make one round's p99 an outlier), max the worst of all. Lookups
are timed with no concurrent writer; after them --adds single-vector `add`s into the
graph are timed too (the cache adds one entry at a time, and a lookup that arrives
meanwhile waits for the insertion, which holds the index's lock). More
--ef-search values are measured on the same graph by setting its efSearch (what
IndexSettings.ef_search does when the graph is made), so one build serves several; --m
and --ef-construction need a run each.
recall@1 = share of queries whose top-1 id is the top-1 id of exact inner-product search
(faiss.IndexFlatIP, batch search over the same vectors), for the near-duplicate half (a
missed cache hit when wrong), the fresh half, and all. Exact FAISS single-query search
and the numpy scan (`matrix @ q`, then the top 4) are timed on the first --exact-queries
queries only (they take 10-200 ms each). The plain Python scan (a loop over the stored
vectors computing each dot product; vectors are unit so that is the cosine) runs only on
10,000 entries (made the same way) for --python-queries queries: once over lists of
floats, once with np.dot per stored row; its time at larger sizes is extrapolated
linearly and marked "est".
Memory per entry is VmRSS growth (from /proc/self/status) across building the structure,
divided by entries, with the peak (VmHWM, reset first) during the build; for FAISS indexes
also the length of `faiss.serialize_index` (vectors, graph and id map, not the id map's
in-memory hash table) per entry.

FAISS uses --threads OpenMP threads (2: the machine's cores) to build; single-query
searches run on one thread (numpy's BLAS may use more for `matrix @ q`). Read absolute
figures as this machine's; the acceptance targets: p99 <= 1 ms at 100k with recall@1 >=
0.99, p99 <= 1.5 ms at 1M (a PASS/FAIL line each, per --ef-search value; the exit status
is 1 if some target is met by none of them). A 1M build takes 10-15 min on 2 cores.
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import gc
import heapq
import json
import math
import time
from collections.abc import Callable
from typing import Any

import faiss
import numpy as np
import numpy.typing as npt

from fleetgate.cache.vectors import IndexSettings, VectorIndex

DIM = 384
K = 4  # the cache's default `candidates`
BATCH = 10_000
PYTHON_SCAN_AT = 10_000
TARGETS = {100_000: 1.0, 1_000_000: 1.5}  # p99 ms
RECALL_TARGET = 0.99

Matrix = npt.NDArray[np.float32]


def status(field: str) -> int:
    """A /proc/self/status memory field, in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


def trim() -> None:
    """Collect garbage and hand freed heap memory back to the OS (glibc malloc_trim), so
    that RSS growth counts what a structure holds, not what earlier ones left free."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False if not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def normalise(rows: Matrix) -> Matrix:
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    return rows


def make_data(n: int, queries: int, seed: int, spread: float, dup_noise: float
              ) -> tuple[Matrix, Matrix, npt.NDArray[np.bool_]]:
    """n clustered unit vectors; queries (half near-duplicates of entries, half fresh draws
    from the clusters) shuffled, and which of them are near-duplicates."""
    rng = np.random.default_rng(seed)
    clusters = max(1, n // 50)
    centres = normalise(rng.standard_normal((clusters, DIM), dtype=np.float32))
    assign = rng.integers(clusters, size=n)
    sigma = np.float32(spread / math.sqrt(DIM))
    data = np.empty((n, DIM), dtype=np.float32)
    for s in range(0, n, 50_000):
        e = min(n, s + 50_000)
        chunk = rng.standard_normal((e - s, DIM), dtype=np.float32)
        chunk *= sigma
        chunk += centres[assign[s:e]]
        data[s:e] = normalise(chunk)
    hits = queries // 2
    near = data[rng.choice(n, size=hits, replace=False)]
    near = normalise(near + np.float32(dup_noise / math.sqrt(DIM)) * rng.standard_normal(near.shape, dtype=np.float32))
    fresh = centres[rng.integers(clusters, size=queries - hits)]
    fresh = normalise(fresh + sigma * rng.standard_normal(fresh.shape, dtype=np.float32))
    q = np.concatenate([near, fresh])
    is_hit = np.arange(queries) < hits
    order = rng.permutation(queries)
    return data, np.ascontiguousarray(q[order]), is_hit[order]


def timed(fn: Callable[[Matrix], int], queries: Matrix, warmup: int) -> tuple[npt.NDArray[np.float64], list[int]]:
    """ms per call of fn(query) -> top-1 id, one query at a time; and the top-1 ids."""
    for q in queries[:warmup]:
        fn(q)
    took, top = [], []
    for q in queries:
        start = time.perf_counter_ns()
        best = fn(q)
        took.append(time.perf_counter_ns() - start)
        top.append(best)
    return np.array(took, dtype=np.float64) / 1e6, top


def rounds(fn: Callable[[Matrix], int], queries: Matrix, warmup: int, n: int
           ) -> tuple[npt.NDArray[np.float64], list[int]]:
    """`timed` n times over the same queries: ms as an n x queries array, and the top-1 ids
    of the first round (the search is deterministic)."""
    runs = [timed(fn, queries, warmup) for _ in range(n)]
    return np.stack([ms for ms, _ in runs]), runs[0][1]


def median_p99(ms: npt.NDArray[np.float64], which: npt.NDArray[np.bool_]) -> float:
    return float(np.median([np.percentile(r[which], 99) for r in np.atleast_2d(ms)]))


def lat(ms: npt.NDArray[np.float64]) -> dict[str, Any]:
    """p50 and p99: the median over rounds of each round's; max: over all rounds."""
    ms = np.atleast_2d(ms)
    p99s = [float(np.percentile(r, 99)) for r in ms]
    return {"queries": ms.shape[1], "rounds": ms.shape[0],
            "p50_ms": float(np.median([np.percentile(r, 50) for r in ms])),
            "p99_ms": float(np.median(p99s)), "p99_each_round_ms": p99s, "max_ms": float(ms.max())}


def recall(top: list[int], exact: npt.NDArray[np.int64], is_hit: npt.NDArray[np.bool_]) -> dict[str, float]:
    ok = np.asarray(top) == exact[: len(top)]
    hit = is_hit[: len(top)]
    return {"recall_hit": float(ok[hit].mean()), "recall_miss": float(ok[~hit].mean()), "recall_all": float(ok.mean())}


def build_vector_index(data: Matrix, settings: IndexSettings, queries: Matrix, probe_every: float) -> dict[str, Any]:
    n = len(data)
    ids = np.arange(n, dtype=np.int64)
    trim()
    before = status("VmRSS")
    peak_reset = reset_peak()
    index = VectorIndex(DIM, settings)
    start = time.perf_counter()
    for s in range(0, n, BATCH):
        index.add(ids[s:s + BATCH], data[s:s + BATCH])
    added = time.perf_counter() - start
    probes: list[float] = []
    while not index.wait(timeout=probe_every or None):  # how long can a lookup take while the graph is built?
        t0 = time.perf_counter_ns()
        index.search(queries[len(probes) % len(queries)], K)
        probes.append((time.perf_counter_ns() - t0) / 1e6)
    built = time.perf_counter() - start
    trim()
    after, peak = status("VmRSS"), status("VmHWM")
    return {"index": index, "add_s": added, "build_s": built, "kind": index.kind, "len": len(index),
            "rss_bytes_per_entry": (after - before) / n,
            "peak_bytes_per_entry": (peak - before) / n if peak_reset else None,
            "serialized_bytes_per_entry": len(faiss.serialize_index(index._index)) / n,  # noqa: SLF001
            "probes": len(probes), "longest_probe_ms": max(probes, default=0.0)}


def python_scan(data: Matrix, queries: Matrix, exact: npt.NDArray[np.int64], warmup: int) -> dict[str, dict[str, Any]]:
    """The tutorial approach on the first PYTHON_SCAN_AT entries: a Python loop over the
    stored vectors. Exact by construction; top-1 compared with numpy over the same rows."""
    sub = data[:PYTHON_SCAN_AT]
    out: dict[str, dict[str, Any]] = {}

    trim()
    before = status("VmRSS")
    arrays = [row.copy() for row in sub]  # one ndarray per stored embedding, as in a dict of them
    grown = status("VmRSS") - before

    def per_row(q: Matrix) -> int:
        sims = ((float(np.dot(q, row)), i) for i, row in enumerate(arrays))
        return heapq.nlargest(K, sims)[0][1]

    ms, top = timed(per_row, queries, min(warmup, 2))
    out["python_np_dot"] = {**lat(ms), "agree_with_exact": float(np.mean(np.asarray(top) == exact)),
                            "rss_bytes_per_entry": grown / len(sub)}
    del arrays

    trim()
    before = status("VmRSS")
    rows = sub.tolist()
    grown = status("VmRSS") - before

    def lists(q: Matrix) -> int:
        ql = q.tolist()
        sims = ((sum(a * b for a, b in zip(ql, row)), i) for i, row in enumerate(rows))
        return heapq.nlargest(K, sims)[0][1]

    ms, top = timed(lists, queries, min(warmup, 2))
    out["python_lists"] = {**lat(ms), "agree_with_exact": float(np.mean(np.asarray(top) == exact)),
                           "rss_bytes_per_entry": grown / len(sub)}

    return out


def run_size(n: int, args: argparse.Namespace) -> dict[str, Any]:
    t0 = time.perf_counter()
    data, queries, is_hit = make_data(n, args.queries, args.seed, args.spread, args.dup_noise)
    hnsw_from = min(args.hnsw_from, n // 2)
    settings = IndexSettings(hnsw_from=hnsw_from, m=args.m, ef_search=args.ef_search[0],
                             ef_construction=args.ef_construction)
    print(f"\n== {n:,} entries x {DIM}: data made in {time.perf_counter() - t0:.1f} s; {settings}", flush=True)
    res: dict[str, Any] = {"entries": n, "settings": dataclasses.asdict(settings)}

    b = build_vector_index(data, settings, queries, args.probe_every)
    index: VectorIndex = b.pop("index")
    res["build"] = b
    print(f"  VectorIndex: add() returned after {b['add_s']:.1f} s, HNSW ready after {b['build_s']:.1f} s "
          f"(kind={b['kind']}, len={b['len']:,}); longest of {b['probes']} probe searches during the build: "
          f"{b['longest_probe_ms']:.1f} ms", flush=True)
    if b["kind"] != "hnsw" or b["len"] != n:
        raise SystemExit(f"expected an HNSW index of {n} entries, got {b['kind']} of {b['len']}")

    rows: dict[str, dict[str, Any]] = {}
    base: Any = index._base  # noqa: SLF001 - an IndexHNSWFlat now: other ef_search values on the same graph
    graph = base.hnsw
    for ef in args.ef_search:
        graph.efSearch = ef  # what IndexSettings(ef_search=ef) sets when the graph is made
        ms, top = rounds(lambda q: index.search(q, K)[0][0], queries, args.warmup, args.rounds)
        row = rows[f"VectorIndex.search (HNSW, ef_search={ef})"] = {**lat(ms), "top": top, "ef_search": ef}
        row["p99_hit_ms"] = median_p99(ms, is_hit)
        row["p99_miss_ms"] = median_p99(ms, ~is_hit)
        if ef == args.ef_search[0]:
            row["rss_bytes_per_entry"] = b["rss_bytes_per_entry"]
            row["serialized_bytes_per_entry"] = b["serialized_bytes_per_entry"]
    graph.efSearch = args.ef_search[0]
    raw = index._index  # noqa: SLF001 - the same FAISS graph without the wrapper: its Python overhead

    def raw_search(q: Matrix) -> int:
        return int(raw.search(q.reshape(1, DIM), K)[1][0, 0])

    ms, top = rounds(raw_search, queries, args.warmup, args.rounds)
    rows[f"faiss HNSW directly (ef_search={args.ef_search[0]})"] = {**lat(ms), "top": top}

    # A write holds the index's lock while FAISS inserts: a lookup arriving then waits for it.
    fresh = queries[: args.adds]
    took = []
    for i, v in enumerate(fresh):
        start = time.perf_counter_ns()
        index.add(np.array([n + i], dtype=np.int64), v)
        took.append(time.perf_counter_ns() - start)
    res["add_one"] = lat(np.array(took, dtype=np.float64) / 1e6) if took else None
    del raw, graph, base, index
    trim()
    before = status("VmRSS")
    flat = faiss.IndexFlatIP(DIM)
    flat.add(data)
    flat_rss = (status("VmRSS") - before) / n
    t1 = time.perf_counter()
    exact = flat.search(queries, K)[1][:, 0].astype(np.int64)  # batch: the ground truth
    print(f"  exact ground truth (batch IndexFlatIP search of {len(queries)} queries): "
          f"{time.perf_counter() - t1:.1f} s",
          flush=True)
    few = queries[: args.exact_queries]
    ms, top = timed(lambda q: int(flat.search(q.reshape(1, DIM), K)[1][0, 0]), few, min(args.warmup, 5))
    rows["faiss IndexFlatIP (exact), one query"] = {**lat(ms), "top": top, "rss_bytes_per_entry": flat_rss,
                                                    "serialized_bytes_per_entry": len(faiss.serialize_index(flat)) / n}
    del flat

    def numpy_scan(q: Matrix) -> int:
        sims = data @ q
        best = np.argpartition(sims, -K)[-K:]
        return int(best[np.argsort(-sims[best])][0])

    ms, top = timed(numpy_scan, few, min(args.warmup, 5))
    rows["numpy scan (matrix @ q, top 4)"] = {**lat(ms), "top": top, "rss_bytes_per_entry": float(DIM * 4)}
    for row in rows.values():
        row.update(recall(row.pop("top"), exact, is_hit))
    res["rows"] = rows
    del data
    gc.collect()
    return res


def print_table(results: list[dict[str, Any]], py: dict[str, dict[str, Any]] | None) -> None:
    head = (f"{'entries':>9}  {'method':<40} {'n q':>5} {'p50 ms':>9} {'p99 ms':>9} {'max ms':>9} "
            f"{'rec@1 hit':>9} {'miss':>6} {'all':>6} {'RSS B/entry':>11} {'ser. B/ent':>10}")
    print("\n" + head)
    print("-" * len(head))

    def fmt(x: float | None, spec: str) -> str:
        return "-" if x is None else format(x, spec)

    for res in results:
        for name, r in res["rows"].items():
            print(f"{res['entries']:>9,}  {name:<40} {r['queries']:>5} {r['p50_ms']:>9.3f} {r['p99_ms']:>9.3f} "
                  f"{r['max_ms']:>9.3f} {r['recall_hit']:>9.4f} {r['recall_miss']:>6.3f} {r['recall_all']:>6.4f} "
                  f"{fmt(r.get('rss_bytes_per_entry'), ',.0f'):>11} "
                  f"{fmt(r.get('serialized_bytes_per_entry'), ',.0f'):>10}")
        if py:
            scale = res["entries"] / PYTHON_SCAN_AT
            for name, label in (("python_lists", "Python loop, lists of floats"),
                                 ("python_np_dot", "Python loop, np.dot per row")):
                r = py[name]
                tag = "" if scale == 1 else f" (est x{scale:g})"
                print(f"{res['entries']:>9,}  {label + tag:<40} {r['queries'] if scale == 1 else '-':>5} "
                      f"{r['p50_ms'] * scale:>9.1f} {r['p99_ms'] * scale:>9.1f} {r['max_ms'] * scale:>9.1f} "
                      f"{'exact':>9} {'':>6} {'':>6} {r['rss_bytes_per_entry']:>11,.0f} {'-':>10}")
    if py:
        print(f"(Python scans measured on {PYTHON_SCAN_AT:,} entries made the same way, "
              f"{py['python_lists']['queries']} queries; top-1 agreed with exact search on "
              f"{py['python_lists']['agree_with_exact']:.0%} / {py['python_np_dot']['agree_with_exact']:.0%}; "
              f"larger sizes scaled linearly)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100000,1000000", help="comma-separated entry counts")
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=100, help="untimed searches before each timed series")
    parser.add_argument("--exact-queries", type=int, default=200, help="queries timed for exact FAISS and numpy")
    parser.add_argument("--adds", type=int, default=200, help="one-vector adds timed into the built graph")
    parser.add_argument("--python-queries", type=int, default=50, help="queries for the plain Python scans (0: skip)")
    parser.add_argument("--hnsw-from", type=int, default=20_000)
    parser.add_argument("--m", type=int, default=IndexSettings.m)
    parser.add_argument("--ef-search", default=str(IndexSettings.ef_search),
                        help="comma-separated; the first is built with, the others measured on the same graph")
    parser.add_argument("--rounds", type=int, default=3, help="timed series of all queries per HNSW setting")
    parser.add_argument("--ef-construction", type=int, default=IndexSettings.ef_construction)
    parser.add_argument("--spread", type=float, default=0.75, help="norm of an entry's noise around its centre")
    parser.add_argument("--dup-noise", type=float, default=0.1, help="norm of a near-duplicate query's noise")
    parser.add_argument("--seed", type=int, default=384)
    parser.add_argument("--threads", type=int, default=2, help="FAISS OpenMP threads")
    parser.add_argument("--probe-every", type=float, default=2.0,
                        help="seconds between probe searches during a build (0: none)")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    args.ef_search = [int(e) for e in args.ef_search.split(",") if e.strip()]
    faiss.omp_set_num_threads(args.threads)
    print(f"faiss {faiss.__version__}, numpy {np.__version__}, {args.threads} OpenMP threads; "
          f"{args.queries} queries, k={K}, m={args.m}, ef_search={args.ef_search}, "
          f"ef_construction={args.ef_construction}")

    py = None
    if args.python_queries > 0:
        data, queries, _ = make_data(PYTHON_SCAN_AT, args.python_queries, args.seed, args.spread,
                                     args.dup_noise)
        exact = np.array([int(np.argmax(data @ q)) for q in queries], dtype=np.int64)
        print(f"plain Python scans over {PYTHON_SCAN_AT:,} entries, {len(queries)} queries ...", flush=True)
        py = python_scan(data, queries, exact, args.warmup)
        del data
        gc.collect()

    results = [run_size(n, args) for n in sizes]
    print_table(results, py)
    print(f"(p50/p99: median over {args.rounds} rounds of each round's, HNSW rows; max: over all rounds; "
          "one search(q, k=4) per call from Python; recall@1 vs exact IndexFlatIP top-1; "
          "RSS B/entry: VmRSS growth building it / entries; ser.: faiss.serialize_index length / entries)")
    for res in results:
        b = res["build"]
        peak = "-" if b["peak_bytes_per_entry"] is None else f"{b['peak_bytes_per_entry']:,.0f}"
        print(f"{res['entries']:>9,} entries: VectorIndex build {b['build_s']:.1f} s ({b['add_s']:.1f} s in add()), "
              f"RSS {b['rss_bytes_per_entry']:,.0f} B/entry (peak during build {peak} B/entry), "
              f"longest search during the build {b['longest_probe_ms']:,.1f} ms")
        if res.get("add_one"):
            a = res["add_one"]
            print(f"{'':>9}  then add() of one vector at a time into the graph (holds the lock; a lookup then "
                  f"waits): p50 {a['p50_ms']:.3f} ms, p99 {a['p99_ms']:.3f} ms, max {a['max_ms']:.3f} ms "
                  f"({a['queries']} adds)")

    verdicts: dict[int, list[bool]] = {}
    by_size = {res["entries"]: res for res in results}
    for n, target in TARGETS.items():
        found = by_size.get(n)
        if found is None:
            print(f"NOT RUN: p99 <= {target} ms at {n:,} entries")
            continue
        for ef in args.ef_search:
            r = found["rows"][f"VectorIndex.search (HNSW, ef_search={ef})"]
            need_recall = n == 100_000  # the criterion ties recall to 100k; it is reported at 1M too
            ok = r["p99_ms"] <= target and (not need_recall or r["recall_all"] >= RECALL_TARGET)
            verdicts.setdefault(n, []).append(ok)
            cond = f" with recall@1 >= {RECALL_TARGET}" if need_recall else ""
            print(f"{'PASS' if ok else 'FAIL'}: p99 <= {target} ms at {n:,} entries{cond} (m={args.m}, ef_search={ef}, "
                  f"ef_construction={args.ef_construction}): p99 {r['p99_ms']:.3f} ms (rounds: "
                  f"{', '.join(f'{p:.3f}' for p in r['p99_each_round_ms'])}), recall@1 {r['recall_all']:.4f} "
                  f"(near-duplicates {r['recall_hit']:.4f}, misses {r['recall_miss']:.4f})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "faiss": faiss.__version__, "python_scan": py, "sizes": results}, f,
                      indent=2)
        print(f"results written to {args.json}")
    if not all(any(oks) for oks in verdicts.values()):  # a criterion no ef_search value met
        raise SystemExit(1)


if __name__ == "__main__":
    main()
