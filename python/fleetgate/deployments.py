"""Deployments: the upstreams serving a model (``[deployments]``), and the order a call
tries them in.

A deployment is where a call is sent (its URL shape, key and project headers) and what it
draws on (its own quota, shared by the fleet, and its own circuit breaker). The order is
chosen per call: priorities in turn (provisioned capacity first), and within a priority a
weighted draw, each deployment's weight times the share of its quota the fleet had left at
this pod's last decision on it, so a deployment with more room takes more calls and a full
one is tried last. Knowing that room costs nothing: every decision on a quota reports it.

Keys are read once, at start, from the environment or a secret file; they are never
logged, and a missing one is a :class:`~fleetgate.ConfigError` naming the variable or the
file, not its value.
"""

from __future__ import annotations

import hashlib
import os
import random
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from dataclasses import dataclass, field

import httpx2

from fleetgate._core import Decision, Quota
from fleetgate.config.deployments import ModelDeployment
from fleetgate.config.limits import QuotaLimits
from fleetgate.errors import ConfigError
from fleetgate.records import fixed_prompt, template_hash

__all__ = ["CREDENTIALS", "MODEL_HEADER", "UPSTREAM_HEADER", "Deployment", "Deployments", "affinity_of"]

#: A prefix shorter than this (about 1,024 tokens) is not cached by OpenAI.
_CACHED_PREFIX_CHARS = 4_096
#: Headers that carry a caller's credentials or project (a deployment sends its own).
CREDENTIALS = frozenset({b"authorization", b"api-key", b"openai-organization", b"openai-project"})
#: Azure endpoints of the resource, not of one of its deployments (``/openai/files``).
_RESOURCE_ENDPOINTS = ("/files", "/batches")
#: A request that names no model (a file upload, a listing) names the model it is for, so
#: that the gateway sends it to one of its deployments; or the deployment, by name (with the model).
MODEL_HEADER = "x-fleetgate-model"
UPSTREAM_HEADER = "x-fleetgate-upstream"
#: Headers not sent on: the caller's credentials, and what told the gateway where to send it.
_NOT_SENT = CREDENTIALS | {MODEL_HEADER.encode(), UPSTREAM_HEADER.encode()}


@dataclass(eq=False, slots=True)
class Deployment:
    """One upstream of one model."""

    model: str
    settings: ModelDeployment
    api_key: str | None
    quota: Quota | None
    #: The share of its quota the fleet had left at this pod's last decision on it (1: not
    #: known yet), and until when it has none (a refusal's retry-after).
    room: float = 1.0
    empty_until: float = 0.0
    _base: str = field(init=False)
    #: Its URL per endpoint, for requests without a query (made once), and the headers it
    #: adds to every request (its own key, organisation and project), as bytes.
    _urls: dict[str, httpx2.URL] = field(init=False, default_factory=dict)
    _own: list[tuple[bytes, bytes]] = field(init=False)

    def __post_init__(self) -> None:
        self._base = self.settings.base_url.rstrip("/")
        own = [(k.encode(), v.encode()) for k, v in self.auth().items()]
        for name, value in (("openai-organization", self.settings.organization),
                            ("openai-project", self.settings.project)):
            if value is not None:
                own.append((name.encode(), value.encode()))
        self._own = own

    @property
    def name(self) -> str:
        return self.settings.name

    @property
    def key(self) -> str:
        """What its quota and breaker are named by: ``gpt-4.1-mini@sweden``."""
        return f"{self.model}@{self.settings.name}"

    @property
    def place(self) -> tuple[str, str | None, str | None, str | None]:
        """Where what it creates is held (an OpenAI project, an Azure resource): the
        deployments of one place share their files, batches and stored responses."""
        s = self.settings
        return self._base, s.organization, s.project, self.api_key

    def request_for(self, request: httpx2.Request, endpoint: str, *, kept: bool = True) -> httpx2.Request:
        """`request` (a call to `endpoint`) as sent to this deployment: its URL, its key and
        project headers in place of the caller's, the body as it is (the same stream).
        `kept`: its URL is kept for the next call to `endpoint` (False: an endpoint naming
        one object, ``/files/file-abc``)."""
        url = self._urls.get(endpoint) if not request.url.query else None
        if url is None:
            url = self._url(endpoint, request.url.params, kept)
        headers = [(k, v) for k, v in request.headers.raw if k.lower() not in _NOT_SENT]
        headers += self._own
        if self.api_key is None and (key := _caller_key(request.headers)) is not None:
            headers.append((b"api-key", key.encode()) if self.settings.azure_deployment is not None
                           else (b"authorization", f"Bearer {key}".encode()))
        sent = httpx2.Request(request.method, url, headers=headers, stream=request.stream,
                              extensions=request.extensions)
        sent.read()  # the body is in memory already: readable as `content` below too
        return sent

    def _url(self, endpoint: str, params: httpx2.QueryParams, kept: bool) -> httpx2.URL:
        """Its URL for `endpoint` with the request's `params` (kept when there are none)."""
        s = self.settings
        if s.azure_deployment is None:
            path = f"{self._base}{endpoint}"
        else:  # files and batches belong to the Azure resource, calls to one of its deployments
            held = endpoint.startswith(_RESOURCE_ENDPOINTS)
            path = f"{self._base}/openai{endpoint}" if held else \
                f"{self._base}/openai/deployments/{s.azure_deployment}{endpoint}"
            params = params.set("api-version", s.api_version or "")
        url = httpx2.URL(path, params=params)
        if kept and (not params or list(params.keys()) == ["api-version"]):
            self._urls[endpoint] = url
        return url

    def auth(self) -> dict[str, str]:
        """The header carrying its own key ({}: it has none, the caller's is sent)."""
        if self.api_key is None:
            return {}
        if self.settings.azure_deployment is not None:
            return {"api-key": self.api_key}
        return {"authorization": f"Bearer {self.api_key}"}

    def noted(self, decision: Decision) -> None:
        """A call was admitted on its quota: the share left is the room the decision
        reported over the bucket's size (the tighter of requests and tokens; a tighter
        user or feature quota understates it, which only weighs this pod's draw)."""
        quota = self.quota
        if quota is None:
            return
        shares = [remaining / capacity for remaining, capacity in
                  ((decision.remaining_requests, quota.request_capacity),
                   (decision.remaining_tokens, quota.token_capacity)) if remaining is not None and capacity]
        if shares:
            self.room, self.empty_until = max(0.0, min(1.0, *shares)), 0.0

    def refused(self, retry_after: float | None) -> None:
        """Its quota had no room for a call: none until `retry_after` seconds from now."""
        self.room, self.empty_until = 0.0, time.monotonic() + (retry_after or 0.0)


class Deployments:
    """Every model's deployments, read from the config."""

    def __init__(self, configured: Mapping[str, list[ModelDeployment]],
                 model_limits: Callable[[str], QuotaLimits | None], headroom: float,
                 environ: Mapping[str, str] | None = None, budgeted: Iterable[str] = ()) -> None:
        """`model_limits(model)`: a model's limits as its quota holds them (its own or the
        default, less the headroom), for a deployment that sets none; `headroom`: the share
        left unused of a deployment's own; `budgeted`: the deployment names budgets are set
        for (``scope = "deployment"``), each of which must name one."""
        env = os.environ if environ is None else environ
        problems: list[str] = []
        known = {s.name for settings in configured.values() for s in settings}
        for name in sorted(set(budgeted) - known):
            problems.append(f'[[budgets.limits]] scope = "deployment", name = {name!r}: no deployment has that name '
                            f"(theirs: {', '.join(sorted(known)) or 'none, [deployments] is empty'}); name one of "
                            "them, or remove the budget")
        self._by_model: dict[str, list[Deployment]] = {}
        for model, settings in configured.items():
            names = [s.name for s in settings]
            if len(set(names)) != len(names):
                problems.append(f"[deployments] {model!r}: deployment names repeat ({', '.join(sorted(names))})")
            found = []
            for s in settings:
                key, problem = _read_key(model, s, env)
                if problem is not None:
                    problems.append(problem)
                found.append(Deployment(model, s, key, _quota(model, s, model_limits, headroom)))
            self._by_model[model] = found
        if problems:
            raise ConfigError("; ".join(problems))
        by_place: dict[tuple[str, str | None, str | None, str | None], Deployment] = {}
        for d in (d for found in self._by_model.values() for d in found):
            by_place.setdefault(d.place, d)
        self._places = list(by_place.values())

    def __bool__(self) -> bool:
        return bool(self._by_model)

    def named(self, key: str) -> Deployment | None:
        """The deployment named `key` (``model@name``), or None."""
        model, _, name = key.rpartition("@")
        return next((d for d in self._by_model.get(model, []) if d.name == name), None)

    def home(self, model: str, where: str) -> Deployment | None:
        """The deployment of `model` that can reach what the ledger says `where` holds (a
        deployment's key, ``model@name``; a name alone: `model`'s deployment of that
        name): that one, or `model`'s deployment at the same :attr:`~Deployment.place`
        (a chain continued with another model); None: `model` has none there."""
        held = self.named(where if "@" in where else f"{model}@{where}")
        if held is None or held.model == model:
            return held
        return next((d for d in self.of(model) if d.place == held.place), None)

    def places(self) -> list[Deployment]:
        """One deployment of each place deployments are (where an object whose home the
        fleet does not know may be)."""
        return self._places

    def of(self, model: str) -> list[Deployment]:
        """`model`'s deployments, as configured ([] when it has none)."""
        return self._by_model.get(model, [])

    def order(self, model: str, body: dict[str, Any]) -> list[Deployment]:
        """The order a call of `model` tries its deployments in ([] when it has none):
        those with room as far as this pod knows, priorities in turn and within one a
        weighted draw; then, of those known to have none (until their retry-after), only
        the one whose room comes back soonest, where the call waits when every other
        refused it (the others would refuse it too). Calls with the same :func:`affinity_of`
        their `body` (a prompt-cache key, a long shared prefix) draw alike, so they go to
        the same deployment while it has room and its prompt cache stays warm; the others
        draw by weight times room left."""
        found = self._by_model.get(model)
        if not found:
            return []
        if len(found) == 1:
            return found
        now, affinity = time.monotonic(), affinity_of(body)

        # Weighted order without replacement: each one's key is u^(1/w) (Efraimidis and
        # Spirakis), highest first; u is drawn at random, or hashed from the affinity.
        def rank(d: Deployment) -> tuple[int, float]:
            if affinity is None:
                u, weight = random.random(), d.settings.weight * max(d.room, 0.001)
            else:
                u, weight = _uniform(affinity, d.name), d.settings.weight
            return d.settings.priority, -(u ** (1.0 / weight))
        ready = sorted((d for d in found if d.empty_until <= now), key=rank)
        if len(ready) < len(found):
            ready.append(min((d for d in found if d.empty_until > now), key=lambda d: d.empty_until))
        return ready


def affinity_of(body: dict[str, Any]) -> str | None:
    """What calls that share OpenAI's prompt cache have in common: their
    ``prompt_cache_key``, else a system prompt or instructions long enough to be cached
    (1,024 tokens, about 4,096 characters); None: nothing worth keeping together."""
    key = body.get("prompt_cache_key")
    if isinstance(key, str) and key:
        return f"key:{key}"
    fixed = fixed_prompt(body)
    if sum(len(f) for f in fixed if isinstance(f, str)) < _CACHED_PREFIX_CHARS:
        return None
    return "prefix:" + template_hash(body, fixed)


def _uniform(affinity: str, name: str) -> float:
    """A number in (0, 1) fixed by `affinity` and a deployment's `name`."""
    digest = hashlib.blake2b(f"{affinity}\0{name}".encode(), digest_size=8).digest()
    return (int.from_bytes(digest, "big") + 1) / (2**64 + 1)


def _caller_key(headers: httpx2.Headers) -> str | None:
    """The key the caller's SDK sent (OpenAI's bearer token, or Azure's ``api-key``)."""
    auth = headers.get("authorization")
    if auth is not None and auth[:7].lower() == "bearer ":
        return auth[7:]
    return headers.get("api-key")


def _read_key(model: str, s: ModelDeployment, env: Mapping[str, str]) -> tuple[str | None, str | None]:
    """A deployment's key, or the problem reading it (naming where, never what)."""
    where = f"[deployments] {model!r} {s.name!r}"
    if s.api_key_env is not None:
        key = env.get(s.api_key_env, "").strip()
        return (key, None) if key else (None, f"{where}: the environment variable {s.api_key_env} holding its "
                                              "API key is not set or empty")
    if s.api_key_file is not None:
        try:
            key = s.api_key_file.read_text(encoding="utf-8").strip()
        except OSError as e:
            return None, f"{where}: its API key file {s.api_key_file} cannot be read ({e.strerror or type(e).__name__})"
        return (key, None) if key else (None, f"{where}: its API key file {s.api_key_file} is empty")
    return None, None


def _quota(model: str, s: ModelDeployment, model_limits: Callable[[str], QuotaLimits | None],
           headroom: float) -> Quota | None:
    """A deployment's quota: its own limits less the headroom, else the model's."""
    limits = (QuotaLimits(requests_per_minute=s.requests_per_minute, tokens_per_minute=s.tokens_per_minute)
              .with_headroom(headroom) if s.requests_per_minute or s.tokens_per_minute else model_limits(model))
    return limits.quota(f"deployment:{model}@{s.name}", "model") if limits is not None else None
