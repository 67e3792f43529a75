"""Names a package loads on first use (PEP 562): what needs an extra, or costs an import
most programs never use, stays out of ``import fleetgate``."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

__all__ = ["lazy"]


def lazy(package: str, homes: dict[str, str], namespace: dict[str, Any]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for `package` that imports each name of `homes` from its
    module on first use and keeps it in `namespace` (the package's globals), so the next
    look-up is a plain attribute."""

    def __getattr__(name: str) -> Any:
        home = homes.get(name)
        if home is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = namespace[name] = getattr(importlib.import_module(home), name)
        return value

    return __getattr__
