"""Environment presets (``FLEETGATE_ENV``): what development, staging and production set
under the config file and ``FLEETGATE_*`` variables."""

from __future__ import annotations

import copy
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator
from pydantic.fields import FieldInfo
from pydantic_settings import PydanticBaseSettingsSource

__all__ = ["ENVIRONMENTS", "Environment"]


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
