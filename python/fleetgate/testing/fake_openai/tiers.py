"""Service tiers as the fake OpenAI server serves them: the tier a request is served at,
what it answers when it is not served, and the tier it is billed at.

- ``service_tier`` absent or ``auto``: served at ``default`` (the fake's projects have the
  standard tier as their default); ``default``, ``scale``, ``flex`` and ``priority``: as
  asked; ``fast``: answered as ``priority``. Any other value is refused with a 400, as
  OpenAI does.
- ``priority``: downgraded to ``default`` (answered and billed so) with probability
  ``FakeConfig.tiers.priority_downgrade``, as OpenAI does above Priority's ramp limit.
- ``flex``: refused for lack of capacity with probability ``FakeConfig.tiers.flex_unavailable``,
  as OpenAI does: HTTP 429 "Resource Unavailable", ``code = "resource_unavailable"``, not
  billed (see :mod:`fleetgate.tiers`; OpenAI does not document the error's ``type``: the
  fake says ``service_unavailable_error``, the type of its other capacity errors).

The draws come from the server's seeded generator, and only for a probability strictly
between 0 and 1, so a run with neither setting draws nothing more than before.
"""

from __future__ import annotations

import random
from typing import Any

from fleetgate.testing.fake_openai.api import ApiError
from fleetgate.testing.fake_openai.config import TierBehaviour

__all__ = ["ASKABLE", "serve"]

#: The ``service_tier`` values a request may ask for, and the tier each is answered as.
ASKABLE = {"auto": "default", "default": "default", "scale": "scale", "flex": "flex", "priority": "priority",
           "fast": "priority"}


def _drawn(rng: random.Random, probability: float) -> bool:
    return probability >= 1 or (probability > 0 and rng.random() < probability)


def serve(behaviour: TierBehaviour, rng: random.Random, body: dict[str, Any], model: str) -> str:
    """The tier a request of `body` is served at; raises :class:`ApiError` when it is not
    served (an unknown tier: 400; Flex without capacity: 429)."""
    asked = body.get("service_tier")
    if asked is None:
        return "default"
    served = ASKABLE.get(asked) if isinstance(asked, str) else None
    if served is None:
        raise ApiError(400, f"Invalid value for 'service_tier': expected one of {', '.join(ASKABLE)}; got {asked!r}.",
                       param="service_tier", code="invalid_value")
    if served == "priority" and _drawn(rng, behaviour.priority_downgrade):
        return "default"
    if served == "flex" and _drawn(rng, behaviour.flex_unavailable):
        raise ApiError(429, f"Resource Unavailable: Flex processing has no capacity for {model} right now. You were "
                            "not charged for this request. Retry later, or retry with service_tier 'auto' to use "
                            "your project's default tier.", type="service_unavailable_error",
                       code="resource_unavailable")
    return served
