"""How often the semantic layer serves what it should, and how often it serves a trap.

A pair file holds one JSON object per line: ``{"id", "category", "expect": "hit"|"miss",
"a", "b"}``. For each pair, `a`'s answer is stored (in a namespace of its own) and `b`
is looked up through the real semantic layer: threshold, candidates and guards as
configured. Reported per category: the share served.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from fleetgate.cache.embedders import Embedder
from fleetgate.cache.semantic import SemanticCache, SemanticQuery
from fleetgate.cache.store import MemoryStore
from fleetgate.config import SemanticSettings

__all__ = ["CategoryResult", "Pair", "evaluate", "read_pairs"]


@dataclass(frozen=True)
class Pair:
    id: str
    category: str
    expect: str  # "hit" or "miss"
    a: str
    b: str


@dataclass
class CategoryResult:
    category: str
    expect: str
    pairs: int = 0
    served: int = 0
    #: Why candidates were refused (guard name → pairs), and pairs below the threshold.
    refused: dict[str, int] = field(default_factory=dict)
    #: Ids of the pairs that went the wrong way.
    wrong: list[str] = field(default_factory=list)

    @property
    def share_served(self) -> float:
        return self.served / self.pairs if self.pairs else 0.0


def read_pairs(path: str | Path) -> list[Pair]:
    """The pairs of a JSONL file; a malformed line is an error naming it."""
    pairs = []
    with Path(path).open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                pair = Pair(str(row["id"]), str(row["category"]), str(row["expect"]), str(row["a"]), str(row["b"]))
            except (ValueError, KeyError, TypeError) as e:
                raise ValueError(f"{path}:{number}: not a pair ({e}); "
                                 'each line is {"id", "category", "expect", "a", "b"}') from e
            if pair.expect not in ("hit", "miss"):
                raise ValueError(f'{path}:{number}: expect is "hit" or "miss", not {pair.expect!r}')
            pairs.append(pair)
    return pairs


def evaluate(pairs: Iterable[Pair], embedder: Embedder, settings: SemanticSettings | None = None) -> list[CategoryResult]:
    """Each category's result, in the order the categories first appear."""
    from fleetgate.stats import GatewayStats

    pairs = list(pairs)
    settings = (settings or SemanticSettings()).model_copy(update={"enabled": True, "path": None})
    texts = sorted({t for p in pairs for t in (p.a, p.b)})
    vectors = dict(zip(texts, embedder.embed(texts) if texts else []))
    results: dict[str, CategoryResult] = {}
    for pair in pairs:
        stats = GatewayStats()
        cache = SemanticCache(settings, embedder, stats, None, MemoryStore(1))
        try:
            cache.add(SemanticQuery(pair.id, pair.a, vectors[pair.a]), pair.id, ttl=3_600)
            served = cache.find(SemanticQuery(pair.id, pair.b, vectors[pair.b])) is not None
        finally:
            cache.close()
        result = results.setdefault(pair.category, CategoryResult(pair.category, pair.expect))
        result.pairs += 1
        result.served += served
        if served != (pair.expect == "hit"):
            result.wrong.append(pair.id)
        for name, n in stats.snapshot().items():
            if name.startswith("semantic_guarded_"):
                reason = name.removeprefix("semantic_guarded_")
                result.refused[reason] = result.refused.get(reason, 0) + n
        if not served and not any(k.startswith("semantic_guarded_") for k in stats.snapshot()):
            result.refused["threshold"] = result.refused.get("threshold", 0) + 1
    return list(results.values())
