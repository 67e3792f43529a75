"""The openai SDK's async HTTP transport (``gate.async_openai()`` installs it): a thin
adapter that runs every chat, responses and embeddings call through the gateway's path
(:mod:`fleetgate.path._async.stack`); every other request goes straight through, or, with
``[deployments]``, to the deployment holding the file, batch or response it names
(:mod:`fleetgate.path._async.holders`).
"""

from __future__ import annotations

import httpx2

from fleetgate.path._async.holders import Holders
from fleetgate.path._async.layer import Layer, Next
from fleetgate.path._async.stack import chain, layers
from fleetgate.path.call import gated_call
from fleetgate.path.services import Services


__all__ = ["AsyncGateTransport"]


class AsyncGateTransport(httpx2.AsyncBaseTransport):
    """Every gated call through `gateway`'s path, then `inner` (default: a pooled
    ``httpx2.AsyncHTTPTransport`` sized as the SDK's own)."""

    def __init__(self, gateway: Services, inner: httpx2.AsyncBaseTransport | None = None) -> None:
        self.gateway = gateway
        self.inner = inner or httpx2.AsyncHTTPTransport(limits=httpx2.Limits(max_connections=1000,
                                                                               max_keepalive_connections=100))
        self._path: Next | None = None  # built at the first call: the gateway may still be assembling
        self._holders: Holders | None = None
        self._warm = False
        config = gateway.config
        self._assumed, self._deadline = config.assumed_max_output_tokens, config.default_deadline_seconds

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        if not self._warm and request.method == "POST":  # maybe gated: its deadline starts once warm
            await self.gateway.warmed_async()
            self._warm = True  # the warm-up is over (loaded or failed) for good
        call = gated_call(request, self._assumed, self._deadline)
        if call is None:
            if not self.gateway.deployments:
                return await self.inner.handle_async_request(request)
            holders = self._holders
            if holders is None:
                g = self.gateway
                holders = self._holders = Holders(g.deployments, g.chains, g.background, self.inner, g.stats)
            return await holders.send(request)
        path = self._path
        if path is None:
            path = self._path = chain(self.layers)
        return await path(call)

    @property
    def layers(self) -> list[Layer]:
        """The layers a call goes through, in order."""
        return layers(self.gateway, self.inner)

    async def aclose(self) -> None:
        await self.inner.aclose()
