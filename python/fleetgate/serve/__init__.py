"""``fleetgate serve``: the gateway as an OpenAI-compatible HTTP server, so that services
in any language share the fleet's quotas, budgets, cache and breakers.

:class:`ServeApp` (:mod:`.app`) is the ASGI application; :mod:`.keys` the keys callers
present; :func:`run` (:mod:`.server`) serves it with uvicorn.
"""

from __future__ import annotations

from fleetgate.serve.app import ServeApp
from fleetgate.serve.keys import Caller, Keys, key_hash, new_key
from fleetgate.serve.server import run

__all__ = ["Caller", "Keys", "ServeApp", "key_hash", "new_key", "run"]
