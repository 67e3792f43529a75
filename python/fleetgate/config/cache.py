"""``[cache]`` and ``[cache.semantic]``: the answer cache's settings, exact and by meaning."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["CacheSettings", "SemanticSettings"]


class SemanticSettings(BaseModel):
    """The cache's semantic layer: a request whose last user message means the same as
    one answered before (same model, same instructions and earlier messages, same
    namespace) is answered from that answer, unless a guard sees a near miss."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    enabled: bool = False
    #: ``"local"`` (all-MiniLM-L6-v2 on onnxruntime: the ``local-embeddings`` extra), or
    #: ``"openai:<model>"`` (OpenAI's embeddings, through the gateway itself, with the API key in
    #: ``OPENAI_API_KEY``).
    embedder: str = Field(default="local", pattern=r"^(local|openai:[\w.:-]+)$")
    #: The least cosine similarity of two prompts for one to be served the other's answer.
    threshold: float = Field(default=0.90, gt=0, le=1)
    #: Who may share answers. Unlike the exact layer this defaults to one user: a near
    #: match across users is a leak waiting to happen unless configured.
    namespace: Literal["global", "user", "team", "feature"] = "user"
    #: Candidates checked per lookup (best first) before giving up.
    candidates: int = Field(default=4, ge=1, le=64)
    #: Two words that replaced one another must be at least this similar (by the
    #: embedder) for the prompts to match: "fix" / "repair" pass, "Python" / "Ruby" not.
    term_similarity: float = Field(default=0.4, ge=0, le=1)
    #: Entries kept in this pod's index (oldest go first), and in the fleet's journal:
    #: about 1.9 KB each in every pod and 1.8 KB in Redis (384 dimensions).
    max_entries: int = Field(default=50_000, gt=0)
    #: Exact search below this many entries in a namespace; HNSW above.
    hnsw_from: int = Field(default=20_000, gt=0)
    #: Embedded mode: a file to keep entries (and their answers) in across restarts.
    path: str | None = None
    #: With Redis: how long one wait for other pods' entries lasts.
    poll_seconds: float = Field(default=0.25, gt=0, le=1)


class CacheSettings(BaseModel):
    """The answer cache (:mod:`fleetgate.cache`): exact repeats of a request answered from
    a stored answer, in Redis (``redis_url``) or in memory."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    enabled: bool = False
    #: Which requests are answered from the cache: deterministic ones (``temperature`` 0,
    #: one choice), or all. Every successful answer is stored either way, so a budget whose
    #: ``on_exhausted = "cache_only"`` can still serve the last answer to any request.
    when: Literal["deterministic", "always"] = "deterministic"
    #: Who may share answers: everyone with the same API key ("global"), or only the same
    #: user, team or feature of the scope.
    namespace: Literal["global", "user", "team", "feature"] = "global"
    ttl_seconds: float = Field(default=3_600.0, gt=0, le=30 * 86_400)
    #: In memory: the most answers kept (least recently used go first).
    max_entries: int = Field(default=10_000, gt=0)
    #: Larger answers are not stored.
    max_entry_bytes: int = Field(default=1_000_000, gt=0)
    semantic: SemanticSettings = Field(default_factory=SemanticSettings)
