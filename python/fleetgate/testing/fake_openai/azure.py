"""Azure OpenAI's classic URL shape on the fake (``FakeConfig.azure``): the server stands
for one Azure OpenAI resource, whose deployments each serve one model.

    POST /openai/deployments/{deployment}/chat/completions?api-version=…
    POST /openai/deployments/{deployment}/completions?api-version=…
    POST /openai/deployments/{deployment}/embeddings?api-version=…
    /openai/files…, /openai/batches…?api-version=…   (the resource's, not a deployment's)

(the paths ``openai.AzureOpenAI(azure_endpoint=fake.azure_endpoint, …)`` calls; Azure's
classic shape has no Responses API). A request is answered in three steps:

1. ``api-version``: required (none: 404 "Resource not found", as Azure answers a path it
   does not know) and one of ``AzureShape.api_versions`` (else 400 naming it).
2. The deployment: one of ``AzureShape.deployments`` (else 404 ``DeploymentNotFound``).
3. The body's ``model``, absent or anything, is replaced by the deployment's model, and the
   request is answered as its ``/v1/…`` twin answers it: limits, counters, faults, usage,
   headers and the bill are that model's.

Azure's own errors come in Azure's shape, ``{"error": {"code", "message"}}``; the errors
of step 3 are OpenAI's, as Azure passes them on.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable

from aiohttp import web

from fleetgate.testing.fake_openai.api import ApiError, Completion, plan_chat, plan_embeddings
from fleetgate.testing.fake_openai.config import AzureShape, FakeConfig
from fleetgate.testing.fake_openai.other_endpoints import plan_completions

__all__ = ["AZURE_PREFIX", "AzureError", "deployment_model", "resource_routes", "routes"]

AZURE_PREFIX = "/openai/"

Planner = Callable[[FakeConfig, dict[str, Any]], Completion]
Complete = Callable[[web.Request, Planner], Awaitable[web.StreamResponse]]

#: The classic shape's endpoints this fake serves, after ``/openai/deployments/{deployment}``.
_PLANNERS: dict[str, Planner] = {
    "/chat/completions": plan_chat,
    "/completions": plan_completions,
    "/embeddings": plan_embeddings,
}


class AzureError(ApiError):
    """An error answered as Azure OpenAI's front door does: ``{"error": {"code", "message"}}``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(status, message, code=code)

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message}}


def deployment_model(shape: AzureShape | None, request: web.Request) -> str | None:
    """The model the deployment `request` names serves (None: not an Azure request, or an
    unknown deployment)."""
    if shape is None or not request.path.startswith(AZURE_PREFIX):
        return None
    return shape.deployments.get(request.match_info.get("deployment", ""))


def _check_version(shape: AzureShape, request: web.Request) -> None:
    version = request.query.get("api-version")
    if version is None:
        raise AzureError(404, "404", "Resource not found")
    if version not in shape.api_versions:
        raise AzureError(400, "BadRequest", f"API version not supported: api-version {version!r} is not one this "
                                            f"resource serves ({', '.join(shape.api_versions)}).")


def _serving(model: str, planner: Planner) -> Planner:
    """`planner`, for a body whose ``model`` is the deployment's."""
    def plan(config: FakeConfig, body: dict[str, Any]) -> Completion:
        body["model"] = model
        return planner(config, body)
    return plan


def routes(shape: AzureShape, complete: Complete) -> list[web.RouteDef]:
    """The Azure routes, each answered by `complete` (the server's path through limits,
    faults and billing) as its ``/v1/…`` twin, for the deployment's model."""
    def handler(planner: Planner) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handle(request: web.Request) -> web.StreamResponse:
            _check_version(shape, request)
            model = deployment_model(shape, request)
            if model is None:
                raise AzureError(404, "DeploymentNotFound", "The API deployment for this resource does not exist. If "
                                 "you created the deployment within the last 5 minutes, please wait a moment and try "
                                 "again.")
            return await complete(request, _serving(model, planner))
        return handle

    return [web.post(f"{AZURE_PREFIX}deployments/{{deployment}}{path}", handler(planner))
            for path, planner in _PLANNERS.items()]


def resource_routes(shape: AzureShape, held: list[web.RouteDef]) -> list[web.RouteDef]:
    """The resource's files and batches (``/openai/files…``, ``/openai/batches…``): the
    ``/v1/…`` routes `held`, each behind the ``api-version`` check."""
    def versioned(handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                  ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handle(request: web.Request) -> web.StreamResponse:
            _check_version(shape, request)
            return await handler(request)
        return handle

    return [web.route(route.method, AZURE_PREFIX + route.path.removeprefix("/v1/"), versioned(route.handler))
            for route in held]
