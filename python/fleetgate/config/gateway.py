"""The gateway's config: every section, read from arguments, ``FLEETGATE_*`` variables, a TOML
file and the environment's preset, in that order of precedence."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, TomlConfigSettingsSource

from fleetgate.config.background import BackgroundSettings
from fleetgate.config.batch import BatchSettings
from fleetgate.config.breakers import BreakerSettings
from fleetgate.config.budgets import BudgetSettings, PresetSettings
from fleetgate.config.cache import CacheSettings
from fleetgate.config.dedup import DedupSettings
from fleetgate.config.deployments import ModelDeployment
from fleetgate.config.serve import ServeSettings
from fleetgate.config.environments import Environment, _EnvironmentPreset
from fleetgate.config.fallback import FallbackSettings
from fleetgate.config.limits import LaneSettings, QuotaLimits
from fleetgate.config.loader import load
from fleetgate.config.modes import ModeSettings
from fleetgate.config.observability import LoggingSettings, MetricsSettings, TracingSettings
from fleetgate.config.prices import PriceSettings
from fleetgate.config.privacy import PrivacySettings
from fleetgate.config.prompts import PromptSettings
from fleetgate.config.routing import RoutingSettings
from fleetgate.config.server_context import ServerContextSettings

__all__ = ["GatewayConfig"]


class GatewayConfig(BaseSettings):
    """Everything a :class:`fleetgate.Gateway` is configured with."""

    model_config = SettingsConfigDict(env_prefix="FLEETGATE_", env_nested_delimiter="__", extra="forbid", frozen=True,
                                      hide_input_in_errors=True)

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
    #: The OpenAI project the gateway's calls bill (sent as ``OpenAI-Project``; None: the
    #: SDK's ``OPENAI_PROJECT_ID``, if set): the project ``fleetgate costs reconcile`` compares
    #: the ledger with.
    openai_project: str | None = None
    #: The organization's limits per model, as OpenAI shows them.
    models: dict[str, QuotaLimits] = Field(default_factory=dict)
    #: Share of each model's limits left unused: the margin for what no client can count
    #: exactly (the jitter between deciding and arriving upstream). 0.01 costs 1% of
    #: throughput and keeps upstream 429s near zero.
    model_headroom: float = Field(default=0.01, ge=0, lt=0.5)
    #: Where each model is served, when not only at ``base_url``: its deployments (keys,
    #: projects, Azure deployments, regions), each with its own quota (see
    #: :mod:`fleetgate.config.deployments`).
    deployments: dict[str, list[ModelDeployment]] = Field(default_factory=dict)
    #: ``fleetgate serve``: the gateway as an OpenAI-compatible server (:mod:`fleetgate.config.serve`).
    serve: ServeSettings = Field(default_factory=ServeSettings)
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
    background: BackgroundSettings = Field(default_factory=BackgroundSettings)
    modes: ModeSettings = Field(default_factory=ModeSettings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)
    prompts: PromptSettings = Field(default_factory=PromptSettings)
    privacy: PrivacySettings = Field(default_factory=PrivacySettings)
    server_context: ServerContextSettings = Field(default_factory=ServerContextSettings)

    def __init__(self, **values: Any) -> None:
        """Read the settings: `values`, then ``FLEETGATE_*`` variables, then the TOML file
        (:meth:`from_toml`), then the ``FLEETGATE_ENV`` preset. Raises
        :class:`fleetgate.ConfigError` naming every problem (see :mod:`.loader`)."""
        toml_file = type(self).model_config.get("toml_file")
        load(type(self), lambda: super(GatewayConfig, self).__init__(**values), values,
             Path(toml_file) if isinstance(toml_file, (str, Path)) else None)

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
        """Read a TOML file; ``FLEETGATE_*`` variables and `overrides` win over it. A file
        that is missing, not TOML or not a valid config raises :class:`fleetgate.ConfigError`
        naming the file, each key at fault and what it should be."""
        from_file = type(cls.__name__, (cls,), {"model_config": {**cls.model_config, "toml_file": Path(path)}})
        return cls.model_validate(from_file(**overrides).model_dump())
