"""The gateway's settings: a TOML file, validated, with ``FLEETGATE_*`` environment
variables taking precedence (nested keys with ``__``: ``FLEETGATE_MODELS__GPT_4_1__...``
is awkward for names with dots, so models are best set in the file).

:class:`GatewayConfig` (:mod:`.gateway`) holds every section and reads them; each section's
settings have a module of their own, and :mod:`.environments` holds the presets of
``FLEETGATE_ENV``."""

from __future__ import annotations

from fleetgate.config.background import BackgroundSettings
from fleetgate.config.batch import BatchSettings
from fleetgate.config.breakers import BreakerSettings
from fleetgate.config.budgets import BudgetLimit, BudgetSettings, PresetSettings
from fleetgate.config.cache import CacheSettings, SemanticSettings
from fleetgate.config.dedup import DedupSettings
from fleetgate.config.deployments import ModelDeployment
from fleetgate.config.environments import ENVIRONMENTS, Environment as Environment
from fleetgate.config.fallback import FallbackSettings
from fleetgate.config.gateway import GatewayConfig
from fleetgate.config.limits import LaneSettings, QuotaLimits
from fleetgate.config.modes import MODES, ModeName as ModeName, ModeSettings, ModeTrigger
from fleetgate.config.observability import LoggingSettings, MetricsSettings as MetricsSettings
from fleetgate.config.observability import TracingSettings as TracingSettings
from fleetgate.config.prices import LongContextFields, PriceFields, PriceSettings, RateFields, TierFields
from fleetgate.config.privacy import PrivacySettings
from fleetgate.config.prompts import PromptSettings
from fleetgate.config.routing import DeploymentSettings, RolloutSettings, RoutingSettings, TierSettings
from fleetgate.config.server_context import ServerContextSettings
from fleetgate.config.serve import ServeKey, ServeSettings

__all__ = [
    "ENVIRONMENTS", "BackgroundSettings", "PromptSettings", "BatchSettings", "BreakerSettings", "LoggingSettings", "BudgetLimit", "BudgetSettings", "CacheSettings", "DedupSettings", "FallbackSettings", "GatewayConfig",
    "LaneSettings", "PresetSettings", "PriceFields", "PriceSettings", "PrivacySettings", "QuotaLimits", "SemanticSettings",
    "LongContextFields", "RateFields", "TierFields",
    "DeploymentSettings", "MODES", "ModeSettings", "ModeTrigger", "RolloutSettings", "RoutingSettings", "TierSettings",
    "ServerContextSettings", "ModelDeployment", "ServeKey", "ServeSettings",
]
