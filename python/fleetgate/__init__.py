"""fleetgate: one OpenAI quota, shared exactly by every pod of a service.

>>> import fleetgate as fg
>>> limiter = fg.Limiter()                      # embedded; or fg.Limiter("redis://…")
>>> gpt = fg.Quota("gpt-4.1-mini", requests_per_minute=600, tokens_per_minute=200_000)
>>> decision = limiter.try_acquire(gpt, tokens=1_200)
>>> decision.allowed
True
>>> limiter.settle(decision.reservation, tokens=900)
"""

from fleetgate._core import Decision, Limiter, Quota, Reservation, __version__, parse_duration
from fleetgate.errors import ConfigError, FleetgateError, RateLimited, StoreUnavailable

__all__ = [
    "ConfigError",
    "Decision",
    "FleetgateError",
    "Limiter",
    "Quota",
    "RateLimited",
    "Reservation",
    "StoreUnavailable",
    "__version__",
    "parse_duration",
]
