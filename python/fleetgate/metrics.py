"""Prometheus metrics of the gateway, named ``fleetgate_*`` with their unit in the name and
bounded labels: a model that is neither configured nor priced is ``other``, and so is a
feature that is not configured (``none`` when a request has none). A feature named
sensitive in ``[privacy]`` is labelled by its pseudonym (:mod:`fleetgate.privacy`), and so
is a user's or a sensitive team's budget.

The families live once per process and every gateway of the process adds to them. With
several worker processes (gunicorn, uvicorn ``--workers``, a pod running N processes), set
``PROMETHEUS_MULTIPROC_DIR`` to an empty directory before the workers start: each writes
its values there and whichever serves ``/metrics`` adds them up (prometheus-client's
multiprocess mode). When a worker exits, call
``prometheus_client.multiprocess.mark_process_dead(pid)`` so its gauges leave the sum.

    app = gate.metrics_app()              # WSGI; gate.metrics_app("asgi") for ASGI
    $ fleetgate metrics serve --port 9464  # the directory's metrics, on their own port

=================================================  ======================================
``fleetgate_requests_total``                       gated requests by endpoint, model,
                                                   feature, tier and outcome (``ok``,
                                                   ``error``, ``rate_limited``,
                                                   ``refused``, ``failed``,
                                                   ``cancelled``)
``fleetgate_refusals_total``                       the gateway's refusals by reason
``fleetgate_request_duration_seconds``             from entering the gateway to the
                                                   answer (a stream: its headers)
``fleetgate_gateway_overhead_seconds``             the gateway's own time on a request
                                                   sent upstream: its duration less the
                                                   upstream call and the waits below
``fleetgate_tokens_total``                         tokens billed by kind (``input``,
                                                   ``cached_input``, ``cache_write``,
                                                   ``output``, ``reasoning``) and
                                                   ``service_tier`` (the tier that served
                                                   them: ``default``, ``flex``,
                                                   ``priority``, ``batch``)
``fleetgate_cost_dollars_total``                   dollars billed, at the price table, by
                                                   ``service_tier`` as above
``fleetgate_deployment_tokens_total``              the same tokens and dollars by the
``fleetgate_deployment_cost_dollars_total``        deployment that served them
                                                   (``[deployments]``): its spend, and the
                                                   share its prompt cache served
``fleetgate_deployment_spills_total``              calls a deployment could not take,
                                                   passed to another, by ``reason``
                                                   (``quota``, ``breaker``, ``unreachable``,
                                                   ``upstream_429``, ``no_credit``,
                                                   ``rejected_key``, ``not_held``)
``fleetgate_cache_hits_total`` / ``_misses_total``  answers served by layer (``exact``,
                                                   ``semantic``), lookups that missed
``fleetgate_cache_near_misses_total``              semantic candidates a guard refused
``fleetgate_deduplicated_requests_total``          requests answered by another's call
                                                   (``pod`` or ``fleet``)
``fleetgate_limiter_wait_seconds``                 time to get quota (its round trip to
                                                   Redis included)
``fleetgate_limiter_refusals_total``               no quota in time (``by="gateway"``) or
                                                   a 429 from upstream (``by="upstream"``)
``fleetgate_breaker_transitions_total``            circuit transitions by breaker and state
``fleetgate_breaker_state``                        0 closed, 1 half-open, 2 open, 3 isolated
``fleetgate_queue_depth`` / ``_wait_seconds``      calls waiting in a model's lanes, and how
                                                   long they waited
``fleetgate_budget_{limit,spent,remaining}_dollars``  each named budget, read when scraped
``fleetgate_mode``                                 1 for the degradation mode the pod is in
``fleetgate_mode_transitions_total``               mode changes by mode entered and source
``fleetgate_mode_answers_total``                   answers by the mode that served them
``fleetgate_structured_outputs_total``             structured answers ``valid`` or ``invalid``
                                                   against the caller's schema
``fleetgate_prompt_tokens_saved_total``           prompt tokens compression removed, by
                                                   feature
``fleetgate_quality_signals_total``                quality signals ``good`` or ``bad``:
                                                   schema checks, rollout judgements, and
                                                   ``gate.quality()`` (user feedback)
=================================================  ======================================

Counters and histograms have no ``*_created`` series (the application's own metrics keep
whatever prometheus-client gives them).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, Literal

import httpx2
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, make_asgi_app, make_wsgi_app
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from fleetgate.config import MODES, GatewayConfig
from fleetgate.estimate import UsageCounts
from fleetgate.prices import PriceTable
from fleetgate.privacy import Privacy

if TYPE_CHECKING:
    from fleetgate.budget.guard import Budgets

__all__ = ["SPILL_REASONS", "BudgetCollector", "GatewayMetrics", "metrics_app", "multiprocess_dir", "registry_for"]

_OVERHEAD_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1)
_DURATION_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
_WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BREAKER_STATES = {"closed": 0, "half_open": 1, "open": 2, "isolated": 3}
LANES = ("realtime", "interactive", "batch")
#: Why a deployment passed a call to another (:mod:`fleetgate.path._async.deploy`).
SPILL_REASONS = ("quota", "budget", "breaker", "unreachable", "upstream_429", "no_credit", "rejected_key", "not_held")
#: How many distinct model and feature names are remembered with their label.
_MEMO = 4_096


def multiprocess_dir() -> str | None:
    """The directory of multiprocess mode, when ``PROMETHEUS_MULTIPROC_DIR`` names one."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


class _Families(Collector):
    """The metric families, once per process."""

    def __init__(self) -> None:
        def counter(name: str, doc: str, labels: Iterable[str]) -> Counter:
            return Counter(name, doc, list(labels), registry=None)

        def histogram(name: str, doc: str, labels: Iterable[str], buckets: tuple[float, ...]) -> Histogram:
            return Histogram(name, doc, list(labels), registry=None, buckets=buckets)

        self.requests = counter("fleetgate_requests", "Gated requests by outcome", (
            "endpoint", "model", "feature", "tier", "outcome"))
        self.refusals = counter("fleetgate_refusals", "Requests the gateway refused, by reason", ("reason",))
        self.duration = histogram("fleetgate_request_duration_seconds", "Time from entering the gateway to the answer",
                                  ("endpoint", "model"), _DURATION_BUCKETS)
        self.overhead = histogram("fleetgate_gateway_overhead_seconds",
                                  "The gateway's own time on a request sent upstream", ("endpoint",), _OVERHEAD_BUCKETS)
        self.tokens = counter("fleetgate_tokens", "Tokens billed, by kind and the service tier that served them",
                              ("model", "feature", "kind", "service_tier"))
        self.cost = counter("fleetgate_cost_dollars", "Dollars billed at the price table, by service tier",
                            ("model", "feature", "service_tier"))
        self.deployment_tokens = counter("fleetgate_deployment_tokens", "Tokens billed by the deployment that served them",
                                         ("model", "deployment", "kind"))
        self.deployment_spills = counter("fleetgate_deployment_spills",
                                         "Calls a deployment could not take, passed to another, by reason",
                                         ("model", "deployment", "reason"))
        self.deployment_cost = counter("fleetgate_deployment_cost_dollars",
                                       "Dollars billed at the price table, by the deployment that served them",
                                       ("model", "deployment"))
        self.cache_hits = counter("fleetgate_cache_hits", "Answers served from the cache, by layer", ("layer",))
        self.cache_misses = counter("fleetgate_cache_misses", "Cache lookups that found no answer", ())
        self.near_misses = counter("fleetgate_cache_near_misses", "Semantic candidates refused by a guard", ("guard",))
        self.deduplicated = counter("fleetgate_deduplicated_requests", "Requests answered by an identical call",
                                    ("scope",))
        self.limiter_wait = histogram("fleetgate_limiter_wait_seconds", "Time to get quota", ("model",), _WAIT_BUCKETS)
        self.limiter_refusals = counter("fleetgate_limiter_refusals", "Quota refusals by the gateway or upstream",
                                        ("model", "by"))
        self.transitions = counter("fleetgate_breaker_transitions", "Circuit breaker transitions", ("breaker", "to"))
        self.breaker_state = Gauge("fleetgate_breaker_state", "0 closed, 1 half-open, 2 open, 3 isolated",
                                   ["breaker"], registry=None, multiprocess_mode="livemax")
        self.queue_depth = Gauge("fleetgate_queue_depth", "Calls waiting in a model's lanes", ["model", "lane"],
                                 registry=None, multiprocess_mode="livesum")
        self.mode = Gauge("fleetgate_mode", "1 for the degradation mode this pod serves in", ["mode"],
                          registry=None, multiprocess_mode="livemax")
        self.mode_transitions = counter("fleetgate_mode_transitions", "Degradation mode changes", ("to", "source"))
        self.mode_answers = counter("fleetgate_mode_answers", "Answers by the mode that served them", ("mode",))
        self.structured = counter("fleetgate_structured_outputs", "Structured answers checked against a schema",
                                  ("model", "outcome"))
        self.prompt_saved = counter("fleetgate_prompt_tokens_saved", "Prompt tokens compression removed",
                                    ("feature",))
        self.quality = counter("fleetgate_quality_signals", "Quality signals, good or bad", ("feature", "signal"))
        self.queue_wait = histogram("fleetgate_queue_wait_seconds", "Time waited in a model's lanes",
                                    ("model", "lane"), _WAIT_BUCKETS)

    def collect(self) -> Iterator[Metric]:
        for value in vars(self).values():
            for metric in value.collect():
                # No ``*_created`` series: a timestamp per labelled child that only doubles
                # the series a scrape stores. Dropped here rather than with
                # ``prometheus_client.disable_created_metrics()``, which would change the
                # application's own metrics too.
                metric.samples = [s for s in metric.samples if not s.name.endswith("_created")]
                yield metric


_families: _Families | None = None


def _shared() -> _Families:
    global _families
    if _families is None:
        _families = _Families()
        if multiprocess_dir() is None:
            REGISTRY.register(_families)  # an application's own /metrics shows them too
    return _families


class GatewayMetrics:
    """What one gateway reports, with its labels bounded by its configuration."""

    def __init__(self, config: GatewayConfig, prices: PriceTable, privacy: Privacy | None = None) -> None:
        """`privacy`: the gateway's pseudonyms, for sensitive features (default: a key for
        this process alone)."""
        self.f = _shared()
        self._privacy = privacy if privacy is not None else Privacy.process_local(config.privacy.sensitive)
        routing = config.routing
        self._known_models = (set(config.models) | set(prices.models) | set(config.fallback.models)
                              | set(config.fallback.models.values()) | set(routing.route_models)
                              | {t.model for t in routing.tiers} | {r.model for r in routing.rollouts.values() if r.model}
                              | {m for r in routing.rollouts.values() for m in (r.baseline.model, r.canary.model) if m}
                              | {p.model for p in config.presets.values() if p.model})
        self._prices = prices
        self._known_features = (set(config.features) | set(config.presets) | set(config.metrics.features)
                                | set(config.prompts.compress_features)
                                | {r.feature for r in routing.rollouts.values() if r.feature}
                                | {b.name for b in config.budgets.limits if b.scope == "feature" and b.name})
        self._models: dict[str, str] = {}
        self._features: dict[str | None, str] = {None: "none"}
        self._children: dict[tuple[Any, ...], Any] = {}

    # -- labels ------------------------------------------------------------------------------

    def model(self, name: str) -> str:
        """`name`'s label: itself when configured or priced, the priced model a snapshot or
        fine-tune is named after, else ``other``."""
        found = self._models.get(name)
        if found is None:
            found = name if name in self._known_models else self._prices.priced_as(name) or "other"
            if len(self._models) < _MEMO:
                self._models[name] = found
        return found

    def feature(self, name: str | None) -> str:
        features = self._features  # one memo throughout: relabel() brings a new one
        found = features.get(name)
        if found is None:
            found = (self._privacy.label("feature", name) or "none") if name in self._known_features else "other"
            if len(features) < _MEMO:
                features[name] = found
        return found

    def relabel(self) -> None:
        """Forget the feature labels made so far (the pseudonyms' key changed)."""
        self._features = {None: "none"}

    def _child(self, family: Any, *labels: str) -> Any:
        key = (family, labels)  # `labels` is a tuple already: none to build per call
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = family.labels(*labels) if labels else family
        return found

    # -- events ------------------------------------------------------------------------------

    def answered(self, endpoint: str, model: str, feature: str | None, response: httpx2.Response, seconds: float,
                 outside: float, looked_up: bool) -> None:
        """A gated request answered: `outside` is the part of `seconds` spent upstream and
        waiting (0: the request never went upstream); `looked_up`, whether the cache was
        asked for its answer."""
        f, m, status = self.f, self.model(model), response.status_code
        marks = {k: v for k, v in response.headers.raw if k[:11] == b"x-fleetgate"}  # one pass, not a lookup each
        tier = marks.get(b"x-fleetgate-tier", b"primary").decode()
        if marks.get(b"x-fleetgate") == b"refused":
            outcome = "refused"
            self._child(f.refusals, _refusal_reason(response.content)).inc()  # refusals are built whole
        elif status < 400:
            outcome = "ok"
        elif status == 429:
            outcome = "rate_limited"
        else:
            outcome = "error"
        self._child(f.requests, endpoint, m, self.feature(feature), tier, outcome).inc()
        self._child(f.duration, endpoint, m).observe(seconds)
        layer = marks.get(b"x-fleetgate-cache")
        if layer is not None:
            self._child(f.cache_hits, "exact" if layer == b"hit" else layer.decode()).inc()
        elif looked_up:
            self._child(f.cache_misses).inc()
        self._child(f.mode_answers, marks.get(b"x-fleetgate-mode", b"full").decode()).inc()
        dedup = marks.get(b"x-fleetgate-dedup")
        if dedup == b"follower" or dedup == b"fleet":
            self._child(f.deduplicated, "pod" if dedup == b"follower" else "fleet").inc()
        if outside:
            self._child(f.overhead, endpoint).observe(max(0.0, seconds - outside))

    def failed(self, endpoint: str, model: str, feature: str | None, seconds: float,
               outcome: Literal["failed", "cancelled"]) -> None:
        """A gated request that raised instead of answering (connection lost, timeout), or
        that its caller cancelled."""
        m = self.model(model)
        self._child(self.f.requests, endpoint, m, self.feature(feature), "primary", outcome).inc()
        self._child(self.f.duration, endpoint, m).observe(seconds)

    def billed(self, model: str, feature: str | None, counts: UsageCounts, cost: float | None, *,
               service_tier: str = "default", deployment: str | None = None) -> None:
        """Tokens and dollars of one answer from upstream, from the counts of its ``usage``
        (read once by the caller, which prices them too), served at `service_tier` (one of
        :data:`fleetgate.prices.TIERS`) by `deployment` (``[deployments]``; None: the
        gateway's one upstream), whose own counts show a project's spend and how much of
        its input its prompt cache served."""
        m, feat = self.model(model), self.feature(feature)
        prompt, cached, output, reasoning, written = counts
        for kind, n in (("input", prompt - cached - written), ("cached_input", cached), ("cache_write", written),
                        ("output", output), ("reasoning", reasoning)):
            if not n:
                continue
            self._child(self.f.tokens, m, feat, kind, service_tier).inc(n)
            if deployment is not None:
                self._child(self.f.deployment_tokens, m, deployment, kind).inc(n)
        if cost:
            self._child(self.f.cost, m, feat, service_tier).inc(cost)
            if deployment is not None:
                self._child(self.f.deployment_cost, m, deployment).inc(cost)

    def limiter_waited(self, model: str, seconds: float) -> None:
        self._child(self.f.limiter_wait, self.model(model)).observe(seconds)

    def limiter_refused(self, model: str, by: Literal["gateway", "upstream"]) -> None:
        self._child(self.f.limiter_refusals, self.model(model), by).inc()

    def spilled(self, model: str, deployment: str, reason: str) -> None:
        """A call `deployment` could not take went to another (`reason`: one of
        :data:`SPILL_REASONS`)."""
        self._child(self.f.deployment_spills, self.model(model), deployment, reason).inc()

    def joined_queue(self, model: str, priority: int) -> None:
        self._child(self.f.queue_depth, self.model(model), _lane(priority)).inc()

    def left_queue(self, model: str, priority: int, waited: float) -> None:
        m, lane = self.model(model), _lane(priority)
        self._child(self.f.queue_depth, m, lane).dec()
        self._child(self.f.queue_wait, m, lane).observe(waited)

    def mode(self, now: str, source: str | None = None) -> None:
        """The pod now serves in mode `now` (`source`: what changed it; None: at start)."""
        for name in MODES:
            self._child(self.f.mode, name).set(1 if name == now else 0)
        if source is not None:
            self._child(self.f.mode_transitions, now, source).inc()

    def structured(self, model: str, valid: bool) -> None:
        self._child(self.f.structured, self.model(model), "valid" if valid else "invalid").inc()

    def prompt_saved(self, feature: str | None, tokens: int) -> None:
        self._child(self.f.prompt_saved, self.feature(feature)).inc(tokens)

    def quality(self, feature: str | None, good: bool) -> None:
        self._child(self.f.quality, self.feature(feature), "good" if good else "bad").inc()

    def near_miss(self, guard: str) -> None:
        self._child(self.f.near_misses, guard).inc()

    def breaker(self, name: str, now: str) -> None:
        """Breaker `name` (``endpoint:model``, or ``endpoint:model@deployment``: deployments
        are named in the config, so the label stays bounded) moved to state `now`."""
        endpoint, _, upstream = name.partition(":")
        model, at, deployment = upstream.partition("@")
        label = f"{endpoint}:{self.model(model)}{at}{deployment}"
        self._child(self.f.transitions, label, now).inc()
        self._child(self.f.breaker_state, label).set(BREAKER_STATES.get(now, 0))


def _lane(priority: int) -> str:
    return LANES[min(max(priority, 0), len(LANES) - 1)]


def _refusal_reason(body: bytes) -> str:
    try:
        code = json.loads(body)["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return "other"
    return str(code).removeprefix("fleetgate_") if isinstance(code, str) else "other"


class BudgetCollector(Collector):
    """Each named budget's limit, spend and what remains in the current period, read from
    the ledger (the fleet's, on Redis) when scraped; none while Redis is down. Budgets kept
    per user, team or feature value are left out: their number has no bound."""

    def __init__(self, budgets: Budgets) -> None:
        self.budgets = budgets

    def collect(self) -> Iterator[Metric]:
        limit = GaugeMetricFamily("fleetgate_budget_limit_dollars", "A budget's limit for its period", labels=["budget"])
        spent = GaugeMetricFamily("fleetgate_budget_spent_dollars", "Spent and reserved in the budget's period",
                                  labels=["budget"])
        remaining = GaugeMetricFamily("fleetgate_budget_remaining_dollars", "What the budget has left this period",
                                      labels=["budget"])
        for budget, status in self.budgets.statuses():
            used = status.spent + status.reserved
            limit.add_metric([budget.name], status.limit)
            spent.add_metric([budget.name], used)
            remaining.add_metric([budget.name], max(0.0, status.limit - used))
        yield from (limit, spent, remaining)


def registry_for(extra: Iterable[Collector] = (), directory: str | None = None) -> CollectorRegistry:
    """A registry with every process's fleetgate metrics (multiprocess mode: from
    `directory`, by default ``PROMETHEUS_MULTIPROC_DIR``) or this process's, and `extra`
    collectors."""
    registry = CollectorRegistry()
    directory = directory or multiprocess_dir()
    if directory is not None:
        MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
    else:
        registry.register(_shared())
    for collector in extra:
        registry.register(collector)
    return registry


def metrics_app(kind: Literal["wsgi", "asgi"] = "wsgi", extra: Iterable[Collector] = ()) -> Any:
    """A WSGI (or ASGI) application serving the metrics of :func:`registry_for`."""
    registry = registry_for(extra)
    if kind == "asgi":
        return make_asgi_app(registry)
    if kind == "wsgi":
        return make_wsgi_app(registry)
    raise ValueError(f'metrics_app: kind must be "wsgi" or "asgi", not {kind!r}')
