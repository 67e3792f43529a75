"""The fallback layer's first step: a ``service_tier: "flex"`` call that Flex processing had no capacity for (OpenAI's
429 ``resource_unavailable``, which is not billed) is sent again on the standard tier
within its deadline, when ``[fallback] flex_fallback = "default"`` (the default). The rest
of the path runs again for it: it is reserved on the budgets at the standard price, waits
for quota and a lane like any call, and is settled at the tier its answer reports. Its
answer is marked ``x-fleetgate-flex-fallback: default``. With ``flex_fallback = "none"``
(or no time left before the deadline) the caller gets the 429, its message saying what to
do, marked ``x-fleetgate-flex-fallback: none``. See :mod:`fleetgate.tiers`.

Contract: the first attempt holds nothing once its 429 is in (its budget hold is released,
its quota reservation settled to nothing spent: the layers below were told it failed), and
it counts against no one's health (``classify`` calls it neutral). A refusal of the retry
(a budget with no room at the standard price, no quota in time) goes up to the fallback
ladder like any other.
"""

from __future__ import annotations

import json

import httpx2

from fleetgate.path._async.layer import Next
from fleetgate.path.call import Call
from fleetgate.stats import GatewayStats
from fleetgate.tiers import FLEX_FALLBACK_HEADER, FlexFallbackTier, flex_unavailable

__all__ = ["FlexFallback"]

#: Headers of upstream's 429 that do not describe the rewritten body.
_BODY_HEADERS = ("content-length", "content-encoding", "transfer-encoding")


class FlexFallback:
    """Runs the rest of the path for a call, and again on the standard tier when Flex had
    no capacity for it."""

    def __init__(self, to: FlexFallbackTier, stats: GatewayStats) -> None:
        self.to, self.stats = to, stats

    async def handle(self, call: Call, next: Next) -> httpx2.Response:  # noqa: A002
        response = await next(call)
        outcome = call.outcome
        if (call.estimate.service_tier != "flex" or outcome is None
                or not flex_unavailable(response.status_code, outcome.code)):
            return response
        self.stats.count("flex_unavailable")
        retry = None
        if self.to != "none" and call.seconds_left() > 0:
            retry = call.step_down({**call.body, "service_tier": self.to})
        if retry is None:
            call.marks[FLEX_FALLBACK_HEADER] = "none"
            return self._told(call, response)
        await response.aclose()
        answer = await next(retry)
        call.marks[FLEX_FALLBACK_HEADER] = self.to
        self.stats.count("flex_fallback")
        return answer

    def _told(self, call: Call, response: httpx2.Response) -> httpx2.Response:
        """Upstream's 429 (read whole), its message saying what the gateway did and what to do."""
        why = ('[fallback] flex_fallback = "none" keeps calls on Flex' if self.to == "none" else
               "the call's deadline left no time to retry it on the standard tier")
        advice = (f"fleetgate: Flex processing had no capacity for this {call.model} request (not billed), and {why}: "
                  'retry later with backoff, or set [fallback] flex_fallback = "default" (and a deadline that '
                  "leaves time) to have such calls served on the standard tier at the standard price")
        try:
            body = json.loads(response.content)
            error = body["error"]
            error["message"] = f"{error.get('message') or 'Resource Unavailable'} ({advice})"
        except (ValueError, KeyError, TypeError):
            body = {"error": {"message": f"Resource Unavailable ({advice})", "type": "invalid_request_error",
                              "param": None, "code": "resource_unavailable"}}
        headers = [(k, v) for k, v in response.headers.multi_items() if k not in _BODY_HEADERS]
        return httpx2.Response(response.status_code, headers=headers, json=body, request=call.request,
                               extensions=response.extensions)
