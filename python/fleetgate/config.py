"""The gateway's settings: a TOML file, validated, with ``FLEETGATE_*`` environment
variables taking precedence (nested keys with ``__``: ``FLEETGATE_MODELS__GPT_4_1__...``
is awkward for names with dots, so models are best set in the file)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, TomlConfigSettingsSource

__all__ = ["GatewayConfig", "QuotaLimits"]


class QuotaLimits(BaseModel):
    """Limits of one quota (see :class:`fleetgate.Quota`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    requests_per_minute: int | None = Field(default=None, gt=0)
    tokens_per_minute: int | None = Field(default=None, gt=0)
    algorithm: Literal["token_bucket", "sliding_window"] = "token_bucket"
    burst_seconds: float = Field(default=1.0, gt=0, le=60)


class GatewayConfig(BaseSettings):
    """Everything a :class:`fleetgate.Gateway` is configured with."""

    model_config = SettingsConfigDict(env_prefix="FLEETGATE_", env_nested_delimiter="__", extra="forbid", frozen=True)

    #: Shared store: ``redis://…``, ``rediss://…`` or ``redis+cluster://h:p,h:p``; None runs embedded.
    redis_url: str | None = None
    failure_policy: Literal["fail_open", "fail_closed"] = "fail_open"
    #: This pod's share of each quota while Redis is unreachable (about 1 / pods).
    local_share: float = Field(default=0.1, gt=0, le=1)
    #: The upstream API (None: the SDK's default, or OPENAI_BASE_URL).
    base_url: str | None = None
    #: The organization's limits per model, as OpenAI shows them.
    models: dict[str, QuotaLimits] = Field(default_factory=dict)
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

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Arguments, then FLEETGATE_* variables, then the TOML file (when one is set).
        return init_settings, env_settings, TomlConfigSettingsSource(settings_cls)

    @classmethod
    def from_toml(cls, path: str | Path, **overrides: Any) -> GatewayConfig:
        """Read a TOML file; ``FLEETGATE_*`` variables and `overrides` win over it."""
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"fleetgate config file not found: {p}")
        loader = type("GatewayConfigFromToml", (cls,), {"model_config": {**cls.model_config, "toml_file": p}})
        return cls.model_validate(loader(**overrides).model_dump())
