"""The optional extras fleetgate's features need, checked when the feature is configured
(a gateway is built, the fake server imported) so that a missing one fails at once with the
line that installs it, not at the first request."""

from __future__ import annotations

import importlib.util
import sys

from fleetgate.errors import ConfigError

__all__ = ["LOCAL_EMBEDDINGS", "SEMANTIC", "TESTING", "missing", "require"]

SEMANTIC = "pip install 'fleetgate[semantic]'"
LOCAL_EMBEDDINGS = "pip install 'fleetgate[local-embeddings]'"
TESTING = "pip install 'fleetgate[testing]'"


def missing(*modules: str) -> list[str]:
    """Those of `modules` that cannot be imported, found without importing them (a module
    set to None in ``sys.modules`` counts as missing, as it does for ``import``)."""
    return [name for name in modules if not _installed(name)]


def require(setting: str, modules: dict[str, str], install: str) -> None:
    """Raise :class:`ConfigError` naming `setting`, what is missing and `install` unless every
    module of `modules` (import name → distribution name) can be imported."""
    absent = missing(*modules)
    if absent:
        names = ", ".join(modules[name] for name in absent)
        raise ConfigError(f"{setting} needs {names}, which {'is' if len(absent) == 1 else 'are'} not installed: "
                          f"{install}")


def _installed(name: str) -> bool:
    if name in sys.modules:
        return sys.modules[name] is not None
    return importlib.util.find_spec(name) is not None
