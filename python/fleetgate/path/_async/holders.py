"""Requests for what a deployment holds (``[deployments]``): a file, a batch or a stored
response lives in one OpenAI project (or Azure resource), so a request naming one is sent
to the deployment that holds it, and a request making one is sent where its caller asks.

- A file upload, or a listing of files or batches, is sent to a deployment of the model
  its ``x-fleetgate-model`` header names (the first one a call of that model would try:
  priorities in turn, weighted by room), or to the deployment of that model named by
  ``x-fleetgate-upstream``. Neither header: to the client's base URL, as without deployments.
- A batch is created where its input file is held.
- A request naming a file, a batch or a stored response by its id goes to the deployment
  holding it, as the fleet's ledger knows it (:mod:`fleetgate.chains`: in process, and in
  Redis for 30 days). An id the ledger does not know (made before the fleet kept it, or
  Redis down) is looked for at the client's base URL, then at each place deployments are
  (one per project or resource), a 404 passing it on; where it is found is learned. A
  background response is known where it runs while this pod watches it, and to the fleet's
  ledger once it ends.
- What an answer makes is learned: an uploaded file's id, a batch's, and the output and
  error files a finished batch names.

The answer of a request sent to a deployment names it in ``x-fleetgate-upstream``. Other
requests pass through untouched.
"""

from __future__ import annotations

import json
import re
from typing import Literal

import httpx2

from fleetgate.chains import Chain, Chains
from fleetgate.deployments import MODEL_HEADER, UPSTREAM_HEADER, Deployment, Deployments
from fleetgate.errors import ConfigError, StoreUnavailable
from fleetgate.path.refusals import refusal
from fleetgate.path.services import BackgroundWatcher
from fleetgate.stats import GatewayStats

__all__ = ["Holders"]

#: A request for what a deployment holds, after the client's base URL: the collection, and
#: the object's id and what follows it (``/files/file-abc/content``).
_HELD = re.compile(r"/(files|batches|responses)(?:/([^/]+)(/[^/]+)?)?$")
_KINDS: dict[str, Literal["file", "batch", "response"]] = {"files": "file", "batches": "batch",
                                                            "responses": "response"}
#: Answers that say an object is not where it was looked for: not there, or a key that
#: place does not take.
_NOT_THERE = frozenset({401, 403, 404})
#: What a finished batch names that its deployment holds too.
_BATCH_FILES = ("output_file_id", "error_file_id")


class Holders:
    """Sends the requests of `deployments`' objects where they are held, through `inner`."""

    def __init__(self, deployments: Deployments, chains: Chains, background: BackgroundWatcher,
                 inner: httpx2.AsyncBaseTransport, stats: GatewayStats) -> None:
        self.deployments, self.chains, self.background, self.inner, self.stats = \
            deployments, chains, background, inner, stats

    async def send(self, request: httpx2.Request) -> httpx2.Response:
        """`request`'s answer, from where what it names is held."""
        found = _HELD.search(request.url.path)
        if found is None or (found.group(1) == "responses" and found.group(2) is None):
            return await self.inner.handle_async_request(request)
        collection, object_id, endpoint = found.group(1), found.group(2), found.group(0)
        if object_id is None:  # a listing, or a file or a batch made
            try:
                target = await self._target_async(request, collection)
            except ConfigError as e:
                return refusal(request, e)
            if target is None:
                return await self.inner.handle_async_request(request)
            response = await self._sent_async(request, endpoint, target)
            if request.method == "POST":
                await self._learn_async(response, _KINDS[collection], target)
            return response
        if collection == "responses" and not object_id.startswith("resp"):
            return await self.inner.handle_async_request(request)  # not a stored response: input_tokens, …
        held = Chain(_KINDS[collection], object_id)
        home = await self._home_async(held)
        if home is None:
            return await self._search_async(request, endpoint, held)
        return await self._answered_async(request, endpoint, held, home)

    async def _target_async(self, request: httpx2.Request, collection: str) -> Deployment | None:
        """Where a listing or an object made goes (None: the client's base URL). ConfigError:
        the headers name no deployment."""
        if collection == "batches" and request.method == "POST":
            try:
                file_id = json.loads(request.content).get("input_file_id")
            except (ValueError, AttributeError, httpx2.RequestNotRead):
                file_id = None
            if isinstance(file_id, str) and file_id:
                home = await self._home_async(Chain("file", file_id))
                if home is not None:
                    return home
        model, name = request.headers.get(MODEL_HEADER), request.headers.get(UPSTREAM_HEADER)
        if model is None:
            if name is not None:
                raise ConfigError(f"{UPSTREAM_HEADER}: {name!r} names a deployment without its model: name the model "
                                  f"in {MODEL_HEADER} too")
            return None
        if name is not None:
            named = self.deployments.named(f"{model}@{name}")
            if named is None:
                known = ", ".join(d.name for d in self.deployments.of(model)) or "none"
                raise ConfigError(f"{UPSTREAM_HEADER}: {model!r} has no deployment {name!r} (its deployments: "
                                  f"{known}); name one of [deployments] {model!r}")
            return named
        order = self.deployments.order(model, {})
        return order[0] if order else None

    async def _home_async(self, held: Chain) -> Deployment | None:
        """The deployment holding `held`, as the ledger knows it (None: not known, or the
        ledger cannot say: the object is looked for)."""
        try:
            known = await self.chains.lookup_async(held)
        except StoreUnavailable:  # said and counted by the ledger; looking for it finds it anyway
            known = None
        home = known.home if known is not None else None
        if home is None and held.kind == "response":  # a background response still running here
            home = self.background.deployment_of(held.id)
        return self.deployments.named(home) if home is not None else None

    async def _answered_async(self, request: httpx2.Request, endpoint: str, held: Chain,
                              home: Deployment) -> httpx2.Response:
        """`request`, naming `held`, sent to its `home`; a finished batch's files learned."""
        response = await self._sent_async(request, endpoint, home, kept=False)
        if held.kind == "batch" and request.method == "GET" and response.status_code == 200:
            await self._learn_async(response, "batch", home)
        return response

    async def _search_async(self, request: httpx2.Request, endpoint: str, held: Chain) -> httpx2.Response:
        """`request`, naming `held` whose home the ledger does not know: the answer of the
        client's base URL, else of the first place that has it (neither a 404 nor a
        rejected key); nowhere: the first 404."""
        self.stats.count("held_searches")
        response = await self.inner.handle_async_request(request)
        missing: httpx2.Response | None = None
        for place in self.deployments.places():
            if response.status_code not in _NOT_THERE:
                break
            await response.aread()
            await response.aclose()
            if missing is None and response.status_code == 404:
                missing = response
            response = await self._sent_async(request, endpoint, place, kept=False)
            if response.status_code < 400:
                self.chains.learn(held, 0, place.key)
                self.stats.count("held_found")
        if response.status_code in _NOT_THERE and missing is not None:
            await response.aclose()
            return missing
        return response

    async def _sent_async(self, request: httpx2.Request, endpoint: str, target: Deployment, *,
                          kept: bool = True) -> httpx2.Response:
        response = await self.inner.handle_async_request(target.request_for(request, endpoint, kept=kept))
        response.headers[UPSTREAM_HEADER] = target.name
        return response

    async def _learn_async(self, response: httpx2.Response, kind: Literal["file", "batch", "response"],
                           target: Deployment) -> None:
        """What `response` (a file or a batch, made or read at `target`) says is held there,
        learned when this process does not know it yet."""
        if response.status_code != 200:
            return
        await response.aread()  # an object's JSON: small, and read by the SDK next
        try:
            made = json.loads(response.content)
        except ValueError:
            return
        if not isinstance(made, dict):
            return
        found = [(kind, made.get("id"))]
        if kind == "batch":
            found += [("file", made.get(name)) for name in _BATCH_FILES]
        for held_kind, held_id in found:
            if isinstance(held_id, str) and held_id and self.chains.local(held := Chain(held_kind, held_id)) is None:
                self.chains.learn(held, 0, target.key)
