"""modes: the fleet's degradation mode (:mod:`fleetgate.modes`) decides how much of the
path a call may use. ``full`` passes it on; ``reduced`` sends it to the cheaper model with
a smaller output limit, and refuses optional features; ``cached-only`` answers from the
cache, ``static`` with the static answer; ``maintenance`` holds the call until the mode
ends or its deadline passes, then defers or refuses it.

Contract: in a mode the fleet entered by itself, one call per ``probe_every_seconds`` goes
upstream as a probe (never served from the cache nor shared), so that the fleet sees
recovery; a probe that fails gives its caller what the mode gives. Refusals here are the
fleet's, not a configuration's: the router does not count them against a rollout side.
"""

from __future__ import annotations

import time

import httpx2

from fleetgate.cache import AnswerCache
from fleetgate.config import ModeSettings
from fleetgate.errors import ConfigError, ServiceDegraded
from fleetgate.fallback import Ladder
from fleetgate.modes import ModeState, Modes as FleetModes
from fleetgate.modes.degrade import degraded, optional_off, reduced_body
from fleetgate.path._async.layer import Layer, Next
from fleetgate.path.call import Call
from fleetgate.path.refusals import refuse
from fleetgate.privacy import Privacy
from fleetgate.stats import GatewayStats

__all__ = ["Modes"]


class Modes(Layer):
    name = "modes"

    def __init__(self, modes: FleetModes, settings: ModeSettings, ladder: Ladder, cache: AnswerCache,
                 stats: GatewayStats, privacy: Privacy) -> None:
        self.modes, self.settings, self.ladder, self.cache, self.stats = modes, settings, ladder, cache, stats
        self.privacy = privacy

    async def handle(self, call: Call, next: Next) -> httpx2.Response:  # noqa: A002
        mode = self.modes.current
        if mode.mode == "full":
            return await next(call)
        if mode.mode == "maintenance":
            began = time.perf_counter()
            mode = await self.modes.wait_out_async(call.seconds_left())
            call.waits(time.perf_counter() - began, "maintenance")
            if mode.mode == "full":
                return await next(call)
        call.mode = mode.mode
        if mode.mode == "maintenance":
            deferred = self.ladder.defer(call.request, call.endpoint, call.body,
                                         f"the fleet is in maintenance ({mode.reason})")
            if deferred is not None:  # kept on disk for later instead of lost
                call.tier = "deferred"
                return deferred
            return refuse(call, self._degraded(mode, "the deadline passed while the fleet was in maintenance; the "
                                                     "request was not sent"))
        if mode.mode == "reduced":
            return await self._reduced(call, mode, next)
        if self.modes.probe():
            self.stats.count("mode_probes")
            call.probe = True
            probed = await self._probe(call, next)
            if probed is not None:
                return probed
            call.probe, call.tier, call.refusal = False, "primary", None
        if mode.mode == "cached-only":
            address = self.cache.address(call.identity, call.endpoint, call.body, call.request, call.scope)
            call.looked_up = address is not None
            hit = (await self.cache.lookup_async(address.key, call.request, address.semantic)
                   if address is not None else None)
            if hit is not None:
                call.tier = "cache"
                return hit
        static = self.ladder.static_response(call.request, call.endpoint, call.body)
        if static is not None:
            call.tier = "static"
            return static
        return refuse(call, self._degraded(mode, "no cached answer for this request" if mode.mode == "cached-only"
                                           else "no static answer configured ([fallback] static_answer)"))

    async def _reduced(self, call: Call, mode: ModeState, next: Next) -> httpx2.Response:  # noqa: A002
        if optional_off(self.settings, call.scope.feature):
            feature = self.privacy.label("feature", call.scope.feature)
            return refuse(call, self._degraded(mode, f"feature {feature!r} is optional and off in reduced mode"))
        body = reduced_body(self.settings, self.ladder.cheaper_body(call.body), call.endpoint, call.body)
        if body is not None and not call.rewrite(body):
            return refuse(call, ConfigError(f"reduced mode made a request the gateway cannot estimate (its "
                                            f"[fallback] models step from {call.model!r}): check [fallback] models"))
        return await next(call)

    async def _probe(self, call: Call, next: Next) -> httpx2.Response | None:  # noqa: A002
        """Upstream's answer to a probe (kept for the cache), or None when upstream still
        fails: the caller then gets what the mode gives, not the probe's failure."""
        try:
            response = await next(call)
        except httpx2.TransportError:
            return None
        if response.status_code >= 500:
            await response.aclose()
            return None
        return response

    def _degraded(self, mode: ModeState, why: str) -> ServiceDegraded:
        self.stats.count("mode_refused")
        return degraded(mode, self.settings, why)
