"""The gateway's settings: a TOML file, validated, with ``FLEETGATE_*`` environment
variables taking precedence (nested keys with ``__``: ``FLEETGATE_MODELS__GPT_4_1__...``
is awkward for names with dots, so models are best set in the file)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

import copy
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, TomlConfigSettingsSource

__all__ = [
    "ENVIRONMENTS", "PromptSettings", "BatchSettings", "BreakerSettings", "LoggingSettings", "BudgetLimit", "BudgetSettings", "CacheSettings", "DedupSettings", "FallbackSettings", "GatewayConfig",
    "LaneSettings", "PresetSettings", "PriceFields", "PriceSettings", "QuotaLimits", "SemanticSettings",
    "DeploymentSettings", "MODES", "ModeSettings", "ModeTrigger", "RolloutSettings", "RoutingSettings", "TierSettings",
]

#: The fleet's degradation modes, mildest first (see :mod:`fleetgate.modes`).
MODES = ("full", "reduced", "cached-only", "static", "maintenance")
ModeName = Literal["full", "reduced", "cached-only", "static", "maintenance"]


class QuotaLimits(BaseModel):
    """Limits of one quota (see :class:`fleetgate.Quota`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    requests_per_minute: int | None = Field(default=None, gt=0)
    tokens_per_minute: int | None = Field(default=None, gt=0)
    algorithm: Literal["token_bucket", "sliding_window"] = "token_bucket"
    burst_seconds: float = Field(default=1.0, gt=0, le=60)


class BreakerSettings(BaseModel):
    """Circuit breakers, one per (endpoint, model); see :class:`fleetgate.Breakers`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    #: The last N calls judged; or, when set, the calls of the last ``window_seconds``.
    window: int = Field(default=50, gt=0, le=100_000)
    window_seconds: int | None = Field(default=None, gt=0, le=3_600)
    failure_rate: float = Field(default=0.5, gt=0, le=1)
    slow_rate: float = Field(default=1.0, gt=0, le=1)
    #: A call slower than this is slow (time to first byte for streams).
    slow_call_seconds: float = Field(default=30.0, gt=0)
    min_calls: int = Field(default=10, gt=0)
    half_open_probes: int = Field(default=3, gt=0)
    probe_max_wait_seconds: float = Field(default=30.0, gt=0)
    #: The first open period; doubled per consecutive trip up to ``open_max_seconds``.
    open_seconds: float = Field(default=5.0, gt=0)
    open_max_seconds: float = Field(default=300.0, gt=0)
    jitter: float = Field(default=0.2, ge=0, lt=1)
    #: How often a pod reads the fleet's breaker states from Redis.
    share_every_seconds: float = Field(default=0.25, gt=0, le=1)


class LaneSettings(BaseModel):
    """Priority lanes per model (:class:`fleetgate.Lanes`): a cap on calls in flight, a
    strict realtime lane, interactive and batch lanes shared by weight."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: Calls in flight upstream per model at most (None: no cap and no queueing), and per
    #: model exceptions.
    concurrency: int | None = Field(default=None, gt=0)
    models: dict[str, int] = Field(default_factory=dict)
    #: Requests that may wait per lane and model; beyond it a call is refused (QueueFull).
    queue_limit: int = Field(default=1000, ge=0)
    interactive_weight: int = Field(default=4, gt=0, le=1_000_000)
    batch_weight: int = Field(default=1, gt=0, le=1_000_000)


class DedupSettings(BaseModel):
    """Collapsing identical in-flight requests into one upstream call (:mod:`fleetgate.dedup`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    #: Which requests may share an answer: "deterministic" (``temperature`` 0 and one
    #: choice), "always", or "never" (a scope's ``dedup=True`` still collapses).
    when: Literal["deterministic", "always", "never"] = "deterministic"
    #: Who may share: everyone with the same API key ("global"), or only the same user,
    #: team or feature of the scope.
    namespace: Literal["global", "user", "team", "feature"] = "global"
    #: Share answers between the pods of the fleet too (needs ``redis_url``): one pod makes
    #: the call, the others wait for its answer (polling every ``poll_seconds``).
    across_pods: bool = False
    poll_seconds: float = Field(default=0.02, gt=0, le=1)
    #: How long a shared answer stays readable for pods that asked late.
    keep_seconds: float = Field(default=10.0, gt=0, le=3_600)


class SemanticSettings(BaseModel):
    """The cache's semantic layer: a request whose last user message means the same as
    one answered before (same model, same instructions and earlier messages, same
    namespace) is answered from that answer, unless a guard sees a near miss."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = False
    #: ``"local"`` (all-MiniLM-L6-v2 on onnxruntime: the ``local-embeddings`` extra), or
    #: ``"openai:<model>"`` (OpenAI's embeddings, through the gateway itself).
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

    model_config = ConfigDict(extra="forbid", frozen=True)

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


class FallbackSettings(BaseModel):
    """The fallback ladder (:mod:`fleetgate.fallback`): what serves when the primary cannot."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: A cheaper model per model: ``{"gpt-4.1" = "gpt-4.1-mini"}``.
    models: dict[str, str] = Field(default_factory=dict)
    #: An answer to give when nothing upstream can serve (chat completions and responses).
    static_answer: str | None = None
    #: A JSONL file (Batch API format) to queue requests in for later.
    defer_to: Path | None = None


class PriceFields(BaseModel):
    """One model's price, in dollars per million tokens. Reasoning tokens are output."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    input: float = Field(ge=0)
    cached_input: float | None = Field(default=None, ge=0)
    output: float = Field(default=0.0, ge=0)


class PriceSettings(BaseModel):
    """Model prices (:mod:`fleetgate.prices`): the table fleetgate ships, or ``file``,
    with ``models`` added on top."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: A price file of your own (same format as the shipped ``prices.toml``) in place of it.
    file: Path | None = None
    #: Prices added to (or replacing entries of) the table.
    models: dict[str, PriceFields] = Field(default_factory=dict)
    #: What the Batch API costs, as a share of the synchronous price (None: the table's).
    batch_discount: float | None = Field(default=None, gt=0, le=1)


class BudgetLimit(BaseModel):
    """One dollar budget. ``scope = "feature"`` with ``name`` is that feature's budget;
    without ``name`` every feature gets a budget of this size (likewise users and teams)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    scope: Literal["global", "team", "feature", "user"] = "global"
    name: str | None = Field(default=None, min_length=1)
    dollars: float = Field(gt=0)
    period: Literal["day", "month"] = "day"
    #: When it is spent: refuse with ``fleetgate.BudgetExceeded``, step down to the
    #: ``[fallback] models`` cheaper model, serve only from the cache, or queue the call
    #: until the next period (within its deadline).
    on_exhausted: Literal["refuse", "cheaper", "cache_only", "queue"] = "refuse"


class BudgetSettings(BaseModel):
    """Dollar budgets (:mod:`fleetgate.budget`), held across the fleet."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    limits: list[BudgetLimit] = Field(default_factory=list)
    #: The time zone days and months are counted in (IANA name, e.g. "Europe/Berlin").
    timezone: str = "UTC"
    #: Shares of a budget at which an alert fires, once per budget and period.
    alerts: list[float] = Field(default_factory=lambda: [0.5, 0.75, 0.9, 1.0])
    #: How long a reservation holds without being settled (a pod that died mid-call).
    reservation_seconds: float = Field(default=600.0, gt=0, le=86_400)
    #: With Redis: how long a call waits for its budgets' reservation before the store
    #: counts as down and ``failure_policy`` applies (fail_open: the call is held on this
    #: pod's ``local_share`` of each budget; fail_closed: refused with StoreUnavailable).
    #: A reservation normally takes a round trip per budget; 0.5 s is a store in trouble.
    store_timeout_seconds: float = Field(default=0.5, gt=0, le=60)
    #: A call of a model with no price under a budget: refuse it, or let it through
    #: uncounted (logged).
    unpriced: Literal["refuse", "allow"] = "refuse"
    #: Record every call's cost for ``fleetgate costs`` even where no budget applies (calls
    #: under a budget are always recorded).
    record_spend: bool = False


class PresetSettings(BaseModel):
    """A token budget for one type of request (``scope(preset=…)``, or the feature's name)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: The model requests of this type use (None: the one the caller asked for).
    model: str | None = None
    #: Longer input is cut to this many tokens (by the model's encoding), with a marker.
    max_input_tokens: int | None = Field(default=None, gt=0)
    #: The most output tokens a request of this type may ask for.
    max_output_tokens: int | None = Field(default=None, gt=0)
    #: Appended where input was cut.
    marker: str = " [... truncated]"


class DeploymentSettings(BaseModel):
    """One named configuration of a rollout: what its requests are sent as (None: as asked)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str | None = None
    #: Replaces the system message (chat) or ``instructions`` (responses).
    instructions: str | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    max_output_tokens: int | None = Field(default=None, gt=0)
    #: Shown in ``x-fleetgate-deployment`` and in every decision's log line.
    version: str = "1"


class RolloutSettings(BaseModel):
    """A canary: `canary` takes a growing share of `baseline`'s traffic, promoted step by
    step while its gates hold, rolled back when one is clearly broken."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: Which requests take part: those of this scope feature, or asking for this model.
    feature: str | None = None
    model: str | None = None
    baseline: DeploymentSettings = Field(default_factory=DeploymentSettings)
    canary: DeploymentSettings
    #: Who stays on one side: the scope's user (or, without one, the conversation:
    #: ``metadata.conversation_id``, else the first user message).
    sticky_by: Literal["user", "conversation"] = "user"
    #: Canary shares, step by step; the last (1.0) is full promotion.
    steps: list[float] = Field(default_factory=lambda: [0.01, 0.05, 0.1, 0.25, 0.5, 1.0], min_length=1)
    #: Canary requests a step needs before it can be promoted.
    min_requests: int = Field(default=1_000, gt=0)
    #: Canary requests after which a clearly broken bound rolls it back.
    early_requests: int = Field(default=100, gt=0)
    max_error_ratio: float = Field(default=1.5, gt=0)  # × the baseline's error rate
    #: +20%, on latency less a call's waits (for quota, a lane, a retry-after or a paused model).
    max_p95_increase: float = Field(default=0.2, ge=0)
    max_cost_increase: float = Field(default=0.1, ge=0)  # +10%
    #: "Clearly broken": this many times over a bound's margin.
    clearly: float = Field(default=2.0, ge=1)
    #: Answers shorter than this many characters count as "too short".
    too_short_chars: int = Field(default=2, ge=0)


class TierSettings(BaseModel):
    """A complexity tier: requests the classifier puts here are sent to `model`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    model: str


class RoutingSettings(BaseModel):
    """Model routing (:mod:`fleetgate.router`): complexity tiers and rollouts."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: Cheapest first; the last is the top tier. Empty: no complexity routing.
    tiers: list[TierSettings] = Field(default_factory=list)
    #: Requests for these models are routed by complexity (empty: requests for the top tier's).
    route_models: list[str] = Field(default_factory=list)
    #: "heuristic", or "nearest" (a labelled examples file: `examples`).
    classifier: Literal["heuristic", "nearest"] = "heuristic"
    #: JSONL of {"text", "tier"} for the "nearest" classifier.
    examples: str | None = None
    rollouts: dict[str, RolloutSettings] = Field(default_factory=dict)


class MetricsSettings(BaseModel):
    """``[metrics]``: Prometheus metrics (see :mod:`fleetgate.metrics`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    enabled: bool = True
    #: Features shown by name in labels, besides those configured elsewhere (quotas,
    #: presets, budgets, rollouts); any other feature is ``other``.
    features: list[str] = Field(default_factory=list)


class TracingSettings(BaseModel):
    """``[tracing]``: OpenTelemetry spans (see :mod:`fleetgate.tracing`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    #: Spans of gated requests, when ``opentelemetry-api`` is installed.
    enabled: bool = True


class BatchSettings(BaseModel):
    """``[batch]``: jobs carried through the Batch API (see :mod:`fleetgate.batch`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    #: Where jobs are recorded without Redis (``jobs.sqlite``) and their chunk files are
    #: kept until uploaded and done. Default: ``$XDG_STATE_HOME/fleetgate/batches``.
    directory: str | None = None
    #: The Batch API's limits per batch.
    max_lines: int = Field(default=50_000, gt=0, le=50_000)
    max_bytes: int = Field(default=200 * 1024 * 1024, gt=0, le=200 * 1024 * 1024)
    #: Tokens that may wait in unfinished batches of a model at once (your organization's
    #: batch queue limit, as OpenAI shows it), by model; ``default_enqueued_tokens`` for others.
    enqueued_tokens: dict[str, int] = Field(default_factory=dict)
    default_enqueued_tokens: int = Field(default=20_000_000, gt=0)
    #: Output tokens assumed for a request that sets no maximum.
    assumed_max_output_tokens: int = Field(default=1024, ge=0)
    #: Times a line is sent at most (the first and its retries) before it is dead-lettered.
    max_attempts: int = Field(default=3, ge=1, le=20)
    #: Polling a batch: the first interval, doubled while nothing changes up to the last.
    poll_min_seconds: float = Field(default=5.0, gt=0)
    poll_max_seconds: float = Field(default=300.0, gt=0)
    #: How long a pod watches a job after it last said so; another pod takes over after that.
    lease_seconds: float = Field(default=60.0, gt=0)
    #: Batch creations and file uploads per minute, for the whole fleet (OpenAI allows
    #: about 2,000 creations an hour).
    creations_per_minute: int = Field(default=30, gt=0)
    uploads_per_minute: int = Field(default=60, gt=0)
    #: How long OpenAI keeps output files (1 hour to 30 days).
    output_expires_seconds: int = Field(default=30 * 86_400, ge=3_600, le=30 * 86_400)
    #: Warn about a finished job whose results expire sooner than this and were not collected.
    warn_before_seconds: float = Field(default=3 * 86_400, ge=0)

    def enqueued_limit(self, model: str) -> int:
        return self.enqueued_tokens.get(model, self.default_enqueued_tokens)

    def state_directory(self) -> Path:
        if self.directory:
            return Path(self.directory)
        base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
        return Path(base) / "fleetgate" / "batches"


class ModeTrigger(BaseModel):
    """When a degradation mode is entered by itself: any one condition met is enough.
    Rates are over ``[modes] window_seconds`` of this pod's upstream calls."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: Share of upstream calls that failed (5xx, no answer; upstream 429s are quota, not health).
    error_rate: float | None = Field(default=None, gt=0, le=1)
    #: The 95th percentile of upstream calls' time (streams: to the first byte).
    p95_seconds: float | None = Field(default=None, gt=0)
    #: Circuit breakers open or isolated, across the fleet.
    open_breakers: int | None = Field(default=None, gt=0)
    #: Circuit breakers isolated (upstream said ``insufficient_quota``; only a reset ends it).
    isolated_breakers: int | None = Field(default=None, gt=0)
    #: Share of a global budget spent in its period.
    budget_share: float | None = Field(default=None, gt=0)


def _default_triggers() -> dict[ModeName, ModeTrigger]:
    return {
        "reduced": ModeTrigger(error_rate=0.1, open_breakers=1, budget_share=0.9),
        "cached-only": ModeTrigger(error_rate=0.3, budget_share=1.0),
        "static": ModeTrigger(error_rate=0.6),
        "maintenance": ModeTrigger(isolated_breakers=1),
    }


class ModeSettings(BaseModel):
    """``[modes]``: the fleet's degradation modes (:mod:`fleetgate.modes`), entered by
    themselves from signals or set by an operator (``fleetgate mode set``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: Enter and leave modes by themselves, from ``enter``'s triggers (the production
    #: environment preset turns this on; an operator's mode works either way).
    auto: bool = False
    #: Per mode, what enters it (modes left out are entered only by an operator).
    enter: dict[ModeName, ModeTrigger] = Field(default_factory=_default_triggers)
    #: A mode is left once its signals fell under this share of its triggers' thresholds...
    exit_ratio: float = Field(default=0.5, gt=0, le=1)
    #: ...and stayed there this long (hysteresis: no flapping at a threshold).
    exit_after_seconds: float = Field(default=30.0, ge=0)
    #: The span of upstream calls error rates and latency are measured over.
    window_seconds: float = Field(default=60.0, gt=0, le=3_600)
    #: Fewer upstream calls in the window than this say nothing about rates.
    min_requests: int = Field(default=20, gt=0)
    #: How often a pod judges its signals and reads the operator's mode from Redis: an
    #: operator's mode reaches every pod within this (at most a second).
    evaluate_every_seconds: float = Field(default=0.5, gt=0, le=1)
    #: In a mode entered by itself that sends nothing upstream (cached-only, static), one
    #: request per this interval still goes upstream, to see whether it recovered.
    probe_every_seconds: float = Field(default=1.0, gt=0)
    #: With Redis, the share of live pods whose own judgement moves every pod to a mode.
    quorum: float = Field(default=0.5, gt=0, le=1)
    #: Reduced mode: the most output tokens a request may ask for.
    reduced_max_output_tokens: int | None = Field(default=1024, gt=0)
    #: Features that are optional enrichments: refused (``ServiceDegraded``) from reduced on.
    optional_features: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _maintenance_ends(self) -> ModeSettings:
        rates = self.enter.get("maintenance")
        if rates is not None and (rates.error_rate is not None or rates.p95_seconds is not None):
            raise ValueError("[modes.enter.maintenance] cannot use error_rate or p95_seconds: maintenance sends "
                             "nothing upstream, so nothing would show recovery; use isolated_breakers or "
                             "open_breakers, or set maintenance by hand (fleetgate mode set)")
        return self


class PromptSettings(BaseModel):
    """``[prompts]``: compression of instructions and a prompt-cache layout report
    (:mod:`fleetgate.prompts`); both opt-in."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    #: Features whose system/developer messages and instructions are compressed: filler
    #: phrasing and repeated whitespace removed; numbers, negations, names, code, quotes,
    #: URLs and {placeholders} never touched.
    compress_features: list[str] = Field(default_factory=list)
    #: Filler phrases of your own, with what replaces them ("" removes).
    extra_fillers: dict[str, str] = Field(default_factory=dict)
    #: Sample each template's prompts (by feature, else by the hash of its system
    #: message) for ``gate.prompt_report()``: how well each uses OpenAI's prompt caching.
    layout: bool = False
    layout_samples: int = Field(default=32, ge=2, le=1_000)


class LoggingSettings(BaseModel):
    """``[logging]``: how much fleetgate says (None: as the application set its loggers)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    #: The level of the ``fleetgate`` logger (mode changes, breakers, budget alerts, failures).
    level: Literal["debug", "info", "warning", "error"] | None = None
    #: One record per gated request on ``fleetgate.requests`` (INFO; see :mod:`fleetgate.records`).
    requests: bool | None = None


_ENV_NAMES = {"dev": "development", "develop": "development", "stage": "staging", "prod": "production"}
Environment = Annotated[Literal["development", "staging", "production"],
                        BeforeValidator(lambda v: _ENV_NAMES.get(v.lower(), v.lower()) if isinstance(v, str) else v)]

#: What each environment (``FLEETGATE_ENV``) sets before the config file and ``FLEETGATE_*``
#: variables, which win over it key by key.
ENVIRONMENTS: dict[str, dict[str, Any]] = {
    "development": {
        # Cheap and loud: one small model, a small daily budget, few retries, every detail logged.
        "model_override": "gpt-4.1-nano",
        "budgets": {"limits": [{"scope": "global", "dollars": 5.0, "period": "day"}], "record_spend": True},
        "max_upstream_retries": 1,
        "default_deadline_seconds": 30.0,
        "logging": {"level": "debug", "requests": True},
    },
    "staging": {
        "budgets": {"limits": [{"scope": "global", "dollars": 50.0, "period": "day"}], "record_spend": True},
        "max_upstream_retries": 2,
        "logging": {"level": "info", "requests": True},
        "modes": {"auto": True},
    },
    "production": {
        # Budgets are the service's own (`fleetgate check` fails without one); spend is recorded.
        "budgets": {"record_spend": True},
        "max_upstream_retries": 3,
        "logging": {"level": "warning", "requests": True},
        "modes": {"auto": True},
    },
}


class _EnvironmentPreset(PydanticBaseSettingsSource):
    """The lowest source: the preset of the environment the sources above chose."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # everything comes from __call__

    def __call__(self) -> dict[str, Any]:
        chosen = self.current_state.get("env")
        if chosen is None:
            return {}
        name = _ENV_NAMES.get(str(chosen).lower(), str(chosen).lower())
        return copy.deepcopy(ENVIRONMENTS.get(name, {}))  # an unknown name fails validation of `env`


class GatewayConfig(BaseSettings):
    """Everything a :class:`fleetgate.Gateway` is configured with."""

    model_config = SettingsConfigDict(env_prefix="FLEETGATE_", env_nested_delimiter="__", extra="forbid", frozen=True)

    #: The environment (``FLEETGATE_ENV``: development/dev, staging, production/prod): its
    #: preset (:data:`ENVIRONMENTS`) comes under the config file.
    env: Environment | None = None
    #: Every chat and responses request is sent to this model ("": as asked). The
    #: development preset sets a small one, so a test run costs little.
    model_override: str = ""
    #: Shared store: ``redis://…``, ``rediss://…`` or ``redis+cluster://h:p,h:p``; None runs embedded.
    redis_url: str | None = None
    failure_policy: Literal["fail_open", "fail_closed"] = "fail_open"
    #: This pod's share of each quota and budget while Redis is unreachable (about 1 / pods).
    local_share: float = Field(default=0.1, gt=0, le=1)
    #: With Redis, a busy quota is admitted from a small lease each pod holds, covering
    #: about this many seconds of the pod's own traffic, so most requests need no round
    #: trip; near a quota's limit requests are decided one by one in Redis. 0: always.
    quota_lease_seconds: float = Field(default=0.1, ge=0, le=10)
    #: The upstream API (None: the SDK's default, or OPENAI_BASE_URL).
    base_url: str | None = None
    #: The organization's limits per model, as OpenAI shows them.
    models: dict[str, QuotaLimits] = Field(default_factory=dict)
    #: Share of each model's limits left unused: the margin for what no client can count
    #: exactly (the jitter between deciding and arriving upstream). 0.01 costs 1% of
    #: throughput and keeps upstream 429s near zero.
    model_headroom: float = Field(default=0.01, ge=0, lt=0.5)
    #: Limits for models not listed (None: such models are not limited).
    default_model_limits: QuotaLimits | None = None
    #: Limits every user (``scope(user=…)``) gets, per user, across models.
    per_user: QuotaLimits | None = None
    #: Limits per feature and per team, by name.
    features: dict[str, QuotaLimits] = Field(default_factory=dict)
    teams: dict[str, QuotaLimits] = Field(default_factory=dict)
    #: Output tokens assumed for a request that sets no maximum.
    assumed_max_output_tokens: int = Field(default=1024, ge=0)
    #: How long a request may wait for quota (and for upstream 429 retries) when its scope sets no deadline.
    default_deadline_seconds: float = Field(default=60.0, gt=0)
    #: Upstream 429s (rate_limit_exceeded) retried by the gateway within the deadline.
    max_upstream_retries: int = Field(default=3, ge=0, le=20)
    breakers: BreakerSettings = Field(default_factory=BreakerSettings)
    lanes: LaneSettings = Field(default_factory=LaneSettings)
    dedup: DedupSettings = Field(default_factory=DedupSettings)
    fallback: FallbackSettings = Field(default_factory=FallbackSettings)
    cache: CacheSettings = Field(default_factory=CacheSettings)
    prices: PriceSettings = Field(default_factory=PriceSettings)
    budgets: BudgetSettings = Field(default_factory=BudgetSettings)
    #: Token budgets by request type.
    presets: dict[str, PresetSettings] = Field(default_factory=dict)
    routing: RoutingSettings = Field(default_factory=RoutingSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    tracing: TracingSettings = Field(default_factory=TracingSettings)
    batch: BatchSettings = Field(default_factory=BatchSettings)
    modes: ModeSettings = Field(default_factory=ModeSettings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)
    prompts: PromptSettings = Field(default_factory=PromptSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Arguments, then FLEETGATE_* variables, then the TOML file (when one is set), then
        # the preset of the environment they chose.
        return init_settings, env_settings, TomlConfigSettingsSource(settings_cls), _EnvironmentPreset(settings_cls)

    @classmethod
    def from_toml(cls, path: str | Path, **overrides: Any) -> GatewayConfig:
        """Read a TOML file; ``FLEETGATE_*`` variables and `overrides` win over it."""
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"fleetgate config file not found: {p}")
        loader = type("GatewayConfigFromToml", (cls,), {"model_config": {**cls.model_config, "toml_file": p}})
        return cls.model_validate(loader(**overrides).model_dump())
