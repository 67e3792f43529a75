"""OpenAI's service tiers as the gateway accounts for them: the tier a request asks for,
the tier that served it, and what a Flex request that found no capacity gets.

A request's ``service_tier`` is ``auto``, ``default``, ``flex``, ``scale``, ``priority`` or
``fast`` (answered as ``priority``). The answer's ``service_tier`` is the tier that served
it, which can differ from the one asked: ``auto`` answers with the project's tier, and
Priority traffic above a ramp (a fast rise of Priority tokens per minute) is served, and
billed, at ``default``. So the gateway:

1. reserves a call's budget at the asked tier's price (:func:`fleetgate.prices.price_tier`:
   ``flex`` at the Flex price, ``priority``/``fast`` at the Priority price, and ``auto``,
   ``default``, ``scale`` or none at the standard price: a project whose default tier is
   Priority is under-reserved for calls that ask ``auto``);
2. settles it, and counts it in the metrics and the log record, at the tier the answer
   reports (chat: the answer's or a stream's chunks' top-level ``service_tier``; the
   Responses API: ``response.service_tier``), read off the wire beside the usage
   (:func:`fleetgate.path.wire.served_tier`);
3. reserves rate limits on the model's one quota, whatever the tier: OpenAI documents that
   Priority processing's rate limits are shared with the other service tiers, and Flex
   publishes no separate limits;
4. when Flex has no capacity, retries the call on the standard tier within its deadline
   (``[fallback] flex_fallback = "default"``, the default), reserved and settled at the
   standard price, and marks the answer ``x-fleetgate-flex-fallback: default``; with
   ``flex_fallback = "none"`` the caller gets the 429, its message saying what to do.

What OpenAI answers when Flex has no capacity (its Flex processing guide): HTTP 429
"Resource Unavailable", which is **not billed**; it advises retrying later with
exponential backoff, or retrying with ``service_tier`` ``auto`` (or none) to be served at
the project's default tier. The error body is OpenAI's usual ``{"error": {"message",
"type", "param", "code"}}`` with ``code = "resource_unavailable"`` (:data:`FLEX_UNAVAILABLE`;
the guide names the error, clients key on that code). It is neither the project's quota
(``rate_limit_exceeded``) nor its credit (``insufficient_quota``), and says nothing about
upstream's health: the one health verdict (``classify`` in the Rust core) calls it
neutral, so breakers, degradation modes and rollouts do not count it, the quota view is
not emptied, and it is not retried after a ``retry-after`` as a rate limit would be.
"""

from __future__ import annotations

from typing import Literal

__all__ = ["FLEX_FALLBACK_HEADER", "FLEX_UNAVAILABLE", "FlexFallbackTier", "flex_unavailable"]

#: The ``error.code`` of OpenAI's 429 when Flex processing has no capacity for a request.
FLEX_UNAVAILABLE = "resource_unavailable"

#: The header on an answer served on another tier because Flex had no capacity: the tier
#: that served it (``default``).
FLEX_FALLBACK_HEADER = "x-fleetgate-flex-fallback"

#: ``[fallback] flex_fallback``: retry on the standard tier, or hand the 429 back.
FlexFallbackTier = Literal["default", "none"]


def flex_unavailable(status: int, code: str | None) -> bool:
    """Whether an answer is Flex's "Resource Unavailable": a 429 with that code."""
    return status == 429 and code == FLEX_UNAVAILABLE

