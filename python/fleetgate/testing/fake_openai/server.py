"""The fake OpenAI HTTP server (aiohttp), and :class:`FakeOpenAI`, which runs it on a
loopback port in a background thread.

One server stands for one deployment of the real thing: with ``FakeConfig.api_key`` set it
accepts that key only (:mod:`.keys`; :meth:`FakeOpenAI.revoke_key` refuses it from then
on), and with ``FakeConfig.azure`` set it also serves Azure OpenAI's URL shape for its
deployments (:mod:`.azure`, at :attr:`FakeOpenAI.azure_endpoint`). Several servers, each
with its own key and limits, stand for several deployments.
"""

from __future__ import annotations

import asyncio
import copy
import json
import math
import random
import threading
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any, Awaitable, Callable

from aiohttp import web

from fleetgate.prices import PriceTable
from fleetgate.testing.fake_openai import api, azure, content, tiers
from fleetgate.testing.fake_openai.api import ApiError, Completion
from fleetgate.testing.fake_openai.background import BackgroundStore, Delivery
from fleetgate.testing.fake_openai.batches import BatchStore, FileStore
from fleetgate.testing.fake_openai.sockets import Sockets
from fleetgate.testing.fake_openai.billing import Bill, Charge
from fleetgate.testing.fake_openai.catalog import model_list
from fleetgate.testing.fake_openai.config import FakeConfig, Fault
from fleetgate.testing.fake_openai.keys import KeyCheck
from fleetgate.testing.fake_openai.limits import ModelQuota
from fleetgate.testing.fake_openai.usage_api import UsageApi
from fleetgate.testing.fake_openai.stateful import ServerContext

__all__ = ["FakeOpenAI", "ModelCounters"]

_JSON = "application/json"


@dataclass
class ModelCounters:
    """What the server saw for one model."""

    requests: int = 0
    tokens_admitted: int = 0
    rate_limited: int = 0
    #: Refused for their key (401): counted for the model the body (or Azure deployment) names.
    unauthorized: int = 0
    faults: dict[str, int] = field(default_factory=dict)


class _Server:
    """State and handlers; lives on the server's event loop thread."""

    def __init__(self, config: FakeConfig) -> None:
        self.config = config
        self.started = time.monotonic()
        self.rng = random.Random(config.seed)
        self.quotas: dict[str, ModelQuota] = {}
        self.counters: dict[str, ModelCounters] = defaultdict(ModelCounters)
        self.counters_lock = threading.Lock()
        self.prompt_cache = content.PrefixCache()
        self.files = FileStore()
        self.bill = Bill(PriceTable.load(config.prices_file) if config.prices_file else None)
        self.batches = BatchStore(config, self.files, self.bill)
        self.held = ServerContext()
        self.background = BackgroundStore(config, self.bill)
        self.keys = KeyCheck(config.api_key)

    def now(self) -> float:
        return time.monotonic() - self.started

    def quota(self, model: str) -> ModelQuota:
        q = self.quotas.get(model)
        if q is None:
            q = self.quotas[model] = ModelQuota(self.config.limits_for(model), self.now())
        return q

    def app(self) -> web.Application:
        from fleetgate.testing.fake_openai.other_endpoints import routes as other_routes

        app = web.Application(client_max_size=256 * 1024 * 1024, middlewares=[self._errors, self._key_check])
        held = [  # files and batches: the project's (Azure: the resource's)
            web.post("/v1/files", self.files.upload),
            web.get("/v1/files", self.files.list_all),
            web.get("/v1/files/{id}", self.files.retrieve),
            web.get("/v1/files/{id}/content", self.files.content),
            web.delete("/v1/files/{id}", self.files.delete),
            web.post("/v1/batches", self.batches.create),
            web.get("/v1/batches", self.batches.list_all),
            web.get("/v1/batches/{id}", self.batches.retrieve),
            web.post("/v1/batches/{id}/cancel", self.batches.cancel),
        ]
        app.add_routes([
            web.get("/v1/models", self.models),
            *Sockets(self).routes(),  # GET /v1/responses (WebSocket mode), GET /v1/realtime
            web.post("/v1/chat/completions", self.chat),
            web.post("/v1/responses", self.responses),
            web.post("/v1/responses/input_tokens", self.held.count_input_tokens),
            web.post("/v1/conversations", self.held.create_conversation),
            web.get("/v1/responses/{id}", self.background.retrieve),
            web.post("/v1/responses/{id}/cancel", self.background.cancel),
            web.post("/v1/embeddings", self.embeddings),
            *other_routes(self._complete),
            *held,
            web.get("/fleetgate/counters", self.counters_view),
            *UsageApi(self.bill).routes(),
        ])
        if self.config.azure is not None:
            app.add_routes(azure.routes(self.config.azure, self._complete))
            app.add_routes(azure.resource_routes(self.config.azure, held))
        app.on_cleanup.append(self.batches.shutdown)
        app.on_cleanup.append(self.background.shutdown)
        return app

    @web.middleware
    async def _errors(self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        try:
            return await handler(request)
        except ApiError as e:
            return _json(e.body(), status=e.status, headers={"x-request-id": api.new_id("req")})

    @web.middleware
    async def _key_check(self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        refusal = self.keys.refusal(request)
        if refusal is None:
            return await handler(request)
        model = azure.deployment_model(self.config.azure, request) or await _model_named(request)
        if model is not None:
            with self.counters_lock:
                self.counters[model].unauthorized += 1
        raise refusal

    # -- endpoints ---------------------------------------------------------------------

    async def models(self, request: web.Request) -> web.Response:
        return _json(model_list(self.bill.prices, self.config.models), headers={"x-request-id": api.new_id("req")})

    async def chat(self, request: web.Request) -> web.StreamResponse:
        return await self._complete(request, api.plan_chat)

    async def responses(self, request: web.Request) -> web.StreamResponse:
        return await self._complete(request, api.plan_responses)

    async def embeddings(self, request: web.Request) -> web.StreamResponse:
        return await self._complete(request, api.plan_embeddings)

    async def counters_view(self, request: web.Request) -> web.Response:
        return _json(self.snapshot())

    def snapshot(self) -> dict[str, dict[str, Any]]:
        with self.counters_lock:
            return {model: asdict(c) for model, c in self.counters.items()}

    # -- the request path --------------------------------------------------------------

    async def _complete(self, request: web.Request, planner: Callable[[FakeConfig, dict[str, Any]], Completion]) -> web.StreamResponse:
        body = await _read_json(request)
        plan = self.held.plan(planner(self.config, body))
        now = self.now()
        wait, refused = self.admit(plan, now)
        headers = self.quota(plan.model).headers(now)
        headers["x-request-id"] = api.new_id("req")
        if refused is not None:
            if wait == math.inf:  # waiting cannot help, so tell the SDK not to retry
                headers["x-should-retry"] = "false"
            else:
                headers["retry-after"] = str(max(1, math.ceil(wait)))
                headers["retry-after-ms"] = str(max(1, math.ceil(wait * 1000)))
            return _json(refused.body(), status=429, headers=headers)

        shape: set[str] = set()
        for fault in self._active_faults(plan.model):
            self._count_fault(plan.model, fault.kind)
            if fault.kind == "latency":
                await asyncio.sleep(self._sample_ms(fault) / 1000)
            elif fault.kind == "error":
                error = ApiError(fault.status, "The server had an error while processing your request. Sorry about that!",
                                 type="server_error")
                return _json(error.body(), status=fault.status, headers=headers)
            elif fault.kind == "insufficient_quota":
                error = ApiError(429, "You exceeded your current quota, please check your plan and billing details.",
                                 type="insufficient_quota", code="insufficient_quota")
                return _json(error.body(), status=429, headers=headers)
            elif fault.kind == "timeout":
                await asyncio.sleep(self._sample_ms(fault) / 1000)
                _drop(request)
                return web.Response(status=504)
            elif fault.kind == "reset":
                _drop(request)
                return web.Response(status=502)
            else:
                shape.add(fault.kind)

        if plan.kind != "embeddings":
            plan.service_tier = tiers.serve(self.config.tiers, self.rng, body, plan.model)
        cached = self.prompt_cache.cached(plan.model, plan.prompt, plan.prompt_tokens - plan.held)
        if self.bill.bills_writes(plan.model):
            plan.written = self.prompt_cache.written(plan.prompt_tokens - plan.held, cached)
        text = _shaped_text(plan.text, shape)
        project = project_of(request)
        if plan.kind == "responses" and body.get("background") is True:  # billed when it ends
            if body.get("stream"):
                return await self.background.stream(request, plan, cached, text, headers, project)
            return self.background.start(plan, cached, text, headers, project)
        if body.get("stream") and plan.kind != "embeddings":
            return await self._stream(request, plan, cached, text, headers, cut="cut_stream" in shape, project=project)
        result = api.render(self.config, plan, cached, text=text)
        self.bill.charge(plan.model, api.usage(plan, cached), project=project, tier=plan.service_tier)
        self.held.answered(plan, api.usage(plan, cached))
        if "malformed_json" in shape:
            raw = json.dumps(result)
            return web.Response(text=raw[: len(raw) // 2], content_type=_JSON, headers=headers)
        return _json(result, headers=headers)

    async def _stream(self, request: web.Request, plan: Completion, cached: int, text: str,
                      headers: dict[str, str], *, cut: bool, project: str) -> web.StreamResponse:
        response = web.StreamResponse(headers={**headers, "content-type": "text/event-stream", "cache-control": "no-cache"})
        await response.prepare(request)
        deltas = content.split_for_stream(text)
        events = _chat_events(plan, cached, deltas) if plan.kind == "chat" else _responses_events(plan, cached, text, deltas)
        cut_at = len(events) // 2 if cut else -1
        for i, event in enumerate(events):
            if i == cut_at:
                _drop(request)
                return response
            await response.write(event)
        self.bill.charge(plan.model, api.usage(plan, cached), project=project,
                         tier=plan.service_tier)  # billed once it ended
        self.held.answered(plan, api.usage(plan, cached))
        await response.write_eof()
        return response

    def admit(self, plan: Completion, now: float) -> tuple[float, ApiError | None]:
        """Count `plan` against its model's limits, as OpenAI does at its arrival: the
        seconds until there is room for it (0: admitted; inf: over the tokens per minute,
        waiting cannot help) and the 429 that refuses it (None: admitted)."""
        quota = self.quota(plan.model)
        tpm = quota.limits.tokens_per_minute
        wait = math.inf if plan.rate_tokens > tpm else quota.try_take(now, plan.rate_tokens)
        with self.counters_lock:
            counters = self.counters[plan.model]
            counters.requests += 1
            if wait > 0:
                counters.rate_limited += 1
            else:
                counters.tokens_admitted += plan.rate_tokens
        if wait == math.inf:
            return wait, ApiError(
                429,
                f"Request too large for {plan.model} in organization org-fleetgate-fake on tokens per min (TPM): "
                f"Limit {tpm}, Requested {plan.rate_tokens}. The input or output tokens must be reduced.",
                type="tokens", code="rate_limit_exceeded",
            )
        if wait > 0:
            return wait, ApiError(
                429,
                f"Rate limit reached for {plan.model} in organization org-fleetgate-fake on requests and tokens "
                f"per min. Please try again in {math.ceil(wait * 1000)}ms.",
                type="requests", code="rate_limit_exceeded",
            )
        return wait, None

    # -- faults ------------------------------------------------------------------------

    def _active_faults(self, model: str) -> list[Fault]:
        if not self.config.faults:
            return []
        now = self.now()
        return [
            f for f in self.config.faults
            if (f.model == "*" or f.model == model) and f.start <= now < f.end
            and (f.probability >= 1 or self.rng.random() < f.probability)
        ]

    def _count_fault(self, model: str, kind: str) -> None:
        with self.counters_lock:
            faults = self.counters[model].faults
            faults[kind] = faults.get(kind, 0) + 1

    def _sample_ms(self, fault: Fault) -> float:
        lat = fault.latency
        if lat.kind == "uniform":
            return self.rng.uniform(lat.ms, max(lat.ms, lat.spread))
        if lat.kind == "lognormal":
            return self.rng.lognormvariate(math.log(max(lat.ms, 1e-3)), lat.spread)
        return lat.ms


def project_of(request: web.Request) -> str:
    """The project a request bills: its ``OpenAI-Project`` header, else the key's default."""
    return request.headers.get("openai-project") or "proj_default"


def _drop(request: web.Request) -> None:
    """Cut the connection without an answer, as a network failure would."""
    if request.transport is not None:
        request.transport.abort()


def _json(body: Any, *, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(text=json.dumps(body), status=status, content_type=_JSON, headers=headers)


async def _model_named(request: web.Request) -> str | None:
    """The ``model`` of a JSON body, if it names one (else None: nothing is raised)."""
    if request.content_type != _JSON or not request.can_read_body:
        return None
    try:
        body = await request.json(loads=json.loads)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    model = body.get("model") if isinstance(body, dict) else None
    return model if isinstance(model, str) else None


async def _read_json(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json(loads=json.loads)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ApiError(400, "We could not parse the JSON body of your request.", code="invalid_json") from None
    if not isinstance(body, dict):
        raise ApiError(400, "The request body must be a JSON object.", code="invalid_json")
    return body


def _sse(data: Any, event: str | None = None) -> bytes:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(data)}\n\n".encode()


def _chat_events(plan: Completion, cached: int, deltas: list[str]) -> list[bytes]:
    chunk_id, created = api.new_id("chatcmpl"), int(time.time())
    include_usage = bool((plan.body.get("stream_options") or {}).get("include_usage"))

    def chunk(delta: dict[str, Any], finish: str | None) -> bytes:
        data: dict[str, Any] = {
            "id": chunk_id, "object": "chat.completion.chunk", "created": created, "model": plan.model,
            "service_tier": plan.service_tier, "system_fingerprint": "fp_fleetgate_fake",
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        if include_usage:
            data["usage"] = None
        return _sse(data)

    events = [chunk({"role": "assistant", "content": "", "refusal": None}, None)]
    events += [chunk({"content": d}, None) for d in deltas]
    events.append(chunk({}, plan.finish_reason))
    if include_usage:
        events.append(_sse({"id": chunk_id, "object": "chat.completion.chunk", "created": created,
                            "model": plan.model, "service_tier": plan.service_tier, "choices": [],
                            "usage": api.usage(plan, cached)}))
    events.append(b"data: [DONE]\n\n")
    return events


def _responses_events(plan: Completion, cached: int, text: str, deltas: list[str]) -> list[bytes]:
    rid, mid = plan.response_id or api.new_id("resp"), api.new_id("msg")
    seq = iter(range(1_000_000))
    started = api.response_object(plan, cached, "in_progress", "", response_id=rid)
    done = api.response_object(plan, cached, "completed", text, response_id=rid, item_id=mid)
    item = {"type": "message", "id": mid, "status": "in_progress", "role": "assistant", "content": []}
    part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}

    def ev(kind: str, **fields: Any) -> bytes:
        return _sse({"type": kind, "sequence_number": next(seq), **fields}, event=kind)

    events = [ev("response.created", response=started), ev("response.in_progress", response=started),
              ev("response.output_item.added", output_index=0, item=item),
              ev("response.content_part.added", item_id=mid, output_index=0, content_index=0, part=part)]
    events += [ev("response.output_text.delta", item_id=mid, output_index=0, content_index=0, delta=d, logprobs=[])
               for d in deltas]
    events += [ev("response.output_text.done", item_id=mid, output_index=0, content_index=0, text=text, logprobs=[]),
               ev("response.content_part.done", item_id=mid, output_index=0, content_index=0,
                  part={**part, "text": text}),
               ev("response.output_item.done", output_index=0, item=done["output"][0]),
               ev("response.completed", response=done)]
    return events


class FakeOpenAI:
    """A local OpenAI-compatible server on a loopback port, in a background thread.

        with FakeOpenAI() as fake:
            client = openai.OpenAI(base_url=fake.base_url, api_key="sk-fake")
            client.chat.completions.create(model="gpt-4.1-mini", messages=[...])
            fake.counters("gpt-4.1-mini").requests   # 1
    """

    def __init__(self, config: FakeConfig | None = None, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.config = config or FakeConfig()
        self.host, self.port = host, port
        self._server: _Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._stopped: asyncio.Event | None = None

    @property
    def base_url(self) -> str:
        """The API base URL to give an OpenAI client (``http://127.0.0.1:<port>/v1``)."""
        return f"http://{self.host}:{self.port}/v1"

    @property
    def azure_endpoint(self) -> str:
        """The endpoint to give an Azure OpenAI client (``http://127.0.0.1:<port>``), whose
        deployments are ``FakeConfig.azure``'s."""
        return f"http://{self.host}:{self.port}"

    def start(self) -> FakeOpenAI:
        if self._thread is not None:
            raise RuntimeError("this FakeOpenAI is already running")
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self._serve(ready))
            except BaseException as e:  # reported to start() below
                failure.append(e)
                ready.set()
            finally:
                loop.close()

        self._thread = threading.Thread(target=run, name="fleetgate-fake-openai", daemon=True)
        self._thread.start()
        ready.wait(timeout=30)
        if failure:
            self._thread = None
            raise RuntimeError(f"the fake OpenAI server could not start on {self.host}:{self.port}: {failure[0]}") from failure[0]
        return self

    async def _serve(self, ready: threading.Event) -> None:
        self._server = _Server(self.config)
        self._runner = web.AppRunner(self._server.app(), access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, backlog=1024)
        await site.start()
        self.port = self._runner.addresses[0][1]  # the bound port, when 0 was asked
        self._stopped = asyncio.Event()
        ready.set()
        await self._stopped.wait()
        await self._runner.cleanup()

    def stop(self) -> None:
        """Stop serving and wait for the thread to end."""
        if self._thread is None or self._loop is None or self._stopped is None:
            return
        self._loop.call_soon_threadsafe(self._stopped.set)
        self._thread.join(timeout=30)
        self._thread = None

    def __enter__(self) -> FakeOpenAI:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def uptime(self) -> float:
        """Seconds since the server started: the clock of fault windows (``Fault.start``/``end``)."""
        if self._server is None:
            raise RuntimeError("the server is not running")
        return self._server.now()

    def set_faults(self, faults: list[Fault]) -> None:
        """Replace the injected faults from now on (their windows still count from the start)."""
        if self._server is None:
            raise RuntimeError("the server is not running")
        self._server.config = self._server.config.model_copy(update={"faults": list(faults)})

    def revoke_key(self) -> None:
        """Refuse every request from now on (401 ``invalid_api_key``), as OpenAI refuses a
        revoked key; the open routes (counters, Usage APIs) stay open."""
        if self._server is None:
            raise RuntimeError("the server is not running")
        self._server.keys.revoke()

    def restore_key(self) -> None:
        """Accept the key again (``FakeConfig.api_key``, or any when none is set)."""
        if self._server is None:
            raise RuntimeError("the server is not running")
        self._server.keys.restore()

    def counters(self, model: str) -> ModelCounters:
        """What the server has seen for `model` so far (a copy)."""
        if self._server is None:
            raise RuntimeError("the server is not running")
        snapshot = self._server.snapshot().get(model)
        return ModelCounters(**snapshot) if snapshot else ModelCounters()

    def batches(self) -> list[dict[str, Any]]:
        """Every batch created so far, as the API shows it (copies)."""
        if self._server is None:
            raise RuntimeError("the server is not running")
        return [copy.deepcopy(b.obj) for b in list(self._server.batches.batches.values())]

    def bill(self) -> list[Charge]:
        """Every answer billed so far, oldest first (a copy): what the fleet really spent is
        ``sum(c.dollars or 0 for c in fake.bill())``."""
        if self._server is None:
            raise RuntimeError("the server is not running")
        return self._server.bill.charges()

    def set_bill_clock(self, clock: Callable[[], float]) -> None:
        """Date what is billed from now on by `clock` (unix seconds), as the Usage and Costs
        APIs report it: spend on days gone by, in a test."""
        if self._server is None:
            raise RuntimeError("the server is not running")
        self._server.bill.clock = clock

    def webhooks(self) -> list[Delivery]:
        """Every background response webhook sent so far, oldest first (a copy)."""
        if self._server is None:
            raise RuntimeError("the server is not running")
        return list(self._server.background.deliveries)

    def files(self) -> list[dict[str, Any]]:
        """Every file stored now, as the API shows it (copies)."""
        if self._server is None:
            raise RuntimeError("the server is not running")
        return [dict(f.meta) for f in list(self._server.files.files.values())]


def _shaped_text(text: str, shape: set[str]) -> str:
    """The answer as content faults change it: a JSON answer with a field left out
    (``wrong_schema``), in a markdown fence, or between prose (``trailing_prose``)."""
    if "wrong_schema" in shape:
        try:
            value = json.loads(text)
        except ValueError:
            value = None
        if isinstance(value, dict) and value:
            value.pop(next(iter(value)))
            text = json.dumps(value)
    if "markdown_fence" in shape:
        text = f"```json\n{text}\n```"
    if "trailing_prose" in shape:
        text = f"Sure! Here it is:\n{text}\nLet me know if you need anything else."
    return text
