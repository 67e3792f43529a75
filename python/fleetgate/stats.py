"""What a gateway did, counted: one set of counters every part of the request path adds
to and anyone may read (``gate.stats["cache_hits"]``, ``gate.stats.snapshot()``)."""

from __future__ import annotations

import threading
from collections import Counter

__all__ = ["GatewayStats"]


class GatewayStats:
    """Counters of what the gateway did, safe to read from any thread.

    ``requests`` gated calls; ``refused`` by the gateway (no quota before the deadline, or
    the store down and fail-closed); ``upstream_rate_limited`` 429s from upstream, of which
    ``upstream_retries`` were retried by the gateway; ``settled_from_usage`` /
    ``settled_from_estimate`` / ``settled_from_failure`` (nothing spent) how reservations
    were settled; ``settle_failures``; ``served_<tier>`` per rung of the ladder (``primary``,
    ``fallback_model``, ``static``, ``deferred``, ``cache``); ``lane_full``;
    ``breaker_refused`` and ``breaker_<state>`` per transition;
    ``dedup_followers``, ``dedup_fleet_followers``, ``dedup_cancelled``; ``budget_refused``,
    ``budget_queued``, ``budget_alerts``, ``budget_unpriced``, ``budget_settled_from_estimate``,
    ``budget_fail_open`` (held on this pod's share of its budgets while their store was down);
    ``cache_hits``, ``cache_misses``, ``cache_stored``, ``cache_too_large``, ``cache_errors``
    (the exact layer's); ``semantic_hits``, ``semantic_misses``, ``semantic_guarded_<guard>``
    per near-miss guard that refused a candidate, ``semantic_stale``, ``semantic_dropped``,
    ``semantic_other_embedder``; ``warm_waits`` calls that waited for the gateway's warm-up
    (:mod:`fleetgate.warm`) before their deadline started; ``chain_known``, ``chain_counted``
    (of which ``chain_not_found``), ``chain_allowance``: Responses calls continuing a chain,
    by how its held context was known; ``chain_count_failures``, ``chain_reads`` (Redis
    GETs), ``chain_store_down``, ``chain_write_failures`` (:mod:`fleetgate.chains`);
    ``background_watched``, ``background_settled_usage`` / ``_nothing`` / ``_worst``,
    ``background_taken_over``, ``background_refused``, ``background_poll_errors``,
    ``background_store_errors``, ``background_settle_waits``, ``background_webhooks``,
    ``background_webhooks_rejected`` (:mod:`fleetgate.background`).
    """

    def __init__(self) -> None:
        self._counts: Counter[str] = Counter()
        self._lock = threading.Lock()

    def count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counts[name] += n

    def __getitem__(self, name: str) -> int:
        with self._lock:
            return self._counts[name]

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)
