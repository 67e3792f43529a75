"""The gateway: fleetgate between an application and the OpenAI API, in process.

    gate = fleetgate.Gateway.from_config("fleetgate.toml")
    client = gate.openai()
    with gate.scope(user="u-42", feature="support-chat"):
        client.responses.create(model="gpt-4.1-mini", input="…")

The gateway assembles the services every pod shares (the limiter, breakers, budgets,
cache, router, modes, ...); the request path that uses them is a stack of layers built from
the same config (:mod:`fleetgate.path`):

    record → shape → route → modes → cache → dedup → fallback → budget → lanes → retry
           → breaker → limit → upstream
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import threading
import weakref
from collections.abc import Callable
from functools import partial

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, ParamSpec, TypeVar

import httpx2
import openai as openai_sdk
from pydantic import BaseModel

from fleetgate._core import Breaker, Breakers, Budget, Lanes, Limiter, Quota
from fleetgate.background import BackgroundCalls, BackgroundCollector
from fleetgate.budget.guard import AlertCallback, Budgets
from fleetgate.cache import AnswerCache
from fleetgate.chains import Chains
from fleetgate.router import Classifier, Router
from fleetgate.validate import complete, complete_async
from fleetgate.budget.presets import Presets
from fleetgate.budget.report import By, days_between, spend_by
from fleetgate.config import GatewayConfig, QuotaLimits, SemanticSettings
from fleetgate.config.loader import overridden
from fleetgate.dedup import Collapser
from fleetgate.deployments import Deployments
from fleetgate.errors import ConfigError
from fleetgate.fallback import Ladder
from fleetgate.metrics import BudgetCollector, GatewayMetrics, metrics_app
from fleetgate.modes import ModeState, Modes, change_reason, fleet_signals
from fleetgate.prompts import Compressor, LayoutTracker, Savings, render_report
from fleetgate.privacy import Privacy
from fleetgate.prices import PriceTable
from fleetgate.scope import Priority, Scope, current_scope, scope
from fleetgate.seen_models import SeenModels
from fleetgate.stats import GatewayStats
from fleetgate.sdk import GatedAsyncOpenAI, GatedOpenAI
from fleetgate.tracing import tracer
from fleetgate.path import AsyncGateTransport, GateTransport
from fleetgate.warm import Warmup, configured_models
from fleetgate.webhooks import Receiver
from fleetgate import _extras

if TYPE_CHECKING:
    from fleetgate.batch import BatchJobs
    from fleetgate.budget.reconcile import Reconciliation
    from fleetgate.cache.embedders import Embedder


M = TypeVar("M", bound=BaseModel)
P = ParamSpec("P")
__all__ = ["Gateway"]

log = logging.getLogger("fleetgate")
_MISSING = object()
#: What the semantic cache and the nearest classifier need (import name → distribution).
_VECTORS = {"numpy": "numpy", "faiss": "faiss-cpu"}


#: How many (kind, name) quotas a gateway remembers before it starts over.
_QUOTA_MEMO = 65_536


def _weakly(method: Callable[P, None]) -> Callable[P, None]:
    """`method`, held weakly: a callback kept by the Rust core (which the garbage collector
    cannot look into) or by a thread must not keep its gateway alive."""
    ref = weakref.WeakMethod(method)

    def call(*args: P.args, **kwargs: P.kwargs) -> None:
        bound = ref()
        if bound is not None:
            bound(*args, **kwargs)

    return call


def _apply_logging(config: GatewayConfig) -> None:
    """``[logging]``: the levels of fleetgate's loggers, where the config sets them."""
    settings = config.logging
    if settings.level is not None:
        log.setLevel(settings.level.upper())
    if settings.requests is not None:
        logging.getLogger("fleetgate.requests").setLevel(logging.INFO if settings.requests else logging.WARNING)


class Gateway:
    """Composes the request path; hands out openai clients that go through it."""

    def __init__(self, config: GatewayConfig | None = None, *, on_budget_alert: AlertCallback | None = None,
                 embedder: Embedder | None = None, classifier: Classifier | None = None,
                 tracer_provider: Any = None, **overrides: Any) -> None:
        """`overrides` are :class:`GatewayConfig` fields. `on_budget_alert(budget, threshold,
        spent, limit, period)` hears of each budget alert, once per budget and period across
        the fleet (they are logged and counted in ``stats["budget_alerts"]`` too). `embedder`
        replaces the one ``[cache.semantic] embedder`` names; `classifier` the complexity
        classifier ``[routing] classifier`` names; `tracer_provider` the OpenTelemetry
        tracer provider spans go to (default: the global one; see :mod:`fleetgate.tracing`)."""
        self.config = overridden(config, overrides) if config is not None else GatewayConfig(**overrides)
        _apply_logging(self.config)
        self.limiter = Limiter(self.config.redis_url, failure_policy=self.config.failure_policy,
                               local_share=self.config.local_share,
                               lease_seconds=self.config.quota_lease_seconds)
        self.stats = GatewayStats()
        #: The pseudonyms that stand for users (and sensitive teams or features) in every
        #: name that leaves the process (:mod:`fleetgate.privacy`).
        self.privacy = Privacy.from_settings(self.config.privacy, self.config.redis_url)
        self.prices = PriceTable.from_settings(self.config.prices)
        #: Where each model is served, when not only at ``base_url`` (``[deployments]``).
        self.deployments = Deployments(self.config.deployments, partial(self._limits, "model"),
                                       self.config.model_headroom,
                                       budgeted=[r.name for r in self.config.budgets.limits
                                                 if r.scope == "deployment" and r.name is not None])
        #: Prometheus metrics (None with ``[metrics] enabled = false``).
        self.metrics = GatewayMetrics(self.config, self.prices, self.privacy) if self.config.metrics.enabled else None
        #: OpenTelemetry spans (None without ``opentelemetry-api`` or with ``[tracing] enabled = false``).
        self.tracer = tracer(self.config.tracing.enabled, tracer_provider)
        b = self.config.breakers
        self.breakers: Breakers | None = Breakers(
            self.limiter, window=b.window, window_seconds=b.window_seconds, failure_rate=b.failure_rate,
            slow_rate=b.slow_rate, slow_call=b.slow_call_seconds, min_calls=b.min_calls,
            half_open_probes=b.half_open_probes, probe_max_wait=b.probe_max_wait_seconds, open_base=b.open_seconds,
            open_max=b.open_max_seconds, jitter=b.jitter, share_every=b.share_every_seconds,
            on_transition=_weakly(self._on_transition),
        ) if b.enabled else None
        self._breaker_cache: dict[tuple[str, str], Breaker] = {}
        #: (kind, name) → its quota (None: no limits), since the configuration is frozen.
        self._quota_memo: dict[tuple[str, str], Quota | None] = {}
        self.ladder = Ladder(self.config.fallback)
        self.collapser = Collapser(self.config.dedup, self.stats, self.limiter, self.config.redis_url)
        #: The models this process gates, noted for `fleetgate check` (:mod:`fleetgate.seen_models`).
        self.seen_models = SeenModels(self.config.redis_url)
        self.budgets = Budgets(self.config.budgets, self.prices, self.limiter, self.stats.count, on_budget_alert,
                               failure_policy=self.config.failure_policy, local_share=self.config.local_share,
                               privacy=self.privacy, on_unpriced=self.seen_models.note)
        self.presets = Presets(self.config.presets)
        #: What calls continuing a Responses chain carry (:mod:`fleetgate.chains`).
        self.chains = Chains(self.config.server_context, self.config.redis_url, self.stats, self.config.failure_policy)
        #: Responses made with ``background: true``, watched until they end, then settled
        #: (:mod:`fleetgate.background`): ``gate.background.pending()``.
        self.background = BackgroundCalls(self.config.background, transport=GateTransport(self),
                                          redis_url=self.config.redis_url, limiter=self.limiter, budgets=self.budgets,
                                          prices=self.prices, stats=self.stats, metrics=self.metrics,
                                          deployments=self.deployments, chains=self.chains)
        # One embedder (one model loaded) for the semantic layer and the nearest classifier.
        semantic = self.config.cache.semantic.enabled
        nearest = self.config.routing.classifier == "nearest" and bool(self.config.routing.tiers)
        if semantic:
            _extras.require("[cache.semantic] enabled = true", _VECTORS, _extras.SEMANTIC)
        if nearest:
            _extras.require('[routing] classifier = "nearest"', _VECTORS, _extras.SEMANTIC)
        shared = (embedder or self._embedder()) if semantic or nearest else None
        self.cache = AnswerCache(self.config.cache, self.config.redis_url, self.stats, shared if semantic else None,
                                 on_guarded=self.metrics.near_miss if self.metrics is not None else None)
        if not self.config.cache.enabled and any(r.on_exhausted == "cache_only" for r in self.config.budgets.limits):
            raise ConfigError('a budget with on_exhausted = "cache_only" needs the cache: set [cache] enabled = true')
        self.router = Router(self.config.routing, self.config.redis_url, self.prices, classifier=classifier,
                             embedder=shared if nearest else None)
        self._lanes: dict[str, Lanes | None] = {}
        #: The fleet's degradation mode (:mod:`fleetgate.modes`): ``gate.modes.current``,
        #: ``gate.modes.set("cached-only", for_seconds=1800)``, ``gate.modes.clear()``.
        self.modes = Modes(self.config.modes, self.config.redis_url, on_change=_weakly(self._on_mode))
        if self.metrics is not None:
            self.metrics.mode(self.modes.current.mode)
        self.modes.start(fleet_signals(self.breakers, self.budgets, self.config.modes))
        prompts = self.config.prompts
        #: Compression of the ``[prompts] compress_features``' instructions (None: none),
        #: what it saved per template, and the prompt-cache layout samples (None: off).
        self.compressor = Compressor(extra_fillers=prompts.extra_fillers) if prompts.compress_features else None
        self.prompt_savings = Savings()
        self.layout = LayoutTracker(prompts.layout_samples) if prompts.layout else None
        self._sync_client: openai_sdk.OpenAI | None = None
        self._async_sdk_client: openai_sdk.AsyncOpenAI | None = None
        self._lanes_lock = threading.Lock()
        self.privacy.on_rekey(_weakly(self._rekeyed))
        #: What the first call needs (the configured models' encodings, the embedder),
        #: loading in the background from now on: :meth:`ready`.
        self.warmup = Warmup(configured_models(self.config), shared)

    def _embedder(self) -> Embedder:
        return self.embedder_for(self.config.cache.semantic)

    def embedder_for(self, settings: SemanticSettings) -> Embedder:
        """The embedder `settings` name: ``local``, or ``openai:<model>`` through this gateway
        (with the API key in ``OPENAI_API_KEY``)."""
        from fleetgate.cache.embedders import LocalEmbedder, OpenAIEmbedder

        name = settings.embedder
        if name == "local":
            return LocalEmbedder()
        if not os.environ.get("OPENAI_API_KEY"):
            raise ConfigError(f'[cache.semantic] embedder = "{name}" asks OpenAI\'s embeddings with the API key in '
                              "OPENAI_API_KEY, which is not set: set OPENAI_API_KEY, or pass Gateway(embedder=…) "
                              f'an OpenAIEmbedder of your own client, or use embedder = "local" '
                              f"({_extras.LOCAL_EMBEDDINGS})")
        return OpenAIEmbedder(self.openai(), name.removeprefix("openai:"))

    _closed = False

    def close(self) -> None:
        """Stop the gateway's background work (the modes' judge, the semantic layer's
        journal reader, the rollouts' sync, the watcher of background responses, which
        hands those still running to the fleet), sending what it still holds. Closing again
        does nothing; ``with Gateway(...) as gate:`` closes it at the end of the block."""
        if self._closed:
            return
        self._closed = True
        self.background.close()
        self.modes.close()
        self.cache.close()
        self.router.close()
        self.privacy.close()
        self.seen_models.close()
        self.chains.close()

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def __enter__(self) -> Gateway:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    async def __aenter__(self) -> Gateway:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()

    def ready(self, timeout: float | None = None) -> bool:
        """Wait at most `timeout` seconds (None: as long as it takes) until what the first
        call needs is loaded: the encodings of the configured models and, with the semantic
        cache or the nearest classifier on, the embedder (:mod:`fleetgate.warm`). True once
        loaded, False while still loading; raises what failed to load. For a readiness probe:

            gate = fleetgate.Gateway.from_config("fleetgate.toml")   # starts loading
            gate.ready(timeout=30)                                    # before taking traffic

        Calls need not wait for it: one made earlier waits for the warm-up first, and its
        deadline starts once the warm-up is over."""
        return self.warmup.ready(timeout)

    async def ready_async(self, timeout: float | None = None) -> bool:
        """:meth:`ready`, awaited without blocking the event loop."""
        return await self.warmup.ready_async(timeout)

    def warmed(self) -> None:
        """Wait until the warm-up is over (loaded or failed), before a call's deadline starts."""
        if not self.warmup.done:
            self.stats.count("warm_waits")
            self.warmup.wait()

    async def warmed_async(self) -> None:
        """:meth:`warmed`, awaited without blocking the event loop."""
        if not self.warmup.done:
            self.stats.count("warm_waits")
            await self.warmup.wait_async()

    @classmethod
    def from_config(cls, path: str | Path, **overrides: Any) -> Gateway:
        """A gateway configured from a TOML file (``FLEETGATE_*`` variables win over it)."""
        return cls(GatewayConfig.from_toml(path, **overrides))

    def scope(self, *, user: str | None = None, feature: str | None = None, team: str | None = None,
              priority: Priority | int | None = None, deadline: float | None = None, dedup: bool | None = None,
              preset: str | None = None, deadline_at: float | None = None) -> scope:
        """:class:`fleetgate.scope`, checking that `preset` is one of this gateway's.
        `deadline` is each call's, from its own start; `deadline_at` (a Unix time) the block's."""
        if preset is not None and preset not in self.config.presets:
            raise ConfigError(f"preset {preset!r} is not configured: add [presets.{preset}] to the gateway's config "
                              f"(known: {', '.join(sorted(self.config.presets)) or 'none'})")
        return scope(user=user, feature=feature, team=team, priority=priority, deadline=deadline, dedup=dedup,
                     preset=preset, deadline_at=deadline_at)

    def quotas_for(self, model: str, sc: Scope) -> tuple[Quota | None, list[Quota]]:
        """The model's quota, and every quota a call of `model` in scope `sc` draws on."""
        model_quota = self._quota("model", model)
        quotas = [model_quota] if model_quota is not None else []
        for kind, name in (("user", sc.user), ("feature", sc.feature), ("team", sc.team)):
            if name is not None:
                quota = self._quota(kind, name)
                if quota is not None:
                    quotas.append(quota)
        return model_quota, quotas

    def _quota(self, kind: str, name: str) -> Quota | None:
        """The quota of `name` (a model, user, feature or team), remembered: most calls
        name one seen before. The memo is bounded, since user names are not (a quota made
        again has the same name, so the same state). A user's quota (and a sensitive team's
        or feature's) is named by its pseudonym: the name reaches Redis, refusals and logs."""
        key, memo = (kind, name), self._quota_memo  # one memo throughout: a new key brings a new one
        try:
            return memo[key]
        except KeyError:
            pass
        if kind == "model":  # a model new to this process (or to a fresh memo)
            self.seen_models.note(name)
        limits = self._limits(kind, name)
        label = name if kind == "model" else self.privacy.label(kind, name)
        found = limits.quota(f"{kind}:{label}", kind) if limits is not None else None
        if len(memo) >= _QUOTA_MEMO:
            memo.clear()
        memo[key] = found
        return found

    def _rekeyed(self) -> None:
        """The pseudonyms' key changed (this pod read the fleet's): quotas and labels named
        with the old one are made again."""
        self._quota_memo = {}
        if self.metrics is not None:
            self.metrics.relabel()

    def _limits(self, kind: str, name: str) -> QuotaLimits | None:
        """What the configuration sets for `name` of `kind` (a model's: less the headroom)."""
        cfg = self.config
        if kind == "model":
            limits = cfg.models.get(name, cfg.default_model_limits)
            return limits.with_headroom(cfg.model_headroom) if limits else None
        if kind == "user":
            return cfg.per_user
        return (cfg.features if kind == "feature" else cfg.teams).get(name)

    def breaker_for(self, endpoint: str, model: str) -> Breaker | None:
        """The circuit breaker of (endpoint, model): ``"/chat/completions:gpt-4.1"``."""
        if self.breakers is None:
            return None
        key = (endpoint, model)
        found = self._breaker_cache.get(key)
        if found is None:
            found = self._breaker_cache[key] = self.breakers.get(f"{endpoint}:{model}")
        return found

    def lanes_for(self, model: str) -> Lanes | None:
        """The priority lanes in front of `model`, or None when its calls are not capped."""
        found = self._lanes.get(model, _MISSING)
        if found is not _MISSING:
            return found  # type: ignore[return-value]
        with self._lanes_lock:
            if model not in self._lanes:
                cfg = self.config.lanes
                cap = cfg.models.get(model, cfg.concurrency)
                self._lanes[model] = None if cap is None else Lanes(
                    cap, cfg.queue_limit, interactive_weight=cfg.interactive_weight, batch_weight=cfg.batch_weight)
            return self._lanes[model]

    def _on_transition(self, name: str, was: str, now: str, reason: str, remote: bool, lasts: float | None) -> None:
        self.stats.count(f"breaker_{now}")
        if self.metrics is not None:
            self.metrics.breaker(name, now)
        where = "the fleet" if remote else "this pod"
        level = logging.ERROR if now == "isolated" else logging.WARNING if now == "open" else logging.INFO
        span = f" for {lasts:.1f}s" if lasts is not None else ""
        log.log(level, "fleetgate: circuit %s %s → %s%s (%s, decided by %s)", name, was, now, span, reason, where)

    def _on_mode(self, was: ModeState, now: ModeState) -> None:
        self.stats.count(f"mode_{now.mode}")
        if self.metrics is not None:
            self.metrics.mode(now.mode, now.source)
        level = logging.INFO if now.mode == "full" else logging.WARNING
        until = f" until {dt.datetime.fromtimestamp(now.until, dt.UTC):%H:%M:%SZ}" if now.until is not None else ""
        log.log(level, "fleetgate: mode %s → %s%s (%s: %s)", was.mode, now.mode, until, now.source,
                change_reason(was, now))

    def metrics_app(self, kind: Literal["wsgi", "asgi"] = "wsgi") -> Any:
        """A WSGI (or ASGI) application serving the Prometheus metrics: this process's, or
        every worker's in multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``), with this
        gateway's named budgets read from the ledger when scraped. See :mod:`fleetgate.metrics`.

            from wsgiref.simple_server import make_server
            make_server("0.0.0.0", 9464, gate.metrics_app()).serve_forever()
        """
        extra = [BudgetCollector(self.budgets)] if self.budgets.settings.limits else []
        return metrics_app(kind, [*extra, BackgroundCollector(self.background, self.stats)])

    def costs(self, since: dt.date | None = None, until: dt.date | None = None, by: By = "model") -> list[tuple[str, float]]:
        """Dollars spent from `since` to `until` (days in ``[budgets] timezone``, both included;
        default: the last 7 days), by model, feature, user, team or day, most first."""
        today = dt.date.fromisoformat(Budget("today", 1.0, "day", self.config.budgets.timezone).window()[0])
        until = until or today
        since = since or until - dt.timedelta(days=6)
        return spend_by(self.budgets.ledger, days_between(since, until), by)

    def reconcile(self, since: dt.date, until: dt.date | None = None, *, project: str | None = None,
                  tolerance: float = 0.01, client: openai_sdk.OpenAI | None = None) -> Reconciliation:
        """The ledger against what OpenAI billed, per UTC day and model, from `since` to `until`
        (default: yesterday, the last whole day), for `project` (default: ``openai_project``,
        else ``OPENAI_PROJECT_ID``; neither: the whole organization), read with `client` (an
        ``openai.OpenAI`` with an admin key; default: ``OPENAI_ADMIN_KEY``). See
        :mod:`fleetgate.budget.reconcile`.

            report = gate.reconcile(dt.date(2026, 11, 1), dt.date(2026, 11, 30))
            print(report.table()); assert report.ok, report.differing()
        """
        from fleetgate.budget.reconcile import admin_client, gateway_project, reconcile

        return reconcile(self.budgets.ledger, client or admin_client(self.config.base_url), since, until,
                         project=project or gateway_project(self.config.openai_project), tolerance=tolerance,
                         timezone=self.config.budgets.timezone)

    def batches(self, *, directory: str | Path | None = None, **client_options: Any) -> BatchJobs:
        """Batch API jobs through this gateway's upstream, Redis (or, embedded, a SQLite
        file in `directory`, default ``[batch] directory``), budgets and prices;
        `client_options` go to the ``openai.OpenAI`` they use (``api_key``, ...). See
        :mod:`fleetgate.batch`.

            jobs = gate.batches()
            jobs.submit("requests.jsonl", name="nightly")       # checked, split, sent, watched
            jobs.collect("nightly", "results.jsonl")           # answers; the rest in results.dead.jsonl
        """
        from fleetgate.batch import BatchJobs

        return BatchJobs(self, directory=directory, **client_options)

    def webhooks(self, secret: str | None = None) -> Receiver:
        """A receiver of OpenAI's webhooks (:mod:`fleetgate.webhooks`) signed with `secret`
        (the endpoint's ``whsec_…``; default ``OPENAI_WEBHOOK_SECRET``): a background
        response that ended is settled at once.

            receiver = gate.webhooks(secret="whsec_…")
            event = receiver.handle(body, headers)   # WebhookRejected: answer 400
        """
        return Receiver(self.background, secret)

    def openai(self, **kwargs: Any) -> openai_sdk.OpenAI:
        """An ``openai.OpenAI`` whose every call goes through this gateway. An
        ``http_client`` of your own must send through :meth:`transport` (else
        :class:`fleetgate.BypassWarning`: its calls would bypass the gateway)."""
        kwargs.setdefault("base_url", self.config.base_url)
        kwargs.setdefault("project", self.config.openai_project)
        if kwargs.get("http_client") is None:
            kwargs["http_client"] = openai_sdk.DefaultHttpx2Client(transport=GateTransport(self))
        return GatedOpenAI(**kwargs)

    def async_openai(self, **kwargs: Any) -> openai_sdk.AsyncOpenAI:
        """An ``openai.AsyncOpenAI`` whose every call goes through this gateway. An
        ``http_client`` of your own must send through :meth:`async_transport` (else
        :class:`fleetgate.BypassWarning`)."""
        kwargs.setdefault("base_url", self.config.base_url)
        kwargs.setdefault("project", self.config.openai_project)
        if kwargs.get("http_client") is None:
            kwargs["http_client"] = openai_sdk.DefaultAsyncHttpx2Client(transport=AsyncGateTransport(self))
        return GatedAsyncOpenAI(**kwargs)

    def complete(self, prompt_or_messages: str | list[dict[str, Any]], response_model: type[M], *, model: str,
                 retries: int = 2, client: openai_sdk.OpenAI | None = None, **create: Any) -> M:
        """Ask `model` (through this gateway) and return the answer validated as the pydantic
        `response_model`: structured outputs where the model has them, JSON mode elsewhere;
        recovered from fences or surrounding prose; asked again with the validation errors
        at most `retries` times. Raises :class:`StructuredOutputError` with the raw text and
        every attempt. `client`: one of :meth:`openai`'s (default: ``self.openai()``). An
        answer that does not validate counts against its rollout's quality gate."""
        return complete(client or self._client(), prompt_or_messages, response_model, model=model, retries=retries,
                        on_checked=lambda headers, valid: self._checked(model, headers, valid), **create)

    async def complete_async(self, prompt_or_messages: str | list[dict[str, Any]], response_model: type[M], *,
                             model: str, retries: int = 2, client: openai_sdk.AsyncOpenAI | None = None,
                             **create: Any) -> M:
        """:meth:`complete` with an async client (default: ``self.async_openai()``)."""
        return await complete_async(client or self._async_client(), prompt_or_messages, response_model, model=model,
                                    retries=retries, on_checked=lambda headers, valid: self._checked(model, headers, valid),
                                    **create)

    def _checked(self, model: str, headers: Any, valid: bool) -> None:
        """A structured answer checked against its schema: a metric, and a quality signal
        (an invalid one also against its rollout)."""
        if self.metrics is not None:
            self.metrics.structured(model, valid)
            self.metrics.quality(current_scope().feature, valid)
        if not valid:
            self.router.schema_failed(headers)

    def prompt_report(self) -> str:
        """What compression saved per template, and how well each template observed uses
        OpenAI's prompt caching (``[prompts] layout = true``), with advice where its
        changing part comes first. Templates are named by feature or hash; no prompt text."""
        parts = [saving.render() for saving in self.prompt_savings.report()]
        if self.layout is not None:
            parts.append(render_report(self.layout.report()))
        elif not parts:
            parts.append("Nothing to report: set [prompts] compress_features or layout = true.")
        return "\n".join(parts)

    def record_quality(self, good: bool, *, feature: str | None = None) -> None:
        """Count a quality signal of your own (a user's thumbs up or down, a grader's
        verdict) for `feature` (default: the current scope's) in
        ``fleetgate_quality_signals_total``, which the alert rules watch."""
        if self.metrics is not None:
            self.metrics.quality(feature if feature is not None else current_scope().feature, good)

    def _client(self) -> openai_sdk.OpenAI:
        if self._sync_client is None:
            self._sync_client = self.openai()
        return self._sync_client

    def _async_client(self) -> openai_sdk.AsyncOpenAI:
        if self._async_sdk_client is None:
            self._async_sdk_client = self.async_openai()
        return self._async_sdk_client

    def transport(self, inner: httpx2.BaseTransport | None = None) -> GateTransport:
        """The sync transport alone, for an ``httpx2.Client`` of your own."""
        return GateTransport(self, inner)

    def async_transport(self, inner: httpx2.AsyncBaseTransport | None = None) -> AsyncGateTransport:
        """The async transport alone, for an ``httpx2.AsyncClient`` of your own."""
        return AsyncGateTransport(self, inner)
